"""Model registry, checkpoint loading and our own export-friendly SAM-family implementations."""

from __future__ import annotations

from edgesam_export.device.models import ModelSpec, get_spec, list_specs
from edgesam_export.host.models.checkpoint import (
    LoadedModel,
    detect_family,
    load_model,
    read_checkpoint,
    synth_state_dict,
)
from edgesam_export.host.models.registry import build_for_state, build_model

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "build_for_state",
    "build_model",
    "detect_family",
    "get_spec",
    "list_specs",
    "load_model",
    "read_checkpoint",
    "synth_state_dict",
]

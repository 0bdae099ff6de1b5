"""Model registry, checkpoint loading and our own export-friendly SAM-family implementations."""

from __future__ import annotations

from edgesam_export.host.models import edgesam as _edgesam  # noqa: F401  (registers the spec)
from edgesam_export.host.models import efficientvit as _efficientvit  # noqa: F401  (registers the specs)
from edgesam_export.host.models import sam_family as _sam_family  # noqa: F401  (SAM, SlimSAM, MobileSAM)
from edgesam_export.host.models.checkpoint import (
    LoadedModel,
    detect_family,
    load_model,
    read_checkpoint,
    synth_state_dict,
)
from edgesam_export.host.models.registry import ModelSpec, get_spec, list_specs, register

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "detect_family",
    "get_spec",
    "list_specs",
    "load_model",
    "read_checkpoint",
    "register",
    "synth_state_dict",
]

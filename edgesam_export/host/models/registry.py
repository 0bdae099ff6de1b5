"""Building the torch model of a registered spec (`device.models`): the host half of the registry.

The spec names its builder as "module:function"; resolving it here keeps the table itself
torch-free, so listing models and checking recipes never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from edgesam_export.device.errors import InputError
from edgesam_export.device.models import ModelSpec
from edgesam_export.host.models.sam_heads import SamModel

__all__ = ["build_for_state", "build_model"]


def _resolve(target: str) -> Callable[..., SamModel]:
    module, _, name = target.partition(":")
    function: Callable[..., SamModel] = getattr(importlib.import_module(module), name)
    return function


def build_model(spec: ModelSpec, upsample_mode: str | None = None) -> SamModel:
    """A fresh model with uninitialised weights, in eval mode."""
    builder = _resolve(spec.builder)
    if spec.upsample_modes:
        mode = upsample_mode or spec.upsample_modes[0]
        if mode not in spec.upsample_modes:
            raise InputError(
                f"{spec.name}: upsample mode {mode!r} is not one of {list(spec.upsample_modes)}"
            )
        model = builder(*spec.builder_args, upsample_mode=mode)
    else:
        if upsample_mode is not None:
            raise InputError(f"{spec.name} has no neck upsampling option; drop --upsample")
        model = builder(*spec.builder_args)
    return model.eval()


def build_for_state(
    spec: ModelSpec, state: Mapping[str, Any], upsample_mode: str | None = None
) -> SamModel:
    """A model shaped for this state dict (per-file widths), or `build_model` for fixed layouts."""
    if spec.build_from_state is None:
        return build_model(spec, upsample_mode)
    if upsample_mode is not None:
        raise InputError(f"{spec.name} has no neck upsampling option; drop --upsample")
    return _resolve(spec.build_from_state)(state).eval()

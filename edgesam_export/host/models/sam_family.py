"""Builders for Meta's SAM (ViT-B/L/H), SlimSAM-50/77 and MobileSAM.

All share SAM's prompt encoder and mask decoder (4 mask tokens: token 0 the single-mask answer,
tokens 1-3 the multimask answers), a 1024 input with SAM's pixel mean/std and a (256, 64, 64)
embedding. Checkpoint formats: Meta's and MobileSAM's files are bare state dicts loaded strictly
by their official builders; SlimSAM's are whole pickled modules (read by `safe_pickle`, never
executed) whose encoder widths differ per file and are read from the tensor shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgesam_export.device.errors import CheckpointError
from edgesam_export.host.models.sam_heads import SamModel
from edgesam_export.host.models.tinyvit import TinyViT
from edgesam_export.host.models.vit import (
    ImageEncoderViT,
    ViTConfig,
    sam_vit_config,
    vit_config_from_state,
)

# Meta's configurations: (embed dim, depth, heads, global attention blocks).
SAM_VIT_CONFIGS: dict[str, ViTConfig] = {
    "sam_vit_b": sam_vit_config(768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": sam_vit_config(1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": sam_vit_config(1280, 32, 16, (7, 15, 23, 31)),
}


def build_sam_vit(cfg: ViTConfig) -> SamModel:
    return SamModel(ImageEncoderViT(cfg), num_mask_tokens=4)


def build_slimsam(state: Mapping[str, Any]) -> SamModel:
    cfg = vit_config_from_state(state)
    if not cfg.separate_qkv:
        raise CheckpointError(
            "not a SlimSAM checkpoint: its attention has a fused qkv layer (a Meta SAM ViT file?)"
        )
    return SamModel(ImageEncoderViT(cfg), num_mask_tokens=4)


def build_slimsam_from_layout(name: str) -> SamModel:
    """The shipped synthetic layout's widths (what `build()` gives without a checkpoint)."""
    import torch

    from edgesam_export.device.models import load_layout

    shapes = {
        k: torch.empty(t["shape"], device="meta") for k, t in load_layout(name)["tensors"].items()
    }
    return build_slimsam(shapes)


def build_mobile_sam() -> SamModel:
    return SamModel(TinyViT(), num_mask_tokens=4)


def build_sam_vit_named(name: str) -> SamModel:
    """The builder the registry names for Meta's SAM variants."""
    return build_sam_vit(SAM_VIT_CONFIGS[name])

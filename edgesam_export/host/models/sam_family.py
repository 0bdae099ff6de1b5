"""Registry entries for Meta's SAM (ViT-B/L/H), SlimSAM-50/77 and MobileSAM.

All share SAM's prompt encoder and mask decoder (4 mask tokens: token 0 the single-mask answer,
tokens 1-3 the multimask answers), a 1024 input with SAM's pixel mean/std and a (256, 64, 64)
embedding. Checkpoint formats: Meta's and MobileSAM's files are bare state dicts loaded strictly
by their official builders; SlimSAM's are whole pickled modules (read by `safe_pickle`, never
executed) whose encoder widths differ per file and are read from the tensor shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from edgesam_export.device.errors import CheckpointError
from edgesam_export.host.models.registry import ModelSpec, register
from edgesam_export.host.models.sam_heads import SamModel
from edgesam_export.host.models.tinyvit import TinyViT
from edgesam_export.host.models.vit import (
    ImageEncoderViT,
    ViTConfig,
    sam_vit_config,
    vit_config_from_state,
)

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

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


def _slimsam_from_layout(name: str) -> SamModel:
    """The shipped synthetic layout's widths (what `build()` gives without a checkpoint)."""
    import torch

    from edgesam_export.host.models.checkpoint import load_layout

    shapes = {
        k: torch.empty(t["shape"], device="meta") for k, t in load_layout(name)["tensors"].items()
    }
    return build_slimsam(shapes)


def build_mobile_sam() -> SamModel:
    return SamModel(TinyViT(), num_mask_tokens=4)


_COMMON: dict[str, Any] = dict(
    img_size=1024,
    pixel_mean=SAM_PIXEL_MEAN,
    pixel_std=SAM_PIXEL_STD,
    num_mask_tokens=4,
    embed_shape=(256, 64, 64),
    decoder_contracts=("edgesam", "official"),
)

# Targets with an export + parity test row per variant (tests/test_families.py ties these to
# the test tables): ONNX for all (the large ones in the heavy run), CoreML where converted and
# checked on the MIL executor (not ViT-H: 2.5 GB of fp32 weights, not converted here).
VERIFIED_TARGETS: dict[str, tuple[str, ...]] = {
    "sam_vit_b": ("onnx", "coreml"),
    "sam_vit_l": ("onnx", "coreml"),
    "sam_vit_h": ("onnx", "coreml"),
    "slimsam_50": ("onnx", "coreml"),
    "slimsam_77": ("onnx", "coreml"),
    "mobile_sam": ("onnx", "coreml"),
}

_SAM_DESCRIPTIONS = {
    "sam_vit_b": "SAM ViT-B (Meta, 12 blocks, width 768): sam_vit_b_01ec64.pth",
    "sam_vit_l": "SAM ViT-L (Meta, 24 blocks, width 1024): sam_vit_l_0b3195.pth",
    "sam_vit_h": "SAM ViT-H (Meta, 32 blocks, width 1280): sam_vit_h_4b8939.pth",
}

for _name, _cfg in SAM_VIT_CONFIGS.items():
    register(
        ModelSpec(
            name=_name,
            family="SAM",
            description=_SAM_DESCRIPTIONS[_name],
            layout=f"{_name}.json",
            signature_prefixes=("image_encoder.blocks.0.attn.qkv.", "image_encoder.pos_embed"),
            builder=partial(build_sam_vit, _cfg),
            verified_targets=VERIFIED_TARGETS[_name],
            **_COMMON,
        )
    )

for _name, _ratio, _file in (
    ("slimsam_50", "50", "SlimSAM-50.pth"),
    ("slimsam_77", "77", "SlimSAM-77.pth"),
):
    register(
        ModelSpec(
            name=_name,
            family="SlimSAM",
            description=(
                f"SlimSAM-{_ratio} (SAM ViT-B pruned {_ratio} %, widths read from the file;"
                f" pickled module): {_file}"
            ),
            layout=f"{_name}.json",
            signature_prefixes=("image_encoder.blocks.0.attn.q.", "image_encoder.pos_embed"),
            builder=partial(_slimsam_from_layout, _name),
            build_from_state=build_slimsam,
            checkpoint_format="pickled-module",
            verified_targets=VERIFIED_TARGETS[_name],
            **_COMMON,
        )
    )

register(
    ModelSpec(
        name="mobile_sam",
        family="MobileSAM",
        description="MobileSAM (TinyViT-5M encoder): mobile_sam.pt",
        layout="mobile_sam.json",
        signature_prefixes=("image_encoder.layers.", "image_encoder.patch_embed.seq."),
        builder=build_mobile_sam,
        verified_targets=VERIFIED_TARGETS["mobile_sam"],
        **_COMMON,
    )
)

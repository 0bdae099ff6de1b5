"""Say what a checkpoint is, from its key names and a few tensor shapes.

Users' most common failure with SAM-family tools is a file of a neighbouring model given to the
wrong loader ("Unexpected key(s) in state_dict"). `identify` names the family and, where this
package builds it, the registered model to use instead: SAM ViT-B/L/H by embedding width, SlimSAM
by its split q/k/v layers, MobileSAM by TinyViT's stages, and the neighbours we do not build
(SAM-HQ, SAM 2, EfficientViT-SAM until registered) by their distinctive modules.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from edgesam_export.device.models import list_specs

_SAM_WIDTHS = {
    768: ("ViT-B", "sam_vit_b"),
    1024: ("ViT-L", "sam_vit_l"),
    1280: ("ViT-H", "sam_vit_h"),
}
_SAM_DEPTHS = {768: 12, 1024: 24, 1280: 32}
_SAM2_PREFIXES = (
    "image_encoder.trunk.",
    "memory_attention.",
    "memory_encoder.",
    "sam_mask_decoder.",
    "sam_prompt_encoder.",
    "obj_ptr_proj.",
)
_HQ_PREFIXES = (
    "mask_decoder.hf_token.",
    "mask_decoder.hf_mlp.",
    "mask_decoder.compress_vit_feat.",
    "mask_decoder.embedding_encoder.",
    "mask_decoder.embedding_maskfeature.",
)
# Key prefix -> (family description, registered model or None); first match wins.
_PREFIXES: tuple[tuple[str, str, str | None], ...] = (
    ("image_encoder.features.", "EdgeSAM", "edge_sam"),
    ("image_encoder.backbone.stages.", "EfficientViT-SAM", None),
    ("image_encoder.layers.", "MobileSAM (TinyViT)", "mobile_sam"),
    ("image_encoder.module.", "SlimSAM (pruned SAM ViT-B wrapped in DataParallel)", "slimsam_77"),
    ("image_encoder.blocks.", "SAM (ViT-B/L/H)", None),
)


@dataclass(frozen=True)
class Identity:
    description: str  # e.g. "SAM (ViT-H)", "SAM-HQ (HQ-SAM, ViT-L)", "SAM 2"
    model: str | None  # the registered model that loads it, None when this package has none


def _shape(state: Mapping[str, Any] | Collection[str], key: str) -> tuple[int, ...] | None:
    if not isinstance(state, Mapping) or key not in state:
        return None
    return tuple(getattr(state[key], "shape", ()))


def _depth(keys: Collection[str]) -> int:
    blocks = {k.split(".")[2] for k in keys if k.startswith("image_encoder.blocks.")}
    return len({b for b in blocks if b.isdigit()})


def identify(state: Mapping[str, Any] | Collection[str]) -> Identity | None:
    """What the checkpoint is; `state` may be a state dict (shapes used) or just its keys."""
    keys = set(state)
    if any(k.startswith("spatial_perceiver.") for k in keys) and any(
        k.startswith("image_encoder.trunk.body.stem.") for k in keys
    ):
        return Identity("EdgeTAM", "edgetam")
    if any(k.startswith(_SAM2_PREFIXES) for k in keys):
        return Identity("SAM 2 (Hiera image encoder with memory attention)", None)
    pos = _shape(state, "image_encoder.pos_embed")
    width = pos[-1] if pos else None
    if any(k.startswith(_HQ_PREFIXES) for k in keys):
        base = _SAM_WIDTHS[width][0] if width in _SAM_WIDTHS else ""
        if any(k.startswith("image_encoder.layers.") for k in keys):
            base = "TinyViT (Light HQ-SAM)"
        return Identity(
            "SAM-HQ (HQ-SAM" + (f", {base}" if base else "") + "; extra hf_token /"
            " compress_vit_feat decoder modules)",
            None,
        )
    split_qkv = any(k.startswith("image_encoder.blocks.0.attn.q.") for k in keys) or any(
        k.startswith("image_encoder.module.blocks.0.attn.q.") for k in keys
    )
    if split_qkv:
        w = width or (_shape(state, "image_encoder.module.pos_embed") or (0,))[-1]
        model = "slimsam_50" if w and w > 276 else "slimsam_77"
        return Identity(f"SlimSAM (pruned SAM ViT-B{f', width {w}' if w else ''})", model)
    if "image_encoder.blocks.0.attn.qkv.weight" in keys and width in _SAM_WIDTHS:
        name, model = _SAM_WIDTHS[width]
        depth = _depth(keys)
        suffix = "" if depth == _SAM_DEPTHS[width] else f", but {depth} blocks"
        return Identity(f"SAM ({name}{suffix})", model)
    candidates = [
        spec
        for spec in list_specs()
        if spec.family not in ("SAM", "SlimSAM")
        and all(any(k.startswith(p) for k in keys) for p in spec.signature_prefixes)
    ]
    if len(candidates) > 1:  # variants of one family share their signature: match the layout
        from edgesam_export.device.models import load_layout

        counters = ".num_batches_tracked"
        wanted = {k for k in keys if not k.endswith(counters)}
        for spec in candidates:
            layout = {k for k in load_layout(spec.name)["tensors"] if not k.endswith(counters)}
            if layout == wanted:
                return Identity(spec.family, spec.name)
        return Identity(candidates[0].family, None)
    if candidates:
        return Identity(candidates[0].family, candidates[0].name)
    for prefix, description, registered in _PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return Identity(description, registered)
    return None

"""The EdgeTAM module under the released checkpoint's top-level names (`{"model": state_dict}`).

Image side (this module): `image_encoder.trunk` (RepViT-M1), `image_encoder.neck` (FPN),
`sam_prompt_encoder`, `sam_mask_decoder`, `no_mem_embed`, `obj_ptr_proj`, and the small
top-level tensors SAM2Base keeps next to them (`no_mem_pos_enc`, `no_obj_ptr`,
`mask_downsample`). Video side (`memory.py`, `EdgeTamMemory`): the memory encoder, spatial
perceiver, memory attention and `maskmem_tpos_enc`, attached here under their checkpoint names
when that module exists. Without it, `load_state_dict_checked` loads the image side strictly and
requires every other key to be a memory key (so a foreign or truncated file still fails).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from edgesam_export.host.models.edgetam.heads import MLP, MaskDecoder2, PromptEncoder
from edgesam_export.host.models.edgetam.neck import FpnNeck, sine_position_encoding
from edgesam_export.host.models.edgetam.trunk import RepViTTrunk

#: Top-level names of the video-side parameters (owned by `memory.py`).
MEMORY_PREFIXES = ("memory_attention.", "memory_encoder.", "spatial_perceiver.", "maskmem_tpos_enc")

#: SAM 2's image frame (square stretch) and the low-res mask side.
IMAGE_SIZE = 1024


class ImageEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = RepViTTrunk()
        self.neck = FpnNeck(tuple(self.trunk.channel_list))

    def forward(self, image: Tensor) -> list[Tensor]:
        """FPN levels 0, 1, 2 (strides 4, 8, 16); level 3 only feeds level 2 (`scalp=1`)."""
        return self.neck(self.trunk(image))[:3]

    def export_friendly(self, onnxruntime_layout: bool = False) -> ImageEncoder:
        """The same encoder with the trunk's export forms (`RepViTTrunk.export_friendly`); the
        neck is shared, the original stays the reference."""
        clone = copy.copy(self)
        clone._modules = dict(self._modules)
        clone.trunk = self.trunk.export_friendly(onnxruntime_layout)
        return clone


def _attach_memory(model: nn.Module) -> bool:
    """Add the video-side submodules when `memory.py` exists; False while it does not."""
    try:
        memory = importlib.import_module("edgesam_export.host.models.edgetam.memory")
    except ModuleNotFoundError as exc:
        if exc.name != "edgesam_export.host.models.edgetam.memory":
            raise
        return False
    cls = getattr(memory, "EdgeTamMemory", None)
    if cls is None:
        return False
    parts = cls()
    for name, child in parts.named_children():
        model.add_module(name, child)
    for name, param in parts.named_parameters(recurse=False):
        model.register_parameter(name, param)
    return True


class EdgeTAM(nn.Module):
    no_mem_embed: nn.Parameter

    def __init__(self, with_memory: bool = True) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder()
        self.sam_prompt_encoder = PromptEncoder()
        self.sam_mask_decoder = MaskDecoder2()
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, 256))
        self.obj_ptr_proj = MLP(256, 256, 256, 3)
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, 256))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, 256))
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.has_memory = _attach_memory(self) if with_memory else False

    # -- image mode -----------------------------------------------------------------------
    def backbone_levels(self, image: Tensor) -> list[Tensor]:
        """FPN levels 0, 1, 2 as the memory path uses them (no `no_mem_embed`)."""
        return self.image_encoder(image)

    def encode_image(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(1, 3, 1024, 1024) normalised -> image_embed, high_res_feats_0, high_res_feats_1."""
        level0, level1, level2 = self.backbone_levels(image)
        dec = self.sam_mask_decoder
        embed = level2 + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, dec.conv_s0(level0), dec.conv_s1(level1)

    def dense_pe(self) -> Tensor:
        return self.sam_prompt_encoder.dense_pe()

    def embed_prompts(
        self,
        coords: Tensor,
        labels: Tensor,
        mask_input: Tensor | None = None,
        has_mask_input: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sparse and dense prompt embeddings; the padding point is always appended.

        `coords` (B, N, 2) are (x, y) in the 1024 frame (box corners first, labels 2/3), as
        SAM 2's predictor feeds them. `mask_input` (B, 1, 256, 256) logits are used where
        `has_mask_input` (B or 1,) is 1 (all of them when it is None).
        """
        b = coords.shape[0]
        coords = torch.cat([coords, coords.new_zeros(b, 1, 2)], dim=1)
        labels = torch.cat([labels.to(coords.dtype), coords.new_full((b, 1), -1.0)], dim=1)
        pe = self.sam_prompt_encoder
        sparse = pe.embed_points(coords, labels, IMAGE_SIZE)
        dense = pe.dense_embedding()
        if mask_input is not None:
            masked = pe.mask_downscaling(mask_input)
            if has_mask_input is None:
                dense = masked
            else:
                flag = has_mask_input.to(masked.dtype).reshape(-1, 1, 1, 1)
                dense = flag * masked + (1 - flag) * dense
        return sparse, dense

    def decode(
        self,
        image_embed: Tensor,
        high_res_0: Tensor,
        high_res_1: Tensor,
        sparse: Tensor,
        dense: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All 4 tokens: logits (B,4,256,256), IoU (B,4), token outputs, object score (B,1)."""
        return self.sam_mask_decoder.predict(
            image_embed, high_res_0, high_res_1, self.dense_pe(), sparse, dense
        )

    def vision_pos_enc(self, size: int = 64) -> Tensor:
        """The neck's sine encoding of a `size` x `size` level (used by the memory path)."""
        return sine_position_encoding(size, size, 256)


def is_memory_key(key: str) -> bool:
    return key.startswith(MEMORY_PREFIXES)


def load_state_dict_checked(model: EdgeTAM, state: Mapping[str, Tensor]) -> None:
    """Strict load; while the video side is absent, its keys must be exactly the memory ones."""
    if model.has_memory:
        model.load_state_dict(dict(state), strict=True)
        return
    image_state = {k: v for k, v in state.items() if not is_memory_key(k)}
    model.load_state_dict(image_state, strict=True)


def expected_keys(model: EdgeTAM, layout_keys: set[str]) -> set[str]:
    """The keys `model` loads from a file of `layout_keys`: all of them once memory is attached."""
    return layout_keys if model.has_memory else {k for k in layout_keys if not is_memory_key(k)}


def build_edgetam() -> EdgeTAM:
    return EdgeTAM().eval()

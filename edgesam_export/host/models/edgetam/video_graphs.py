"""EdgeTAM's video graphs: what the torch-free tracker (`edgesam_export.video`) runs per frame.

Four graphs, batched over tracked objects (B) where the work is per object:

- `video_encoder`: image (1, 3, 1024, 1024) -> pix_feat (level 2 WITHOUT `no_mem_embed`),
  image_embed (with it), high_res_0, high_res_1.
- `video_decoder`: image_embed (B, 256, 64, 64), high_res_0/1 (batch 1), point_coords (B, N, 2)
  in the 1024 frame, point_labels (B, N) -> low_res_masks (B, 4, 256, 256), iou_predictions
  (B, 4), object_score_logits (B, 1), obj_ptr (B, 4, 256).
- `memory_encoder`: pix_feat (1, 256, 64, 64), mask_logits (B, 1, 256, 256), binarize (B,) ->
  maskmem_features (B, 512, 64) float32 (the tracker rounds them to bfloat16).
- `memory_attention`: pix_feat (1, 256, 64, 64), memory (B, S, 512, 64), memory_tpos (S,) int64,
  obj_ptrs (B, K, 256) -> image_embed (B, 256, 64, 64).

The decoder appends SAM 2's padding point; it gates low-res logits with the object score (<= 0
-> -1024) and returns the object pointer of every mask token (`no_obj_ptr` where the score is
<= 0): which token's pointer counts is the tracker's choice (multimask: best IoU; single mask:
token 0). The memory encoder upsamples the logits to 1024 (bilinear) and scales them to +-10:
binarised (prompted frames) or through a sigmoid (tracked frames).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.host.models.edgetam.memory import (
    NUM_MASKMEM,
    MemoryAttention,
    MemoryEncoder,
    SpatialPerceiver,
    split_object_pointers,
)
from edgesam_export.host.models.edgetam.model import EdgeTAM, ImageEncoder

NO_OBJ_SCORE = -1024.0
IMAGE_SIZE = 1024


class VideoEncoderGraph(nn.Module):
    """`onnxruntime_layout` (the ONNX target): the trunk's export forms
    (`ImageEncoder.export_friendly`); other targets trace the reference encoder."""

    def __init__(self, model: EdgeTAM, onnxruntime_layout: bool = False) -> None:
        super().__init__()
        self.model = model
        encoder = cast(ImageEncoder, model.image_encoder)
        self.encoder = encoder.export_friendly(True) if onnxruntime_layout else encoder

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        level0, level1, level2 = self.encoder(image)
        dec = self.model.sam_mask_decoder
        embed = level2 + self.model.no_mem_embed.reshape(1, -1, 1, 1)
        return level2, embed, dec.conv_s0(level0), dec.conv_s1(level1)


class VideoDecoderGraph(nn.Module):
    def __init__(self, model: EdgeTAM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        image_embed: Tensor,
        high_res_0: Tensor,
        high_res_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        sparse, dense = m.embed_prompts(point_coords, point_labels)
        logits, iou, tokens, score = m.decode(image_embed, high_res_0, high_res_1, sparse, dense)
        present = score > 0  # (B, 1)
        logits = torch.where(
            present[:, :, None, None], logits, torch.full_like(logits, NO_OBJ_SCORE)
        )
        ptr = m.obj_ptr_proj(tokens)  # (B, 4, 256)
        flag = present.to(ptr.dtype)[:, :, None]
        ptr = flag * ptr + (1 - flag) * m.no_obj_ptr[None]
        return logits, iou, score, ptr


class MemoryEncoderGraph(nn.Module):
    def __init__(self, model: EdgeTAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, pix_feat: Tensor, mask_logits: Tensor, binarize: Tensor) -> Tensor:
        b = mask_logits.shape[0]
        up = F.interpolate(
            mask_logits, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
        )
        hard = (up > 0).to(up.dtype)
        soft = torch.sigmoid(up)
        flag = binarize.to(up.dtype).reshape(-1, 1, 1, 1)
        mask = (flag * hard + (1 - flag) * soft) * 20.0 - 10.0
        encoder = cast(MemoryEncoder, self.model.memory_encoder)
        perceiver = cast(SpatialPerceiver, self.model.spatial_perceiver)
        return perceiver(encoder(pix_feat.expand(b, -1, -1, -1), mask))


class MemoryAttentionGraph(nn.Module):
    def __init__(self, model: EdgeTAM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pix_feat: Tensor, memory: Tensor, memory_tpos: Tensor, obj_ptrs: Tensor
    ) -> Tensor:
        m = self.model
        b = memory.shape[0]
        tpos_enc = cast(Tensor, m.maskmem_tpos_enc)
        tpos = tpos_enc.reshape(NUM_MASKMEM, 1, -1)[memory_tpos]  # (S, 1, 64)
        latent_pos = cast(SpatialPerceiver, m.spatial_perceiver).latent_pos
        pos = (latent_pos[None] + tpos)[None]  # (1, S, 512, 64)
        attention = cast(MemoryAttention, m.memory_attention)
        # pix_feat stays batch 1: the first self-attention runs once for all objects
        return attention(
            pix_feat, memory, pos.expand(b, -1, -1, -1), split_object_pointers(obj_ptrs)
        )


def _example(graph: str, gen: torch.Generator) -> tuple[Tensor, ...]:
    """Deterministic trace inputs; B = 2, S = 2, K = 3, N = 3 so no axis specialises to 1."""
    if graph == "video_encoder":
        return (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),)
    if graph == "video_decoder":
        return (
            torch.randn(2, 256, 64, 64, generator=gen),
            torch.randn(1, 32, 256, 256, generator=gen),
            torch.randn(1, 64, 128, 128, generator=gen),
            torch.rand(2, 3, 2, generator=gen) * IMAGE_SIZE,
            torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
        )
    if graph == "memory_encoder":
        return (
            torch.randn(1, 256, 64, 64, generator=gen),
            torch.randn(2, 1, 256, 256, generator=gen),
            torch.tensor([1.0, 0.0]),
        )
    return (
        torch.randn(1, 256, 64, 64, generator=gen),
        torch.randn(2, 2, 512, 64, generator=gen),
        torch.tensor([6, 0]),
        torch.randn(2, 3, 256, generator=gen),
    )


_MODULES: dict[str, type[nn.Module]] = {
    "video_encoder": VideoEncoderGraph,
    "video_decoder": VideoDecoderGraph,
    "memory_encoder": MemoryEncoderGraph,
    "memory_attention": MemoryAttentionGraph,
}


def video_graph(
    model: EdgeTAM, graph: str, onnxruntime_layout: bool = False
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The module of one video graph and its trace inputs. Names, I/O and dynamic axes are the
    registry's (`ModelSpec.graph_io`, `device.contract.video_io`); the one export path
    (`host.pipeline` -> the target) writes these graphs with the image graphs."""
    if graph == "video_encoder":
        module: nn.Module = VideoEncoderGraph(model, onnxruntime_layout).eval()
    else:
        module = _MODULES[graph](model).eval()
    return module, _example(graph, torch.Generator().manual_seed(0))

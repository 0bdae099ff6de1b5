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

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
from edgesam_export.host.models.edgetam.model import EdgeTAM
from edgesam_export.host.targets.onnx import dedupe_initializers

NO_OBJ_SCORE = -1024.0
IMAGE_SIZE = 1024


class VideoEncoderGraph(nn.Module):
    def __init__(self, model: EdgeTAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        level0, level1, level2 = self.model.backbone_levels(image)
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
        curr = pix_feat.expand(b, -1, -1, -1)
        attention = cast(MemoryAttention, m.memory_attention)
        return attention(curr, memory, pos.expand(b, -1, -1, -1), split_object_pointers(obj_ptrs))


@dataclass(frozen=True)
class VideoGraph:
    name: str
    module: type[nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]

    def example(self, gen: torch.Generator) -> tuple[Tensor, ...]:
        """Deterministic trace inputs; B = 2, S = 2, K = 3, N = 3 so no axis specialises to 1."""
        if self.name == "video_encoder":
            return (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),)
        if self.name == "video_decoder":
            return (
                torch.randn(2, 256, 64, 64, generator=gen),
                torch.randn(1, 32, 256, 256, generator=gen),
                torch.randn(1, 64, 128, 128, generator=gen),
                torch.rand(2, 3, 2, generator=gen) * IMAGE_SIZE,
                torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
            )
        if self.name == "memory_encoder":
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


VIDEO_GRAPHS: tuple[VideoGraph, ...] = (
    VideoGraph(
        "video_encoder",
        VideoEncoderGraph,
        ("image",),
        ("pix_feat", "image_embed", "high_res_0", "high_res_1"),
        {},
    ),
    VideoGraph(
        "video_decoder",
        VideoDecoderGraph,
        ("image_embed", "high_res_0", "high_res_1", "point_coords", "point_labels"),
        ("low_res_masks", "iou_predictions", "object_score_logits", "obj_ptr"),
        {
            "image_embed": {0: "B"},
            "point_coords": {0: "B", 1: "N"},
            "point_labels": {0: "B", 1: "N"},
            "low_res_masks": {0: "B"},
            "iou_predictions": {0: "B"},
            "object_score_logits": {0: "B"},
            "obj_ptr": {0: "B"},
        },
    ),
    VideoGraph(
        "memory_encoder",
        MemoryEncoderGraph,
        ("pix_feat", "mask_logits", "binarize"),
        ("maskmem_features",),
        {"mask_logits": {0: "B"}, "binarize": {0: "B"}, "maskmem_features": {0: "B"}},
    ),
    VideoGraph(
        "memory_attention",
        MemoryAttentionGraph,
        ("pix_feat", "memory", "memory_tpos", "obj_ptrs"),
        ("image_embed",),
        {
            "memory": {0: "B", 1: "S"},
            "memory_tpos": {0: "S"},
            "obj_ptrs": {0: "B", 1: "K"},
            "image_embed": {0: "B"},
        },
    ),
)


def _constants_to_initializers(proto: Any, min_values: int = 1024) -> None:
    """Move large Constant nodes into initializers so identical ones can be merged."""
    keep = []
    for node in proto.graph.node:
        attr = (
            node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        )
        if attr is not None and attr.name == "value" and math.prod(attr.t.dims) >= min_values:
            attr.t.name = node.output[0]
            proto.graph.initializer.append(attr.t)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def export_video_graphs(model: EdgeTAM, out_dir: Path, opset: int = 17) -> list[Path]:
    """Write the four video graphs as ONNX files `edgetam_<graph>.onnx` into `out_dir`.

    Each file carries `model` and `graph` metadata; `edgesam_export.video.VideoTracker.open`
    reads a folder of them (any backend whose sessions `device.backends.open_session` opens).
    """
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for graph in VIDEO_GRAPHS:
        module = graph.module(model).eval()
        args = graph.example(torch.Generator().manual_seed(0))
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                buf,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=opset,
                input_names=list(graph.inputs),
                output_names=list(graph.outputs),
                dynamic_axes=graph.dynamic or None,
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buf.getvalue())
        _constants_to_initializers(proto)
        dedupe_initializers(proto)  # the tracer folds the RoPE tables once per use
        for key, value in (("model", "edgetam"), ("graph", graph.name)):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        path = out_dir / f"edgetam_{graph.name}.onnx"
        tmp = path.with_suffix(".onnx.partial")
        tmp.write_bytes(proto.SerializeToString())
        tmp.replace(path)
        written.append(path)
    return written

"""The exported graphs: the exact I/O contract every backend reproduces.

Encoder: `image` (1, 3, S, S) float32, normalised and padded -> `image_embeddings` (1, C, h, w).
Decoder: `image_embeddings` (1, C, h, w), `point_coords` (B, N, 2) (x, y) in the S frame,
`point_labels` (B, N) -> `scores` (B, K), `masks` (B, K, 4h, 4w) low-resolution logits.
B = 1 is exactly EdgeSAM's own export; B > 1 runs B prompt sets (same N) against one image.

These wrappers exist for tracing: no data-dependent Python control flow, positional encodings
precomputed as constants, and export-only rewrites (split squeeze-excite means) applied to a copy
so the PyTorch reference model stays bit-faithful to the official code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("scores", "masks")
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape with symbolic axes as strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


def encoder_io(img_size: int, embed_shape: tuple[int, int, int]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec("image", "float32", (1, 3, img_size, img_size))],
        [TensorSpec("image_embeddings", "float32", (1, *embed_shape))],
    )


def decoder_io(embed_shape: tuple[int, int, int], num_mask_tokens: int
               ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    _, h, w = embed_shape
    return (
        [
            TensorSpec("image_embeddings", "float32", (1, *embed_shape)),
            TensorSpec("point_coords", "float32", ("batch", "num_points", 2)),
            TensorSpec("point_labels", "float32", ("batch", "num_points")),
        ],
        [
            TensorSpec("scores", "float32", ("batch", num_mask_tokens)),
            TensorSpec("masks", "float32", ("batch", num_mask_tokens, 4 * h, 4 * w)),
        ],
    )


def stability_score(masks: Tensor, threshold: float = MASK_THRESHOLD,
                    offset: float = STABILITY_OFFSET) -> Tensor:
    """count(logit > t + o) / count(logit > t - o) per mask, in float32 only.

    Counts are sums of 0/1 float32 values: exact below 2**24 pixels, and unlike the official
    int16 row sums they pass TensorRT's ONNX parser. 0/0 gives NaN, as the official code does.
    """
    high = (masks > threshold + offset).to(torch.float32).sum(dim=(-1, -2))
    low = (masks > threshold - offset).to(torch.float32).sum(dim=(-1, -2))
    return high / low


class EncoderGraph(nn.Module):
    """image -> image_embeddings, with export-friendly reductions."""

    def __init__(self, image_encoder: nn.Module, split_mean: bool = True) -> None:
        super().__init__()
        self.image_encoder = copy.deepcopy(image_encoder)
        for module in self.image_encoder.modules():
            if hasattr(module, "split_mean"):
                module.split_mean = split_mean

    def forward(self, image: Tensor) -> Tensor:
        return self.image_encoder(image)


class DecoderGraph(nn.Module):
    """(image_embeddings, point_coords, point_labels) -> (scores, masks), all mask tokens."""

    def __init__(self, model: nn.Module, img_size: int, use_stability_score: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = img_size
        self.use_stability_score = use_stability_score
        with torch.no_grad():
            self.register_buffer("image_pe", self.prompt_encoder.dense_pe(), persistent=False)
            self.register_buffer("dense_embedding", self.prompt_encoder.dense_embedding().clone(),
                                 persistent=False)

    def forward(self, image_embeddings: Tensor, point_coords: Tensor,
                point_labels: Tensor) -> tuple[Tensor, Tensor]:
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, self.img_size)
        masks, scores = self.mask_decoder.predict(image_embeddings, self.image_pe, sparse,
                                                  self.dense_embedding)
        if self.use_stability_score:
            scores = stability_score(masks)
        return scores, masks

"""segment-anything's official ONNX decoder contract (`SamOnnxModel`), device side (numpy only).

SAM's and MobileSAM's own ONNX decoder export takes `image_embeddings` (1, 256, 64, 64),
`point_coords` (1, N, 2) in the 1024 frame, `point_labels` (1, N), `mask_input` (1, 1, 256, 256),
`has_mask_input` (1,) and `orig_im_size` (2,) float (H, W), and returns `masks` (mask logits
upscaled to the original size, not thresholded), `iou_predictions` and `low_res_masks`. With
`return_single_mask` it keeps one token: argmax(iou + (N - 2.5) * [1000, 0, 0, 0]), N counting
every row of point_coords (padding point and box corners included). Existing clients of those
files run ours unchanged when exported with `--decoder-contract official`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .contract import TensorSpec

CONTRACTS = ("edgesam", "official")
OFFICIAL_DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
OFFICIAL_DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
SINGLE_MASK_REWEIGHT = 1000.0


def official_decoder_io(
    embed_shape: tuple[int, int, int], num_mask_tokens: int, return_single_mask: bool
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    _, h, w = embed_shape
    k = 1 if return_single_mask else num_mask_tokens
    return (
        [
            TensorSpec("image_embeddings", "float32", (1, *embed_shape)),
            TensorSpec("point_coords", "float32", (1, "num_points", 2)),
            TensorSpec("point_labels", "float32", (1, "num_points")),
            TensorSpec("mask_input", "float32", (1, 1, 4 * h, 4 * w)),
            TensorSpec("has_mask_input", "float32", (1,)),
            TensorSpec("orig_im_size", "float32", (2,)),
        ],
        [
            TensorSpec("masks", "float32", (1, k, "orig_height", "orig_width")),
            TensorSpec("iou_predictions", "float32", (1, k)),
            TensorSpec("low_res_masks", "float32", (1, k, 4 * h, 4 * w)),
        ],
    )


def is_official(metadata: Mapping[str, str]) -> bool:
    return metadata.get("decoder_contract", "edgesam") == "official"


def official_feeds(
    image_embeddings: np.ndarray,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    original_size: tuple[int, int],
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The six inputs for one prompt set (batch 1); no mask prompt unless `mask_input` is given."""
    low_res = (image_embeddings.shape[-2] * 4, image_embeddings.shape[-1] * 4)
    has_mask = mask_input is not None
    mask = (
        np.zeros((1, 1, *low_res), np.float32)
        if mask_input is None
        else np.asarray(mask_input, np.float32).reshape(1, 1, *low_res)
    )
    return {
        "image_embeddings": np.asarray(image_embeddings, np.float32),
        "point_coords": np.asarray(point_coords, np.float32).reshape(1, -1, 2),
        "point_labels": np.asarray(point_labels, np.float32).reshape(1, -1),
        "mask_input": mask,
        "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32),
        "orig_im_size": np.array(original_size, np.float32),
    }


def single_mask_index(scores: np.ndarray, num_points: int) -> np.ndarray:
    """The token `SamOnnxModel(return_single_mask=True)` keeps for each row of `scores` (B, K)."""
    weights = np.zeros(scores.shape[-1], np.float32)
    weights[0] = SINGLE_MASK_REWEIGHT
    return np.argmax(scores + (num_points - 2.5) * weights, axis=-1)

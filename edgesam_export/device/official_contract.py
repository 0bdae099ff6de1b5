"""Families' own ONNX decoder contracts, device side (numpy only).

`CONTRACTS` names every decoder I/O an ONNX export may follow; `FOREIGN` describes the ones
that are not ours (names, feeds, output keys, single-mask rule, file tag) so export and parity
treat them alike.

segment-anything's official contract (`SamOnnxModel`, value "official"):

SAM's and MobileSAM's own ONNX decoder export takes `image_embeddings` (1, 256, 64, 64),
`point_coords` (1, N, 2) in the 1024 frame, `point_labels` (1, N), `mask_input` (1, 1, 256, 256),
`has_mask_input` (1,) and `orig_im_size` (2,) float (H, W), and returns `masks` (mask logits
upscaled to the original size, not thresholded), `iou_predictions` and `low_res_masks`. With
`return_single_mask` it keeps one token: argmax(iou + (N - 2.5) * [1000, 0, 0, 0]), N counting
every row of point_coords (padding point and box corners included). Existing clients of those
files run ours unchanged when exported with `--decoder-contract official`.

EfficientViT-SAM's contract (`DecoderOnnxModel` of its ONNX deployment, value "efficientvit"):
`image_embeddings` (1, 256, 64, 64), `point_coords` (B, N, 2) in the 1024 frame and
`point_labels` (B, N) float (batch and point axes dynamic), no mask prompt and no image size; it
returns `masks` (the 256x256 low-res logits, not upscaled) then `iou_predictions`. With
`return_single_mask` it keeps the token of highest predicted IoU among all of them (plain
argmax, no reweighting). Its runner sends point prompts without SAM's padding point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgesam_export.device.contract import TensorSpec

CONTRACTS = ("edgesam", "official", "efficientvit")
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


EFFICIENTVIT_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
EFFICIENTVIT_DECODER_OUTPUTS = ("masks", "iou_predictions")


def efficientvit_decoder_io(
    embed_shape: tuple[int, int, int], num_mask_tokens: int, return_single_mask: bool
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    _, h, w = embed_shape
    k = 1 if return_single_mask else num_mask_tokens
    return (
        [
            TensorSpec("image_embeddings", "float32", (1, *embed_shape)),
            TensorSpec("point_coords", "float32", ("batch_size", "num_points", 2)),
            TensorSpec("point_labels", "float32", ("batch_size", "num_points")),
        ],
        [
            TensorSpec("masks", "float32", ("batch_size", k, 4 * h, 4 * w)),
            TensorSpec("iou_predictions", "float32", ("batch_size", k)),
        ],
    )


def efficientvit_feeds(
    image_embeddings: np.ndarray,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    original_size: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """The three inputs (the image size is not one: the runner post-processes itself)."""
    coords = np.asarray(point_coords, np.float32)
    return {
        "image_embeddings": np.asarray(image_embeddings, np.float32),
        "point_coords": coords.reshape(-1, *coords.shape[-2:]),
        "point_labels": np.asarray(point_labels, np.float32).reshape(-1, coords.shape[-2]),
    }


def best_iou_index(scores: np.ndarray, num_points: int) -> np.ndarray:
    """The token `DecoderOnnxModel(return_single_mask=True)` keeps: argmax over every token."""
    return np.argmax(scores, axis=-1)


@dataclass(frozen=True)
class ForeignContract:
    """A family's own decoder I/O, as export writes it and parity judges it."""

    name: str
    family: str  # whose client drives such files (for messages and docs)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    io: Callable[..., tuple[list[TensorSpec], list[TensorSpec]]]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    feeds: Callable[..., dict[str, np.ndarray]]
    single_mask_index: Callable[[np.ndarray, int], np.ndarray]
    scores_key: str
    low_res_key: str  # 256x256 logits
    upscaled_key: str | None  # logits at the original size, where the contract computes them
    batched: bool  # point_coords/point_labels have a batch axis

    def file_tag(self, return_single_mask: bool) -> str:
        return f"_{self.name}_single" if return_single_mask else f"_{self.name}"


FOREIGN: dict[str, ForeignContract] = {
    "official": ForeignContract(
        name="official",
        family="segment-anything's SamOnnxModel",
        inputs=OFFICIAL_DECODER_INPUTS,
        outputs=OFFICIAL_DECODER_OUTPUTS,
        io=official_decoder_io,
        dynamic_axes={
            "point_coords": {1: "num_points"},
            "point_labels": {1: "num_points"},
            "masks": {2: "orig_height", 3: "orig_width"},
        },
        feeds=official_feeds,
        single_mask_index=single_mask_index,
        scores_key="iou_predictions",
        low_res_key="low_res_masks",
        upscaled_key="masks",
        batched=False,
    ),
    "efficientvit": ForeignContract(
        name="efficientvit",
        family="EfficientViT-SAM's DecoderOnnxModel",
        inputs=EFFICIENTVIT_DECODER_INPUTS,
        outputs=EFFICIENTVIT_DECODER_OUTPUTS,
        io=efficientvit_decoder_io,
        dynamic_axes={
            "point_coords": {0: "batch_size", 1: "num_points"},
            "point_labels": {0: "batch_size", 1: "num_points"},
            "masks": {0: "batch_size"},
            "iou_predictions": {0: "batch_size"},
        },
        feeds=efficientvit_feeds,
        single_mask_index=best_iou_index,
        scores_key="iou_predictions",
        low_res_key="masks",
        upscaled_key=None,
        batched=True,
    ),
}


def foreign_contract(metadata: Mapping[str, str]) -> ForeignContract | None:
    """The family contract a decoder file follows (from its metadata); None for ours."""
    return FOREIGN.get(metadata.get("decoder_contract", "edgesam"))

"""The I/O contract every backend reproduces: tensor names, dtypes, shapes and constants.

Device side (numpy only): runtimes, processing and the parity checker read it without torch;
`graphs` builds the torch modules that export exactly this contract.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def encoder_io(
    img_size: int, embed_shape: tuple[int, int, int]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec("image", "float32", (1, 3, img_size, img_size))],
        [TensorSpec("image_embeddings", "float32", (1, *embed_shape))],
    )


def decoder_io(
    embed_shape: tuple[int, int, int], num_mask_tokens: int
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

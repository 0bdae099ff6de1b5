"""Shared pieces of `processing`: the error type, image geometry and input validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.errors import InputError


class ProcessingError(InputError, ValueError):
    """Raised when input to a processing function is malformed.

    A ``ValueError`` for plain-numpy callers, and an ``InputError`` so the CLI maps it to the
    bad-input exit code. ``edgesam_export.device.errors`` is standard library only.
    """


@dataclass(frozen=True)
class ImageInfo:
    """Geometry needed to map between an original image and the encoder frame.

    ``preprocess`` returns it so that ``postprocess_masks`` can undo the resize and padding
    without the caller having to recompute anything.

    Attributes:
        original_size: ``(H, W)`` of the image as supplied by the user.
        input_size: ``(h, w)`` of the image scaled to the ``S x S`` prompt/mask frame (long
            side ``S``), before the bottom/right padding.
        img_size: ``S``, the side of the prompt/mask frame. It equals the encoder input side
            for SAM and EdgeSAM; EfficientViT-SAM-L encodes 512x512 but keeps ``S = 1024``.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    img_size: int
    # "longest" (SAM): masks are upscaled to S, cropped to input_size, resized to the original;
    # "stretch" (SAM 2): one bilinear resize of the low-res logits straight to the original.
    resize: str = "longest"

    def __post_init__(self) -> None:
        # Normalise to plain Python ints so the instance is hashable (used as a cache key)
        # even when built from numpy scalars or lists, and validate once up front.
        original = _as_size_pair(self.original_size, "ImageInfo.original_size")
        input_size = _as_size_pair(self.input_size, "ImageInfo.input_size")
        img_size = _as_positive_int(self.img_size, "ImageInfo.img_size")
        if input_size[0] > img_size or input_size[1] > img_size:
            raise ProcessingError(
                f"ImageInfo.input_size {input_size} does not fit in the {img_size}x{img_size} "
                "frame; each side must be <= img_size"
            )
        object.__setattr__(self, "original_size", original)
        object.__setattr__(self, "input_size", input_size)
        object.__setattr__(self, "img_size", img_size)


# --------------------------------------------------------------------------------------
# small validation helpers
# --------------------------------------------------------------------------------------


def _as_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` >= 1; bools and floats (even 1024.0) are rejected."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ProcessingError(f"{name} must be a positive integer, got {value!r}")
    result = int(value)
    if result < 1:
        raise ProcessingError(f"{name} must be a positive integer (>= 1), got {result}")
    return result


def _as_size_pair(value: object, name: str) -> tuple[int, int]:
    """Return ``value`` as an ``(int, int)`` pair of positive sizes."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ProcessingError(f"{name} must be a (height, width) pair, got {value!r}")
    return (
        _as_positive_int(value[0], f"{name}[0] (height)"),
        _as_positive_int(value[1], f"{name}[1] (width)"),
    )


def _as_float_array(value: object, name: str) -> NDArray[np.float64]:
    """Convert ``value`` to a finite float64 array or raise a ProcessingError."""
    if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
        raise ProcessingError(f"{name} must hold real numbers, got dtype {value.dtype}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProcessingError(f"{name} must be numeric array-like, got {value!r}") from exc
    if not np.all(np.isfinite(arr)):
        raise ProcessingError(f"{name} contains NaN or infinite values; all must be finite")
    return arr


def _describe(value: object) -> str:
    """Short human description of an input, used in error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"object of type {type(value).__name__}"


def get_preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` of an ``height x width`` image resized so its long side is ``long_side``.

    Mirrors SAM's ``ResizeLongestSide.get_preprocess_shape`` (scale, then round half up via
    ``int(x + 0.5)``) so every consumer agrees on the resized geometry. Unlike SAM, each side
    is clamped to at least 1 so extreme aspect ratios (e.g. 1 x 5000) never produce an empty
    image.
    """
    h = _as_positive_int(height, "height")
    w = _as_positive_int(width, "width")
    s = _as_positive_int(long_side, "long_side")
    scale = s * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))

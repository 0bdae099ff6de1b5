"""Pure-numpy pre- and post-processing for EdgeSAM / Segment-Anything models.

This module owns everything that happens *around* the exported graphs on a device:

* turning a user image into the encoder input tensor (``preprocess``), including a
  bit-exact re-implementation of Pillow's antialiased bilinear resize (``resize_uint8``)
  so that devices without Pillow produce exactly the tensor the official SAM/EdgeSAM
  predictor produces;
* mapping user prompts (points, boxes) from original-image pixels into the encoder frame
  and packing them into the decoder's ``point_coords`` / ``point_labels`` inputs
  (``transform_coords``, ``transform_boxes``, ``build_prompts``);
* turning the decoder's low-resolution logits back into full-resolution logits and masks,
  scoring and selecting them (``postprocess_masks``, ``threshold_masks``,
  ``stability_score``, ``select_masks``).

It deliberately depends on numpy and the standard library only: importing it must not pull
in torch, cv2 or PIL, because it is shipped to devices where those are unavailable or too
heavy. Invalid user input is reported with :class:`ProcessingError` (a ``ValueError``)
whose message says what was received and what is accepted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InputError

__all__ = [
    "DEFAULT_IMG_SIZE",
    "DEFAULT_PIXEL_MEAN",
    "DEFAULT_PIXEL_STD",
    "ImageInfo",
    "ProcessingError",
    "build_prompts",
    "get_preprocess_shape",
    "postprocess_masks",
    "preprocess",
    "resize_uint8",
    "select_masks",
    "stability_score",
    "threshold_masks",
    "transform_boxes",
    "transform_coords",
]

#: Side length S of the square encoder input used by SAM and EdgeSAM.
DEFAULT_IMG_SIZE: int = 1024
#: ImageNet RGB mean in 0..255 units, as registered in SAM's ``pixel_mean`` buffer.
DEFAULT_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
#: ImageNet RGB std in 0..255 units, as registered in SAM's ``pixel_std`` buffer.
DEFAULT_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

# Pillow's fixed-point precision for 8-bit resampling: 32 bits minus 8 for the pixel value
# minus 2 bits of headroom for filters with negative lobes / coefficient sums above one.
_PRECISION_BITS = 22
_FIXED_ONE = float(1 << _PRECISION_BITS)
_FIXED_HALF = 1 << (_PRECISION_BITS - 1)

_USER_POINT_LABELS = (0, 1)
_BOX_LABELS = (2.0, 3.0)
_PAD_LABEL = -1.0


class ProcessingError(InputError, ValueError):
    """Raised when input to a processing function is malformed.

    A ``ValueError`` for plain-numpy callers, and an ``InputError`` so the CLI maps it to the
    bad-input exit code. ``edgesam_export.errors`` is standard library only.
    """


@dataclass(frozen=True)
class ImageInfo:
    """Geometry needed to map between an original image and the encoder frame.

    ``preprocess`` returns it so that ``postprocess_masks`` can undo the resize and padding
    without the caller having to recompute anything.

    Attributes:
        original_size: ``(H, W)`` of the image as supplied by the user.
        input_size: ``(h, w)`` of the resized image inside the ``S x S`` frame, before the
            bottom/right zero padding.
        img_size: ``S``, the side of the square encoder input.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    img_size: int

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


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------


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


def transform_coords(
    coords: ArrayLike, original_size: tuple[int, int], img_size: int = DEFAULT_IMG_SIZE
) -> NDArray[np.float32]:
    """Map ``(..., 2)`` ``(x, y)`` pixel coordinates of the original image to the S frame.

    The scaling is done in float64 and then cast to float32, exactly like SAM's
    ``ResizeLongestSide.apply_coords`` followed by the predictor's float32 tensor
    conversion, so the decoder sees bit-identical prompts. No +0.5 shift is applied here:
    the exported decoder graph adds it itself.
    """
    arr = _as_float_array(coords, "coords")
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ProcessingError(
            f"coords must have shape (..., 2) holding (x, y) pairs, got shape {arr.shape}"
        )
    old_h, old_w = _as_size_pair(original_size, "original_size")
    new_h, new_w = get_preprocess_shape(old_h, old_w, img_size)
    out = arr.copy()
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    result: NDArray[np.float32] = out.astype(np.float32)
    return result


def transform_boxes(
    boxes: ArrayLike, original_size: tuple[int, int], img_size: int = DEFAULT_IMG_SIZE
) -> NDArray[np.float32]:
    """Map ``(..., 4)`` XYXY boxes of the original image to the S frame (float32).

    Boxes are treated as two corner points so the mapping is identical to
    :func:`transform_coords` (as in SAM's ``apply_boxes``).
    """
    arr = _as_float_array(boxes, "boxes")
    if arr.ndim < 1 or arr.shape[-1] != 4:
        raise ProcessingError(
            f"boxes must have shape (..., 4) holding (x0, y0, x1, y1), got shape {arr.shape}"
        )
    corners = transform_coords(arr.reshape(*arr.shape[:-1], 2, 2), original_size, img_size)
    return corners.reshape(arr.shape)


# --------------------------------------------------------------------------------------
# Pillow-exact bilinear resize
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _pillow_bilinear_taps(
    in_size: int, out_size: int
) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """Tap indices ``(out, k)`` and 22-bit fixed-point weights ``(out, k)`` for one axis.

    Follows Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` step by step, in the
    same floating-point operation order, because a single ulp of difference in a weight can
    flip the rounded output by one grey level. Unused tap slots get weight 0 and a valid
    (clamped) index so they can be gathered harmlessly.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # bilinear filter support is 1.0
    ksize = math.ceil(support) * 2 + 1
    inv_filterscale = 1.0 / filterscale

    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    count = np.clip(xmax - xmin, 0, ksize)

    offsets = np.arange(ksize, dtype=np.int64)
    taps = xmin[:, None] + offsets[None, :]
    valid = offsets[None, :] < count[:, None]
    arg = ((taps.astype(np.float64) - center[:, None]) + 0.5) * inv_filterscale
    weights = np.where(valid, np.maximum(1.0 - np.abs(arg), 0.0), 0.0)
    # Pillow accumulates the normaliser left to right; cumsum keeps that exact order
    # (trailing zero slots do not change the sum).
    total = np.cumsum(weights, axis=1)[:, -1:]
    weights = np.divide(weights, total, out=weights.copy(), where=total != 0.0)
    scaled = weights * _FIXED_ONE
    fixed = np.where(scaled < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
    taps = np.clip(taps, 0, in_size - 1).astype(np.intp)
    taps.setflags(write=False)
    fixed_int = fixed.astype(np.int64)
    fixed_int.setflags(write=False)
    return taps, fixed_int


_BLOCK_BYTES = 1 << 18  # int32 accumulator block: ~256 KiB stays in cache


def _resample_rows(planar: NDArray[np.uint8], out_size: int) -> NDArray[np.uint8]:
    """One Pillow 8-bit resampling pass along axis 1 of a planar ``(C, N, M)`` uint8 array.

    Every filter tap gathers whole contiguous rows and multiply-adds them into an int32
    accumulator, exactly like Pillow's (bilinear weights are non-negative and sum to 2**22,
    so the total stays below 255 * 2**22 + 2**21 < 2**31). Output rows are produced in
    blocks so the accumulator stays in cache.
    """
    channels, n, m = planar.shape
    taps, weights = _pillow_bilinear_taps(n, out_size)
    live = [k for k in range(taps.shape[1]) if weights[:, k].any()]
    w32 = weights.astype(np.int32)
    rows = max(1, _BLOCK_BYTES // (4 * channels * m))
    out = np.empty((channels, out_size, m), dtype=np.uint8)
    acc_buf = np.empty((channels, rows, m), dtype=np.int32)
    term_buf = np.empty((channels, rows, m), dtype=np.int32)
    for o0 in range(0, out_size, rows):
        o1 = min(o0 + rows, out_size)
        acc, term = acc_buf[:, : o1 - o0], term_buf[:, : o1 - o0]
        acc.fill(_FIXED_HALF)
        for k in live:
            np.multiply(planar[:, taps[o0:o1, k]], w32[o0:o1, k, None], out=term)
            acc += term
        acc >>= _PRECISION_BITS
        np.clip(acc, 0, 255, out=acc)
        out[:, o0:o1] = acc
    return out


def _swap_hw(planar: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(C, A, B) -> contiguous (C, B, A), one channel at a time (cache-friendly)."""
    out = np.empty((planar.shape[0], planar.shape[2], planar.shape[1]), dtype=np.uint8)
    for c in range(planar.shape[0]):
        out[c] = planar[c].T
    return out


def _pillow_vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether Pillow >= 13 runs the vertical pass before the horizontal one.

    Pillow 13 (python-pillow/Pillow#9549) starts with the vertical pass when the height
    shrinks and it loses more than twice as many rows as the width loses columns; older
    Pillow always starts horizontally. The order matters for exactness because the
    intermediate image is rounded to uint8. Rule verified against Pillow 13.0.0 on
    thousands of random shapes.
    """
    return out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)


def resize_uint8(
    image: NDArray[np.uint8],
    size: tuple[int, int],
    *,
    pass_order: Literal["auto", "horizontal", "vertical"] = "auto",
) -> NDArray[np.uint8]:
    """Resize a uint8 ``HxW`` or ``HxWxC`` image to ``size = (h, w)`` like Pillow BILINEAR.

    Bit-exact with ``Image.fromarray(image).resize((w, h), Image.BILINEAR)`` for ``L`` and
    ``RGB`` images, both up- and (antialiased) downscaling. That exactness is the point:
    SAM's reference preprocessing goes through Pillow, and any one-level difference in
    the resized image shows up in the embeddings. Recipe (as in Pillow's ``ImagingResample``):
    separable, two passes with a uint8 intermediate; a pass is skipped when that axis keeps
    its size. Other channel counts are resampled per channel with the same filter (note
    Pillow itself premultiplies alpha for ``RGBA``, this does not).

    ``pass_order`` picks which pass runs first: ``"auto"`` follows Pillow >= 13 (vertical
    first only when the height shrinks by more than twice as many pixels as the width);
    ``"horizontal"`` reproduces Pillow <= 12, which always starts horizontally. Both orders
    agree whenever the image is upscaled on both axes (the usual SAM case).
    """
    planar = _resize_planar(image, size, pass_order)
    return np.ascontiguousarray(planar.transpose(1, 2, 0) if image.ndim == 3 else planar[0])


def _resize_planar(
    image: NDArray[np.uint8],
    size: tuple[int, int],
    pass_order: Literal["auto", "horizontal", "vertical"] = "auto",
) -> NDArray[np.uint8]:
    """`resize_uint8`, returned planar ``(C, h, w)`` (C = 1 for ``HxW``): what preprocess needs.

    Both passes run along axis 1 of a planar array: the horizontal one on per-channel
    transposes, so every tap reads whole rows instead of 3-byte pixels.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ProcessingError(
            f"resize_uint8 expects a uint8 numpy array (HxW or HxWxC), got {_describe(image)}"
        )
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ProcessingError(
            f"resize_uint8 expects a non-empty HxW or HxWxC uint8 array, got shape {image.shape}"
        )
    out_h, out_w = _as_size_pair(size, "size")
    if pass_order not in ("auto", "horizontal", "vertical"):
        raise ProcessingError(
            f"pass_order must be 'auto', 'horizontal' or 'vertical', got {pass_order!r}"
        )
    work = image if image.ndim == 3 else image[:, :, None]
    in_h, in_w = int(work.shape[0]), int(work.shape[1])
    if pass_order == "auto":
        vertical_first = _pillow_vertical_first(in_h, in_w, out_h, out_w)
    else:
        vertical_first = pass_order == "vertical"
    needs_h, needs_v = in_w != out_w, in_h != out_h
    if needs_h and not (vertical_first and needs_v):
        # Horizontal first: straight from interleaved HWC into planar (C, W, H).
        transposed = np.empty((work.shape[2], in_w, in_h), dtype=np.uint8)
        for c in range(work.shape[2]):
            transposed[c] = work[:, :, c].T
        planar = _swap_hw(_resample_rows(transposed, out_w))
        return _resample_rows(planar, out_h) if needs_v else planar
    planar = np.ascontiguousarray(work.transpose(2, 0, 1))
    if needs_v:
        planar = _resample_rows(planar, out_h)
    if needs_h:
        planar = _swap_hw(_resample_rows(_swap_hw(planar), out_w))
    return planar


# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------


def _as_rgb(image: object, image_format: str) -> NDArray[np.uint8]:
    """Validate ``image`` and return it as HxWx3 (or HxW grayscale) RGB-ordered uint8."""
    accepted = (
        "accepted: a numpy uint8 array of shape HxWx3 (RGB/BGR), HxWx4 (RGBA/BGRA, alpha is "
        "dropped) or HxW (grayscale, replicated to 3 channels)"
    )
    if image_format not in ("RGB", "BGR"):
        raise ProcessingError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise ProcessingError(f"image must be a numpy array, got {_describe(image)}; {accepted}")
    if image.dtype != np.uint8:
        raise ProcessingError(
            f"image must have dtype uint8, got {image.dtype} (convert/scale to 0..255 uint8 "
            f"first); {accepted}"
        )
    if image.ndim not in (2, 3):
        raise ProcessingError(f"image must be 2-D or 3-D, got shape {image.shape}; {accepted}")
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ProcessingError(
            f"image has {image.shape[2]} channels (shape {image.shape}); {accepted}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ProcessingError(f"image is empty (shape {image.shape}); {accepted}")
    if image.ndim == 2:
        return image
    rgb = image[:, :, :3]
    if image_format == "BGR":
        rgb = rgb[:, :, ::-1]
    return rgb


def _channel_vector(values: Sequence[float] | ArrayLike, name: str) -> NDArray[np.float32]:
    arr = _as_float_array(values, name)
    if arr.shape != (3,):
        raise ProcessingError(f"{name} must have exactly 3 values (R, G, B), got shape {arr.shape}")
    return arr.astype(np.float32)


def preprocess(
    image: NDArray[np.uint8],
    img_size: int = DEFAULT_IMG_SIZE,
    pixel_mean: Sequence[float] = DEFAULT_PIXEL_MEAN,
    pixel_std: Sequence[float] = DEFAULT_PIXEL_STD,
    image_format: str = "RGB",
) -> tuple[NDArray[np.float32], ImageInfo]:
    """Turn a user image into the ``(1, 3, S, S)`` float32 encoder input.

    Reproduces the official SAM/EdgeSAM predictor path exactly: Pillow-bilinear resize of
    the long side to ``S``, HWC uint8 -> CHW float32, ``(x - mean) / std`` in float32, zero
    padding at the bottom/right to ``S x S``.

    Accepted inputs (anything else raises :class:`ProcessingError`):

    * ``HxWx3`` uint8, RGB (or BGR when ``image_format="BGR"``; channels are flipped);
    * ``HxWx4`` uint8, RGBA (or BGRA): the alpha channel is dropped, not composited;
    * ``HxW`` uint8 grayscale: replicated to three identical channels.

    Returns the C-contiguous tensor and the :class:`ImageInfo` needed by
    :func:`postprocess_masks`.
    """
    rgb = _as_rgb(image, image_format)
    size = _as_positive_int(img_size, "img_size")
    mean = _channel_vector(pixel_mean, "pixel_mean")
    std = _channel_vector(pixel_std, "pixel_std")
    if np.any(std == 0):
        raise ProcessingError(f"pixel_std must be non-zero, got {pixel_std!r}")

    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    new_h, new_w = get_preprocess_shape(height, width, size)
    planar = _resize_planar(rgb, (new_h, new_w))  # (3, h, w), or (1, h, w) for grayscale
    # (x - mean) / std in float32 has only 256 possible results per channel: a lookup table
    # gives bit-identical values for a fraction of the arithmetic and memory traffic.
    table = (np.arange(256, dtype=np.float32)[None, :] - mean[:, None]) / std[:, None]
    tensor = np.zeros((1, 3, size, size), dtype=np.float32)
    for c in range(3):
        # Grayscale: resizing once and replicating equals resizing three equal channels.
        np.take(table[c], planar[min(c, planar.shape[0] - 1)], out=tensor[0, c, :new_h, :new_w])
    info = ImageInfo(original_size=(height, width), input_size=(new_h, new_w), img_size=size)
    return tensor, info


# --------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------


def _validate_points(
    points: ArrayLike | None, labels: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Return validated ``(K, 2)`` points and ``(K,)`` labels, or None when absent/empty."""
    if points is None and labels is None:
        return None
    if points is None or labels is None:
        missing = "labels" if labels is None else "points"
        raise ProcessingError(
            f"points and labels must be given together; {missing} is missing "
            "(labels: 1 = foreground, 0 = background, one per point)"
        )
    pts = _as_float_array(points, "points")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ProcessingError(f"points must have shape (K, 2) as (x, y) rows, got {pts.shape}")
    lab = _as_float_array(labels, "labels")
    if lab.ndim != 1:
        raise ProcessingError(f"labels must have shape (K,), got {lab.shape}")
    if lab.shape[0] != pts.shape[0]:
        raise ProcessingError(
            f"points and labels length mismatch: {pts.shape[0]} points vs {lab.shape[0]} labels"
        )
    bad = ~np.isin(lab, _USER_POINT_LABELS)
    if np.any(bad):
        raise ProcessingError(
            f"point labels must be 0 (background) or 1 (foreground), got {lab[bad].tolist()}; "
            "boxes go through box=, and the -1 padding point is added automatically (pad=True)"
        )
    if pts.shape[0] == 0:
        return None
    return pts, lab


def _validate_boxes(box: ArrayLike | None) -> tuple[NDArray[np.float64], bool] | None:
    """Return ``(B, 4)`` boxes and whether the caller passed a batch, or None."""
    if box is None:
        return None
    arr = _as_float_array(box, "box")
    if arr.shape == (4,):
        boxes, batched = arr[None, :], False
    elif arr.ndim == 2 and arr.shape[1] == 4 and arr.shape[0] >= 1:
        boxes, batched = arr, True
    else:
        raise ProcessingError(
            f"box must have shape (4,) or (B, 4) as (x0, y0, x1, y1), got shape {arr.shape}"
        )
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if np.any(inverted):
        raise ProcessingError(
            "box corners are inverted: need x1 >= x0 and y1 >= y0 in (x0, y0, x1, y1), got "
            f"{boxes[inverted].tolist()}"
        )
    return boxes, batched


def build_prompts(
    points: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    box: ArrayLike | None = None,
    *,
    original_size: tuple[int, int],
    img_size: int = DEFAULT_IMG_SIZE,
    pad: bool = True,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Pack user prompts into the decoder inputs ``point_coords`` and ``point_labels``.

    Rows are: the transformed points (labels 0/1), then the box corners ``(x0, y0)``,
    ``(x1, y1)`` with labels 2 and 3. When no box is given and ``pad`` is true, a padding
    row ``(0, 0)`` with label -1 is appended, as EdgeSAM's PyTorch prompt encoder does; it
    changes the logits noticeably, so it is the default. ``pad=False`` reproduces EdgeSAM's
    official ONNX client, which sends the points as they are.

    Shapes: ``points`` ``(K, 2)`` and ``labels`` ``(K,)`` in original-image pixels; ``box``
    ``(4,)`` gives outputs ``(1, N, 2)`` / ``(1, N)``. A batch of boxes ``(B, 4)`` gives one
    prompt set per box, ``(B, N, 2)`` / ``(B, N)``; points, if any, are shared by every box.
    No +0.5 pixel-centre shift is applied: the exported graph adds it and divides by S.
    """
    point_set = _validate_points(points, labels)
    box_set = _validate_boxes(box)
    if point_set is None and box_set is None:
        raise ProcessingError(
            "no prompt given: pass points=(K, 2) with labels=(K,), and/or box=(4,) or (B, 4)"
        )
    size = _as_positive_int(img_size, "img_size")
    orig = _as_size_pair(original_size, "original_size")

    coord_rows: list[NDArray[np.float32]] = []
    label_rows: list[NDArray[np.float32]] = []
    batch = 1
    if box_set is not None:
        batch = box_set[0].shape[0]
    if point_set is not None:
        pts, lab = point_set
        coord_rows.append(np.broadcast_to(transform_coords(pts, orig, size), (batch, *pts.shape)))
        label_rows.append(np.broadcast_to(lab.astype(np.float32), (batch, lab.shape[0])))
    if box_set is not None:
        corners = transform_boxes(box_set[0], orig, size).reshape(batch, 2, 2)
        coord_rows.append(corners)
        label_rows.append(np.broadcast_to(np.asarray(_BOX_LABELS, np.float32), (batch, 2)))
    elif pad:
        coord_rows.append(np.zeros((batch, 1, 2), dtype=np.float32))
        label_rows.append(np.full((batch, 1), _PAD_LABEL, dtype=np.float32))

    coords = np.ascontiguousarray(np.concatenate(coord_rows, axis=1), dtype=np.float32)
    point_labels = np.ascontiguousarray(np.concatenate(label_rows, axis=1), dtype=np.float32)
    return coords, point_labels


# --------------------------------------------------------------------------------------
# postprocessing
# --------------------------------------------------------------------------------------


def _torch_bilinear_taps(
    in_size: int, out_size: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Per output index: lower and upper source index and their weights, as torch computes them.

    ``F.interpolate(mode="bilinear", align_corners=False)``: half-pixel centres, source =
    (dst + 0.5) * in / out - 0.5, clamped below at 0; the upper neighbour is clamped to
    ``in - 1`` (no antialiasing, as torch's default). The source position is computed the way
    torch does for float32 tensors (float32 ratio, one float32 rounding of
    ``ratio * (dst + 0.5) - 0.5`` as a fused multiply-add gives): at ~1000 px a float32 ulp is
    ~6e-5 px, which on steep logits is worth ~1e-3, so exact float64 positions would disagree
    with torch far more than the matmul does.
    """
    ratio = np.float32(in_size) / np.float32(out_size)
    half_dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(ratio) * half_dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = np.clip(src - lower.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return lower, upper, (np.float32(1.0) - frac).astype(np.float64), frac.astype(np.float64)


def _torch_bilinear_matrix(in_size: int, out_size: int) -> NDArray[np.float64]:
    """``(out, in)`` matrix of ``F.interpolate(mode="bilinear", align_corners=False)``."""
    lower, upper, w_lower, w_upper = _torch_bilinear_taps(in_size, out_size)
    rows = np.arange(out_size)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (rows, lower), w_lower)
    np.add.at(matrix, (rows, upper), w_upper)
    return matrix


_Band = tuple[tuple[int, int, int, int, NDArray[np.float32]], ...]
_BAND_ROWS = 64


def _banded(matrix: NDArray[np.float64], block: int = _BAND_ROWS) -> _Band:
    """Split an (out, in) resampling matrix into row blocks with their non-zero column span.

    A bilinear-of-bilinear operator has a handful of non-zeros per row, so each block of 64
    output rows reads a narrow window of the input: block matmuls do a few percent of the
    dense product's work while keeping BLAS efficiency.
    """
    blocks = []
    for r0 in range(0, matrix.shape[0], block):
        r1 = min(r0 + block, matrix.shape[0])
        cols = np.flatnonzero(np.any(matrix[r0:r1] != 0.0, axis=0))
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        sub = np.ascontiguousarray(matrix[r0:r1, c0:c1], dtype=np.float32)
        sub.setflags(write=False)
        blocks.append((r0, r1, c0, c1, sub))
    return tuple(blocks)


def _apply_rows(band: _Band, x: NDArray[np.float32], n_out: int) -> NDArray[np.float32]:
    """``M @ x`` over the second-to-last axis of x, for a banded M of ``n_out`` rows."""
    y = np.empty((*x.shape[:-2], n_out, x.shape[-1]), dtype=np.float32)
    for r0, r1, c0, c1, sub in band:
        np.matmul(sub, x[..., c0:c1, :], out=y[..., r0:r1, :])
    return y


@functools.lru_cache(maxsize=32)
def _postprocess_bands(
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    img_size: int,
    low_res_size: tuple[int, int],
) -> tuple[_Band, _Band]:
    """Banded composite operators per axis (rows, then columns) for upscale -> crop -> resize.

    Both resizes and the crop are linear per axis, so they collapse into one small matrix
    per axis (composed in float64, applied in float32). Cached because a device typically
    decodes many prompts for the same image.
    """
    bands = []
    for axis in (0, 1):
        up = _torch_bilinear_matrix(low_res_size[axis], img_size)[: input_size[axis]]
        # down @ up, using that each row of `down` has two taps: O(out * low_res) work.
        lower, upper, w_lower, w_upper = _torch_bilinear_taps(input_size[axis], original_size[axis])
        bands.append(_banded(w_lower[:, None] * up[lower] + w_upper[:, None] * up[upper]))
    return bands[0], bands[1]


def postprocess_masks(low_res_logits: ArrayLike, info: ImageInfo) -> NDArray[np.float32]:
    """Upscale decoder logits ``(K, Lh, Lw)`` / ``(B, K, Lh, Lw)`` to the original image.

    Same semantics as SAM's ``postprocess_masks`` (bilinear to ``S x S``, crop to
    ``input_size``, bilinear to ``original_size``, all with ``align_corners=False``), but
    computed as ``Mh @ X @ Mw^T`` with precomputed, banded per-axis operators, which is much
    faster than two full-size resizes. Returns float32 logits ``(..., H, W)``; threshold them
    with :func:`threshold_masks`.
    """
    if not isinstance(info, ImageInfo):
        raise ProcessingError(f"info must be an ImageInfo (from preprocess), got {_describe(info)}")
    logits = np.asarray(low_res_logits)
    if logits.dtype.kind not in "iuf":
        raise ProcessingError(f"low_res_logits must be real numbers, got dtype {logits.dtype}")
    if logits.ndim not in (3, 4) or logits.shape[-1] == 0 or logits.shape[-2] == 0:
        raise ProcessingError(
            f"low_res_logits must have shape (K, 256, 256) or (B, K, 256, 256), got {logits.shape}"
        )
    x = logits.astype(np.float32, copy=False)
    low_h, low_w = int(x.shape[-2]), int(x.shape[-1])
    rows, cols = _postprocess_bands(
        info.original_size, info.input_size, info.img_size, (low_h, low_w)
    )
    out_h, out_w = info.original_size
    # Columns first on the small input (as rows of the transposed view), then rows.
    x_cols = _apply_rows(cols, x.swapaxes(-1, -2), out_w)
    return _apply_rows(rows, x_cols.swapaxes(-1, -2), out_h)


def threshold_masks(logits: ArrayLike, threshold: float = 0.0) -> NDArray[np.bool_]:
    """Binary masks ``logits > threshold`` (strict, as SAM's ``mask_threshold``)."""
    return np.asarray(np.asarray(logits) > threshold, dtype=np.bool_)


def stability_score(
    logits: ArrayLike, threshold: float = 0.0, offset: float = 1.0
) -> NDArray[np.float32]:
    """SAM's stability score over the last two axes.

    ``count(logits > threshold + offset) / count(logits > threshold - offset)``: the IoU of
    the masks obtained with a stricter and a looser threshold (the first is a subset of the
    second, so the value lies in [0, 1]). Counts are integers and the division is float32,
    like the official torch code. A mask with no pixel above ``threshold - offset`` gives
    0 / 0 = NaN, as in the official code; the resulting numpy warning is suppressed.
    """
    arr = np.asarray(logits)
    if arr.ndim < 2:
        raise ProcessingError(
            f"stability_score needs logits with at least 2 dims (..., H, W), got {arr.shape}"
        )
    intersections = np.count_nonzero(arr > (threshold + offset), axis=(-2, -1))
    unions = np.count_nonzero(arr > (threshold - offset), axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.asarray(intersections, dtype=np.float32) / np.asarray(unions, np.float32)
    return np.asarray(score, dtype=np.float32)


def select_masks(
    scores: ArrayLike, masks: ArrayLike, num_multimask_outputs: int
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Pick the decoder's mask tokens following EdgeSAM's convention.

    The decoder always emits 4 tokens (axis -1 of ``scores``, axis -3 of ``masks``):
    token 0 is the single-mask answer, tokens 1..3 the multimask answers. So
    ``num_multimask_outputs`` 1 -> token 0, 3 -> tokens 1..3, 4 -> all four. Works for
    ``(K,)`` / ``(K, h, w)`` and batched ``(B, K)`` / ``(B, K, h, w)`` inputs.
    """
    slices = {1: slice(0, 1), 3: slice(1, 4), 4: slice(0, 4)}
    if isinstance(num_multimask_outputs, bool) or num_multimask_outputs not in slices:
        raise ProcessingError(
            f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs!r}"
        )
    score_arr = np.asarray(scores)
    mask_arr = np.asarray(masks)
    if score_arr.ndim < 1 or mask_arr.ndim < 3:
        raise ProcessingError(
            "select_masks expects scores (..., 4) and masks (..., 4, h, w), got shapes "
            f"{score_arr.shape} and {mask_arr.shape}"
        )
    if score_arr.shape[-1] != 4 or mask_arr.shape[-3] != 4:
        raise ProcessingError(
            "select_masks expects all 4 decoder tokens: scores (..., 4) and masks "
            f"(..., 4, h, w), got shapes {score_arr.shape} and {mask_arr.shape}"
        )
    if score_arr.shape[:-1] != mask_arr.shape[:-3]:
        raise ProcessingError(
            f"scores {score_arr.shape} and masks {mask_arr.shape} have different leading dims"
        )
    chosen = slices[num_multimask_outputs]
    return score_arr[..., chosen], mask_arr[..., chosen, :, :]

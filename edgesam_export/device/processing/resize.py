"""Pillow-exact antialiased bilinear and bicubic resize of uint8 images, in numpy (no Pillow),
and torch's antialiased bilinear resize of float images (SAM 2's preprocessing)."""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.processing._common import ProcessingError, _as_size_pair, _describe

# Pillow's fixed-point precision for 8-bit resampling: 32 bits minus 8 for the pixel value
# minus 2 bits of headroom for filters with negative lobes / coefficient sums above one.
_PRECISION_BITS = 22
_FIXED_ONE = float(1 << _PRECISION_BITS)
_FIXED_HALF = 1 << (_PRECISION_BITS - 1)


Resample = Literal["bilinear", "bicubic"]
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _bicubic(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pillow's cubic convolution kernel (Keys, a = -0.5), same operation order."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def _pillow_taps(
    in_size: int, out_size: int, resample: Resample = "bilinear"
) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """Tap indices ``(out, k)`` and 22-bit fixed-point weights ``(out, k)`` for one axis.

    Follows Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` step by step, in the
    same floating-point operation order, because a single ulp of difference in a weight can
    flip the rounded output by one grey level. Unused tap slots get weight 0 and a valid
    (clamped) index so they can be gathered harmlessly.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[resample] * filterscale
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
    kernel = np.maximum(1.0 - np.abs(arg), 0.0) if resample == "bilinear" else _bicubic(arg)
    weights = np.where(valid, kernel, 0.0)
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


def _resample_rows(
    planar: NDArray[np.uint8], out_size: int, resample: Resample = "bilinear"
) -> NDArray[np.uint8]:
    """One Pillow 8-bit resampling pass along axis 1 of a planar ``(C, N, M)`` uint8 array.

    Every filter tap gathers whole contiguous rows and multiply-adds them into an int32
    accumulator, exactly like Pillow's (weights sum to 2**22; bicubic lobes reach -0.075 x 4
    taps, so |total| stays far below 2**31; negative totals shift arithmetically and clip to 0
    as in Pillow's clip8). Output rows are produced in blocks so the accumulator stays in cache.
    """
    channels, n, m = planar.shape
    taps, weights = _pillow_taps(n, out_size, resample)
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
    resample: Resample = "bilinear",
) -> NDArray[np.uint8]:
    """Resize a uint8 ``HxW`` or ``HxWxC`` image to ``size = (h, w)`` like Pillow BILINEAR.

    ``resample="bicubic"`` is Pillow's BICUBIC (the default filter of ``Image.resize`` for RGB,
    which SAM 2's video loader uses): same fixed-point recipe with the a = -0.5 cubic kernel
    over twice the support; checked bit-exact on the EdgeTAM video frames (upscaled).

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
    planar = _resize_planar(image, size, pass_order, resample)
    return np.ascontiguousarray(planar.transpose(1, 2, 0) if image.ndim == 3 else planar[0])


def _resize_planar(
    image: NDArray[np.uint8],
    size: tuple[int, int],
    pass_order: Literal["auto", "horizontal", "vertical"] = "auto",
    resample: Resample = "bilinear",
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
    if resample not in _SUPPORT:
        raise ProcessingError(f"resample must be 'bilinear' or 'bicubic', got {resample!r}")
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
        planar = _swap_hw(_resample_rows(transposed, out_w, resample))
        return _resample_rows(planar, out_h, resample) if needs_v else planar
    planar = np.ascontiguousarray(work.transpose(2, 0, 1))
    if needs_v:
        planar = _resample_rows(planar, out_h, resample)
    if needs_h:
        planar = _swap_hw(_resample_rows(_swap_hw(planar), out_w, resample))
    return planar


@functools.lru_cache(maxsize=16)
def _antialias_matrix(in_size: int, out_size: int) -> NDArray[np.float32]:
    """(out, in) weights of torch's ``interpolate(bilinear, antialias=True)`` on one axis.

    Triangle filter with support max(1, in/out) around centre (i + 0.5) * in/out; taps
    int(centre -/+ support + 0.5) clamped to the input; weights normalised per output.
    Upscaling reduces to plain half-pixel bilinear.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((taps - centre + 0.5) * inv))
        total = w.sum()
        if total > 0:
            matrix[i, lo:hi] = w / total
    out = matrix.astype(np.float32)
    out.setflags(write=False)
    return out


def resize_float_antialias(
    planar: NDArray[np.float32], size: tuple[int, int]
) -> NDArray[np.float32]:
    """``(C, H, W)`` float32 -> ``(C, h, w)``: torch's antialiased bilinear, width pass first."""
    out_h, out_w = _as_size_pair(size, "size")
    if planar.ndim != 3:
        raise ProcessingError(f"expected a (C, H, W) float array, got {_describe(planar)}")
    rows = _antialias_matrix(int(planar.shape[1]), out_h)
    cols = _antialias_matrix(int(planar.shape[2]), out_w)
    x = np.matmul(planar.astype(np.float32, copy=False), cols.T)
    return np.ascontiguousarray(np.matmul(rows, x), dtype=np.float32)

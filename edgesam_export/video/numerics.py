"""Small numpy kernels of the video loop: bfloat16 rounding, bilinear resize, mask stability."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray


def to_bfloat16(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Round float32 to the nearest bfloat16 (ties to even), returned as float32 (like torch)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(
        0xFFFF0000
    )
    nan = np.isnan(x)
    out = rounded.view(np.float32).copy()
    out[nan] = np.float32(np.nan)
    return out


@lru_cache(maxsize=16)
def _taps(
    in_size: int, out_size: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """torch's bilinear (align_corners=False, no antialias) source taps and weights for one axis."""
    # torch's compiled kernel fuses scale * (i + 0.5) - 0.5 into one rounding (FMA): the float64
    # product of two float32 values is exact, so rounding once to float32 reproduces it.
    scale = np.float64(np.float32(in_size / out_size))
    half = np.arange(out_size, dtype=np.float64) + 0.5
    src = np.maximum((scale * half - 0.5).astype(np.float32), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, frac


def resize_bilinear(x: NDArray[np.float32], out_h: int, out_w: int) -> NDArray[np.float32]:
    """(h, w) float32 -> (out_h, out_w) like torch's bilinear with align_corners=False."""
    y0, y1, fy = _taps(x.shape[0], out_h)
    x0, x1, fx = _taps(x.shape[1], out_w)
    fy = fy[:, None]
    rows = (np.float32(1) - fy) * x[y0] + fy * x[y1]  # (out_h, w)
    return ((np.float32(1) - fx) * rows[:, x0] + fx * rows[:, x1]).astype(np.float32)


def stability(logits: NDArray[np.float32], delta: float) -> float:
    """SAM 2's stability: count(logit > delta) / count(logit > -delta); 1.0 when both are 0."""
    high = int(np.count_nonzero(logits > delta))
    low = int(np.count_nonzero(logits > -delta))
    return float(np.float32(high) / np.float32(low)) if low > 0 else 1.0

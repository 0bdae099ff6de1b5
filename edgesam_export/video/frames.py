"""Video frames -> SAM 2 encoder input, as the official video predictor prepares them.

SAM 2's video loader differs from its image transform on purpose: each frame is stretched to a
1024 square by Pillow's BICUBIC on uint8 (not a float bilinear), then divided by 255 in float64,
stored as float32 and normalised with the ImageNet mean/std on the 0..1 scale.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.errors import InputError
from edgesam_export.device.processing.resize import _resize_planar

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# The normalisation maps each uint8 level to one float32 per channel: the loader's own
# operations (float64 / 255, to float32, - mean, / std in float32) applied once to the 256
# levels, so a frame is one table lookup per channel (bit-identical to computing it per pixel).
_LEVELS = ((np.arange(256) / 255.0).astype(np.float32)[None, :] - IMAGENET_MEAN[:, None]) / (
    IMAGENET_STD[:, None]
)


def check_frame(frame: object, index: int) -> NDArray[np.uint8]:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3:
        got = getattr(frame, "shape", type(frame).__name__)
        raise InputError(f"frame {index}: expected an HxWx3 uint8 array, got {got}")
    if frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"frame {index}: expected an HxWx3 uint8 array, got shape {frame.shape}")
    return frame


def preprocess_frame(frame: NDArray[np.uint8], size: int = 1024) -> NDArray[np.float32]:
    """HxWx3 uint8 -> (1, 3, size, size) float32, bit-exact with SAM 2's video loader."""
    planar = _resize_planar(frame, (size, size), resample="bicubic")  # (3, size, size) uint8
    out = np.empty((1, 3, size, size), dtype=np.float32)
    for c in range(3):
        np.take(_LEVELS[c], planar[c], out=out[0, c])
    return out

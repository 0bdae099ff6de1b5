"""Where the generator clicks: point grids per crop layer, and the crop boxes of each layer.

The arithmetic follows segment-anything's automatic mask generator exactly (the same floats,
the same integer truncations, the same order), because every grid point and crop edge shifts
which masks survive the filters downstream.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.errors import InputError

__all__ = ["build_all_layer_point_grids", "build_point_grid", "generate_crop_boxes"]


def build_point_grid(n_per_side: int) -> NDArray[np.float64]:
    """``(n*n, 2)`` points ``(x, y)`` in [0, 1]: cell centres of an ``n x n`` grid, x fastest."""
    if n_per_side < 1:
        raise InputError(f"points per side must be >= 1, got {n_per_side}")
    half = 1.0 / (2 * n_per_side)
    axis = np.linspace(half, 1.0 - half, n_per_side)
    xs, ys = np.meshgrid(axis, axis, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[NDArray[np.float64]]:
    """One grid per crop layer; layer i has ``int(n / scale**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY (ints) and their layer: the whole image, then ``4**i`` crops in layer i.

    Layer i (from 1) tiles the image with ``2**i`` crops per side that overlap by
    ``int(overlap_ratio * short_side * 2 / 2**i)`` pixels; crops are listed column-major
    (x outer, y inner), as the official generator lists them.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for i in range(1, n_layers + 1):
        per_side = 2**i
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + im_w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + im_h) / per_side)
        x0s = [int((crop_w - overlap) * k) for k in range(per_side)]
        y0s = [int((crop_h - overlap) * k) for k in range(per_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(i)
    return boxes, layers

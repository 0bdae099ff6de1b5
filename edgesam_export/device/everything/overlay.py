"""A picture of the masks: each mask filled with its own colour over the image, outlined.

Largest masks are painted first so small ones stay visible on top (as segment-anything's
notebooks draw them). Colours come from a fixed seed, so the same records give the same PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.everything.rle import rle_to_mask

__all__ = ["mask_of", "render_overlay"]


def mask_of(record: dict[str, Any]) -> NDArray[np.bool_]:
    """The bool mask of a generator record, whatever its output mode."""
    seg = record["segmentation"]
    if isinstance(seg, np.ndarray):
        return seg.astype(bool)
    if isinstance(seg.get("counts"), (str, bytes)):
        from edgesam_export.device.everything.rle import coco_rle_to_rle

        seg = coco_rle_to_rle(seg)
    return rle_to_mask(seg)


def render_overlay(
    image: NDArray[np.uint8], records: Sequence[dict[str, Any]], alpha: float = 0.5, seed: int = 0
) -> NDArray[np.uint8]:
    """``image`` (H, W, 3) uint8 with every record's mask blended in and outlined."""
    out = image.astype(np.float32)
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(len(records), 3)).astype(np.float32)
    order = sorted(range(len(records)), key=lambda i: -int(records[i]["area"]))
    for i in order:
        mask = mask_of(records[i])
        out[mask] = (1.0 - alpha) * out[mask] + alpha * colours[i]
        edge = mask.copy()
        edge[1:, :] &= mask[:-1, :]
        edge[:-1, :] &= mask[1:, :]
        edge[:, 1:] &= mask[:, :-1]
        edge[:, :-1] &= mask[:, 1:]
        out[mask & ~edge] = colours[i] * 0.6
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

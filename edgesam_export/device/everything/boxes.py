"""Boxes around masks and greedy box non-maximum suppression, in numpy.

Conventions are segment-anything's (which uses torchvision's `batched_nms` with one category):
a mask's box is XYXY with inclusive pixel indices (a one-pixel mask has zero width), box area
is ``(x1 - x0) * (y1 - y0)``, and NMS visits boxes by descending score with ties in input
order (torchvision sorts stably), suppressing later boxes whose IoU is strictly above the
threshold. IoU is computed in float32 like torchvision's CPU kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["box_area", "box_nms", "is_box_near_crop_edge", "masks_to_boxes", "xyxy_to_xywh"]


def masks_to_boxes(masks: NDArray[np.bool_]) -> NDArray[np.int64]:
    """``(..., H, W)`` bool masks -> ``(..., 4)`` XYXY inclusive boxes; empty masks -> zeros."""
    lead = masks.shape[:-2]
    h, w = masks.shape[-2:]
    flat: NDArray[np.bool_] = np.asarray(masks, dtype=bool).reshape(-1, h, w)
    out = np.zeros((flat.shape[0], 4), dtype=np.int64)
    if flat.shape[0] == 0 or h == 0 or w == 0:
        return out.reshape(*lead, 4)
    rows: NDArray[np.bool_] = np.any(flat, axis=2)  # (N, H)
    cols: NDArray[np.bool_] = np.any(flat, axis=1)  # (N, W)
    nonempty = np.any(rows, axis=1)
    out[:, 0] = np.argmax(cols, axis=1)
    out[:, 1] = np.argmax(rows, axis=1)
    out[:, 2] = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    out[:, 3] = h - 1 - np.argmax(rows[:, ::-1], axis=1)
    out[~nonempty] = 0
    return out.reshape(*lead, 4)


def box_area(boxes: ArrayLike) -> NDArray[np.float64]:
    b = np.asarray(boxes, dtype=np.float64)
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_nms(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float) -> NDArray[np.int64]:
    """Indices of the boxes kept by greedy NMS, by descending score (ties: input order)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    order = np.argsort(-s.astype(np.float64), kind="stable")
    x0, y0, x1, y1 = (b[:, i] for i in range(4))
    areas = (x1 - x0) * (y1 - y0)
    thresh = np.float32(iou_threshold)
    suppressed = np.zeros(b.shape[0], dtype=bool)
    keep: list[int] = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        iw = np.maximum(np.float32(0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(np.float32(0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > thresh]] = True
    return np.asarray(keep, dtype=np.int64)


def is_box_near_crop_edge(
    boxes: NDArray[np.int64],
    crop_box: Sequence[int],
    orig_box: Sequence[int],
    atol: float = 20.0,
) -> NDArray[np.bool_]:
    """Boxes (crop frame) within ``atol`` px of a crop edge that is not an image edge."""
    x0, y0 = crop_box[0], crop_box[1]
    full = boxes.astype(np.float32) + np.asarray([x0, y0, x0, y0], dtype=np.float32)
    crop = np.asarray(crop_box, dtype=np.float32)
    orig = np.asarray(orig_box, dtype=np.float32)
    near_crop = np.abs(full - crop) <= atol
    near_image = np.abs(full - orig) <= atol
    return np.any(near_crop & ~near_image, axis=-1)


def xyxy_to_xywh(box: ArrayLike) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
    return [x0, y0, x1 - x0, y1 - y0]

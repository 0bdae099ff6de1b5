"""Prompt transforms: original-image pixels -> the model's prompt frame, decoder inputs."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edgesam_export.device.contract import Preprocessing
from edgesam_export.device.processing._common import (
    ProcessingError,
    _as_float_array,
    _as_positive_int,
    _as_size_pair,
    get_preprocess_shape,
)

DEFAULT_IMG_SIZE: int = 1024
_USER_POINT_LABELS = (0, 1)
_BOX_LABELS = (2.0, 3.0)
_PAD_LABEL = -1.0


def transform_coords(
    coords: ArrayLike,
    original_size: tuple[int, int],
    img_size: int = DEFAULT_IMG_SIZE,
    *,
    stretch: bool = False,
) -> NDArray[np.float32]:
    """Map ``(..., 2)`` ``(x, y)`` pixel coordinates of the original image to the S prompt frame.

    The scaling is done in float64 and then cast to float32, exactly like SAM's
    ``ResizeLongestSide.apply_coords`` followed by the predictor's float32 tensor
    conversion, so the decoder sees bit-identical prompts. With ``stretch`` (SAM 2: the image
    is stretched to the square) x and y are scaled separately, in float32 as SAM 2's
    predictor does: ``x / W * S``, ``y / H * S``. No +0.5 shift is applied here: the exported
    decoder graph adds it itself.
    """
    arr = _as_float_array(coords, "coords")
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ProcessingError(
            f"coords must have shape (..., 2) holding (x, y) pairs, got shape {arr.shape}"
        )
    old_h, old_w = _as_size_pair(original_size, "original_size")
    if stretch:
        side = np.float32(_as_positive_int(img_size, "img_size"))
        scaled = arr.astype(np.float32)
        scaled[..., 0] = scaled[..., 0] / np.float32(old_w) * side
        scaled[..., 1] = scaled[..., 1] / np.float32(old_h) * side
        return scaled
    new_h, new_w = get_preprocess_shape(old_h, old_w, img_size)
    out = arr.copy()
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    result: NDArray[np.float32] = out.astype(np.float32)
    return result


def transform_boxes(
    boxes: ArrayLike,
    original_size: tuple[int, int],
    img_size: int = DEFAULT_IMG_SIZE,
    *,
    stretch: bool = False,
) -> NDArray[np.float32]:
    """Map ``(..., 4)`` XYXY boxes of the original image to the S prompt frame (float32).

    Boxes are treated as two corner points so the mapping is identical to
    :func:`transform_coords` (as in SAM's ``apply_boxes``).
    """
    arr = _as_float_array(boxes, "boxes")
    if arr.ndim < 1 or arr.shape[-1] != 4:
        raise ProcessingError(
            f"boxes must have shape (..., 4) holding (x0, y0, x1, y1), got shape {arr.shape}"
        )
    corners = transform_coords(
        arr.reshape(*arr.shape[:-1], 2, 2), original_size, img_size, stretch=stretch
    )
    return corners.reshape(arr.shape)


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
    params: Preprocessing | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Pack user prompts into the decoder inputs ``point_coords`` and ``point_labels``.

    Rows are: the transformed points (labels 0/1), then the box corners ``(x0, y0)``,
    ``(x1, y1)`` with labels 2 and 3. When no box is given and ``pad`` is true, a padding
    row ``(0, 0)`` with label -1 is appended, as EdgeSAM's PyTorch prompt encoder does; it
    changes the logits noticeably, so it is the default. ``pad=False`` reproduces EdgeSAM's
    official ONNX client (and EfficientViT-SAM's ONNX runner), which send the points as they
    are. ``img_size`` is the model's prompt frame (``Preprocessing.frame``: 1024 for every
    family, also where the encoder sees 512).

    Shapes: ``points`` ``(K, 2)`` and ``labels`` ``(K,)`` in original-image pixels; ``box``
    ``(4,)`` gives outputs ``(1, N, 2)`` / ``(1, N)``. A batch of boxes ``(B, 4)`` gives one
    prompt set per box, ``(B, N, 2)`` / ``(B, N)``; points, if any, are shared by every box.
    No +0.5 pixel-centre shift is applied: the exported graph adds it and divides by S.

    ``params`` (a model's :class:`Preprocessing`) overrides ``img_size`` with its frame and
    applies its prompt conventions: per-axis scaling for ``resize="stretch"``, box corners
    before the points (``box_first``), the padding point also after a box
    (``prompt_pad="always"``; ``pad=False`` still sends the prompts as they are).
    """
    point_set = _validate_points(points, labels)
    box_set = _validate_boxes(box)
    if point_set is None and box_set is None:
        raise ProcessingError(
            "no prompt given: pass points=(K, 2) with labels=(K,), and/or box=(4,) or (B, 4)"
        )
    stretch, box_first, pad_always = False, False, False
    if params is not None:
        img_size = params.frame
        stretch, box_first = params.resize == "stretch", params.box_first
        pad_always = params.prompt_pad == "always"
    size = _as_positive_int(img_size, "img_size")
    orig = _as_size_pair(original_size, "original_size")

    coord_rows: list[NDArray[np.float32]] = []
    label_rows: list[NDArray[np.float32]] = []
    batch = 1
    if box_set is not None:
        batch = box_set[0].shape[0]
    if point_set is not None:
        pts, lab = point_set
        scaled = transform_coords(pts, orig, size, stretch=stretch)
        coord_rows.append(np.broadcast_to(scaled, (batch, *pts.shape)))
        label_rows.append(np.broadcast_to(lab.astype(np.float32), (batch, lab.shape[0])))
    if box_set is not None:
        corners = transform_boxes(box_set[0], orig, size, stretch=stretch).reshape(batch, 2, 2)
        at = 0 if box_first else len(coord_rows)
        coord_rows.insert(at, corners)
        label_rows.insert(at, np.broadcast_to(np.asarray(_BOX_LABELS, np.float32), (batch, 2)))
    if pad and (box_set is None or pad_always):
        coord_rows.append(np.zeros((batch, 1, 2), dtype=np.float32))
        label_rows.append(np.full((batch, 1), _PAD_LABEL, dtype=np.float32))

    coords = np.ascontiguousarray(np.concatenate(coord_rows, axis=1), dtype=np.float32)
    point_labels = np.ascontiguousarray(np.concatenate(label_rows, axis=1), dtype=np.float32)
    return coords, point_labels

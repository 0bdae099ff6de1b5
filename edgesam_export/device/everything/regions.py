"""Connected components of binary masks, and removal of small islands and holes, in numpy.

Labelling works on horizontal runs instead of pixels: the runs of each row are found with one
`diff`, runs of neighbouring rows that touch (8-connectivity: overlapping or diagonal) are
paired with `searchsorted`, and the run graph is reduced by repeated min-label hooking with
pointer jumping. Labels follow raster order of each component's first pixel, with 0 for the
background, like OpenCV's `connectedComponentsWithStats`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.errors import InputError

__all__ = ["connected_components", "remove_small_regions"]


def _runs(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int64], ...]:
    """Row, start and end (exclusive) of every run of True pixels, in raster order."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    srow, start = np.nonzero(d == 1)
    _, end = np.nonzero(d == -1)
    return srow.astype(np.int64), start.astype(np.int64), end.astype(np.int64)


def connected_components(
    mask: NDArray[np.bool_], connectivity: int = 8
) -> tuple[int, NDArray[np.int32], NDArray[np.int64]]:
    """``(n_labels, labels, sizes)``: labels ``(H, W)`` int32 with 0 for background pixels,
    components 1..n_labels-1, and the pixel count per label (``sizes[0]``: background)."""
    if mask.ndim != 2:
        raise InputError(f"connected_components expects an (H, W) mask, got {mask.shape}")
    if connectivity not in (4, 8):
        raise InputError(f"connectivity must be 4 or 8, got {connectivity}")
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    row, start, end = _runs(m)
    n_runs = row.size
    labels = np.zeros((h, w), dtype=np.int32)
    if n_runs == 0:
        return 1, labels, np.asarray([h * w], dtype=np.int64)

    # Run b in row r + 1 touches run a in row r when b.start <= a.end - 1 + reach and
    # b.end - 1 >= a.start - reach (reach 1 for diagonals). Keys order runs by (row, column).
    reach = 1 if connectivity == 8 else 0
    stride = w + 2
    start_key = row * stride + start
    last_key = row * stride + end - 1
    nxt = (row + 1) * stride
    lo = np.searchsorted(last_key, nxt + start - reach, side="left")
    hi = np.searchsorted(start_key, nxt + end - 1 + reach, side="right")
    n_edges = np.maximum(hi - lo, 0)
    src = np.repeat(np.arange(n_runs), n_edges)
    offsets = np.arange(int(n_edges.sum())) - np.repeat(np.cumsum(n_edges) - n_edges, n_edges)
    dst = np.repeat(lo, n_edges) + offsets

    parent = np.arange(n_runs)
    while True:
        before = parent
        low = np.minimum(parent[src], parent[dst])
        parent = parent.copy()
        np.minimum.at(parent, parent[src], low)
        np.minimum.at(parent, parent[dst], low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break

    roots, inverse = np.unique(parent, return_inverse=True)  # roots ascend = raster order
    run_label = inverse.astype(np.int64) + 1
    lengths = end - start
    sizes = np.zeros(roots.size + 1, dtype=np.int64)
    np.add.at(sizes, run_label, lengths)
    sizes[0] = h * w - int(lengths.sum())
    # Paint runs: a cumulative trick over the flattened image marks each run's span.
    flat = np.zeros(h * w + 1, dtype=np.int64)
    base = row * w
    np.add.at(flat, base + start, run_label)
    np.add.at(flat, base + end, -run_label)
    labels = np.cumsum(flat[:-1]).astype(np.int32).reshape(h, w)
    return int(roots.size + 1), labels, sizes


def remove_small_regions(
    mask: NDArray[np.bool_], area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[NDArray[np.bool_], bool]:
    """Fill holes (``"holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``.

    Returns the new mask and whether it changed. As in segment-anything: in ``"holes"`` mode
    the components of the complement are examined (so a small background region touching the
    border counts as a hole); in ``"islands"`` mode, when every island is small, the largest
    one is kept.
    """
    if mode not in ("holes", "islands"):
        raise InputError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = ~mask if holes else mask.astype(bool)
    n_labels, regions, sizes = connected_components(working, 8)
    small = [i for i in range(1, n_labels) if sizes[i] < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(n_labels) if i not in set(fill)]
        if not fill:
            fill = [int(np.argmax(sizes[1:])) + 1]
    lookup = np.zeros(n_labels, dtype=bool)
    lookup[fill] = True
    return lookup[regions], True

"""Run-length encodings of masks: uncompressed (counts lists) and COCO's compressed strings.

Uncompressed RLE is segment-anything's and COCO's: ``{"size": [h, w], "counts": [...]}`` with
run lengths over the mask flattened column-major (Fortran order), the first run counting
zeros (so it is 0 when the first pixel is set). The compressed form is the string pycocotools'
``frPyObjects`` / ``encode`` produce: each count, from the third on, as the difference to the
count two before, written as little-endian 5-bit groups with a continuation bit (0x20) and the
sign in the last group's 0x10 bit, offset by 48 into printable ASCII. Written here so a device
needs no pycocotools; `coco_rle_to_rle` reads the strings back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.errors import InputError

__all__ = [
    "coco_rle_to_rle",
    "decode_counts",
    "encode_counts",
    "masks_to_rle",
    "rle_area",
    "rle_to_coco_rle",
    "rle_to_mask",
]

Rle = dict[str, Any]


def masks_to_rle(masks: NDArray[np.bool_]) -> list[Rle]:
    """Uncompressed RLE of each ``(N, H, W)`` bool mask (column-major runs, zeros first)."""
    if masks.ndim != 3:
        raise InputError(f"masks_to_rle expects (N, H, W) masks, got shape {masks.shape}")
    n, h, w = masks.shape
    flat = np.ascontiguousarray(masks.transpose(0, 2, 1)).reshape(n, h * w)
    rows, cols = np.nonzero(flat[:, 1:] != flat[:, :-1])
    bounds = np.searchsorted(rows, np.arange(n + 1))
    out: list[Rle] = []
    for i in range(n):
        change = cols[bounds[i] : bounds[i + 1]] + 1
        edges = np.concatenate(([0], change, [h * w]))
        counts = np.diff(edges).tolist()
        if n and h * w and flat[i, 0]:
            counts.insert(0, 0)
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: Rle) -> NDArray[np.bool_]:
    """The ``(H, W)`` bool mask of an uncompressed RLE."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise InputError(f"RLE counts sum to {int(counts.sum())}, expected {h} x {w} = {h * w}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape(w, h).T


def rle_area(rle: Rle) -> int:
    """Number of set pixels: the sum of the odd-indexed runs."""
    return int(sum(rle["counts"][1::2]))


def encode_counts(counts: list[int]) -> str:
    """pycocotools' compressed string for a list of run lengths."""
    chars: list[str] = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences keep their sign
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def decode_counts(text: str) -> list[int]:
    """Run lengths of a pycocotools compressed string (inverse of `encode_counts`)."""
    counts: list[int] = []
    data = text.encode("ascii")
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise InputError("truncated COCO RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_coco_rle(rle: Rle) -> Rle:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}``, JSON-serialisable."""
    return {"size": list(rle["size"]), "counts": encode_counts(list(rle["counts"]))}


def coco_rle_to_rle(coco: Rle) -> Rle:
    counts = coco["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": list(coco["size"]), "counts": decode_counts(counts)}

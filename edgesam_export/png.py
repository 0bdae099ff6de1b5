"""A minimal PNG writer (8-bit RGB or grayscale) on zlib and numpy: the report needs no Pillow.

Device side. Rows use PNG's "Up" filter (each row minus the row above, computed in one numpy
operation), which compresses images with smooth regions about as well as Pillow's default.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3) uint8 array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"encode_png needs (H, W) or (H, W, 3) uint8, got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("encode_png needs a non-empty image")
    colour_type = 2 if arr.ndim == 3 else 0
    rows = np.ascontiguousarray(arr).reshape(height, -1)
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 wrap-around is PNG's modulo-256 arithmetic
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "Up" (row 0 has no row above: Up equals None there)
    filtered[:, 1:] = up
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, image: np.ndarray) -> Path:
    path.write_bytes(encode_png(image))
    return path


def decode_png(data: bytes) -> np.ndarray:
    """Read back what `encode_png` writes (filters None and Up only): for tests and checks."""
    if not data.startswith(_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, idat, header = len(_SIGNATURE), b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    if depth != 8 or colour_type not in (0, 2):
        raise ValueError(
            f"decode_png reads 8-bit gray/RGB only (depth {depth}, type {colour_type})"
        )
    channels = 3 if colour_type == 2 else 1
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, -1)
    filters, rows = raw[:, 0], raw[:, 1:].copy()
    if not set(np.unique(filters).tolist()) <= {0, 2}:
        raise ValueError("decode_png reads the None and Up filters only")
    for y in range(1, height):
        if filters[y] == 2:
            rows[y] += rows[y - 1]
    return rows.reshape(height, width, channels) if channels == 3 else rows

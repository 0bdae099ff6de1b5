"""Read and write images without Pillow: a small PNG codec (zlib from the standard library).

A device running `edgesam-export everything` may have no Pillow or cv2, so the command reads
PNG (8-bit greyscale, grey+alpha, RGB, RGBA or palette, non-interlaced) and ``.npy`` arrays,
and writes its overlay as an RGB PNG. Anything else is refused with a message naming what is
accepted.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.errors import InputError

__all__ = ["decode_png", "encode_png", "read_image", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: NDArray[np.uint8], level: int = 6) -> bytes:
    """PNG bytes of an ``(H, W)`` grey or ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA uint8 image."""
    arr = np.asarray(image)
    if (
        arr.dtype != np.uint8
        or arr.ndim not in (2, 3)
        or (arr.ndim == 3 and arr.shape[2] not in (3, 4))
    ):
        raise InputError(
            f"encode_png needs uint8 (H, W), (H, W, 3) or (H, W, 4), got {arr.shape} {arr.dtype}"
        )
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else (2 if arr.shape[2] == 3 else 6)
    rows = np.ascontiguousarray(arr).reshape(h, -1)
    # Filter 1 (Sub) on every row: neighbouring pixels of a photo or overlay differ little.
    bpp = _CHANNELS[colour]
    sub = rows.copy()
    sub[:, bpp:] = rows[:, bpp:] - rows[:, :-bpp]
    raw = np.concatenate([np.ones((h, 1), np.uint8), sub], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, image: NDArray[np.uint8]) -> None:
    """Write atomically: a temporary sibling renamed into place."""
    import os
    import tempfile

    data = encode_png(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unfilter(raw: bytes, h: int, stride: int, bpp: int) -> NDArray[np.uint8]:
    if len(raw) < h * (stride + 1):
        raise InputError("PNG image data is truncated")
    data = np.frombuffer(raw, dtype=np.uint8, count=h * (stride + 1)).reshape(h, stride + 1)
    out = np.zeros((h, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(h):
        kind, line = int(data[y, 0]), data[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: running sum per byte lane, modulo 256
            row = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            row = line + prior
        elif kind in (3, 4):  # Average, Paeth: sequential, done on Python ints
            cur = bytearray(line.tobytes())
            up = prior.tobytes()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur[i] = (cur[i] + ((left + up[i]) >> 1)) & 0xFF
                else:
                    ul = up[i - bpp] if i >= bpp else 0
                    p = left + up[i] - ul
                    pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else ul)
                    cur[i] = (cur[i] + pred) & 0xFF
            row = np.frombuffer(bytes(cur), dtype=np.uint8)
        else:
            raise InputError(f"PNG row {y} has an unknown filter type {kind}")
        out[y] = row
        prior = out[y]
    return out


def decode_png(data: bytes) -> NDArray[np.uint8]:
    """``(H, W, C)`` uint8 pixels of a PNG (C = 1, 2, 3 or 4; palettes expand to RGB/RGBA)."""
    if not data.startswith(_SIGNATURE):
        raise InputError("not a PNG file (bad signature)")
    pos = len(_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    palette: bytes | None = None
    transparency: bytes | None = None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            transparency = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise InputError("PNG has no IHDR or no image data")
    w, h, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth != 8 or interlace != 0:
        raise InputError(
            f"unsupported PNG: bit depth {depth}, colour type {colour}"
            f" ({_COLOUR_NAMES.get(colour, 'unknown')}), interlace {interlace}. Supported:"
            " 8-bit grey, grey+alpha, RGB, RGBA or palette, non-interlaced; re-save the image"
            " as such a PNG, or pass an (H, W, 3) uint8 .npy array"
        )
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise InputError(f"PNG image data is corrupt: {exc}") from None
    channels = _CHANNELS[colour]
    pixels = _unfilter(raw, h, w * channels, channels).reshape(h, w, channels)
    if colour == 3:
        if palette is None:
            raise InputError("palette PNG without a PLTE chunk")
        table = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        if transparency:
            alpha = np.full(len(table), 255, np.uint8)
            t = np.frombuffer(transparency, dtype=np.uint8)[: len(table)]
            alpha[: len(t)] = t
            table = np.concatenate([table, alpha[:, None]], axis=1)
        index = pixels[..., 0]
        if int(index.max()) >= len(table):
            raise InputError("palette PNG refers to a colour outside its palette")
        pixels = table[index]
    return pixels


def read_image(path: Path) -> NDArray[np.uint8]:
    """An ``(H, W, 3)`` uint8 RGB image from a PNG or ``.npy`` file.

    Grey images are replicated to three channels; alpha is dropped (the models see RGB).
    """
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    elif suffix == ".png":
        arr = decode_png(path.read_bytes())
    else:
        raise InputError(
            f"{path}: unsupported image type '{suffix}'. Give a PNG (8-bit, non-interlaced) or"
            " an (H, W, 3) uint8 .npy array"
        )
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: image must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(
            f"{path}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}"
        )
    if arr.shape[2] in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])

"""The Pillow-free PNG codec of `edgesam_export.device.png`: against Pillow (host side only)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesam_export.device.errors import InputError
from edgesam_export.device.png import decode_png, encode_png, read_image


def _pil_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with np.load(Path(__file__).parent / "fixtures/edge_sam/golden_seed0.npz") as d:
        return d["image"][:97, :131]


@pytest.mark.parametrize("channels", [0, 3, 4])
def test_encode_reads_back_in_pillow(photo, channels):
    arr = photo[..., 0] if channels == 0 else photo
    if channels == 4:
        arr = np.concatenate([photo, photo[..., :1]], axis=2)
    back = np.asarray(Image.open(io.BytesIO(encode_png(arr))))
    assert back.dtype == np.uint8 and np.array_equal(back, arr)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
def test_decode_what_pillow_writes(photo, mode):
    img = Image.fromarray(photo)
    if mode == "P":
        img = img.quantize(colors=50)
    else:
        img = img.convert(mode)
    for kw in ({}, {"optimize": True}, {"compress_level": 0}):
        got = decode_png(_pil_bytes(img, **kw))
        want = np.asarray(img.convert("RGB") if mode == "P" else img)
        assert np.array_equal(got.reshape(want.shape), want), (mode, kw)


def _filtered_png(arr: np.ndarray, kind: int) -> bytes:
    """A PNG whose every row uses filter `kind`, filtered by the PNG spec's definition."""
    h, w, c = arr.shape
    rows = arr.reshape(h, w * c).astype(np.int64)
    out = []
    for y in range(h):
        prev = rows[y - 1] if y else np.zeros(w * c, np.int64)
        cur = rows[y]
        left = np.concatenate([np.zeros(c, np.int64), cur[:-c]])
        ul = np.concatenate([np.zeros(c, np.int64), prev[:-c]])
        if kind == 0:
            f = cur
        elif kind == 1:
            f = cur - left
        elif kind == 2:
            f = cur - prev
        elif kind == 3:
            f = cur - (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
            f = cur - pred
        out.append(bytes([kind]) + (f % 256).astype(np.uint8).tobytes())

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    head = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(b"".join(out)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_every_filter_type(photo, kind):
    small = np.ascontiguousarray(photo[:20, :30])
    data = _filtered_png(small, kind)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), small)  # the helper is right
    assert np.array_equal(decode_png(data), small)


def test_unsupported_pngs_are_refused_clearly(photo):
    sixteen = _pil_bytes(Image.fromarray(photo[..., 0].astype(np.uint16) * 257))
    with pytest.raises(InputError, match="bit depth 16"):
        decode_png(sixteen)
    data = bytearray(encode_png(photo))
    data[28] = 1  # IHDR interlace byte (the CRC is not checked)
    with pytest.raises(InputError, match="interlace 1"):
        decode_png(bytes(data))
    with pytest.raises(InputError, match="not a PNG"):
        decode_png(b"GIF89a....")


def test_read_image(tmp_path, photo):
    png = tmp_path / "a.png"
    png.write_bytes(_pil_bytes(Image.fromarray(photo).convert("RGBA")))
    assert np.array_equal(read_image(png), photo)
    grey = tmp_path / "g.npy"
    np.save(grey, photo[..., 1])
    assert np.array_equal(read_image(grey), np.repeat(photo[..., 1:2], 3, axis=2))
    jpg = tmp_path / "a.jpg"
    Image.fromarray(photo).save(jpg)
    with pytest.raises(InputError, match=r"PNG .*\.npy"):
        read_image(jpg)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "f.npy"
    np.save(bad, photo.astype(np.float32))
    with pytest.raises(InputError, match="uint8"):
        read_image(bad)

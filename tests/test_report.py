"""The visual report: PNG writer, overlays that show the masks, and a page Chromium renders."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import assert_not_blank, screenshot
from PIL import Image

from edgesam_export.device import processing as P
from edgesam_export.device.parity import make_test_image
from edgesam_export.device.png import decode_png, encode_png
from edgesam_export.device.report import (
    OVERLAY_ALPHA,
    OVERLAY_RGB,
    bar_chart_svg,
    blend,
    write_parity_report,
)
from edgesam_export.host.pipeline import verify_artifacts


@pytest.mark.parametrize("shape", [(7, 5, 3), (33, 17), (1, 1, 3)])
def test_png_round_trip_with_pillow_and_ours(shape: tuple[int, ...]) -> None:
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(arr)
    np.testing.assert_array_equal(decode_png(data).reshape(arr.shape), arr)
    with Image.open(io.BytesIO(data)) as img:
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_png_rejects_what_it_cannot_write() -> None:
    from edgesam_export.device.errors import InputError

    with pytest.raises(InputError):
        encode_png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(InputError):
        encode_png(np.zeros((4, 4, 5), dtype=np.uint8))


def test_blend_colours_only_the_mask() -> None:
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    out = blend(image, mask)
    expected = np.rint(100 * (1 - OVERLAY_ALPHA) + np.array(OVERLAY_RGB) * OVERLAY_ALPHA)
    assert (out[mask] == expected).all() and (out[~mask] == 100).all()


def test_bar_chart_has_a_bar_per_timing() -> None:
    timings = [
        {"name": "encoder", "backend": "torch", "p50_ms": 400.0},
        {"name": "encoder", "backend": "onnx", "p50_ms": 200.0},
        {"name": "decoder N=1", "backend": "onnx", "p50_ms": 9.0},
    ]
    svg = bar_chart_svg(timings)
    assert svg.count("<rect") == 3 + 2  # bars + legend swatches
    assert "200.0 ms" in svg and "decoder N=1" in svg


@pytest.fixture(scope="module")
def parity_page(default_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    record: dict[str, Any] = {}
    report = verify_artifacts(None, default_artifacts, reference="torch", record=record)
    page = write_parity_report(tmp_path_factory.mktemp("report") / "parity", report, record)
    return page, report, record


def test_overlay_pngs_show_the_masks(parity_page: tuple) -> None:
    """Where the candidate's mask is, the PNG has the overlay colour blended in; elsewhere
    the image is unchanged (prompt markers aside)."""
    page, _, record = parity_page
    image = make_test_image()
    info = P.ImageInfo(image.shape[:2], P.get_preprocess_shape(*image.shape[:2], 1024), 1024)
    (name,) = [n for n in record if n.endswith("_decoder.onnx")]
    checked = 0
    for case, slug in (("box", "box"), ("1 positive point", "1_positive_point")):
        k = int(np.argmax(record["reference"][case]["scores"][0]))
        logits = record[name][case]["masks"][:1, k]
        mask = (P.postprocess_masks(logits, info)[0] > 0)[::2, ::2]
        shown = decode_png((page.parent / f"{slug}_edge_sam_decoder_onnx.png").read_bytes())
        expected = blend(image, P.postprocess_masks(logits, info)[0] > 0)[::2, ::2]
        if mask.any():
            assert (shown[mask] == expected[mask]).all(axis=-1).mean() > 0.98
            checked += 1
        if (~mask).any():
            plain = image[::2, ::2]
            assert (shown[~mask] == plain[~mask]).all(axis=-1).mean() > 0.98
    assert checked, "no case had a mask to look for"


def test_parity_report_renders_in_chromium(parity_page: tuple) -> None:
    page, _, _ = parity_page
    html = page.read_text()
    assert "PASSED" in html and "image_embeddings" in html and "<img" in html
    shot = screenshot(page, 1100, 1500)
    assert_not_blank(shot, 1100, 1500)
    # the overlays reach the screen: pixels of the blended overlay hue are present
    blue = (shot[..., 2].astype(int) - shot[..., 0]) > 80
    assert blue.mean() > 0.01

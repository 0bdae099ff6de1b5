"""What the browser tests share: the Chromium skip marker, the self-test images, the judgement
of a page's self-test against `Predictor`, and a page rendered as an array (HTML reports)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesam_export.device.parity import make_test_image
from edgesam_export.web.browser import Chromium, browser_unavailable
from edgesam_export.web.selftest import (
    FLIPPED_FRACTION_MAX,
    SCORE_ATOL,
    agreement,
    outside_rule,
)

BROWSER_MISSING = browser_unavailable()
needs_chromium = pytest.mark.skipif(BROWSER_MISSING is not None, reason=str(BROWSER_MISSING))

# Self-test cases (file name, (h, w), prompts): an upscaled landscape image with one positive
# point (Pillow's horizontal-first passes), and a portrait image shrunk vertical-first by Pillow
# 13's rule, prompted with a box and a negative point.
UPSCALED = ("up.png", (240, 320), [(200.0, 70.0, 1)])
DOWNSCALED = ("down.png", (1300, 600), [(150.0, 300.0, 2), (480.0, 1000.0, 3), (300.0, 900.0, 0)])


def add_selftest_images(site: Path, cases=(UPSCALED, DOWNSCALED)) -> None:
    """Write each case's structured test image under SITE/selftest/ (where the self-test URL
    points)."""
    images = site / "selftest"
    images.mkdir()
    for name, (h, w), _ in cases:
        Image.fromarray(make_test_image(h, w)).save(images / name)


def assert_page_agrees(
    js: dict,
    py: dict,
    h: int,
    w: int,
    *,
    score_atol: float = SCORE_ATOL,
    flipped_max: float = FLIPPED_FRACTION_MAX,
    float_ties_only: bool = True,
) -> dict:
    """The page's self-test (`js`, with rle=1) against `python_reference` on the same files:
    frames, encoder input and prompts identical, same tokens, every mask non-trivial, scores
    within `score_atol`, flipped pixels within `flipped_max` per mask; with `float_ties_only`
    (fp32 graphs) a pixel may flip only where Python's logit is within rounding of 0, so a mask
    without such a pixel is bit-identical. Returns `agreement`'s numbers."""
    agree = agreement(js, py)
    assert agree["frames_identical"], (js["img_size"], js["prompt_frame"], py["prompt_frame"])
    assert agree["input_identical"], "the encoder input differs from processing.preprocess"
    assert agree["prompts_identical"], (js["point_coords"], py["point_coords"])
    assert agree["same_tokens"] and js["input_size"] == py["input_size"]
    broken = outside_rule(
        agree, score_atol=score_atol, flipped_max=flipped_max, float_ties_only=float_ties_only
    )
    assert not broken, broken
    for row, ref in zip(agree["masks"], py["masks"], strict=True):
        assert 0.001 < ref["area"] / (h * w) < 0.999, "a trivial mask would prove nothing"
        if float_ties_only and ref["near_threshold"] == 0:
            # no ambiguous pixel: the mask must be bit-identical (the hash checks the RLE)
            assert row["same_hash"] and row["same_bbox"], row
    return agree


def agreement_line(what: str, agree: dict, pixels: int) -> str:
    """One line of numbers for docs/web.md (printed under pytest -s)."""
    flipped = max(r["flipped"] for r in agree["masks"])
    return (
        f"{what}: identical masks {agree['identical_masks']}/{len(agree['masks'])}, flipped"
        f" pixels {flipped} of {pixels}, max score diff {agree['max_score_diff']:.1e}"
    )


def screenshot(page: Path, width: int = 1100, height: int = 1500) -> np.ndarray:
    """The page rendered at width x height, as an RGB array, once it has loaded (images too)."""
    with Chromium() as chromium, chromium.new_page(width, height) as tab:
        tab.goto(page.resolve().as_uri())
        with Image.open(io.BytesIO(tab.screenshot())) as img:
            return np.asarray(img.convert("RGB"))


def assert_not_blank(shot: np.ndarray, width: int, height: int) -> None:
    assert shot.shape == (height, width, 3), shot.shape
    colours = np.unique(shot.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: the page looks blank"
    assert (shot < 128).any(axis=-1).mean() > 0.02, "almost nothing dark: no text or images"

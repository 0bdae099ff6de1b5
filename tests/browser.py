"""Render a page in headless Chromium (Debian's `chromium`, through Playwright) as an array."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from edgesam_export.web.browser import Chromium


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

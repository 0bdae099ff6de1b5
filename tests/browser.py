"""Render a page in headless Chromium (Debian's `chromium` package) and return the screenshot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "headless Chromium is needed to test the HTML report: apt-get install -y chromium"
        " (.ci/run installs it)"
    )


def screenshot(page: Path, width: int = 1100, height: int = 1500) -> np.ndarray:
    """The page rendered at width x height, as an RGB array."""
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        proc = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                f"--screenshot={shot}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shot.is_file(), proc.stderr[-2000:]
        with Image.open(shot) as img:
            return np.asarray(img.convert("RGB"))


def assert_not_blank(shot: np.ndarray, width: int, height: int) -> None:
    assert shot.shape == (height, width, 3), shot.shape
    colours = np.unique(shot.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: the page looks blank"
    assert (shot < 128).any(axis=-1).mean() > 0.02, "almost nothing dark: no text or images"

"""Calibration and held-out inputs for static int8: never the same images.

Calibration images come from a `--calibration` folder (PNG or HxWx3 uint8 .npy) or from the
built-in synthetic set (seeds from CALIBRATION_SEED on); the accuracy of a quantized graph is
judged on held-out synthetic images (seeds from HELDOUT_SEED on) plus the parity test image,
with prompts drawn from different seeds. `check_disjoint` refuses any overlap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.errors import InputError
from edgesam_export.device.parity import PromptCase, make_test_image, prompt_cases

CALIBRATION_SEED = 1000  # synthetic calibration images: seeds 1000, 1001, ...
HELDOUT_SEED = 0  # held-out synthetic images: seeds 0, 1, ... (< CALIBRATION_SEED)
CALIBRATION_PROMPT_SEED = 100  # decoder calibration prompts; parity and held-out use seed 0
HELDOUT_PROMPT_SEED = 0
MAX_HELDOUT = CALIBRATION_SEED - HELDOUT_SEED


def synthetic_image(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A random scene: a tilted two-colour gradient, 3-8 filled ellipses, boxes and diamonds
    with hard edges, and Gaussian noise; each seed gives a different layout and palette."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    img = start + (end - start) * t[..., None]
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(20, 0.3 * width), rng.uniform(20, 0.3 * height)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            shape = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        elif kind == 1:
            shape = (np.abs(x - cx) <= rx) & (np.abs(y - cy) <= ry)
        else:
            shape = np.abs(x - cx) / rx + np.abs(y - cy) / ry <= 1
        img[shape] = rng.uniform(0, 255, 3)
    img += rng.normal(0.0, rng.uniform(1.0, 8.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def calibration_images(folder: Path | None, count: int) -> list[np.ndarray]:
    """`count` images from `folder` (sorted by name), or the built-in synthetic set."""
    if folder is None:
        return [synthetic_image(CALIBRATION_SEED + i) for i in range(count)]
    from edgesam_export.device.png import read_image

    if not folder.is_dir():
        raise InputError(f"--calibration {folder}: not a folder; pass a folder of PNG/.npy images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".npy"))
    if not files:
        raise InputError(f"--calibration {folder}: no .png or .npy images in it")
    return [read_image(p) for p in files[:count]]


def heldout_images(count: int) -> list[np.ndarray]:
    """The parity test image plus `count - 1` held-out synthetic images."""
    if not 1 <= count <= MAX_HELDOUT:
        raise InputError(f"held-out image count {count}: choose 1..{MAX_HELDOUT}")
    return [make_test_image()] + [synthetic_image(HELDOUT_SEED + i) for i in range(count - 1)]


def heldout_labels(count: int) -> list[str]:
    """What each of `heldout_images(count)` is, to name an image that misses a bar."""
    return ["the parity test image"] + [
        f"synthetic seed {HELDOUT_SEED + i}" for i in range(count - 1)
    ]


def check_disjoint(calibration: Sequence[np.ndarray], heldout: Sequence[np.ndarray]) -> None:
    """Refuse a calibration set that holds an image the result is judged on."""
    for i, img in enumerate(calibration):
        for held in heldout:
            if img.shape == held.shape and np.array_equal(img, held):
                raise InputError(
                    f"calibration image {i} is one of the held-out images the int8 graph is"
                    " judged on; calibrate on other images"
                )


def calibration_inputs(
    folder: Path | None, count: int, params: P.Preprocessing, heldout: Sequence[np.ndarray]
) -> Inputs:
    """The calibration images (`calibration_images`) with the calibration prompts, refused
    when one of them is among the `heldout` images the result is judged on."""
    images = calibration_images(folder, count)
    check_disjoint(images, heldout)
    return prepare(images, params, CALIBRATION_PROMPT_SEED)


@dataclass(frozen=True)
class Inputs:
    """Preprocessed images and the prompt cases placed in each image's frame."""

    tensors: list[np.ndarray]  # (1, 3, S, S) float32 each
    prompts: list[list[PromptCase]]  # per image

    def feed_images(self, one_set_per_call: bool = False) -> list[int]:
        """The image index of each of `decoder_feeds`' feeds, in the same order."""
        return [
            i
            for i, cases in enumerate(self.prompts)
            for case in cases
            for _ in range(case.point_coords.shape[0] if one_set_per_call else 1)
        ]

    def decoder_feeds(
        self, embeddings: Sequence[np.ndarray], one_set_per_call: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """The decoder's feeds: every prompt case of every image, in order, with that image's
        `embeddings`; each case's prompt sets as one batch, or with `one_set_per_call` one
        feed per prompt set (batch 1: what the ExecuTorch programs take)."""
        for emb, cases in zip(embeddings, self.prompts, strict=True):
            for case in cases:
                sets = range(case.point_coords.shape[0]) if one_set_per_call else [None]
                for b in sets:
                    cut = slice(None) if b is None else slice(b, b + 1)
                    yield {
                        "image_embeddings": emb,
                        "point_coords": case.point_coords[cut],
                        "point_labels": case.point_labels[cut],
                    }


def prepare(images: Sequence[np.ndarray], params: P.Preprocessing, prompt_seed: int) -> Inputs:
    tensors, prompts = [], []
    for i, img in enumerate(images):
        tensor, info = P.preprocess(img, params=params)
        tensors.append(tensor)
        seed = prompt_seed + (i if prompt_seed != HELDOUT_PROMPT_SEED else 0)
        prompts.append(prompt_cases(params.frame, info.input_size, seed=seed))
    return Inputs(tensors, prompts)


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds (re-iterable)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self.feeds)

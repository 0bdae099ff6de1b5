"""Parity inputs and metrics: the test image, the prompt cases, and pure metric functions.

Every parity run (against PyTorch, against the reference outputs shipped beside artifacts,
`build`'s checks, the fp16 analyses) measures with these functions, so a NaN reads the same
everywhere; `judge.py` turns the metrics into verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgesam_export.device.runtime import Session


def candidate_precision(session: Session) -> str:
    """The precision an artifact records in its metadata (fp32 when it records none)."""
    return session.metadata.get("precision", "fp32")


def make_test_image(height: int = 480, width: int = 640, seed: int = 7) -> np.ndarray:
    """A structured RGB uint8 image: gradients, filled shapes with hard edges, mild noise.

    Pure noise hides errors that only show on smooth regions and edges; this image has both.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    img = np.stack([40 + 160 * u, 190 - 120 * v, 60 + 120 * u * v], axis=-1)
    shapes = [
        ((x - 0.25 * width) ** 2 + (y - 0.3 * height) ** 2 <= (0.14 * width) ** 2, (230, 110, 40)),
        (
            (x >= 0.5 * width) & (x <= 0.85 * width) & (y >= 0.12 * height) & (y <= 0.45 * height),
            (50, 90, 200),
        ),
        (
            ((x - 0.7 * width) / (0.18 * width)) ** 2 + ((y - 0.75 * height) / (0.15 * height)) ** 2
            <= 1,
            (160, 60, 170),
        ),
        (np.abs(x - 0.2 * width) + np.abs(y - 0.78 * height) <= 0.12 * height, (240, 225, 210)),
    ]
    for mask, colour in shapes:
        img[mask] = colour
    img += np.random.default_rng(seed).normal(0.0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PromptCase:
    """One decoder call: B prompt sets of N points in the S frame (what the graph takes)."""

    name: str
    point_coords: np.ndarray  # (B, N, 2) float32
    point_labels: np.ndarray  # (B, N) float32


def prompt_cases(frame: int, input_size: tuple[int, int], seed: int = 0) -> list[PromptCase]:
    """Points, negative points, boxes, box + point, 1..16 points, and a batch of boxes.

    Coordinates lie inside `input_size`, the image's extent in the `frame` x `frame` prompt
    frame (SAM's 1024 for every family, also when the encoder sees 512).
    """
    del frame  # the cases are placed relative to input_size, which lives in the frame
    h, w = input_size
    rng = np.random.default_rng(seed)

    def pts(*xy: tuple[float, float]) -> np.ndarray:
        return np.array([[[px * w, py * h] for px, py in xy]], dtype=np.float32)

    def lab(*labels: float) -> np.ndarray:
        return np.array([labels], dtype=np.float32)

    cases = [
        PromptCase("1 positive point", pts((0.25, 0.3)), lab(1)),
        PromptCase("point + padding", pts((0.25, 0.3), (0, 0)), lab(1, -1)),
        PromptCase(
            "2 positive + 1 negative", pts((0.6, 0.2), (0.8, 0.4), (0.25, 0.3)), lab(1, 1, 0)
        ),
        PromptCase("box", pts((0.52, 0.6), (0.9, 0.92)), lab(2, 3)),
        PromptCase("point + box", pts((0.2, 0.78), (0.08, 0.6), (0.35, 0.95)), lab(1, 2, 3)),
    ]
    for n in (5, 16):
        coords = (rng.random((1, n, 2)) * [w, h]).astype(np.float32)
        labels = rng.integers(0, 2, (1, n)).astype(np.float32)
        cases.append(PromptCase(f"{n} random points", coords, labels))
    boxes = []
    for _ in range(3):
        x0, y0 = rng.random(2) * [0.6 * w, 0.6 * h]
        bw, bh = (0.1 + 0.3 * rng.random(2)) * [w, h]
        boxes.append([[x0, y0], [x0 + bw, y0 + bh]])
    cases.append(
        PromptCase(
            "batch of 3 boxes",
            np.array(boxes, dtype=np.float32),
            np.tile(np.array([[2, 3]], dtype=np.float32), (3, 1)),
        )
    )
    return cases


def nonfinite_count(values: np.ndarray) -> int:
    """How many NaN/inf values an output holds (0 for integer and boolean arrays)."""
    a = np.asarray(values)
    if not np.issubdtype(a.dtype, np.inexact):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def compare_arrays(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max/mean abs error, relative error (max abs over max |ref|), cosine similarity.

    A NaN or inf on either side makes every error infinite and the cosine 0, and is counted
    (`nonfinite` in the candidate, `reference_nonfinite` in the reference): NaN minus NaN used to
    read as "no error", so a model whose outputs were all NaN passed with max abs 0.
    """
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    inf = float("inf")
    if c.shape != r.shape:
        return {"shape_mismatch": 1.0, "max_abs": inf, "mean_abs": inf, "rel": inf, "cosine": 0.0}
    bad, ref_bad = nonfinite_count(c), nonfinite_count(r)
    if bad or ref_bad:
        metrics = {"max_abs": inf, "mean_abs": inf, "rel": inf, "cosine": 0.0}
        if bad:
            metrics["nonfinite"] = float(bad)
        if ref_bad:
            metrics["reference_nonfinite"] = float(ref_bad)
        return metrics
    diff = np.abs(c - r)
    ref_scale = float(np.abs(r).max()) if r.size else 0.0
    denom = float(np.linalg.norm(c) * np.linalg.norm(r))
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "rel": float(diff.max() / ref_scale) if ref_scale > 0 and diff.size else 0.0,
        "cosine": float(c.ravel() @ r.ravel() / denom)
        if denom > 0
        else float(np.array_equal(c, r)),
    }


def mask_metrics(
    candidate_logits: np.ndarray,
    reference_logits: np.ndarray,
    candidate_scores: np.ndarray,
    reference_scores: np.ndarray,
) -> dict[str, float]:
    """Minimum IoU of the thresholded masks and the share of prompt sets with the same best mask.

    A mask whose logits hold a NaN/inf has IoU 0, and a prompt set whose scores do has no best
    mask: thresholding NaN gives an empty mask, which "agreed" with an empty reference mask.
    """
    c = candidate_logits > 0.0
    r = reference_logits > 0.0
    inter = np.logical_and(c, r).sum(axis=(-1, -2))
    union = np.logical_or(c, r).sum(axis=(-1, -2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    finite = np.isfinite(candidate_logits).all(axis=(-1, -2)) & np.isfinite(reference_logits).all(
        axis=(-1, -2)
    )
    iou = np.where(finite, iou, 0.0)
    agree = (
        (np.argmax(candidate_scores, axis=-1) == np.argmax(reference_scores, axis=-1))
        & np.isfinite(candidate_scores).all(axis=-1)
        & np.isfinite(reference_scores).all(axis=-1)
    )
    return {"min_mask_iou": float(iou.min()), "top_mask_agreement": float(agree.mean())}

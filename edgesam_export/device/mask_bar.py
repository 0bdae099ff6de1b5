"""The mask bar: the accuracy bar a reduced-precision (int8) artifact must meet, judged on the
masks users get rather than on raw logits.

Where the judge (`device/judge.py`) bounds each output's error under a tolerance row, the bar
asks a looser, user-facing question over held-out images and prompts: does the candidate draw
the same mask as the float reference? Per prompt set it takes the reference's top-scoring
token, thresholds both at logits > 0 and scores the IoU; the mean and the worst must clear
`MaskBar` (`--accuracy-target miou=X,worst=Y`). The int8 search (`host/quantize/`), the
ExecuTorch int8 check and `edgesam-bench`'s mask IoU column all use it. Device side: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesam_export.device.errors import InputError


@dataclass(frozen=True)
class MaskBar:
    """The accuracy bar a reduced-precision (int8) artifact must meet end to end: IoU of the
    masks users get (the reference's top-scoring token per prompt set, logits > 0) against the
    float reference, over held-out images and prompts. `parse` reads `miou=0.97,worst=0.90`."""

    mean_iou: float = 0.97
    worst_iou: float = 0.90

    @classmethod
    def parse(cls, text: str) -> MaskBar:
        keys = {"miou": "mean_iou", "mean": "mean_iou", "worst": "worst_iou"}
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not sep or key.strip() not in keys or not 0.0 <= number <= 1.0:
                raise InputError(
                    f"accuracy target {text!r}: write miou=X,worst=Y with X and Y in 0..1"
                    " (for example miou=0.97,worst=0.90)"
                )
            values[keys[key.strip()]] = number
        return cls(**values)

    def __str__(self) -> str:
        return f"miou={self.mean_iou:g},worst={self.worst_iou:g}"


@dataclass(frozen=True)
class MaskBarResult:
    bar: MaskBar
    mean_iou: float
    worst_iou: float
    count: int  # masks compared
    images: tuple[MaskBarResult, ...] = ()  # per image, in order, when the judge knew them

    @property
    def passed(self) -> bool:
        return (
            self.count > 0
            and self.mean_iou >= self.bar.mean_iou
            and self.worst_iou >= self.bar.worst_iou
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bar": str(self.bar),
            "mean_iou": self.mean_iou,
            "worst_iou": self.worst_iou,
            "masks": self.count,
            "passed": self.passed,
        }
        if self.images:
            out["images"] = [
                {k: v for k, v in r.to_json().items() if k != "bar"} for r in self.images
            ]
        return out

    def by_image(self, labels: Sequence[str] = ()) -> str:
        """Each image's mean / worst IoU, those under the bar marked: `image 0 (label) 0.8236 /
        0.7513 misses; image 1 ...` ("" when the judge did not know the images)."""
        return by_image(self.to_json().get("images", []), labels)


def by_image(images: Sequence[Mapping[str, Any]], labels: Sequence[str] = ()) -> str:
    """`MaskBarResult.by_image` from the per-image entries of its `to_json()` (as a report
    stores them)."""
    parts = []
    for i, r in enumerate(images):
        label = f" ({labels[i]})" if i < len(labels) else ""
        verdict = "" if r["passed"] else " misses"
        parts.append(f"image {i}{label} {r['mean_iou']:.4f} / {r['worst_iou']:.4f}{verdict}")
    return "; ".join(parts)


def top_mask_ious(
    reference_scores: np.ndarray, reference_masks: np.ndarray, candidate_masks: np.ndarray
) -> list[float]:
    """IoU per prompt set of the mask a user gets: the reference's top-scoring token, logits
    > 0, against the candidate's same token. Both empty counts 1; a candidate mask holding a
    NaN/inf counts 0 (it would draw garbage)."""
    if candidate_masks.shape != reference_masks.shape:
        raise InputError(
            f"mask bar: candidate masks {candidate_masks.shape} differ from the reference's"
            f" {reference_masks.shape}"
        )
    ious = []
    for b, k in enumerate(np.argmax(reference_scores, axis=-1)):
        cand = candidate_masks[b, k]
        if not np.all(np.isfinite(cand)):
            ious.append(0.0)
            continue
        ref, got = reference_masks[b, k] > 0, cand > 0
        union = np.count_nonzero(ref | got)
        ious.append(1.0 if union == 0 else np.count_nonzero(ref & got) / union)
    return ious


def mask_bar(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    bar: MaskBar | None = None,
    images: Sequence[int] | None = None,
) -> MaskBarResult:
    """Judge (reference scores (B,K), reference masks (B,K,H,W), candidate masks) triples, one
    per image and prompt case, against `bar` (default mean IoU 0.97, worst 0.90). `images`:
    the image index of each triple, which adds each image's own result (`MaskBarResult.images`,
    images 0..max; one with no triple counts 0 masks and misses)."""
    bar = bar or MaskBar()
    ious = [top_mask_ious(ref_s, ref_m, cand_m) for ref_s, ref_m, cand_m in pairs]
    per_image: tuple[MaskBarResult, ...] = ()
    if images is not None:
        if len(images) != len(pairs):
            raise ValueError(f"mask bar: {len(images)} image indices for {len(pairs)} triples")
        grouped: dict[int, list[float]] = {i: [] for i in range(max(images, default=-1) + 1)}
        for index, values in zip(images, ious, strict=True):
            grouped[index] += values
        per_image = tuple(_result(bar, grouped[i]) for i in sorted(grouped))
    flat = [iou for values in ious for iou in values]
    return _result(bar, flat, per_image)


def _result(
    bar: MaskBar, ious: Sequence[float], images: tuple[MaskBarResult, ...] = ()
) -> MaskBarResult:
    if not ious:
        return MaskBarResult(bar, 0.0, 0.0, 0, images)
    return MaskBarResult(bar, float(np.mean(ious)), float(np.min(ious)), len(ious), images)

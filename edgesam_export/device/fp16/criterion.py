"""The fp16 criterion, its constants, and the calibration inputs: shared by both reports.

See the package docstring for what each flag means and why underflow is reported, not pinned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14  # ~6.1e-5: smaller magnitudes lose bits (subnormal)
FP16_MIN_SUBNORMAL = 2.0**-24  # below half of this a value flushes to zero
# A tensor whose range comes within this factor of 65504 on the calibration inputs is near
# overflow (pinned): other inputs move activations, and x*x or sums of them overflow first.
HEADROOM = 4.0
# A value "matters" when it is at least this share of its tensor's peak in that call.
SIGNIFICANT = 1e-3
# Share of a tensor's values that matter yet sit below FP16_MIN_NORMAL that marks underflow.
UNDERFLOW_SHARE = 1e-3
# Accumulated relative error (max |fp16 - fp32| / max |fp32|) that marks a layer as losing
# precision: calibrated EdgeSAM stays below 2.5e-2 over its ~340 layers (docs/tensorrt.md).
PRECISION_LOSS_REL = 5e-2


@dataclass
class TensorRange:
    """What one tensor (an ONNX node's output, a MIL op's value) held over the recorded calls.

    `lost`: values that matter (>= SIGNIFICANT of that call's peak) below FP16_MIN_NORMAL;
    `flushed`: nonzero values below half the smallest subnormal (they become 0 in fp16).
    """

    op_type: str
    name: str
    max_abs: float = 0.0
    min_nonzero_abs: float = math.inf
    lost: int = 0
    flushed: int = 0
    count: int = 0

    def update(self, x: np.ndarray) -> None:
        """Add one call's values (numpy: the MIL executor records this way)."""
        finite = np.isfinite(x)
        a = np.abs(np.where(finite, x, 0)).astype(np.float32)
        peak = float(a.max()) if a.size else 0.0
        nz = a[a > 0]
        self.add(
            peak if finite.all() else math.inf,
            int(((nz >= SIGNIFICANT * peak) & (nz < FP16_MIN_NORMAL)).sum()),
            int((nz < FP16_MIN_SUBNORMAL / 2).sum()),
            int(x.size),
            float(nz.min()) if nz.size else math.inf,
        )

    def add(self, peak: float, lost: int, flushed: int, count: int, min_nonzero: float) -> None:
        """Add one call's counts (the ONNX report computes them inside the graph)."""
        self.max_abs = max(self.max_abs, peak)
        self.lost += lost
        self.flushed += flushed
        self.count += count
        self.min_nonzero_abs = min(self.min_nonzero_abs, min_nonzero)

    @property
    def lost_share(self) -> float:
        return self.lost / self.count if self.count else 0.0

    @property
    def flushed_share(self) -> float:
        return self.flushed / self.count if self.count else 0.0


@dataclass(frozen=True)
class Verdict:
    overflow: bool  # range above 65504: inf in fp16
    near_overflow: bool  # within HEADROOM of 65504, measured or by the static sum bound
    underflow: bool  # at least UNDERFLOW_SHARE of the values matter and are subnormal

    @property
    def unsafe(self) -> bool:
        return self.near_overflow or self.underflow


def classify(r: TensorRange, bound: float = 0.0) -> Verdict:
    """The one fp16 criterion (module docstring); `bound`: a static worst case of the range."""
    return Verdict(
        overflow=r.max_abs > FP16_MAX,
        near_overflow=max(r.max_abs, bound) > FP16_MAX / HEADROOM,
        underflow=r.lost_share >= UNDERFLOW_SHARE,
    )


def criterion() -> dict[str, float]:
    """The constants of the criterion, recorded in every report."""
    return {
        "fp16_max": FP16_MAX,
        "headroom": HEADROOM,
        "significant": SIGNIFICANT,
        "underflow_share": UNDERFLOW_SHARE,
    }


# Calibration prompts, for both callers: a click, points with a negative, a box, a point with a
# box, 16 random points and a batch of boxes (B > 1; skipped where a decoder refuses it).
CALIBRATION_CASES = (
    "1 positive point",
    "2 positive + 1 negative",
    "box",
    "point + box",
    "16 random points",
    "batch of 3 boxes",
)


def calibration_inputs(meta: Mapping[str, str]) -> tuple[np.ndarray, list[Any]]:
    """The encoder input and decoder prompt cases for a graph with metadata `meta`.

    The parity test image preprocessed with the model's own recorded preprocessing and prompt
    frame (EfficientViT-SAM-L: 512 input, /255 normalisation, prompts in the 1024 frame);
    graphs without img_size: EdgeSAM's.
    """
    from edgesam_export.device import processing as P
    from edgesam_export.device.parity import make_test_image, prompt_cases

    params = P.Preprocessing.from_metadata({"img_size": "1024", **meta})
    tensor, info = P.preprocess(make_test_image(), params=params)
    cases = [c for c in prompt_cases(params.frame, info.input_size) if c.name in CALIBRATION_CASES]
    return tensor, cases

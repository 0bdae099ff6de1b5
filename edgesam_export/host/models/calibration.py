"""Calibrated synthetic weights: fixture-rule weights whose activations stay near unit scale.

The synthetic-weight rule draws BatchNorm statistics that do not match the activations they
normalise, so EdgeSAM's residual stream grows to ~4e7 and no fp16 (or int8) artifact can be
checked against it. Trained networks do not do that. Calibration re-estimates every BatchNorm's
running mean and variance from the activations it actually sees on a fixed calibration image (in
float64, one pass, layers in execution order), which is what a trained network's statistics
are: per-channel moments of real activations. Everything else keeps the fixture rule's values.
The result is deterministic (seed + rule + fixed image) and labelled `synthetic-calibrated`.
"""

from __future__ import annotations

import copy
from typing import cast

import numpy as np
import torch
from torch import nn

from edgesam_export.device import processing as P
from edgesam_export.device.models import ModelSpec
from edgesam_export.device.parity import make_test_image
from edgesam_export.host.models.sam_heads import SamModel


def calibration_input(spec: ModelSpec) -> torch.Tensor:
    """The preprocessed calibration image (the parity test image, a different noise seed)."""
    tensor, _ = P.preprocess(make_test_image(seed=11), params=spec.preprocessing)
    return torch.from_numpy(tensor)


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, spec: ModelSpec | None, inputs: torch.Tensor | None = None
) -> int:
    """Set every BatchNorm's running statistics to its input's moments; returns how many.

    Works in float64 on a copy so the float32 statistics written back do not depend on thread
    counts or summation order. `inputs` replaces the spec's calibration image for families whose
    preprocessing the spec does not describe (EdgeTAM's video frames).
    """
    encoder = cast(nn.Module, model.image_encoder)
    encoder64 = copy.deepcopy(encoder).double()
    norms64 = [m for m in encoder64.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms64:
        return 0
    for bn in norms64:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly its moments
        bn.train()
    if inputs is None:
        assert spec is not None, "calibrate_batchnorm needs a spec or inputs"
        inputs = calibration_input(spec)
    encoder64(inputs.double())
    norms32 = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn32, bn64 in zip(norms32, norms64, strict=True):
        assert bn32.running_mean is not None and bn32.running_var is not None
        assert bn64.running_mean is not None and bn64.running_var is not None
        bn32.running_mean.copy_(bn64.running_mean.float())
        bn32.running_var.copy_(bn64.running_var.float())
    model.eval()
    return len(norms32)


def activation_peak(model: SamModel, spec: ModelSpec) -> float:
    """max |activation| over every encoder module output on the calibration image (float32)."""
    peak = np.float64(0.0)

    def hook(_: nn.Module, __: object, out: object) -> None:
        nonlocal peak
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            peak = max(peak, float(out.detach().abs().max()))

    handles = [m.register_forward_hook(hook) for m in model.image_encoder.modules()]
    try:
        with torch.no_grad():
            model.image_encoder(calibration_input(spec))
    finally:
        for h in handles:
            h.remove()
    return float(peak)

"""fp16 safety, one analysis for every backend: which tensors leave fp16's range on real inputs.

One set of constants and one criterion (`TensorRange`, `classify`) serve two callers:

- ONNX graphs (`trt-check --fp16`, the safety pins of the fp16 ONNX export and TensorRT
  engines): fp16 is emulated on onnxruntime's fp32 kernels. Every float tensor a node produces is
  rounded to fp16 by a Cast(float16) -> Cast(float) pair inserted after it; float weights and
  float network inputs are rounded the same way, so each operator computes in fp32 from
  fp16-representable inputs and its result is rounded before any consumer sees it, which is
  what an fp16 engine does between its layers (TensorRT's fp16 kernels accumulate in fp32 too).
  A value above 65504 becomes inf at the first Cast, as on the device. Layers pinned to fp32
  keep unrounded weights and outputs. Graph optimisations are off so that onnxruntime cannot
  fold the Cast pairs away (tested). `fp16_report` runs the fp32 graph and its emulated twin
  side by side and adds the accumulated error per layer and end to end, with and without pins.
- CoreML packages (`coreml --fp16-report`): the MIL executor records every op's float values
  before the op's own rounding (`coreml_fp16_report`), so an fp32 package shows what an fp16
  conversion would meet and an fp16 package where it already saturates.

The criterion, per tensor over the calibration inputs: *overflow* when |v| > 65504 (inf on a
device); *near overflow* when |v| (or, for ReduceSum, the static bound count x max |input|)
comes within `HEADROOM` of it, since other inputs move activations; *underflow* when at least
`UNDERFLOW_SHARE` of its values matter (>= `SIGNIFICANT` of that call's peak) yet fall below
fp16's smallest normal, where fp16 keeps few or no bits. A tensor is fp16-unsafe when it is near
overflow or underflows. Near-overflow layers are what `--fp32-layers auto` pins (the remedy for
inf); underflow is reported, not pinned: the calibrated EdgeSAM decoder's attention softmaxes
underflow (9-15 % of 4096 probabilities) yet its fp16 parity holds (docs/coreml.md). Tiny
values next to large ones (a GELU's far tail) flush to zero but change nothing: counted as
`flushed_share` for information only. Device side: numpy, plus onnx/onnxruntime for graphs.
"""

from edgesam_export.device.fp16.coreml import coreml_fp16_report, op_summary
from edgesam_export.device.fp16.criterion import (
    CALIBRATION_CASES,
    FP16_MAX,
    FP16_MIN_NORMAL,
    FP16_MIN_SUBNORMAL,
    HEADROOM,
    PRECISION_LOSS_REL,
    SIGNIFICANT,
    UNDERFLOW_SHARE,
    TensorRange,
    Verdict,
    calibration_inputs,
    classify,
)
from edgesam_export.device.fp16.emulation import (
    Fp16Report,
    LayerStats,
    calibration_feeds,
    emulated_model,
    fp16_report,
    node_name,
    run_emulated,
)

__all__ = [
    "CALIBRATION_CASES",
    "FP16_MAX",
    "FP16_MIN_NORMAL",
    "FP16_MIN_SUBNORMAL",
    "HEADROOM",
    "PRECISION_LOSS_REL",
    "SIGNIFICANT",
    "UNDERFLOW_SHARE",
    "Fp16Report",
    "LayerStats",
    "TensorRange",
    "Verdict",
    "calibration_feeds",
    "calibration_inputs",
    "classify",
    "coreml_fp16_report",
    "emulated_model",
    "fp16_report",
    "node_name",
    "op_summary",
    "run_emulated",
]

"""ExecuTorch encoder with dynamically quantized activations: speed against the mask bar.

An experiment, not a product mode. `executorch --precision int8` quantizes activations
statically (PT2E, scales fixed by calibration), and EdgeSAM's int8 encoder misses the int8
mask bar by far (end to end 0.66 / 0.44, docs/executorch.md). XNNPACK also runs convolutions
and linears with activations quantized per call (the XNNPACK quantizer's
`is_dynamic=True` config: int8 per-channel weights, activation scales chosen at run time).
This script exports the calibrated synthetic EdgeSAM encoder three ways through the one
ExecuTorch target (fp32; static int8 as shipped; dynamic int8, by swapping the target's PT2E
step for the dynamic config), judges each int8 encoder behind PyTorch's decoder with the
held-out mask bar (`heldout_mask_bar`: 3 held-out images, 30 prompt sets, bar 0.97 / 0.90),
and times the three programs in interleaved rounds (2 threads, median of each block, paired
ratios fp32 / int8 with a bootstrap interval).

    python benchmarks/measure_executorch_dynamic_int8.py [--rounds 12]

Writes `results/executorch_dynamic_int8.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
from bench_executorch import feeds_for, interleaved

SIDES = ("executorch_fp32", "executorch_int8_static", "executorch_int8_dynamic")


def _dynamic_quantize(exported: Any, calibration: list[Any]) -> Any:
    """The target's PT2E step with the XNNPACK quantizer's dynamic-activation config (one
    calibration call: dynamic scales are not calibrated, the call only traces)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    prepared = prepare_pt2e(exported.module(), XNNPACKQuantizer().set_global(config))
    with torch.no_grad():
        prepared(*calibration[0])
    return convert_pt2e(prepared)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgesam_export.device.backends import open_session
    from edgesam_export.host.config import ExecuTorchOptions
    from edgesam_export.host.models import load_model
    from edgesam_export.host.targets import executorch as et
    from edgesam_export.host.targets import get_target

    torch.set_num_threads(_common.THREADS)
    loaded = load_model(None, synthetic="calibrated")
    target = get_target("executorch")
    static_quantize = et._quantize
    with tempfile.TemporaryDirectory() as tmp:
        paths, export_s = {}, {}
        for side, precision in zip(SIDES, ("fp32", "int8", "int8"), strict=True):
            et._quantize = _dynamic_quantize if side.endswith("dynamic") else static_quantize
            options = ExecuTorchOptions(
                graphs=("encoder",), precision=precision, output=Path(tmp) / side
            )
            t0 = time.perf_counter()
            try:
                paths[side] = target.export(loaded, "encoder", options).path
            finally:
                et._quantize = static_quantize
            export_s[side] = time.perf_counter() - t0
            _common.log(f"{side}: exported in {export_s[side]:.0f} s")
        sessions = {s: open_session(p, threads=_common.THREADS) for s, p in paths.items()}
        accuracy = {}
        for side in SIDES[1:]:
            result = et.heldout_mask_bar(loaded, encoder=sessions[side])
            accuracy[side] = {
                "mean_iou": result.mean_iou,
                "worst_iou": result.worst_iou,
                "masks": result.count,
                "passed": result.passed,
                "bar": f"{result.bar.mean_iou:g} / {result.bar.worst_iou:g}",
            }
            _common.log(f"{side}: mask IoU {result.mean_iou:.4f} / {result.worst_iou:.4f}")
        feeds = feeds_for(loaded, "encoder")
        monitor = _common.CpuMonitor()
        load_before = os.getloadavg()
        samples = interleaved(sessions, feeds, args.rounds, args.block)
        machine = _common.machine_block(load_before, monitor)
        speed = {}
        for side in SIDES[1:]:
            ratio, lo, hi = _common.paired_ratio_ci(samples[SIDES[0]], samples[side])
            speed[side] = {"ratio": ratio, "ci95": [lo, hi]}
        sizes = {s: p.stat().st_size for s, p in paths.items()}
    return {
        "date": _common.now_utc(),
        "machine": machine,
        "settings": {"threads": _common.THREADS, "rounds": args.rounds, "block": args.block},
        "export_s": export_s,
        "sizes_bytes": sizes,
        "median_ms": {s: float(np.median(v)) for s, v in samples.items()},
        "samples_ms": samples,
        "speedup_over_fp32": speed,
        "accuracy": accuracy,
    }


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    rows = []
    for side in SIDES:
        acc = result["accuracy"].get(side)
        speed = result["speedup_over_fp32"].get(side)
        rows.append(
            [
                side,
                f"{result['sizes_bytes'][side] / 1e6:.1f} MB",
                f"{result['median_ms'][side]:.1f}",
                f"{speed['ratio']:.2f} ({speed['ci95'][0]:.2f}-{speed['ci95'][1]:.2f})"
                if speed
                else "1",
                f"{acc['mean_iou']:.4f} / {acc['worst_iou']:.4f}" if acc else "(reference side)",
                ("met" if acc["passed"] else "missed") if acc else "",
            ]
        )
    return "\n".join(
        [
            "# ExecuTorch encoder: static vs dynamic int8 activations (issue 18, experiment)",
            "",
            f"- date: {result['date']}; {m['platform']}, {m['cores']} cores,"
            f" {_common.THREADS} threads",
            f"- load average before/after: {m['loadavg_before'][0]:.1f} /"
            f" {m['loadavg_after'][0]:.1f}; other processes used"
            f" {m.get('others_share', float('nan')):.0%} of the CPU",
            f"- {result['settings']['rounds']} interleaved rounds of"
            f" {result['settings']['block']} calls per side; mask bar: the int8 encoder behind"
            " PyTorch's decoder, 3 held-out images, against fp32 PyTorch",
            "",
            _common.md_table(
                ["program", "size", "median ms", "fp32 / this (95% CI)", "mask IoU", "bar"],
                rows,
            ),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved timed rounds")
    parser.add_argument("--block", type=int, default=3, help="calls per side per round")
    ns = parser.parse_args()
    raise SystemExit(_common.main("executorch_dynamic_int8", lambda: run(ns), render))

"""The ExecuTorch int8 encoder's frontier: speed against the mask bar per number of float blocks.

`executorch --precision int8` quantizes the encoder's activations per call (PT2E, the XNNPACK
quantizer's dynamic config: scales chosen at run time, per-channel int8 weights) and keeps float
the fewest blocks that meet the mask bar on the calibration images (the search of
`host/quantize/pt2e.py`), then judges the program on the held-out images. This script exports
the calibrated synthetic EdgeSAM encoder through the one ExecuTorch target twice (fp32, and
int8 with its search), then lowers more points of the same ranking (`Int8Plan`): calibrated
static activations (the decoder's method), per-call activations with no block float, and with
the `--float` counts given, beside the searched program. Each is judged behind PyTorch's decoder
with the held-out mask bar (`heldout_mask_bar`: 3 held-out images, 30 prompt sets, bar 0.97 /
0.90) and timed against fp32 in interleaved rounds (2 threads, median of each block, paired
ratios fp32 / int8 with a bootstrap interval).

    python benchmarks/measure_executorch_dynamic_int8.py [--rounds 12] [--float 6,12]

Writes `results/executorch_dynamic_int8.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
from bench_executorch import feeds_for, interleaved

FP32 = "fp32"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgesam_export.device.backends import open_session
    from edgesam_export.host.config import ExecuTorchOptions
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize.data import calibration_inputs, heldout_images
    from edgesam_export.host.quantize.heldout import HELDOUT_IMAGES, heldout_mask_bar
    from edgesam_export.host.quantize.pt2e import Int8Plan, calibration_args
    from edgesam_export.host.quantize.search import rank
    from edgesam_export.host.targets import executorch as et
    from edgesam_export.host.targets import get_target

    torch.set_num_threads(_common.THREADS)
    loaded = load_model(None, synthetic="calibrated")
    target = get_target("executorch")
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        export_s: dict[str, float] = {}
        for side, precision in ((FP32, "fp32"), ("searched", "int8")):
            options = ExecuTorchOptions(
                graphs=("encoder",), precision=precision, output=Path(tmp) / side
            )
            t0 = time.perf_counter()
            paths[side] = target.export(loaded, "encoder", options).path
            export_s[side] = time.perf_counter() - t0
            _common.log(f"{side}: exported in {export_s[side]:.0f} s")
        meta = json.loads(paths["searched"].with_name(paths["searched"].name + ".json").read_text())
        report = json.loads(meta["metadata"]["int8.report"])
        ranking = rank(report["sensitivity"])
        chosen = len(report["float_blocks"])
        module, example = et.program_graph(loaded, "encoder", False)
        options = ExecuTorchOptions(graphs=("encoder",), precision="int8")
        images = calibration_inputs(
            None,
            options.calibration_images,
            loaded.spec.preprocessing,
            heldout_images(HELDOUT_IMAGES),
        )
        calibration = calibration_args("encoder", images, [], None)
        traced = et.traced_program(module, example, None)
        plans = {"static": Int8Plan()}
        plans |= {f"float {k}": Int8Plan(True, tuple(ranking[:k])) for k in (0, *args.floats)}
        for side, plan in plans.items():
            t0 = time.perf_counter()
            exported = et.exported_program(module, example, None, calibration, plan, traced)
            program = et.lower(exported)
            paths[side] = Path(tmp) / f"{side.replace(' ', '_')}.pte"
            paths[side].write_bytes(program)
            paths[side].with_name(paths[side].name + ".json").write_bytes(
                paths["searched"].with_name(paths["searched"].name + ".json").read_bytes()
            )  # the sidecar the session reads (same I/O)
            export_s[side] = time.perf_counter() - t0
            _common.log(f"{side}: lowered in {export_s[side]:.0f} s")
        sessions = {s: open_session(p, threads=_common.THREADS) for s, p in paths.items()}
        accuracy = {}
        for side in paths:
            if side == FP32:
                continue
            result = heldout_mask_bar(loaded, encoder=sessions[side])
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
        for side in paths:
            if side != FP32:
                ratio, lo, hi = _common.paired_ratio_ci(samples[FP32], samples[side])
                speed[side] = {"ratio": ratio, "ci95": [lo, hi]}
        sizes = {s: p.stat().st_size for s, p in paths.items()}
    return {
        "date": _common.now_utc(),
        "machine": machine,
        "settings": {"threads": _common.THREADS, "rounds": args.rounds, "block": args.block},
        "search": {
            "float_blocks": report["float_blocks"],
            "chosen": chosen,
            "ranking": ranking,
            "frontier": report["frontier"],
            "heldout": report["heldout"],
        },
        "export_s": export_s,
        "sizes_bytes": sizes,
        "median_ms": {s: float(np.median(v)) for s, v in samples.items()},
        "samples_ms": samples,
        "speedup_over_fp32": speed,
        "accuracy": accuracy,
    }


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    search = result["search"]
    rows = []
    for side in result["median_ms"]:
        acc = result["accuracy"].get(side)
        speed = result["speedup_over_fp32"].get(side)
        name = f"searched ({search['chosen']} float)" if side == "searched" else side
        rows.append(
            [
                name,
                f"{result['sizes_bytes'][side] / 1e6:.1f} MB",
                f"{result['median_ms'][side]:.1f}",
                f"{speed['ratio']:.2f} ({speed['ci95'][0]:.2f}-{speed['ci95'][1]:.2f})"
                if speed
                else "1",
                f"{acc['mean_iou']:.4f} / {acc['worst_iou']:.4f}" if acc else "(reference side)",
                ("met" if acc["passed"] else "missed") if acc else "",
            ]
        )
    walked = [
        [str(len(p["float_blocks"])), f"{p['mean_iou']:.4f} / {p['worst_iou']:.4f}",
         "meets" if p["passed"] else "misses"]
        for p in search["frontier"]
    ]  # fmt: skip
    return "\n".join(
        [
            "# ExecuTorch int8 encoder: the float-block frontier (issue 18)",
            "",
            f"- date: {result['date']}; {m['platform']}, {m['cores']} cores,"
            f" {_common.THREADS} threads",
            f"- load average before/after: {m['loadavg_before'][0]:.1f} /"
            f" {m['loadavg_after'][0]:.1f}; other processes used"
            f" {m.get('others_share', float('nan')):.0%} of the CPU",
            f"- {result['settings']['rounds']} interleaved rounds of"
            f" {result['settings']['block']} calls per side; mask bar: the int8 encoder behind"
            " PyTorch's decoder, 3 held-out images, against fp32 PyTorch",
            "- `static`: calibrated int8 activations (the decoder's method); `float k`: per-call"
            " int8 activations with the k most sensitive blocks of the search's ranking float;"
            " `searched`: the program `executorch --precision int8` writes",
            "",
            _common.md_table(
                ["program", "size", "median ms", "fp32 / this (95% CI)", "held-out IoU", "bar"],
                rows,
            ),
            "",
            "The search's walk on the 8 calibration images (its selection set; bar 0.97 / 0.90):",
            "",
            _common.md_table(["float blocks", "mean / worst IoU", "bar"], walked),
            "",
            f"Float blocks of the searched program: {', '.join(search['float_blocks'])}.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved timed rounds")
    parser.add_argument("--block", type=int, default=3, help="calls per side per round")
    parser.add_argument(
        "--float",
        dest="floats",
        type=lambda s: [int(k) for k in s.split(",") if k],
        default=[6, 12],
        help="more float-block counts to lower and time (comma-separated)",
    )
    ns = parser.parse_args()
    raise SystemExit(_common.main("executorch_dynamic_int8", lambda: run(ns), render))

"""edgesam-bench's precision columns: EdgeSAM on onnxruntime at fp32, fp16 and int8, speed and
end-to-end mask IoU side by side (issue 17 deliverable 4).

Run from the repository root:  python benchmarks/bench_precisions.py [--iters N]
[--accuracy-target miou=X,worst=Y] [--folder DIR]   (defaults 10 and miou=0,worst=0; `--iters 2`
checks it runs; `--folder` times graphs exported earlier instead of exporting them)

Exports the calibrated synthetic EdgeSAM (seed 0) three times through the one export path into
one folder: fp32 (with the reference outputs), `--precision fp16`, and `--quantize int8
--accuracy-target T` (default miou=0,worst=0: every block int8, no block search, bounded time;
the default bar keeps most of the synthetic encoder float, docs/quantize.md). Then runs exactly
`edgesam-bench --backend onnx DIR --precision fp32,fp16,int8` as a library call, without the
PyTorch columns (the device-side run: judged against the shipped reference outputs), and writes
results/precisions.{json,md}: per column the artifacts' size, encoder / decoder / click p50 (the
columns timed round-robin in one process, 2 threads), the end-to-end mask IoU (mean, worst) and
the parity verdict, with the machine, its load before and after, and the CPU share of others.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/onnxruntime load

from edgesam_export.device.bench import CLICK_STAGE
from edgesam_export.device.benchmark import BenchSettings, run_bench
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.pipeline import export_artifacts

NAME = "precisions"
PRECISIONS = ("fp32", "fp16", "int8")
STAGES = ("encoder", "decoder N=1", CLICK_STAGE)


def export_all(root: Path, accuracy_target: str) -> Path:
    """fp32 (with the reference outputs), fp16 and int8 graphs of the same weights in one
    folder, each through the one export path."""
    model = ModelOptions(synthetic="calibrated")
    extra: dict[str, dict[str, Any]] = {
        "fp32": {},
        "fp16": {"precision": "fp16"},
        "int8": {"quantize": "int8", "accuracy_target": accuracy_target},
    }
    for precision in PRECISIONS:
        _common.log(f"exporting the {precision} graphs")
        options = OnnxOptions(output=root / precision, **extra[precision])
        export_artifacts(model, "onnx", options, _common.log)
    for precision in PRECISIONS[1:]:
        for graph in (root / precision).glob("*.onnx"):
            graph.rename(root / "fp32" / graph.name)
    return root / "fp32"


def run(iters: int, accuracy_target: str, folder: Path | None) -> dict[str, Any]:
    monitor = _common.CpuMonitor()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            folder = export_all(Path(tmp), accuracy_target)
            source = f"exported by this run, int8 with --accuracy-target {accuracy_target}"
        else:
            source = f"given: {folder}"
        settings = BenchSettings(
            backends=("onnx",),
            label="onnx",
            directory=folder,
            points=(1,),
            box_batch=1,
            iterations=iters,
            precisions=PRECISIONS,
            everything_points=0,
        )
        result = run_bench(settings, folder, _common.log)
        missing = [f"{c.name}: {c.reason}" for c in result.columns if not c.available]
        if missing:  # a results file of empty rows would read like a measurement
            raise SystemExit("bench_precisions: " + "; ".join(missing))
        payload = result.to_json()
    return {
        "name": NAME,
        "date": _common.now_utc(),
        "machine": payload.pop("machine"),
        "loadavg": {"before": list(load_before), "after": list(os.getloadavg())},
        "contention": monitor.result(),
        "command": "edgesam-bench --backend onnx DIR --precision fp32,fp16,int8 --points 1"
        f" --box-batch 1 --everything-points 0 --iters {iters} (as a library call)",
        "artifacts": source,
        "bench": payload,
    }


def render(result: dict[str, Any]) -> str:
    bench = result["bench"]
    load = result["loadavg"]
    p50 = {(t["name"], t["backend"]): t["p50_ms"] for t in bench["timings"]}
    lines = [
        "# precisions: edgesam-bench fp32 / fp16 / int8 columns (onnxruntime, 2 threads)",
        "",
        _common.machine_md(result["machine"], result["date"], result["contention"]),
        f"- load average (1, 5, 15 min): before {', '.join(f'{x:.1f}' for x in load['before'])};"
        f" after {', '.join(f'{x:.1f}' for x in load['after'])}",
        f"- `{result['command']}`; calibrated synthetic EdgeSAM (seed 0); artifacts"
        f" {result['artifacts']}; judged against {bench['reference']}",
        "",
    ]
    rows = []
    for col in bench["backends"]:
        if not col["available"]:
            rows.append([col["name"], "-", "-", "-", "-", "-", "-", col["reason"]])
            continue
        iou = col.get("mask_iou") or {}
        rows.append(
            [
                col["name"],
                f"{col['size_bytes'] / 1e6:.1f}",
                *(f"{p50[(s, col['name'])]:.1f}" for s in STAGES),
                f"{iou['mean']:.4f}" if iou else "-",
                f"{iou['worst']:.4f}" if iou else "-",
                "pass" if col["parity"]["passed"] else "FAIL",
            ]
        )
    heads = ["column", "MB", "encoder p50", "decoder N=1 p50", "click p50", "IoU mean"]
    heads += ["IoU worst", "parity"]
    lines += [_common.md_table(heads, rows, [False] + [True] * 6 + [False]), ""]
    lines.append(
        "ms per call, columns timed round-robin in one process. IoU: end to end (each column's"
        " encoder feeds its decoder) on the parity image and every reference prompt case, the"
        " reference's top-scoring 256x256 mask; parity: tensor errors under each precision's"
        " tolerance row. Timings on a loaded machine are several times an idle machine's."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="timed decoder calls (default 10)")
    parser.add_argument(
        "--accuracy-target",
        default="miou=0,worst=0",
        help="the int8 export's block-search bar (default miou=0,worst=0: every block int8)",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        help="time fp32/fp16/int8 graphs exported earlier into this folder (with the fp32"
        " export's reference outputs) instead of exporting them",
    )
    args = parser.parse_args()
    job = functools.partial(run, args.iters, args.accuracy_target, args.folder)
    raise SystemExit(_common.main(NAME, job, render))

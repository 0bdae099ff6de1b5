"""ExecuTorch fp32 and int8 vs onnxruntime fp32: the same graphs, inputs and 2 threads (issue 18).

One process exports the calibrated synthetic EdgeSAM (`--model`: another family) to ONNX
fp32, ExecuTorch fp32 and ExecuTorch int8 (PT2E, XNNPACK quantizer: the decoder calibrated on
the synthetic calibration set, the encoder with per-call activation scales and its searched
float blocks), then times each graph's three programs in interleaved rounds (the order
rotates each round; per round and side the median of `--block` back-to-back calls, the first
untimed) on one input: the encoder on the parity test image, the decoder on its embeddings
with one 5-point prompt set. Per
round it takes paired ratios (onnxruntime fp32 / ExecuTorch fp32, ExecuTorch fp32 / int8) and
reports their median with a 95 % bootstrap interval. Accuracy beside speed: the int8 mask bar
(end-to-end mask IoU against fp32 PyTorch over the held-out images and prompts).

Targets (issue 18): ExecuTorch fp32 at least as fast as onnxruntime fp32 (ratio >= 1.0); int8
at least 1.5x ExecuTorch fp32, at the mask bar (mean IoU >= 0.97, worst >= 0.90).
Verdict: met (median ratio >= target), tie (the interval reaches the target) or missed.

    python benchmarks/bench_executorch.py                 # encoder + decoder, 30 rounds
    python benchmarks/bench_executorch.py --graphs decoder --rounds 5   # a quick check
    python benchmarks/bench_executorch.py --model mobile_sam   # results/executorch_mobile_sam.*
    python benchmarks/bench_executorch.py --workdir /tmp/et   # keep the programs; a later run
                                      # with the same settings and code reuses them (no export)
    python benchmarks/bench_executorch.py --model efficientvit_sam_l0 --fp32-only
                                      # ExecuTorch fp32 against onnxruntime only (no int8 export)

`--workdir` lets the slow exports (the int8 encoder's calibration and lowering take minutes)
run apart from the timing, e.g. at low priority while the machine is busy, and the timing later
on a quiet machine. Reuse is refused unless `programs.json` there records the same model,
graphs, code and library versions, and every program's sha256 still matches; the report says
when the programs were exported.
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

SIDES = ("onnx_fp32", "executorch_fp32", "executorch_int8")
FP32_SIDES = SIDES[:2]
TARGETS = {  # ratio name -> (numerator side, denominator side, target)
    "onnx_fp32 / executorch_fp32": ("onnx_fp32", "executorch_fp32", 1.0),
    "executorch_fp32 / executorch_int8": ("executorch_fp32", "executorch_int8", 1.5),
}


def verdict(ratio: float, hi: float, target: float) -> str:
    if ratio >= target:
        return "met"
    return "tie" if hi >= target else "missed"


def export_all(
    loaded: Any, graphs: tuple[str, ...], folder: Path, sides: tuple[str, ...] = SIDES
) -> dict[str, dict[str, Path]]:
    """side -> graph -> program path, each exported with the project's one export path."""
    from edgesam_export.host.config import ExecuTorchOptions, OnnxOptions
    from edgesam_export.host.targets import get_target

    options = {
        "onnx_fp32": ("onnx", OnnxOptions(graphs=graphs, output=folder / "onnx")),
        "executorch_fp32": (
            "executorch",
            ExecuTorchOptions(graphs=graphs, output=folder / "et_fp32"),
        ),
        "executorch_int8": (
            "executorch",
            ExecuTorchOptions(graphs=graphs, output=folder / "et_int8", precision="int8"),
        ),
    }
    paths: dict[str, dict[str, Path]] = {}
    for side in sides:
        target, opts = options[side]
        for graph in graphs:
            t0 = time.perf_counter()
            artifact = get_target(target).export(loaded, graph, opts)  # type: ignore[arg-type]
            _common.log(f"{side} {graph}: exported in {time.perf_counter() - t0:.0f} s")
            paths.setdefault(side, {})[graph] = artifact.path
    return paths


def _stamp(loaded: Any, graphs: tuple[str, ...], sides: tuple[str, ...]) -> dict[str, Any]:
    """What must match for exported programs to be reused."""
    import subprocess

    import torch

    def git(*args: str) -> str:
        here = str(Path(__file__).parent)
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True).stdout

    # the code that shapes the programs: the host side (models, graphs, targets, quantization)
    # and the pre-processing of calibration images, as committed; uncommitted edits: no reuse
    parts = ("edgesam_export/host", "edgesam_export/device/processing")
    trees = "+".join(git("rev-parse", f"HEAD:{part}").strip()[:12] for part in parts)
    dirty = git("status", "--porcelain", "--", *parts).strip()
    return {
        "model": loaded.source,
        "graphs": list(graphs),
        "sides": list(sides),
        "code": trees + ("+dirty" if dirty else ""),
        "torch": torch.__version__,
        "executorch": _version("executorch"),
        "onnxruntime": _version("onnxruntime"),
    }


def programs_in(
    loaded: Any, graphs: tuple[str, ...], workdir: Path, sides: tuple[str, ...] = SIDES
) -> tuple[dict, str]:
    """side -> graph -> program path in `workdir`, exported now or reused (see the module doc);
    and when they were exported."""
    import json

    from edgesam_export.device.artifacts import file_sha256

    record = workdir / "programs.json"
    stamp = _stamp(loaded, graphs, sides)
    if record.is_file():
        old = json.loads(record.read_text())
        paths = {s: {g: workdir / p for g, p in v.items()} for s, v in old["paths"].items()}
        fresh = old["stamp"] == stamp and "+dirty" not in stamp["code"]
        intact = all(
            p.is_file() and file_sha256(p) == old["sha256"][s][g]
            for s, v in paths.items()
            for g, p in v.items()
        )
        if fresh and intact:
            _common.log(f"reusing the programs exported {old['exported']} in {workdir}")
            return paths, old["exported"]
        _common.log(f"not reusing {workdir}: settings, code or files differ; exporting again")
    paths = export_all(loaded, graphs, workdir, sides)
    exported = _common.now_utc()
    record.write_text(
        json.dumps(
            {
                "stamp": stamp,
                "exported": exported,
                "paths": {
                    s: {g: str(p.relative_to(workdir)) for g, p in v.items()}
                    for s, v in paths.items()
                },
                "sha256": {s: {g: file_sha256(p) for g, p in v.items()} for s, v in paths.items()},
            },
            indent=1,
        )
    )
    return paths, exported


def feeds_for(loaded: Any, graph: str) -> dict[str, np.ndarray]:
    """The parity test image (encoder) or its PyTorch embeddings and a 5-point set (decoder)."""
    from edgesam_export.device import processing as P
    from edgesam_export.device.parity import make_test_image
    from edgesam_export.host.reference import torch_sessions

    tensor, _ = P.preprocess(make_test_image(), params=loaded.spec.preprocessing)
    if graph == "encoder":
        return {"image": tensor}
    encoder, _ = torch_sessions(loaded, optimized=True)  # the exported graph, as a session
    embeddings = encoder.run({"image": tensor})["image_embeddings"]
    rng = np.random.default_rng(5)
    frame = loaded.spec.frame
    return {
        "image_embeddings": embeddings,
        "point_coords": (rng.random((1, 5, 2)) * frame * 0.6).astype(np.float32),
        "point_labels": np.array([[1, 1, 0, 1, 0]], np.float32),
    }


def interleaved(
    sessions: dict[str, Any], feeds: dict[str, np.ndarray], rounds: int, block: int
) -> dict[str, list[float]]:
    """Per round and side, the median of `block` back-to-back calls (the first of a block of
    more than one is not timed: it follows another runtime's call); the side order rotates each
    round. block 1 alternates single calls, which penalises whichever runtime follows
    onnxruntime: its worker threads keep spinning for a while after a call, on the same 2
    cores."""
    for s in sessions.values():  # warm-up: first calls allocate and pack weights
        s.run(feeds)
        s.run(feeds)
    samples: dict[str, list[float]] = {s: [] for s in sessions}
    order = list(sessions)
    for r in range(rounds):
        for side in order[r % len(order) :] + order[: r % len(order)]:
            times = []
            for i in range(block + (block > 1)):
                t0 = time.perf_counter()
                sessions[side].run(feeds)
                if i or block == 1:
                    times.append(1000 * (time.perf_counter() - t0))
            samples[side].append(float(np.median(times)))
    return samples


def time_graph(
    sessions: dict[str, Any], feeds: dict[str, np.ndarray], rounds: int, block: int
) -> dict:
    samples = interleaved(sessions, feeds, rounds, block)
    ratios = {}
    for name, (num, den, target) in TARGETS.items():
        if num not in samples or den not in samples:  # --fp32-only: no int8 side
            continue
        ratio, lo, hi = _common.paired_ratio_ci(samples[num], samples[den])
        ratios[name] = {
            "ratio": ratio,
            "ci95": [lo, hi],
            "target": target,
            "verdict": verdict(ratio, hi, target),
        }
    return {
        "median_ms": {side: float(np.median(v)) for side, v in samples.items()},
        "samples_ms": samples,
        "ratios": ratios,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgesam_export.device.backends import open_session
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize.heldout import heldout_mask_bar

    torch.set_num_threads(_common.THREADS)
    graphs = tuple(args.graphs.split(","))
    sides = FP32_SIDES if args.fp32_only else SIDES
    loaded = load_model(None, model=args.model, synthetic="calibrated")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        paths, exported = programs_in(loaded, graphs, workdir, sides)
        if args.export_only:
            raise SystemExit(0)
        monitor = _common.CpuMonitor()  # the timing and accuracy phase, not the exports
        load_before = os.getloadavg()
        sizes = {side: {g: p.stat().st_size for g, p in v.items()} for side, v in paths.items()}
        sessions = {
            side: {g: open_session(p, threads=_common.THREADS) for g, p in v.items()}
            for side, v in paths.items()
        }
        timing = {}
        for graph in graphs:
            _common.log(
                f"timing the {graph}: {args.rounds} interleaved rounds of {args.block} call(s)"
                " per side"
            )
            feeds = feeds_for(loaded, graph)
            timing[graph] = time_graph(
                {s: sessions[s][graph] for s in sides}, feeds, args.rounds, args.block
            )
        accuracy = {}
        for side in sides:
            _common.log(f"{side}: mask IoU on {args.heldout} held-out images")
            result = heldout_mask_bar(
                loaded,
                encoder=sessions[side].get("encoder"),
                decoder=sessions[side].get("decoder"),
                images=args.heldout,
            )
            accuracy[side] = result.to_json()
    return {
        "date": _common.now_utc(),
        "machine": _common.machine_block(load_before, monitor),
        "versions": {"torch": torch.__version__, "executorch": _version("executorch")},
        "settings": {
            "threads": _common.THREADS,
            "rounds": args.rounds,
            "calls_per_block": args.block,
            "graphs": graphs,
            "model": f"{args.model}, synthetic-calibrated",
            "sides": list(sides),
            "programs_exported": exported,
        },
        "sizes_bytes": sizes,
        "timing": timing,
        "accuracy": accuracy,
    }


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


_SHORT = {"onnx_fp32": "ort fp32", "executorch_fp32": "ET fp32", "executorch_int8": "ET int8"}


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# ExecuTorch vs onnxruntime (issue 18): {result['settings']['model']}",
        "",
        f"- date: {result['date']}; {m['platform']}, {m['cores']} cores, {_common.THREADS} threads",
        f"- load average before/after: {m['loadavg_before'][0]:.1f} / {m['loadavg_after'][0]:.1f};"
        f" other processes used {m.get('others_share', float('nan')):.0%} of the CPU",
        f"- torch {result['versions']['torch']}, executorch {result['versions']['executorch']};"
        f" {result['settings']['rounds']} interleaved rounds of"
        f" {result['settings'].get('calls_per_block', 1)} call(s) per side (the median of"
        " each block; its first call untimed); programs exported"
        f" {result['settings'].get('programs_exported', result['date'])}",
        "",
    ]
    sides = result["settings"].get("sides", SIDES)
    rows = []
    for graph, t in result["timing"].items():
        ms = t["median_ms"]
        for name, r in t["ratios"].items():
            rows.append(
                [
                    graph,
                    " / ".join(f"{ms[side]:.1f}" for side in sides),
                    name,
                    f"{r['ratio']:.2f} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})",
                    f">= {r['target']:g}",
                    r["verdict"],
                ]
            )
    lines.append(
        _common.md_table(
            [
                "graph",
                "median ms (" + " / ".join(_SHORT[s] for s in sides) + ")",
                "ratio",
                "median (95% CI)",
                "target",
                "verdict",
            ],
            rows,
        )
    )
    lines += ["", "Accuracy (end-to-end mask IoU vs fp32 PyTorch, held-out images):", ""]
    acc_rows = [
        [
            side,
            f"{a['mean_iou']:.4f}",
            f"{a['worst_iou']:.4f}",
            str(a["masks"]),
            "met" if a["passed"] else "missed",
            " / ".join(f"{g} {b / 1e6:.1f} MB" for g, b in result["sizes_bytes"][side].items()),
        ]
        for side, a in result["accuracy"].items()
    ]
    lines.append(
        _common.md_table(
            ["program", "mean IoU", "worst IoU", "masks", "bar 0.97/0.90", "size"], acc_rows
        )
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edge_sam", help="registered family (results name)")
    parser.add_argument("--graphs", default="encoder,decoder", help="encoder,decoder or one")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timed rounds")
    parser.add_argument(
        "--block", type=int, default=5, help="back-to-back calls per side per round (1: alternate)"
    )
    parser.add_argument("--heldout", type=int, default=3, help="held-out images for mask IoU")
    parser.add_argument("--workdir", help="keep the exported programs here and reuse them")
    parser.add_argument(
        "--export-only", action="store_true", help="with --workdir: export, then stop"
    )
    parser.add_argument(
        "--fp32-only",
        action="store_true",
        help="ExecuTorch fp32 against onnxruntime fp32 only (no int8 export or search)",
    )
    ns = parser.parse_args()
    name = "executorch" if ns.model == "edge_sam" else f"executorch_{ns.model}"
    name += "_fp32" if ns.fp32_only else ""
    raise SystemExit(_common.main(name, lambda: run(ns), render))

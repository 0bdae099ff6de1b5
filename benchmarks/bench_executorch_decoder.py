"""ExecuTorch fp32 decoder vs onnxruntime fp32 decoder, paired and interleaved, with its profile.

One process exports the calibrated synthetic EdgeSAM decoder to ONNX fp32 and ExecuTorch fp32
(the project's one export path, so the graph rewrites of `host/targets/executorch_rewrites.py`
are in), then times both on the same input as `bench_executorch.py` (the parity test image's
PyTorch embeddings and one 5-point prompt set), 2 threads each, in interleaved rounds whose
order alternates. Reports the median of the per-round ratios onnxruntime / ExecuTorch with a
95 % bootstrap interval (target >= 1.0, issue 18), each side's largest difference from PyTorch
on that input, the program size and the load average; and where the ExecuTorch decoder's time
goes: an ETDump profile (`executorch.devtools.Inspector`) of the delegate calls, the XNNPACK
operators inside them and the portable-kernel operators between them, by total time.

    python benchmarks/bench_executorch_decoder.py              # 40 rounds, ~3 min quiet
    python benchmarks/bench_executorch_decoder.py --rounds 5   # a quick check

Writes `results/executorch_decoder.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
from bench_executorch import feeds_for, interleaved, verdict

TARGET = 1.0  # onnxruntime fp32 / ExecuTorch fp32


def profile(pte: Path, feeds: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """Median time per ETDump event name over `runs` calls, summed over the events of that name
    (delegate calls, XNNPACK operators, portable operators)."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    module = _load_for_executorch(str(pte), enable_etdump=True)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    for _ in range(runs):
        module.forward(args)
    dump = pte.with_suffix(".etdp")
    module.write_etdump_result_to_file(str(dump))
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for block in Inspector(etdump_path=str(dump)).event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is not None:
                total[event.name] += float(np.median(event.perf_data.raw))
                count[event.name] += 1
    rows = sorted(total.items(), key=lambda kv: -kv[1])
    # XNNPACK names an operator by its type and its index in the delegate ("... GEMM #3")
    by_type: dict[str, float] = defaultdict(float)
    type_count: dict[str, int] = defaultdict(int)
    for name, ms in total.items():
        kind = re.sub(r" #\d+$", "", name)
        by_type[kind] += ms
        type_count[kind] += count[name]
    return {
        "runs": runs,
        "events_ms": [{"name": k, "count": count[k], "ms": v} for k, v in rows],
        "by_type_ms": [
            {"name": k, "count": type_count[k], "ms": v}
            for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgesam_export.device.backends import open_session
    from edgesam_export.host.config import ExecuTorchOptions, OnnxOptions
    from edgesam_export.host.graphs import DecoderGraph
    from edgesam_export.host.models import load_model
    from edgesam_export.host.targets import get_target

    torch.set_num_threads(_common.THREADS)
    loaded = load_model(None, synthetic="calibrated")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {}
        for side, target, options in (
            ("onnx_fp32", "onnx", OnnxOptions(graphs=("decoder",), output=folder / "onnx")),
            (
                "executorch_fp32",
                "executorch",
                ExecuTorchOptions(graphs=("decoder",), output=folder / "et"),
            ),
        ):
            t0 = time.perf_counter()
            paths[side] = get_target(target).export(loaded, "decoder", options).path  # type: ignore[arg-type]
            _common.log(f"{side}: exported in {time.perf_counter() - t0:.0f} s")
        feeds = feeds_for(loaded, "decoder")
        reference = DecoderGraph(loaded.model, loaded.spec.frame).eval()
        with torch.no_grad():
            ref = [t.numpy() for t in reference(*(torch.from_numpy(v) for v in feeds.values()))]
        monitor = _common.CpuMonitor()
        load_before = os.getloadavg()
        sessions = {s: open_session(p, threads=_common.THREADS) for s, p in paths.items()}
        error = {}
        for side, session in sessions.items():
            out = session.run(feeds)
            error[side] = {
                name: float(np.abs(out[name] - want).max())
                for name, want in zip(("scores", "masks"), ref, strict=True)
            }
        for session in sessions.values():  # warm-up
            session.run(feeds)
        timing = {}
        for mode, block in (("alternating", 1), ("blocks", args.block)):
            _common.log(f"timing, {mode}: {args.rounds} rounds of {block} call(s) per side")
            samples = interleaved(sessions, feeds, args.rounds, block)
            ratio, lo, hi = _common.paired_ratio_ci(
                samples["onnx_fp32"], samples["executorch_fp32"]
            )
            timing[mode] = {
                "calls_per_block": block,
                "median_ms": {s: float(np.median(v)) for s, v in samples.items()},
                "samples_ms": samples,
                "ratio": ratio,
                "ci95": [lo, hi],
                "target": TARGET,
                "verdict": verdict(ratio, hi, TARGET),
            }
        machine = _common.machine_block(load_before, monitor)
        _common.log(f"profiling the ExecuTorch decoder over {args.profile_runs} calls")
        events = profile(paths["executorch_fp32"], feeds, args.profile_runs)
        sizes = {s: p.stat().st_size for s, p in paths.items()}
    return {
        "date": _common.now_utc(),
        "machine": machine,
        "settings": {
            "threads": _common.THREADS,
            "rounds": args.rounds,
            "block": args.block,
            "points": 5,
        },
        "timing": timing,
        "max_abs_vs_pytorch": error,
        "sizes_bytes": sizes,
        "profile": events,
    }


def _events_table(label: str, events: list[dict[str, Any]]) -> str:
    return _common.md_table(
        [label, "count", "ms"], [[e["name"], str(e["count"]), f"{e['ms']:.2f}"] for e in events]
    )


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# ExecuTorch fp32 decoder vs onnxruntime fp32 decoder (issue 18)",
        "",
        f"- date: {result['date']}; {m['platform']}, {m['cores']} cores, {_common.THREADS} threads",
        f"- load average before/after: {m['loadavg_before'][0]:.1f} / {m['loadavg_after'][0]:.1f};"
        f" other processes used {m.get('others_share', float('nan')):.0%} of the CPU",
        f"- {result['settings']['rounds']} interleaved rounds, one 5-point prompt set",
        "",
        _common.md_table(
            ["timing", "ort fp32 ms", "ET fp32 ms", "ort / ET (95% CI)", "target", "verdict"],
            [
                [
                    f"{mode} ({t['calls_per_block']} per side)",
                    f"{t['median_ms']['onnx_fp32']:.1f}",
                    f"{t['median_ms']['executorch_fp32']:.1f}",
                    f"{t['ratio']:.2f} ({t['ci95'][0]:.2f}-{t['ci95'][1]:.2f})",
                    f">= {t['target']:g}",
                    t["verdict"],
                ]
                for mode, t in result["timing"].items()
            ],
        ),
        "",
        _common.md_table(
            ["program", "size", "masks max abs vs PyTorch", "scores max abs"],
            [
                [
                    side,
                    f"{result['sizes_bytes'][side] / 1e6:.1f} MB",
                    f"{e['masks']:.2e}",
                    f"{e['scores']:.2e}",
                ]
                for side, e in result["max_abs_vs_pytorch"].items()
            ],
        ),
        "",
        "Portable operators (OPERATOR_CALL, between delegate calls): "
        + next(
            (
                f"{e['count']} calls, {e['ms']:.2f} ms"
                for e in result["profile"]["events_ms"]
                if e["name"] == "OPERATOR_CALL"
            ),
            "none",
        ),
        "",
        f"ExecuTorch decoder profile (ETDump, median of {result['profile']['runs']} calls,"
        " summed per event name; DELEGATE_CALL holds the XNNPACK operators below it,"
        " OPERATOR_CALL the portable ones), by operator type:",
        "",
        _events_table("operator type", result["profile"]["by_type_ms"][:14]),
        "",
        "and by event name (XNNPACK's names carry the operator's index in its delegate call):",
        "",
        _events_table("event", result["profile"]["events_ms"][:20]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timed rounds")
    parser.add_argument("--block", type=int, default=5, help="calls per side per round")
    parser.add_argument("--profile-runs", type=int, default=10, help="calls under ETDump")
    ns = parser.parse_args()
    raise SystemExit(_common.main("executorch_decoder", lambda: run(ns), render))

"""Plumbing shared by the benchmark scripts: thread pinning, CPU contention, result files, the
header of every result, and the official scripts' plain ONNX export.

Import this module before numpy, torch or onnxruntime: it pins the BLAS/OpenMP pools to
`THREADS` through the environment, which those libraries only read when they load. It owns the
layout of `benchmarks/results/<name>.{json,md}` and the machine header of every report.
"""

from __future__ import annotations

import os
import platform

THREADS = 2  # torch, onnxruntime and numpy's BLAS alike: the benchmark machine has 2 cores
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import datetime  # noqa: E402  (after the environment is set, on purpose)
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
if str(HERE.parent) not in sys.path:  # run from a checkout even when not pip-installed
    sys.path.insert(1, str(HERE.parent))


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def log(message: str) -> None:
    """Progress to stderr, so that stdout holds only the result table."""
    print(f"• {message}", file=sys.stderr, flush=True)


class CpuMonitor:
    """Share of the machine's CPU time that *other* processes used while we measured.

    Linux only (reads /proc/stat); elsewhere `result()` is empty. A large share means the
    timings were taken on a contended machine: multi-threaded runtimes that spin-wait (OpenMP,
    onnxruntime, OpenBLAS) then slow down far more than the share suggests.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        ticks = [int(v) for v in fields[:8]]
        hz = os.sysconf("SC_CLK_TCK")
        idle = ticks[3] + ticks[4]
        times = os.times()
        return sum(ticks) / hz, (sum(ticks) - idle) / hz, times.user + times.system

    def result(self) -> dict[str, float]:
        end = self._snapshot()
        if self._start is None or end is None:
            return {}
        total, busy, own = (e - s for e, s in zip(end, self._start, strict=True))
        if total <= 0:
            return {}
        return {
            "machine_cpu_seconds": round(total, 1),
            "own_share": round(own / total, 3),
            "others_share": round(max(busy - own, 0.0) / total, 3),
        }


def machine_block(load_before: tuple[float, ...], monitor: CpuMonitor) -> dict[str, Any]:
    """The `machine` block of the ExecuTorch benchmarks' results: platform, cores, the load
    average before and now, and the other processes' CPU share since `monitor` started."""
    return {
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        **monitor.result(),
    }


class RunStart:
    """What a benchmark notes when it starts (date, the CPU monitor, the load average), so that
    `header(name)` at its end gives the fields every result JSON begins with: the benchmark's
    name, the date, the machine, the other processes' CPU share and the load before and after."""

    def __init__(self) -> None:
        self.date = now_utc()
        self.monitor = CpuMonitor()
        self.load_before = os.getloadavg()

    def header(self, name: str) -> dict[str, Any]:
        from edgesam_export.device.bench import machine_info

        return {
            "benchmark": name,
            "date": self.date,
            "machine": machine_info(),
            "contention": self.monitor.result(),
            "loadavg_1_5_15": {"before": list(self.load_before), "after": list(os.getloadavg())},
        }


def plain_onnx_export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    dynamic: dict[str, dict[int, str]] | None = None,
    opset: int = 17,
) -> Path:
    """`module` traced the way the official export scripts do it: one `torch.onnx.export`
    (TorchScript exporter, constant folding, no simplifier), warnings silenced, written to
    `path`. The official-style columns of the benchmarks are exported with it."""
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic,
        )
    path.write_bytes(buffer.getvalue())
    return path


def onnxruntime_profile(
    path: Path, feeds: dict[str, Any], runs: int
) -> tuple[list[dict[str, Any]], list[float]]:
    """`runs` calls of a graph on native onnxruntime (THREADS threads, CPU) with its own
    profiler on: the profile's events (Chrome trace: `model_run` per call, `Node` events per
    kernel) and each call's wall ms."""
    import tempfile
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="edgesam-profile-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        wall = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, feeds)
            wall.append((time.perf_counter() - t) * 1000)
        events: list[dict[str, Any]] = json.loads(Path(session.end_profiling()).read_text())
    return events, wall


def md_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub-markdown table; `right` marks right-aligned (numeric) columns."""
    right = right or [False] * len(headers)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if r else str(c).ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else ("-" * (w + 2))
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def machine_md(info: dict[str, Any], date: str, contention: dict[str, float]) -> str:
    """The header every report starts with: where, when, with what, and how busy."""
    v = info.get("versions", {})
    stack = ", ".join(
        f"{k} {v[k]}" for k in ("numpy", "torch", "onnxruntime", "pillow") if v.get(k)
    )
    lines = [
        f"- date: {date}",
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable),"
        f" {info['platform']}",
        f"- Python {info['python']}; {stack}",
        f"- threads: {THREADS} (torch, onnxruntime and numpy's BLAS)",
    ]
    if contention:
        lines.append(
            f"- other processes used {contention['others_share']:.0%} of the machine's"
            f" CPU during the run (this run: {contention['own_share']:.0%})"
        )
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write results/<name>.json and results/<name>.md; return their paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def paired_ratio_ci(
    official_ms: Sequence[float], ours_ms: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
    """Median of the per-round ratios official/ours and a bootstrap confidence interval of it.

    The samples come from interleaved rounds (round i of each side ran back to back), so the
    ratio is taken pair by pair, which cancels drift of the machine's speed between rounds.
    """
    import numpy as np

    pairs = min(len(official_ms), len(ours_ms))
    ratios = np.asarray(official_ms[:pairs], dtype=np.float64) / np.asarray(
        ours_ms[:pairs], dtype=np.float64
    )
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(2000, pairs), replace=True), axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(np.median(ratios)), float(lo), float(hi)


def ratio_json(reference_ms: Sequence[float], ms: Sequence[float]) -> dict[str, Any]:
    """`paired_ratio_ci(reference_ms, ms)` as a result's JSON: median and 95 % interval."""
    median, lo, hi = paired_ratio_ci(reference_ms, ms)
    return {"median": median, "ci95": [lo, hi]}


def ratio_cell(ratio: dict[str, Any]) -> str:
    """A `ratio_json` as a table cell: 1.23x (1.20-1.26)."""
    lo, hi = ratio["ci95"]
    return f"{ratio['median']:.2f}x ({lo:.2f}-{hi:.2f})"


def time_decoders(
    paths: dict[str, Path], embedding: Any, points: Sequence[int], rounds: int
) -> dict[int, dict[str, tuple[float, ...]]]:
    """SAM-layout decoder graphs, each on onnxruntime with `THREADS` threads, timed in the same
    interleaved rounds (5 warm-up, 50 ms gap) on `embedding` at each point count:
    {points: {label: per-call ms}}."""
    from edgesam_export.device.backends import open_session
    from edgesam_export.device.bench import decoder_feeds, time_interleaved

    sessions = {k: open_session(p, threads=THREADS) for k, p in paths.items()}
    samples = {}
    for n in points:
        feeds = decoder_feeds(embedding, n)
        log(f"timing {len(sessions)} graphs at {n} point(s), {rounds} rounds")
        samples[n] = time_interleaved(
            {k: (lambda s=s, f=feeds: s.run(f)) for k, s in sessions.items()},
            warmup=5,
            iters=rounds,
            gap_s=0.05,
            max_seconds=600.0,
        )
    return samples


def speed_verdict(
    official_ms: Sequence[float], ours_ms: Sequence[float], target: float = 1.0
) -> str:
    """ "met" (the paired speed-up official/ours reaches `target`), "tie" (the 95 % interval of
    the paired ratio spans `target`: no difference this run can resolve) or "**missed**" (the
    whole interval is below `target`)."""
    ratio, lo, hi = paired_ratio_ci(official_ms, ours_ms)
    if ratio >= target:
        return f"met (95% CI {lo:.2f}-{hi:.2f})"
    if hi >= target:
        return f"tie (95% CI {lo:.2f}-{hi:.2f})"
    return f"**missed** (95% CI {lo:.2f}-{hi:.2f})"


def main(
    name: str, run: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], str]
) -> int:
    """Run a benchmark, write results/<name>.{json,md}, print the markdown table."""
    result = run()
    markdown = render(result)
    json_path, md_path = write_results(name, result, markdown)
    print(markdown)
    log(f"wrote {json_path} and {md_path}")
    return 0

"""Where the wasm time goes: onnxruntime-web's own profiler on EdgeSAM's encoder and decoder.

Run from the repository root:  python benchmarks/profile_web.py [--site DIR] [--runs N]
(default: builds the fp32 page from the calibrated synthetic weights, seed 0, as `edgesam-export
web --no-webgpu` does; 12 decoder calls and 4 encoder calls; ~3 min on 2 idle cores)

In headless Chromium, with 2 wasm threads and the page's own session options
(`graphOptimizationLevel: "all"`, wasm execution provider), each graph of the page's `models/`
gets a session with `enableProfiling: true` and runs on the same inputs as
`benchmarks/bench_web.py` (the 480x640 test image; for the decoder its embeddings from native
onnxruntime and one click). `endProfiling()` prints the Chrome-trace events to the console; the
kernel events of all but the first two calls (warm-up: the first calls pack weights) are summed
per call, by operator type and by node. The profiler's own overhead inflates the times:
read them as shares, and `bench_web.py` for the times.

Writes benchmarks/results/web_profile.{json,md} with the machine's load.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/onnxruntime load
import numpy as np
from bench_web import _build, browser_header, browser_header_md

from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import decoder_feeds
from edgesam_export.device.parity import make_test_image
from edgesam_export.web.browser import Chromium
from edgesam_export.web.build import read_onnx_artifacts
from edgesam_export.web.server import WebServer

NAME = "web_profile"
THREADS = 2
SHAPE = (480, 640)
WARMUP = 2
TOP_NODES = 15

# Runs one graph RUNS times with the profiler on; the inputs are raw float32 files beside the page.
PROFILE_JS = """
(async () => {
  const ort = await import('/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = new URL('/ort/', location.href).href;
  ort.env.wasm.numThreads = __THREADS__;
  const spec = __SPEC__;
  const get = async (p) => new Uint8Array(await (await fetch(p)).arrayBuffer());
  const session = await ort.InferenceSession.create(await get(spec.model), {
    executionProviders: ['wasm'], graphOptimizationLevel: 'all', enableProfiling: true});
  const feeds = {};
  for (const [name, input] of Object.entries(spec.inputs)) {
    const data = new Float32Array((await get(input.file)).buffer);
    feeds[name] = new ort.Tensor('float32', data, input.shape);
  }
  const ms = [];
  for (let i = 0; i < spec.runs; i++) {
    const t = performance.now();
    await session.run(feeds);
    ms.push(performance.now() - t);
  }
  session.endProfiling();
  await session.release();
  return ms;
})()
"""


def _inputs(models: Path) -> dict[str, dict[str, np.ndarray]]:
    """bench_web's inputs: the test image's tensor, its native embeddings and one click."""
    found = read_onnx_artifacts(models)
    tensor, _ = P.preprocess(make_test_image(*SHAPE))
    encoder = open_session(found["encoder"][0], threads=THREADS)
    embeddings = encoder.run({"image": tensor})["image_embeddings"]
    return {"encoder": {"image": tensor}, "decoder": decoder_feeds(embeddings, 1)}


def _kernel_events(messages: list[str]) -> list[dict[str, Any]]:
    """The profiler's node events (one JSON object per console line, in order)."""
    events = []
    for line in messages:
        line = line.strip().rstrip(",")
        if line.startswith("{") and "_kernel_time" in line:
            event = json.loads(line)
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                events.append(event)
    return events


def _per_call(events: list[dict[str, Any]], runs: int) -> list[list[dict[str, Any]]]:
    """Kernel events split into calls: each call runs the graph's nodes from index 0 again."""
    calls: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    for event in events:
        name = event["name"]
        if name in seen or not calls:
            calls.append([])
            seen = set()
        seen.add(name)
        calls[-1].append(event)
    if len(calls) != runs:
        raise RuntimeError(f"the profile split into {len(calls)} calls, {runs} were run")
    return calls


def _summarise(calls: list[list[dict[str, Any]]]) -> dict[str, Any]:
    timed = calls[WARMUP:]
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    shape: dict[str, Any] = {}
    for call in timed:
        for e in call:
            ms = e["dur"] / 1000 / len(timed)
            by_type[e["args"]["op_name"]] += ms
            by_node[e["name"].removesuffix("_kernel_time")] += ms
            shape[e["name"].removesuffix("_kernel_time")] = (
                e["args"]["op_name"],
                [next(iter(s.values())) for s in e["args"].get("input_type_shape", [])],
            )
    total = sum(by_type.values())
    return {
        "kernel_ms_per_call": total,
        "by_type": [
            {"op": k, "ms": v, "share": v / total}
            for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
        ],
        "top_nodes": [
            {"node": k, "op": shape[k][0], "inputs": shape[k][1], "ms": v, "share": v / total}
            for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:TOP_NODES]
        ],
    }


def run(site: Path | None, runs: int) -> dict[str, Any]:
    monitor = _common.CpuMonitor()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if site is None:
            site = _build(Path(tmp), "fp32", "miou=0,worst=0").output
        models = site / "models"
        found = read_onnx_artifacts(models)
        feeds = _inputs(models)
        staging = site / "profile-inputs"
        staging.mkdir(exist_ok=True)
        graphs: dict[str, Any] = {}
        calls_for = {"decoder": runs, "encoder": max(WARMUP + 2, runs // 3)}
        try:
            with WebServer(site) as server, Chromium() as chromium:
                for graph, n in calls_for.items():
                    inputs = {}
                    for name, array in feeds[graph].items():
                        (staging / f"{graph}-{name}.bin").write_bytes(
                            np.ascontiguousarray(array, np.float32).tobytes()
                        )
                        inputs[name] = {
                            "file": f"/profile-inputs/{graph}-{name}.bin",
                            "shape": list(array.shape),
                        }
                    spec = {
                        "model": f"/models/{found[graph][0].name}",
                        "inputs": inputs,
                        "runs": n,
                    }
                    script = PROFILE_JS.replace("__THREADS__", str(THREADS)).replace(
                        "__SPEC__", json.dumps(spec)
                    )
                    _common.log(f"profiling the {graph} in Chromium over {n} calls")
                    with chromium.new_page() as page:
                        page.goto(server.url + "style.css")
                        wall = page.evaluate(script, timeout=1800)
                        events = _kernel_events(page.console_messages())
                    summary = _summarise(_per_call(events, n))
                    summary["file"] = found[graph][0].name
                    summary["calls"] = n
                    summary["wall_ms_median"] = float(statistics.median(wall[WARMUP:]))
                    graphs[graph] = summary
        finally:
            for f in staging.glob("*.bin"):
                f.unlink()
            staging.rmdir()
    return {
        **browser_header(NAME, load_before, monitor),
        "settings": {"threads": THREADS, "image": list(SHAPE), "warmup_calls": WARMUP},
        "graphs": graphs,
    }


def render(result: dict[str, Any]) -> str:
    lines = browser_header_md(
        "Where the wasm time goes: onnxruntime-web's profiler on EdgeSAM's graphs",
        result,
        f"the fp32 page's models; the first {result['settings']['warmup_calls']} calls not counted",
    )
    for graph, g in result["graphs"].items():
        lines += [
            f"## {graph} (`{g['file']}`, {g['calls']} calls): kernel time"
            f" {g['kernel_ms_per_call']:.1f} ms per call with the profiler on (a call without"
            f" its events: {g['wall_ms_median']:.1f} ms wall)",
            "",
        ]
        rows = [[r["op"], f"{r['ms']:.2f}", f"{r['share']:.1%}"] for r in g["by_type"][:14]]
        lines += [_common.md_table(["operator", "ms per call", "share"], rows), ""]
        rows = [
            [r["node"], r["op"], " ".join(str(s) for s in r["inputs"]), f"{r['share']:.1%}"]
            for r in g["top_nodes"]
        ]
        lines += [_common.md_table(["node", "operator", "inputs", "share"], rows), ""]
    lines.append(
        "Shares of the kernel time summed over a call's node events (the profiler's"
        " `*_kernel_time`); the profiler's overhead inflates the times, so the shares are what"
        " this table says. Times: `benchmarks/bench_web.py`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built `web` folder (default: build fp32)")
    parser.add_argument(
        "--runs", type=int, default=12, help="decoder calls (encoder: a third, at least 4)"
    )
    args = parser.parse_args()
    raise SystemExit(_common.main(NAME, functools.partial(run, args.site, args.runs), render))

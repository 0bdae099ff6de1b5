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

Then the kernels alone (`KERNELS`): single-operator graphs with the shapes that carry most of
the two graphs' time (the encoder's 1 x 1 and 3 x 3 convolutions and erf GELU, the decoder's
upscaling product and image-token LayerNorm), in the same browser (2 wasm threads, the page's
session options) and on native onnxruntime (2 threads), alternating kernel by kernel in rounds,
each side's kernel time from its own profiler: the wasm / native ratio of each kernel is what
the page's browser / native ratio is made of, for the share of the graph that operator takes.

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
import onnx
from bench_web import _build, browser_header, browser_header_md
from onnx import TensorProto, helper, numpy_helper

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

# Runs one graph spec.runs times (with the profiler on when spec.profile) and returns each
# call's ms; an input is a raw float32 file beside the page, or sin(0.37 i) of its shape.
RUN_JS = """
(async () => {
  const ort = await import('/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = new URL('/ort/', location.href).href;
  ort.env.wasm.numThreads = __THREADS__;
  const spec = __SPEC__;
  const get = async (p) => new Uint8Array(await (await fetch(p)).arrayBuffer());
  const session = await ort.InferenceSession.create(await get(spec.model), {
    executionProviders: ['wasm'], graphOptimizationLevel: 'all', enableProfiling: spec.profile});
  const feeds = {};
  for (const [name, input] of Object.entries(spec.inputs)) {
    const size = input.shape.reduce((a, b) => a * b, 1);
    const data = input.file
      ? new Float32Array((await get(input.file)).buffer)
      : new Float32Array(size).map((_, i) => Math.sin(i * 0.37));
    feeds[name] = new ort.Tensor('float32', data, input.shape);
  }
  const ms = [];
  for (let i = 0; i < spec.runs; i++) {
    const t = performance.now();
    await session.run(feeds);
    ms.push(performance.now() - t);
  }
  if (spec.profile) session.endProfiling();
  await session.release();
  return ms;
})()
"""


def _run_js(spec: dict[str, Any]) -> str:
    return RUN_JS.replace("__THREADS__", str(THREADS)).replace("__SPEC__", json.dumps(spec))


#: name -> (operator, input shape, weight shape or None); the encoder's channel mixers (1 x 1
#: convolutions at 256 x 256 and 128 x 128), its neck's 3 x 3 convolution, its largest erf GELU,
#: and the decoder's upscaling product and norm4 LayerNorm over the 4096 image tokens; then
#: elementwise work over those 1 M values (a residual Add, erf, tanh) and the LayerNorm spelled
#: out as moments (mean and mean square by ReduceMean, six elementwise passes: "LayerNormMoments").
KERNELS: dict[str, tuple[str, list[int], list[int] | None]] = {
    "Conv 1x1 48->96 @256x256": ("Conv", [1, 48, 256, 256], [96, 48, 1, 1]),
    "Conv 1x1 192->96 @128x128": ("Conv", [1, 192, 128, 128], [96, 192, 1, 1]),
    "Conv 3x3 256->256 @64x64": ("Conv", [1, 256, 64, 64], [256, 256, 3, 3]),
    "Gelu (erf) 96x256x256": ("Gelu", [1, 96, 256, 256], None),
    "MatMul [4096x256]x[256x256]": ("MatMul", [1, 4096, 256], [256, 256]),
    "LayerNormalization [4096x256]": ("LayerNormalization", [1, 4096, 256], [256]),
    "LayerNorm as moments [4096x256]": ("LayerNormMoments", [1, 4096, 256], [256]),
    "Add [4096x256] + itself": ("Add", [1, 4096, 256], None),
    "Erf [4096x256]": ("Erf", [1, 4096, 256], None),
    "Tanh [4096x256]": ("Tanh", [1, 4096, 256], None),
}
KERNEL_ROUNDS = 5
KERNEL_CALLS = 5  # timed calls per kernel per round, after 2 untimed


def _kernel_graph(op: str, shape: list[int], weight: list[int] | None) -> bytes:
    """One operator as an ONNX graph (opset 17; GELU as the exported erf form, which both
    runtimes fuse into their Gelu kernel), seeded weights as initializers."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    out = list(shape)
    if op == "Conv" and weight is not None:
        out[1] = weight[0]
    elif op == "MatMul" and weight is not None:
        out[-1] = weight[-1]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out)
    inits = []
    if op == "Gelu":
        consts = {"r2": np.float32(np.sqrt(2.0)), "one": np.float32(1), "half": np.float32(0.5)}
        inits = [numpy_helper.from_array(np.array(v), k) for k, v in consts.items()]
        nodes = [
            helper.make_node("Div", ["x", "r2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"]),
        ]
    elif op in ("LayerNormalization", "LayerNormMoments"):
        assert weight is not None
        inits = [
            numpy_helper.from_array(rng.uniform(0.5, 1.5, weight).astype(np.float32), "g"),
            numpy_helper.from_array(rng.uniform(-0.5, 0.5, weight).astype(np.float32), "b"),
        ]
        nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)]
        if op == "LayerNormMoments":  # var = E[x^2] - E[x]^2: no pattern the runtimes fuse
            inits.append(numpy_helper.from_array(np.array(1e-5, np.float32), "eps"))
            steps = [
                ("ReduceMean", ["x"], "m"),
                ("Mul", ["x", "x"], "xx"),
                ("ReduceMean", ["xx"], "m2"),
                ("Mul", ["m", "m"], "mm"),
                ("Sub", ["m2", "mm"], "var"),
                ("Add", ["var", "eps"], "ve"),
                ("Sqrt", ["ve"], "sd"),
                ("Sub", ["x", "m"], "d"),
                ("Div", ["d", "sd"], "n"),
                ("Mul", ["n", "g"], "ng"),
                ("Add", ["ng", "b"], "y"),
            ]
            axes = {"axes": [-1], "keepdims": 1}
            nodes = [
                helper.make_node(kind, ins, [o], **(axes if kind == "ReduceMean" else {}))
                for kind, ins, o in steps
            ]
    elif op == "Add":
        nodes = [helper.make_node("Add", ["x", "x"], ["y"])]
    elif weight is None:  # a unary elementwise operator
        nodes = [helper.make_node(op, ["x"], ["y"])]
    else:
        assert weight is not None
        w = (rng.standard_normal(weight) / np.sqrt(np.prod(weight[1:]))).astype(np.float32)
        inits = [numpy_helper.from_array(w, "w")]
        pads = [(weight[2] - 1) // 2] * 4 if op == "Conv" else None
        extra = {"pads": pads} if pads else {}
        nodes = [helper.make_node(op, ["x", "w"], ["y"], **extra)]
    graph = helper.make_graph(nodes, op, [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


#: native onnxruntime wraps a lone convolution in these (its blocked layout); in a whole
#: encoder they run once at the ends, so a kernel's time leaves them out
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})


def _call_ms(events: list[dict[str, Any]], runs: int) -> list[float]:
    """Kernel ms per call after the untimed ones: the node events of each call summed, layout
    conversions (`LAYOUT_OPS`) left out."""
    return [
        sum(e["dur"] for e in call if e["args"].get("op_name") not in LAYOUT_OPS) / 1000
        for call in _per_call(events, runs)[WARMUP:]
    ]


def _native_kernel_ms(path: Path, feeds: dict[str, np.ndarray], runs: int) -> Any:
    """The same graph on native onnxruntime with its profiler: kernel ms per call, and the
    calls' wall ms (the profile's node events are what the browser's profile reports too)."""
    events, wall = _common.onnxruntime_profile(path, feeds, runs)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return _call_ms(nodes, runs), wall[WARMUP:]


def _kernel_floor(chromium: Any, server: Any, staging: Path) -> list[dict[str, Any]]:
    """Each kernel in the browser and natively, alternating kernel by kernel over rounds; both
    sides' profilers give the kernel time alone (a call's wall time in the browser also copies
    the input into the wasm heap and the output out, which for an elementwise operator over
    1 M values is most of the call)."""
    paths, feeds = {}, {}
    for i, (name, (op, shape, weight)) in enumerate(KERNELS.items()):
        paths[name] = staging / f"kernel-{i}.onnx"
        paths[name].write_bytes(_kernel_graph(op, shape, weight))
        size = int(np.prod(shape))
        feeds[name] = {"x": np.sin(np.arange(size) * 0.37).astype(np.float32).reshape(shape)}
    runs = KERNEL_CALLS + WARMUP
    kernel: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    wall: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in range(KERNEL_ROUNDS):
        _common.log(f"kernels alone, round {r + 1}/{KERNEL_ROUNDS}")
        for name, (_, shape, _) in KERNELS.items():
            spec = {
                "model": f"/profile-inputs/{paths[name].name}",
                "inputs": {"x": {"shape": shape}},
                "runs": runs,
                "profile": True,
            }
            with chromium.new_page() as page:
                page.goto(server.url + "style.css")
                wall[name]["wasm"] += page.evaluate(_run_js(spec), timeout=600)[WARMUP:]
                events = _kernel_events(page.console_messages())
            kernel[name]["wasm"] += _call_ms(events, runs)
            ms, native_wall = _native_kernel_ms(paths[name], feeds[name], runs)
            kernel[name]["native"] += ms
            wall[name]["native"] += native_wall
    rows = []
    for name, (op, shape, _) in KERNELS.items():
        med = {side: statistics.median(kernel[name][side]) for side in ("wasm", "native")}
        rows.append(
            {
                "kernel": name,
                "op": op,
                "input": shape,
                "wasm_ms": med["wasm"],
                "native_ms": med["native"],
                "ratio": med["wasm"] / med["native"],
                "wasm_call_ms": statistics.median(wall[name]["wasm"]),
                "native_call_ms": statistics.median(wall[name]["native"]),
                "calls": len(kernel[name]["wasm"]),
            }
        )
    return rows


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
                        "profile": True,
                    }
                    _common.log(f"profiling the {graph} in Chromium over {n} calls")
                    with chromium.new_page() as page:
                        page.goto(server.url + "style.css")
                        wall = page.evaluate(_run_js(spec), timeout=1800)
                        events = _kernel_events(page.console_messages())
                    summary = _summarise(_per_call(events, n))
                    summary["file"] = found[graph][0].name
                    summary["calls"] = n
                    summary["wall_ms_median"] = float(statistics.median(wall[WARMUP:]))
                    graphs[graph] = summary
                kernels = _kernel_floor(chromium, server, staging)
        finally:
            for f in [*staging.glob("*.bin"), *staging.glob("*.onnx")]:
                f.unlink()
            staging.rmdir()
    return {
        **browser_header(NAME, load_before, monitor),
        "settings": {
            "threads": THREADS,
            "image": list(SHAPE),
            "warmup_calls": WARMUP,
            "kernel_rounds": KERNEL_ROUNDS,
            "kernel_calls": KERNEL_CALLS,
        },
        "graphs": graphs,
        "kernels": kernels,
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
    if result.get("kernels"):
        st = result["settings"]
        rows = [
            [
                k["kernel"],
                f"{k['wasm_ms']:.2f}",
                f"{k['native_ms']:.2f}",
                f"{k['ratio']:.1f}x",
                f"{k['wasm_call_ms']:.2f} / {k['native_call_ms']:.2f}",
            ]
            for k in result["kernels"]
        ]
        lines += [
            "",
            "## The kernels alone: wasm against native onnxruntime",
            "",
            f"One operator per graph, 2 threads on each side, {st['kernel_rounds']} rounds"
            " alternating browser and native kernel by kernel, "
            f"{st['kernel_calls']} timed calls per round and side (medians). Kernel time from"
            " each runtime's profiler (its node events; native's layout conversions around a"
            " lone convolution left out); a call's wall time beside it also copies the input"
            " into the wasm heap and the output out (browser), or converts the layout and"
            " allocates the output (native):",
            "",
            _common.md_table(
                ["kernel", "wasm ms", "native ms", "wasm / native", "call ms wasm / native"],
                rows,
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built `web` folder (default: build fp32)")
    parser.add_argument(
        "--runs", type=int, default=12, help="decoder calls (encoder: a third, at least 4)"
    )
    args = parser.parse_args()
    raise SystemExit(_common.main(NAME, functools.partial(run, args.site, args.runs), render))

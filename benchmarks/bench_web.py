"""EdgeSAM in headless Chromium (onnxruntime-web, wasm) vs native onnxruntime on the same files.

Run from the repository root:  python benchmarks/bench_web.py   (~3-5 min on 2 cores)

Builds the web folder exactly as `edgesam-export web` does with no checkpoint (synthetic
calibrated weights, seed 0), serves it on 127.0.0.1 with the COOP/COEP headers, and loads the
page's self-test in Debian's Chromium with 1 and 2 wasm threads, RUNS fresh page loads each, on
a 480x640 image with one click. It records:

* the folder's size, by part (models, onnxruntime-web wasm and WebGPU builds, the page);
* time to first mask: from the start of navigation to the first thresholded mask, i.e.
  downloading and compiling both graphs, reading the image, pre-processing, the encoder, the
  decoder and post-processing (the page's own `performance.now()` marks);
* per click: decoder plus post-processing and threshold of one mask at the image size, median
  of REPEAT clicks, and the decoder alone;
* the same encoder and decoder on native onnxruntime (Python, same threads) side by side,
  as ratios browser / native;
* agreement with the Python `Predictor` (identical masks, score difference).

Writes benchmarks/results/bench_web.{json,md}. Nothing is asserted.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/onnxruntime load
from PIL import Image

from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import decoder_feeds, machine_info, time_call
from edgesam_export.device.parity import make_test_image
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.pipeline import export_artifacts
from edgesam_export.web.browser import Chromium, chromium_version
from edgesam_export.web.build import ORT_WEB_VERSION, build_web
from edgesam_export.web.selftest import agreement, python_reference, run_selftest
from edgesam_export.web.server import WebServer

NAME = "bench_web"
THREADS = (1, 2)
RUNS = 3
REPEAT = 20
SHAPE = (480, 640)
PROMPTS = [(420.0, 150.0, 1)]


def _parts(files: dict[str, int]) -> dict[str, int]:
    parts: dict[str, int] = {}
    for name, size in files.items():
        if name.startswith("models/"):
            key = "models (ONNX)"
        elif name.startswith("ort/") and ("asyncify" in name or "webgpu" in name):
            key = "onnxruntime-web, WebGPU build"
        elif name.startswith("ort/"):
            key = "onnxruntime-web, wasm build"
        else:
            key = "page (HTML, JS, CSS, model card)"
        parts[key] = parts.get(key, 0) + size
    return parts


def _native(models: Path, threads: int) -> dict[str, float]:
    encoder = open_session(models / "edge_sam_encoder.onnx", threads=threads)
    decoder = open_session(models / "edge_sam_decoder.onnx", threads=threads)
    from edgesam_export.device import processing as P

    tensor, _ = P.preprocess(make_test_image(*SHAPE))
    emb = encoder.run({"image": tensor})["image_embeddings"]
    feeds = decoder_feeds(emb, 1)
    enc = time_call(lambda: encoder.run({"image": tensor}), warmup=1, iters=5)
    dec = time_call(lambda: decoder.run(feeds), warmup=2, iters=REPEAT)
    return {"encoder_ms": statistics.median(enc), "decoder_ms": statistics.median(dec)}


def run() -> dict[str, Any]:
    monitor = _common.CpuMonitor()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        _common.log("exporting the demo graphs and building the web folder")
        built = build_web(
            site,
            export=lambda d: export_artifacts(
                ModelOptions(synthetic="calibrated"), "onnx", OnnxOptions(output=d)
            ),
            progress=_common.log,
        )
        (site / "bench").mkdir()
        image = make_test_image(*SHAPE)
        Image.fromarray(image).save(site / "bench" / "image.png")
        reference = python_reference(site / "models", image, PROMPTS)
        browser_runs: dict[int, list[dict[str, Any]]] = {t: [] for t in THREADS}
        with WebServer(site) as server, Chromium() as chromium:
            for run_index in range(RUNS):
                for threads in THREADS:
                    _common.log(f"page load {run_index + 1}/{RUNS}, {threads} thread(s)")
                    with chromium.new_page() as page:
                        report = run_selftest(
                            page,
                            server.url,
                            "bench/image.png",
                            PROMPTS,
                            threads=threads,
                            repeat=REPEAT,
                            rle=1,
                        )
                    report["agreement"] = agreement(report, reference)
                    for mask in report["masks"]:
                        mask.pop("rle", None)  # compared above; too big for the results file
                    browser_runs[threads].append(report)
        native = {}
        for threads in THREADS:
            _common.log(f"native onnxruntime, {threads} thread(s)")
            native[threads] = _native(site / "models", threads)
        user_agent = browser_runs[THREADS[0]][0]["user_agent"]
    contention = monitor.result()
    summary = {}
    for threads, runs in browser_runs.items():
        timings = [r["timings_ms"] for r in runs]

        def med(key: str, timings: list[dict[str, float]] = timings) -> float:
            return float(statistics.median(t[key] for t in timings))

        summary[threads] = {
            "first_mask_ms": med("first_mask"),
            "models_ready_ms": med("models_ready"),
            "preprocess_ms": med("preprocess"),
            "encoder_ms": med("encoder"),
            "click_ms": med("click_median"),
            "decoder_ms": med("decoder_median"),
            "native_encoder_ms": native[threads]["encoder_ms"],
            "native_decoder_ms": native[threads]["decoder_ms"],
            "identical_masks": min(r["agreement"]["identical_masks"] for r in runs),
            "max_score_diff": max(r["agreement"]["max_score_diff"] for r in runs),
            "max_flipped": max(m["flipped"] for r in runs for m in r["agreement"]["masks"]),
            "pixels": SHAPE[0] * SHAPE[1],
            "input_identical": all(r["agreement"]["input_identical"] for r in runs),
        }
    return {
        "name": NAME,
        "date": _common.now_utc(),
        "machine": machine_info(),
        "contention": contention,
        "browser": chromium_version(),
        "user_agent": user_agent,
        "onnxruntime_web": ORT_WEB_VERSION,
        "settings": {"runs": RUNS, "repeat": REPEAT, "image": list(SHAPE), "prompts": PROMPTS},
        "folder_bytes": built.total_bytes,
        "folder_parts": _parts(built.files),
        "summary": {str(k): v for k, v in summary.items()},
        "runs": {str(k): v for k, v in browser_runs.items()},
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# bench_web: EdgeSAM in headless Chromium (onnxruntime-web wasm) vs native onnxruntime",
        "",
        _common.machine_md(result["machine"], result["date"], result["contention"]),
        f"- browser: {result['browser']} (headless), onnxruntime-web {result['onnxruntime_web']},"
        " wasm (no GPU), page served on 127.0.0.1 with COOP/COEP (cross-origin isolated)",
        f"- weights: synthetic calibrated, seed 0 (the `edgesam-export web` demo); image"
        f" {result['settings']['image'][0]}x{result['settings']['image'][1]}, one click;"
        f" {result['settings']['runs']} page loads per row (median), {result['settings']['repeat']}"
        " clicks per load (median)",
        "",
        "## Folder size",
        "",
    ]
    parts = result["folder_parts"]
    rows = [[k, f"{v / 1e6:.1f}"] for k, v in sorted(parts.items())]
    rows.append(["total", f"{result['folder_bytes'] / 1e6:.1f}"])
    lines += [_common.md_table(["part", "MB"], rows, [False, True]), ""]
    lines += [
        "The browser downloads the models plus one runtime build: the wasm build (14.3 MB)"
        " without WebGPU, the WebGPU build (26.8 MB) with it (`--no-webgpu` leaves it out).",
        "",
        "## Latency (ms)",
        "",
    ]
    rows = []
    for threads, s in result["summary"].items():
        rows.append(
            [
                threads,
                f"{s['first_mask_ms']:.0f}",
                f"{s['models_ready_ms']:.0f}",
                f"{s['encoder_ms']:.0f}",
                f"{s['native_encoder_ms']:.0f}",
                f"{s['encoder_ms'] / s['native_encoder_ms']:.1f}x",
                f"{s['click_ms']:.0f}",
                f"{s['decoder_ms']:.0f}",
                f"{s['native_decoder_ms']:.0f}",
                f"{s['decoder_ms'] / s['native_decoder_ms']:.1f}x",
                f"{s['identical_masks']}/4, {s['max_flipped']} px, {s['max_score_diff']:.1e}",
            ]
        )
    headers = [
        "threads",
        "first mask",
        "models ready",
        "encoder",
        "native enc.",
        "enc. ratio",
        "per click",
        "decoder",
        "native dec.",
        "dec. ratio",
        "vs Python: identical masks, most flipped pixels, max score diff",
    ]
    lines.append(_common.md_table(headers, rows, [True] * 10 + [False]))
    lines += [
        "",
        "first mask: navigation start to the first thresholded mask (models downloaded from"
        " 127.0.0.1 and compiled, image read, pre-processing, encoder, decoder, post-processing)."
        " per click: decoder + post-processing + threshold of one mask at the image size."
        " Ratios are browser / native onnxruntime on the same files and thread count."
        " vs Python: the page's 4 masks against `Predictor` on native onnxruntime (flipped"
        " pixels out of the image's 307,200; a mask differs only where a logit is within float"
        " rounding of 0).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(_common.main(NAME, run, render))

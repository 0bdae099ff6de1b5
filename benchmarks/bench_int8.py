"""Static int8 vs our fp32 and the official-style fp32 export, side by side on onnxruntime.

Per graph (encoder, decoder): the official-style fp32 graph (`bench_vs_official.py`'s export),
our fp32 graph and our `--quantize int8` graph, timed round-robin in one process at 2 threads
(paired rounds), with the paired speed-up of int8 over each fp32 graph (median, bootstrap 95 %
interval, verdict met / tie / missed against the issue 17 targets: encoder >= 2.0x and decoder
>= 1.5x the official fp32), and the int8 graph's accuracy beside it (mean / worst mask IoU on
held-out images and prompts, recorded by its search, and whether it meets the mask bar).
Weights: calibrated synthetic seed 0, bilinear neck, on every side.

The decoder int8 is exported here (its search takes minutes); the encoder search takes much
longer, so the encoder is timed only from `--int8-dir DIR` holding an
`edge_sam_encoder_int8.onnx` made with the same weights
(`edgesam-export onnx --encoder --quantize int8 --upsample bilinear -o DIR`).

    python benchmarks/bench_int8.py [--int8-dir DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
from bench_vs_official import export_official_style

from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import (
    Timing,
    decoder_feeds,
    encoder_input,
    machine_info,
    time_interleaved,
)
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.pipeline import export_artifacts
from edgesam_export.host.reference import reference_sessions

NAME = "int8"
TARGETS = {"encoder": 2.0, "decoder": 1.5}  # int8 over the official fp32 export (issue 17)
WARMUP = {"encoder": 2, "decoder": 5}
MODEL = ModelOptions(seed=0, upsample="bilinear", synthetic="calibrated")


def _int8_accuracy(meta: dict[str, str]) -> dict[str, Any]:
    mean, worst = (float(v) for v in meta["int8.mask_iou"].split()[1::2])
    return {
        "mean_iou": mean,
        "worst_iou": worst,
        "float_blocks": [b for b in meta.get("int8.float_blocks", "").split(",") if b],
        "calibration": meta.get("int8.calibration", ""),
    }


def run(int8_dir: Path | None, rounds: dict[str, int]) -> dict[str, Any]:
    monitor = _common.CpuMonitor()
    load_before = os.getloadavg()
    date = _common.now_utc()
    with tempfile.TemporaryDirectory(prefix="edgesam-int8-") as tmp:
        _common.log("exporting our fp32 graphs")
        loaded, fp32 = export_artifacts(
            MODEL, "onnx", OnnxOptions.model_validate({"output": Path(tmp) / "fp32"})
        )
        paths: dict[str, dict[str, Path]] = {"ours fp32": {a.graph: a.path for a in fp32}}
        _common.log("exporting official-style graphs")
        paths["official fp32"] = export_official_style(loaded, Path(tmp))
        int8: dict[str, Path] = {}
        given = int8_dir / "edge_sam_encoder_int8.onnx" if int8_dir else None
        if given is not None and given.is_file():
            int8["encoder"] = given
        _common.log("exporting the int8 decoder (static QDQ, searched against the mask bar)")
        _, dec = export_artifacts(
            MODEL,
            "onnx",
            OnnxOptions(output=Path(tmp) / "int8", graphs=("decoder",), quantize="int8"),
        )
        int8["decoder"] = dec[0].path
        paths["ours int8"] = int8
        ref_enc, _ = reference_sessions(loaded)
        feeds = {"image": encoder_input(ref_enc)}
        embeddings = ref_enc.run(feeds)["image_embeddings"]
        stage_feeds = {"encoder": feeds, "decoder": decoder_feeds(embeddings, 5)}
        results: dict[str, Any] = {}
        timings = []
        for graph in ("encoder", "decoder"):
            sessions = {
                side: open_session(p[graph], threads=_common.THREADS)
                for side, p in paths.items()
                if graph in p
            }
            if "ours int8" not in sessions:
                results[graph] = {"skipped": "no int8 encoder: pass --int8-dir (module doc)"}
                continue
            accuracy = _int8_accuracy(sessions["ours int8"].metadata)
            _common.log(f"timing the {graph}: {', '.join(sessions)}")
            samples = time_interleaved(
                {
                    side: (lambda s=s, f=stage_feeds[graph]: s.run(f))
                    for side, s in sessions.items()
                },
                warmup=WARMUP[graph],
                iters=rounds[graph],
                gap_s=0.05,
                max_seconds=600.0,
            )
            timings += [Timing(graph, side, samples[side]) for side in sessions]
            speedups = {}
            for base in ("official fp32", "ours fp32"):
                median, lo, hi = _common.paired_ratio_ci(samples[base], samples["ours int8"])
                speedups[base] = {"median": median, "ci95": [lo, hi]}
            verdict = _common.speed_verdict(
                samples["official fp32"], samples["ours int8"], TARGETS[graph]
            )
            bar = accuracy["mean_iou"] >= 0.97 and accuracy["worst_iou"] >= 0.90
            results[graph] = {
                "int8_over": speedups,
                "target": TARGETS[graph],
                "speed_verdict": verdict,
                "accuracy": accuracy,
                "mask_bar_met": bar,
                "verdict": verdict if bar else f"**missed** (mask bar not met); speed {verdict}",
            }
    return {
        "benchmark": NAME,
        "date": date,
        "machine": machine_info(),
        "contention": monitor.result(),
        "loadavg_1_5_15": {"before": list(load_before), "after": list(os.getloadavg())},
        "settings": {"threads": _common.THREADS, "rounds": rounds, "weights": str(MODEL)},
        "graphs": results,
        "timings": [t.to_json() for t in timings],
    }


def render(result: dict[str, Any]) -> str:
    rows = []
    for graph, r in result["graphs"].items():
        if "skipped" in r:
            rows.append([graph, "-", "-", "-", "-", r["skipped"]])
            continue
        off, ours = r["int8_over"]["official fp32"], r["int8_over"]["ours fp32"]
        acc = r["accuracy"]
        rows.append(
            [
                graph,
                f"{off['median']:.2f}x ({off['ci95'][0]:.2f}-{off['ci95'][1]:.2f})",
                f"{ours['median']:.2f}x ({ours['ci95'][0]:.2f}-{ours['ci95'][1]:.2f})",
                f"{acc['mean_iou']:.4f} / {acc['worst_iou']:.4f}",
                str(len(acc["float_blocks"])),
                f"{r['verdict']} (target {r['target']}x)",
            ]
        )
    load = result["loadavg_1_5_15"]
    return "\n".join(
        [
            f"# int8 vs fp32 ({result['date']}, load {load['before'][0]:.1f} -> "
            f"{load['after'][0]:.1f}, {result['settings']['threads']} threads)",
            "",
            _common.md_table(
                [
                    "graph",
                    "int8 over official fp32 (95% CI)",
                    "int8 over our fp32 (95% CI)",
                    "mask IoU mean / worst",
                    "float blocks",
                    "verdict",
                ],
                rows,
            ),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 20 / 50)")
    args = parser.parse_args()
    plan = {"encoder": args.rounds or 20, "decoder": args.rounds or 50}
    raise SystemExit(_common.main(NAME, lambda: run(args.int8_dir, plan), render))

"""Static int8 vs our fp32 and the official-style fp32 export, side by side on onnxruntime.

Per graph (encoder, decoder): the official-style fp32 graph (`bench_vs_official.py`'s export),
our fp32 graph and our `--quantize int8` graph, timed round-robin in one process at 2 threads
(paired rounds), with the paired speed-up of int8 over each fp32 graph (median, bootstrap 95 %
interval, verdict met / tie / missed against the issue 17 targets: encoder >= 2.0x and decoder
>= 1.5x the official fp32), and the int8 graph's accuracy beside it (mean / worst mask IoU on
held-out images and prompts, recorded by its search, and whether it meets the mask bar).
Weights: calibrated synthetic seed 0 (EdgeSAM: bilinear neck), on every side.

Each int8 graph is exported here by `onnx --quantize int8` (the complete search, or at most
`--search-budget N` graph evaluations per graph), or taken from `--int8-dir DIR` when DIR holds
`<model>_<graph>_int8.onnx` made with the same weights (`edgesam-export onnx --quantize int8
--upsample bilinear -o DIR`). The frontier each search walked (float blocks, mean / worst IoU, SQNR)
is copied from the graph's `int8.report` into the results. A graph whose search
met no bar within its budget is reported with the search's error, untimed. `--model` runs the
same method on another family (no family-specific code: `mobile_sam`, `efficientvit_sam_l0`).

    python benchmarks/bench_int8.py [--int8-dir DIR] [--rounds N] [--search-budget N]
        [--graphs encoder,decoder] [--model edge_sam]
"""

from __future__ import annotations

import argparse
import json
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
    time_interleaved,
)
from edgesam_export.device.errors import ExportFailedError
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.pipeline import export_artifacts
from edgesam_export.host.reference import reference_sessions

NAME = "int8"
TARGETS = {"encoder": 2.0, "decoder": 1.5}  # int8 over the official fp32 export (issue 17)
WARMUP = {"encoder": 2, "decoder": 5}


def model_options(model: str) -> ModelOptions:
    """Calibrated synthetic seed 0; EdgeSAM with the bilinear neck (the other families have no
    neck upsampling option)."""
    upsample = "bilinear" if model == "edge_sam" else None
    return ModelOptions(model=model, seed=0, upsample=upsample, synthetic="calibrated")


def _int8_accuracy(meta: dict[str, str]) -> dict[str, Any]:
    mean, worst = (float(v) for v in meta["int8.mask_iou"].split()[1::2])
    report = json.loads(meta.get("int8.report", "{}"))
    return {
        "mean_iou": mean,
        "worst_iou": worst,
        "float_blocks": [b for b in meta.get("int8.float_blocks", "").split(",") if b],
        "calibration": meta.get("int8.calibration", ""),
        "search": {
            k: report.get(k)
            for k in ("evaluations", "budget", "sensitivity_complete", "converged", "bar_met")
        },
        "frontier": [
            {
                "float_blocks": len(p["float_blocks"]),
                "float_nodes": p["float_nodes"],
                "mean_iou": p["mean_iou"],
                "worst_iou": p["worst_iou"],
                "sqnr_db": p["sqnr_db"],
                "passed": p["passed"],
            }
            for p in report.get("frontier", [])
        ],
    }


def _int8_graph(
    model: ModelOptions, graph: str, int8_dir: Path | None, tmp: Path, budget: int | None
) -> Path | str:
    """The int8 graph: from `int8_dir`, else exported here; the error text when the search met
    no bar within its budget."""
    if int8_dir is not None:
        given = int8_dir / f"{model.model}_{graph}_int8.onnx"
        if given.is_file():
            return given
    limit = "complete search" if budget is None else f"search budget {budget} evaluations"
    _common.log(f"exporting the int8 {graph} (static QDQ, {limit})")
    options = OnnxOptions(
        output=tmp / f"int8_{graph}", graphs=(graph,), quantize="int8", search_budget=budget
    )
    try:
        return export_artifacts(model, "onnx", options)[1][0].path
    except ExportFailedError as exc:
        return str(exc)


def run(
    int8_dir: Path | None,
    rounds: dict[str, int],
    budget: int | None = None,
    graphs: tuple[str, ...] = ("encoder", "decoder"),
    model_name: str = "edge_sam",
) -> dict[str, Any]:
    model = model_options(model_name)
    start = _common.RunStart()
    with tempfile.TemporaryDirectory(prefix="edgesam-int8-") as tmp:
        _common.log("exporting our fp32 graphs")
        loaded, fp32 = export_artifacts(
            model, "onnx", OnnxOptions.model_validate({"output": Path(tmp) / "fp32"})
        )
        paths: dict[str, dict[str, Path]] = {"ours fp32": {a.graph: a.path for a in fp32}}
        _common.log("exporting official-style graphs")
        paths["official fp32"] = export_official_style(loaded, Path(tmp))
        int8: dict[str, Path] = {}
        failed: dict[str, str] = {}
        for graph in graphs:
            got = _int8_graph(model, graph, int8_dir, Path(tmp), budget)
            if isinstance(got, Path):
                int8[graph] = got
            else:
                failed[graph] = got
        paths["ours int8"] = int8
        ref_enc, _ = reference_sessions(loaded)
        feeds = {"image": encoder_input(ref_enc)}
        embeddings = ref_enc.run(feeds)["image_embeddings"]
        stage_feeds = {"encoder": feeds, "decoder": decoder_feeds(embeddings, 5)}
        results: dict[str, Any] = {}
        timings = []
        for graph in graphs:
            if graph in failed:
                results[graph] = {"skipped": f"no int8 graph: {failed[graph]}"}
                continue
            sessions = {
                side: open_session(p[graph], threads=_common.THREADS)
                for side, p in paths.items()
                if graph in p
            }
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
        **start.header(NAME),
        "settings": {
            "threads": _common.THREADS,
            "rounds": rounds,
            "weights": str(model),
            "search_budget": budget,
            "int8_dir": None if int8_dir is None else str(int8_dir),
        },
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
    frontiers = []
    for graph, r in result["graphs"].items():
        if "skipped" in r:
            continue
        search = r["accuracy"]["search"]
        frontiers += [
            "",
            f"Frontier walked by the {graph} search ({search['evaluations']} graphs evaluated,"
            f" budget {search['budget'] or 'none'}, sensitivity complete:"
            f" {search['sensitivity_complete']},"
            f" converged: {search['converged']}):",
            "",
            _common.md_table(
                ["float blocks", "float nodes", "mean IoU", "worst IoU", "SQNR dB", "bar"],
                [
                    [
                        str(p["float_blocks"]),
                        str(p["float_nodes"]),
                        f"{p['mean_iou']:.4f}",
                        f"{p['worst_iou']:.4f}",
                        f"{p['sqnr_db']:.1f}",
                        "met" if p["passed"] else "missed",
                    ]
                    for p in r["accuracy"]["frontier"]
                ],
            ),
        ]
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
            *frontiers,
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 20 / 50)")
    parser.add_argument(
        "--search-budget", type=int, default=None, help="graph evaluations per search (default all)"
    )
    parser.add_argument("--graphs", default="encoder,decoder")
    parser.add_argument("--model", default="edge_sam")
    args = parser.parse_args()
    plan = {"encoder": args.rounds or 20, "decoder": args.rounds or 50}
    graphs = tuple(g for g in args.graphs.split(",") if g)
    name = NAME if args.model == "edge_sam" else f"{NAME}_{args.model}"
    raise SystemExit(
        _common.main(
            name,
            lambda: run(args.int8_dir, plan, args.search_budget, graphs, args.model),
            render,
        )
    )

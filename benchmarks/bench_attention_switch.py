"""The decoder's attention forms by point count: folded, projected and `--attention auto` (both in
one graph, an If on the point count: `targets/onnx_switch.py`), in fp32 and static int8, against
the official-style fp32 export, on onnxruntime.

The folded form's cost grows with the tokens (points + padding + 5 output tokens), the projected
form's hardly at all, so the faster form depends on the point count; `auto` should run at the
faster one's speed everywhere, and its switch points (`onnx_switch.PROJECTED_FROM`) sit where the
two cross. Every graph is timed in the same interleaved rounds at each point count (2 threads,
50 ms gap, random embeddings: the speed of these graphs does not depend on their values),
paired ratios over the official-style export with a bootstrap interval. Calibrated synthetic
weights, seed 0, bilinear neck; each int8 form searched at the default bar by the export itself.

    python benchmarks/bench_attention_switch.py [--rounds 30] [--points 1,5,9,12,14,16]

Writes `results/attention_switch.{json,md}`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
from bench_int8 import model_options
from bench_vs_official import export_official_style

NAME = "attention_switch"
OFFICIAL = "official-style fp32"
FORMS = ("folded", "projected", "auto")
PRECISIONS = {"fp32": None, "int8": "int8"}


def run(rounds: int, points: list[int]) -> dict[str, Any]:
    from edgesam_export.device.bench import set_threads
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts
    from edgesam_export.host.targets.onnx_switch import PROJECTED_FROM

    set_threads(_common.THREADS)
    start = _common.RunStart()
    model = model_options("edge_sam")
    graphs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgesam-attention-switch-") as tmp:
        root = Path(tmp)
        paths: dict[str, Path] = {}
        loaded = None
        for precision, quantize in PRECISIONS.items():
            for form in FORMS:
                label = f"{precision} {form}"
                _common.log(f"exporting the {label} decoder")
                options = OnnxOptions(
                    output=root / label.replace(" ", "_"),
                    graphs=("decoder",),
                    quantize=quantize,
                    attention=form,
                )
                loaded, artifacts = export_artifacts(model, "onnx", options)
                paths[label] = artifacts[0].path
                meta = artifacts[0].metadata
                graphs[label] = {
                    "mb": round(paths[label].stat().st_size / 1e6, 2),
                    "projected_from": meta.get("decoder.attention.projected_from"),
                    "mask_iou": {k: v for k, v in meta.items() if k.startswith("int8.mask_iou")},
                }
        assert loaded is not None
        _common.log("exporting the official-style graphs")
        paths = {OFFICIAL: export_official_style(loaded, root)["decoder"]} | paths
        graphs = {OFFICIAL: {"mb": round(paths[OFFICIAL].stat().st_size / 1e6, 2)}} | graphs

        rng = np.random.default_rng(0)
        embedding = rng.standard_normal((1, *loaded.spec.embed_shape)).astype(np.float32)
        timed = _common.time_decoders(paths, embedding, points, rounds)
        for n, samples in timed.items():
            for label in paths:
                graphs[label].setdefault("points", {})[str(n)] = {
                    "p50_ms": float(np.median(samples[label])),
                    "over_official": _common.ratio_json(samples[OFFICIAL], samples[label]),
                }
            for precision in PRECISIONS:  # auto against the faster of its two forms
                fastest = max(
                    ("folded", "projected"),
                    key=lambda f: graphs[f"{precision} {f}"]["points"][str(n)]["over_official"][
                        "median"
                    ],
                )
                graphs[f"{precision} auto"]["points"][str(n)]["over_fastest_form"] = {
                    "form": fastest,
                    **_common.ratio_json(
                        samples[f"{precision} {fastest}"], samples[f"{precision} auto"]
                    ),
                }
    return {
        **start.header(NAME),
        "settings": {
            "threads": _common.THREADS,
            "rounds": rounds,
            "points": points,
            "weights": str(model),
            "projected_from": {"fp32": PROJECTED_FROM[False], "int8": PROJECTED_FROM[True]},
        },
        "graphs": graphs,
    }


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    points = [str(n) for n in s["points"]]
    rows = []
    for label, g in result["graphs"].items():
        cells = [label, f"{g['mb']:.2f}"]
        for n in points:
            cells.append(_common.ratio_cell(g["points"][n]["over_official"]))
        rows.append(cells)
    auto_rows = []
    for precision in PRECISIONS:
        cells = [f"{precision} auto / faster form"]
        for n in points:
            p = result["graphs"][f"{precision} auto"]["points"][n]["over_fastest_form"]
            cells.append(f"{_common.ratio_cell(p)} vs {p['form']}")
        auto_rows.append(cells)
    load = result["loadavg_1_5_15"]
    accuracy = "; ".join(
        f"{label}: " + ", ".join(f"{k} {v}" for k, v in g["mask_iou"].items())
        for label, g in result["graphs"].items()
        if g.get("mask_iou")
    )
    switch = s["projected_from"]
    return "\n".join(
        [
            f"# The decoder's attention forms by point count ({result['date']})",
            "",
            _common.machine_md(result["machine"], result["date"], result["contention"]),
            f"- load average (1 min) {load['before'][0]:.1f} before, {load['after'][0]:.1f} after",
            f"- {s['weights']}; {s['rounds']} interleaved rounds per point count, 50 ms gap,"
            " random embeddings",
            f"- auto runs the projected form from {switch['fp32']} points in fp32, from"
            f" {switch['int8']} in int8 (`onnx_switch.PROJECTED_FROM`)",
            f"- int8 held-out mask IoU of each search (the bar 0.97 / 0.90): {accuracy}",
            "",
            "Paired speed-up over the official-style fp32 export (median of per-round ratios,"
            " bootstrap 95% interval):",
            "",
            _common.md_table(
                ["graph", "MB"] + [f"{n} pt" for n in points],
                rows,
                [False, True] + [True] * len(points),
            ),
            "",
            "`auto` over the faster of its two forms at each point count, paired in the same"
            " rounds (1.00x: the switch costs nothing and picks the faster form):",
            "",
            _common.md_table(
                ["graph"] + [f"{n} pt" for n in points],
                auto_rows,
                [False] + [True] * len(points),
            ),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--points", default="1,5,9,12,14,16")
    args = parser.parse_args()
    points = [int(p) for p in args.points.split(",")]
    raise SystemExit(_common.main(NAME, lambda: run(args.rounds, points), render))

"""Where static int8 can pay in EdgeSAM's decoder on onnxruntime: the searched int8 decoder and
the folded fp32 decoder with only its large weight products in int8, against both fp32 graphs.

`onnx --quantize int8` quantizes a decoder's products with a 2-D weight (`static.weight_matmuls`)
and searches the blocks to keep float, in the folded attention form by default (as fp32) or,
with `--attention projected`, in the plain layout, where the image-side projections are
weight products too. In the folded form the large ones are the output upscaling's two GEMMs
(4096 x 256 x 256 and 16384 x 64 x 128); the rest are the token side's. Beside both searched
exports, this script cuts parts of them from the folded graph with the search's own quantizer
(`host/quantize/static.StaticQuantizer`: calibrated on the built-in calibration set, QDQ,
per-channel int8 weights, uint8 activations, what stays float stored float16, as shipped),
judges every graph with the mask bar on the held-out images (`search.Evaluator`: 5 images,
PyTorch's embeddings, bar 0.97 / 0.90) and times all of them interleaved at 1, 5 and 16
points (2 threads, paired ratios over the official-style fp32 export with a bootstrap
interval). Calibrated synthetic weights, seed 0, bilinear neck.

    python benchmarks/measure_int8_decoder_forms.py [--rounds 30] [--points 1,5,16]

Writes `results/int8_decoder_forms.{json,md}`.
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

NAME = "int8_decoder_forms"
BAR = "miou=0.97,worst=0.90"
OFFICIAL, OURS = "official fp32", "ours fp32 (folded)"
SEARCHED = {"folded": "int8 searched (folded, default)", "projected": "int8 searched (projected)"}


def _weight_products(proto: Any, where: str) -> list[str]:
    """The search's int8 candidates (`static.weight_matmuls`) whose name holds `where`."""
    from edgesam_export.host.quantize.static import weight_matmuls

    return [n for n in weight_matmuls(proto) if where in n]


def run(rounds: int, points: list[int]) -> dict[str, Any]:
    import onnx

    from edgesam_export.device.backends import open_session
    from edgesam_export.device.mask_bar import MaskBar
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts
    from edgesam_export.host.quantize.data import (
        HELDOUT_PROMPT_SEED,
        calibration_inputs,
        heldout_images,
        prepare,
    )
    from edgesam_export.host.quantize.search import Evaluator, _preprocessing
    from edgesam_export.host.quantize.static import StaticQuantizer
    from edgesam_export.host.reference import reference_sessions

    start = _common.RunStart()
    model = model_options("edge_sam")
    graphs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgesam-int8-forms-") as tmp:
        root = Path(tmp)
        _common.log("exporting our fp32 graphs and the official-style ones")
        loaded, fp32 = export_artifacts(model, "onnx", OnnxOptions(output=root / "fp32"))
        folded = next(a.path for a in fp32 if a.graph == "decoder")
        paths = {OFFICIAL: export_official_style(loaded, root)["decoder"], OURS: folded}
        for form, label in SEARCHED.items():
            _common.log(f"exporting the int8 decoder (onnx --quantize int8 --attention {form})")
            options = OnnxOptions(
                output=root / form, graphs=("decoder",), quantize="int8", attention=form
            )
            paths[label] = export_artifacts(model, "onnx", options)[1][0].path

        params = _preprocessing(loaded)
        held = heldout_images(options.heldout_images)
        calibration = calibration_inputs(None, options.calibration_images, params, held)
        encoder, _ = reference_sessions(loaded)
        embeddings = [encoder.run({"image": t})["image_embeddings"] for t in calibration.tensors]
        proto = onnx.load(str(folded))
        cuts = {
            "folded, upscaling GEMMs int8": _weight_products(proto, "/upscaling/"),
            "folded, first upscaling GEMM int8": _weight_products(proto, "/upscaling/")[:1],
            "folded, upscaling and MLP GEMMs int8": _weight_products(proto, "/upscaling/")
            + _weight_products(proto, "/mlp/"),
            # what the search quantizes, plus the heads' Gemms (one row per prompt set)
            "folded, weight products and Gemms int8": _weight_products(proto, "/")
            + [n.name for n in proto.graph.node if n.op_type == "Gemm"],
        }
        _common.log(f"quantizing the folded graph ({len(calibration.tensors)} images)")
        with StaticQuantizer(proto, list(calibration.decoder_feeds(embeddings))) as quantizer:
            for label, nodes in cuts.items():
                path = root / f"{len(paths)}.onnx"
                onnx.save(quantizer.quantize(only=nodes), str(path))
                paths[label] = path
                graphs[label] = {"int8_nodes": nodes}

        _common.log("judging every graph on the held-out images")
        heldout = prepare(held, params, HELDOUT_PROMPT_SEED)
        evaluator = Evaluator("decoder", loaded, heldout, MaskBar.parse(BAR))
        for label, path in paths.items():
            graphs.setdefault(label, {})["mb"] = round(path.stat().st_size / 1e6, 2)
            if label == OFFICIAL:  # one prompt set per call: the fp32 reference form, not judged
                continue
            result, sqnr, *_ = evaluator.judge(onnx.load(str(path)))
            graphs[label].update(
                {
                    "mean_iou": result.mean_iou,
                    "worst_iou": result.worst_iou,
                    "masks_sqnr_db": sqnr,
                    "bar_met": result.passed,
                }
            )
        for label in SEARCHED.values():
            blocks = open_session(paths[label]).metadata["int8.float_blocks"]
            graphs[label]["float_blocks"] = [b for b in blocks.split(",") if b]

        # timing feeds: the first held-out image (the parity test image) and its embedding
        embedding = encoder.run({"image": heldout.tensors[0]})["image_embeddings"]
        timed = _common.time_decoders(paths, embedding, points, rounds)
        for n, samples in timed.items():
            for label in paths:
                graphs[label].setdefault("points", {})[str(n)] = {
                    "p50_ms": float(np.median(samples[label])),
                    "over_official": _common.ratio_json(samples[OFFICIAL], samples[label]),
                    "over_ours_fp32": _common.ratio_json(samples[OURS], samples[label]),
                }
    return {
        **start.header(NAME),
        "settings": {
            "threads": _common.THREADS,
            "rounds": rounds,
            "points": points,
            "weights": str(model),
            "bar": BAR,
            "heldout_images": options.heldout_images,
            "calibration_images": options.calibration_images,
        },
        "graphs": graphs,
    }


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    points = [str(n) for n in s["points"]]
    rows = []
    for label, g in result["graphs"].items():
        judged = "mean_iou" in g
        cells = [
            label,
            f"{g['mb']:.2f}",
            f"{g['mean_iou']:.4f} / {g['worst_iou']:.4f}" if judged else "(fp32)",
            ("met" if g["bar_met"] else "**missed**") if judged else "-",
        ]
        for n in points:
            p = g["points"][n]
            cells.append(_common.ratio_cell(p["over_official"]))
        rows.append(cells)
    header = ["graph", "MB", "held-out IoU mean / worst", "bar"]
    header += [f"official / this, {n} pt" for n in points]
    load = result["loadavg_1_5_15"]
    kept = "; ".join(
        f"{label}: {', '.join(result['graphs'][label]['float_blocks']) or 'nothing'}"
        for label in SEARCHED.values()
    )
    return "\n".join(
        [
            f"# int8 in EdgeSAM's decoder on onnxruntime: where it pays ({result['date']})",
            "",
            _common.machine_md(result["machine"], result["date"], result["contention"]),
            f"- load average (1 min) {load['before'][0]:.1f} before, {load['after'][0]:.1f} after",
            f"- {s['weights']}; {s['rounds']} interleaved rounds per point count, 50 ms gap;"
            f" held-out: {s['heldout_images']} images, PyTorch embeddings, bar {s['bar']};"
            f" calibration: {s['calibration_images']} built-in images",
            f"- what the searches keep float: {kept}",
            "",
            _common.md_table(header, rows, [False, True, False, False] + [True] * len(points)),
            "",
            "Paired speed-up over the official-style fp32 export (median of per-round ratios,"
            " bootstrap 95% interval). The issue 17 target for an int8 decoder: 1.5x at the bar.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--points", default="1,5,16")
    args = parser.parse_args()
    points = [int(p) for p in args.points.split(",")]
    raise SystemExit(_common.main(NAME, lambda: run(args.rounds, points), render))

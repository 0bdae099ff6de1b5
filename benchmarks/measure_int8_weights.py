"""Weight-only int8 (`--quantize int8-weights`): model bytes against end-to-end mask IoU.

Where the error comes from and what each byte buys, measured rather than guessed: both graphs
exported fp32 once; every encoder weight ranked by the search's own sensitivity pass
(`host/quantize/search.Evaluator.quick`: embeddings SQNR with only that weight int8, first
selection image) and ordered as the search orders them (harm per byte, `search.rank`); then
for each k the first k encoder weights kept float16
(`WeightQuantizer`), the decoder all int8 (its dense positional encoding float16), and the
pair judged end to end against fp32 PyTorch with the mask bar on the SELECTION images (the
calibration set, seeds 1000+: what the search chooses on) and on the HELD-OUT images (the
parity test image + seeds 0+: what the bar is judged on, never used to choose). Also the
encoder-only and decoder-only splits at k = 0. No timing (weight-only int8 runs the float
kernels); the load is recorded because it only changes how long this takes.

    python benchmarks/measure_int8_weights.py [--model edge_sam] [--ks 0,4,8,16,24,32,48,64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (pins threads before numpy/onnxruntime load)
from _common import log, main, md_table, now_utc

BOUND = 15_000_000  # issue 17: the int8 page's EdgeSAM models


def _session(proto: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


class EndToEnd:
    """fp32 PyTorch answers on one image set (computed once), and the mask bar of candidate
    (encoder, decoder) protos (None: PyTorch's) against them."""

    def __init__(self, loaded: Any, inputs: Any) -> None:
        from edgesam_export.host.reference import reference_sessions

        encoder, decoders = reference_sessions(loaded)
        self.decoder, self.inputs = decoders[False], inputs
        self.emb = [encoder.run({"image": t})["image_embeddings"] for t in inputs.tensors]
        self.ref = [self.decoder.run(f) for f in inputs.decoder_feeds(self.emb)]

    def __call__(self, encoder: Any, decoder: Any) -> dict[str, Any]:
        from edgesam_export.device.mask_bar import mask_bar

        if encoder is None:
            emb = self.emb
        else:
            enc = _session(encoder)
            emb = [enc.run(None, {"image": t})[0] for t in self.inputs.tensors]
        feeds = list(self.inputs.decoder_feeds(emb))
        if decoder is None:
            got = [self.decoder.run(f)["masks"] for f in feeds]
        else:
            dec = _session(decoder)
            got = [dec.run(["masks"], f)[0] for f in feeds]
        pairs = [(r["scores"], r["masks"], g) for r, g in zip(self.ref, got, strict=True)]
        r = mask_bar(pairs)
        return {
            "mean_iou": r.mean_iou,
            "worst_iou": r.worst_iou,
            "masks": r.count,
            "passed": r.passed,
        }


def run(model: str, ks: list[int], images: int) -> dict[str, Any]:
    import numpy as np
    import onnx

    from edgesam_export.device.mask_bar import MaskBar
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize.data import (
        CALIBRATION_PROMPT_SEED,
        HELDOUT_PROMPT_SEED,
        calibration_images,
        heldout_images,
        prepare,
    )
    from edgesam_export.host.quantize.search import Evaluator, _preprocessing, rank
    from edgesam_export.host.quantize.weights import WeightQuantizer
    from edgesam_export.host.targets.onnx import export

    t0, load0 = time.perf_counter(), os.getloadavg()
    loaded = load_model(None, model=model, synthetic="calibrated")
    params = _preprocessing(loaded)
    sets = {
        "selection": prepare(calibration_images(None, images), params, CALIBRATION_PROMPT_SEED),
        "heldout": prepare(heldout_images(images), params, HELDOUT_PROMPT_SEED),
    }
    fp32: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for graph in ("encoder", "decoder"):
            log(f"exporting the fp32 {graph}")
            art = export(loaded, graph, OnnxOptions(output=Path(tmp), graphs=(graph,)))
            fp32[graph] = onnx.load(str(art.path))
    enc_q, dec_q = WeightQuantizer(fp32["encoder"]), WeightQuantizer(fp32["decoder"])
    sizes = {t.name: int(np.prod(t.dims)) for t in fp32["encoder"].graph.initializer}
    judges = {name: EndToEnd(loaded, inputs) for name, inputs in sets.items()}
    quick = Evaluator("encoder", loaded, sets["selection"], MaskBar())
    sensitivity = []
    for i, name in enumerate(enc_q.names, 1):
        db = quick.quick(enc_q.quantize(only=[name]))
        sensitivity.append({"block": name, "elements": sizes[name], "sqnr_db": db})
        log(f"sensitivity [{i}/{len(enc_q.names)}] {name}: {db:.1f} dB")
    ranking = rank(sensitivity, enc_q.costs())  # the search's own order (harm per byte)
    decoder = dec_q.quantize()
    dec_bytes = len(decoder.SerializeToString())
    splits = {
        name: {"encoder_only": judge(enc_q.quantize(), None), "decoder_only": judge(None, decoder)}
        for name, judge in judges.items()
    }
    frontier = []
    for k in ks:
        encoder = enc_q.quantize(exclude=ranking[:k])
        row: dict[str, Any] = {
            "k": k,
            "float16_weights": ranking[:k],
            "encoder_bytes": len(encoder.SerializeToString()),
            "decoder_bytes": dec_bytes,
        }
        row["bytes"] = row["encoder_bytes"] + dec_bytes
        for name, judge in judges.items():
            row[name] = judge(encoder, decoder)
        frontier.append(row)
        log(
            f"k={k}: {row['bytes'] / 1e6:.2f} MB, selection {row['selection']['mean_iou']:.4f}"
            f"/{row['selection']['worst_iou']:.4f}, held-out {row['heldout']['mean_iou']:.4f}"
            f"/{row['heldout']['worst_iou']:.4f} (load {os.getloadavg()[0]:.1f})"
        )
    return {
        "date": now_utc(),
        "model": model,
        "weights": "synthetic-calibrated(seed=0)",
        "images_per_set": images,
        "fp32_bytes": sum(len(p.SerializeToString()) for p in fp32.values()),
        "sensitivity": sensitivity,
        "splits_at_k0": splits,
        "frontier": frontier,
        "load": {"start": load0, "end": os.getloadavg()},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def render(r: dict[str, Any]) -> str:
    rows = [
        [
            str(p["k"]),
            f"{p['encoder_bytes'] / 1e6:.2f}",
            f"{p['bytes'] / 1e6:.2f}",
            f"{p['selection']['mean_iou']:.4f} / {p['selection']['worst_iou']:.4f}",
            f"{p['heldout']['mean_iou']:.4f} / {p['heldout']['worst_iou']:.4f}",
            "met" if p["heldout"]["passed"] and p["bytes"] <= BOUND else "**missed**",
        ]
        for p in r["frontier"]
    ]
    table = md_table(
        [
            "float16 encoder weights",
            "encoder MB",
            "both MB",
            "selection mean / worst",
            "held-out mean / worst",
            "bar + 15 MB",
        ],
        rows,
        [True, True, True, False, False, False],
    )
    s = r["splits_at_k0"]
    split = "\n".join(
        f"- {name}, all int8: encoder only {v['encoder_only']['mean_iou']:.4f} /"
        f" {v['encoder_only']['worst_iou']:.4f}, decoder only {v['decoder_only']['mean_iou']:.4f}"
        f" / {v['decoder_only']['worst_iou']:.4f}"
        for name, v in s.items()
    )
    worst = sorted(r["sensitivity"], key=lambda x: x["sqnr_db"])[:8]
    sens = ", ".join(f"`{w['block']}` {w['sqnr_db']:.1f} dB" for w in worst)
    return (
        f"# int8-weights frontier: {r['model']} ({r['weights']})\n\n"
        f"- date: {r['date']}; load {r['load']['start'][0]:.1f} -> {r['load']['end'][0]:.1f};"
        f" {r['seconds']:.0f} s; {r['images_per_set']} images per set; fp32"
        f" {r['fp32_bytes'] / 1e6:.2f} MB\n"
        f"- mask bar mean >= 0.97, worst >= 0.90 against fp32 PyTorch, end to end\n\n"
        f"{table}\n\n{split}\n\nMost sensitive encoder weights (embeddings SQNR with only that"
        f" weight int8, first selection image): {sens}\n"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edge_sam")
    parser.add_argument("--ks", default="0,4,8,16,24,32,48,64")
    parser.add_argument("--images", type=int, default=3)
    a = parser.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    raise SystemExit(main(f"int8_weights_{a.model}", lambda: run(a.model, ks, a.images), render))

"""Which held-out image an ExecuTorch int8 encoder loses, and which blocks lose it (issue 18).

The int8 search (`executorch --precision int8`) chooses its float blocks on the calibration
images and is then judged once on all the held-out images together; a miss there fails the
export without saying which image missed. This script lowers the calibrated synthetic
encoder (`--model`) under a few per-call int8 plans (`Int8Plan(dynamic=True)`: every block
int8, and each `--plan NAME=BLOCK,BLOCK`, those blocks float; a block is a module path: one
of the search's blocks, as its report names them, or any module inside one, to find which part
of a block loses the masks) and judges each program with the search's own judge
(`executorch.int8_evaluator`) behind PyTorch's decoder on the held-out images, each image's
own result (its prompt sets, the bar 0.97 / 0.90 against fp32 PyTorch).

    python benchmarks/measure_executorch_int8_images.py --model efficientvit_sam_l0 \
        --plan "backbone float=image_encoder.backbone.stages.0,...,image_encoder.backbone.stages.4"

Writes `results/executorch_int8_images_<model>.{json,md}`. Accuracy only: nothing is timed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgesam_export.host.config import ExecuTorchOptions
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize.data import (
        HELDOUT_PROMPT_SEED,
        heldout_images,
        heldout_labels,
        prepare,
    )
    from edgesam_export.host.quantize.heldout import HELDOUT_IMAGES
    from edgesam_export.host.quantize.pt2e import Int8Plan
    from edgesam_export.host.targets.executorch import int8_evaluator

    loaded = load_model(None, model=args.model)
    held = prepare(heldout_images(HELDOUT_IMAGES), loaded.spec.preprocessing, HELDOUT_PROMPT_SEED)
    # the search's own judge, on the held-out images: a per-call plan calibrates nothing (its
    # activations are quantized per call), so judging there is not calibrating there
    options = ExecuTorchOptions(graphs=("encoder",), precision="int8")
    evaluator, _, blocks = int8_evaluator(loaded, "encoder", options, held)
    plans: dict[str, tuple[str, ...]] = {"every block int8": ()}
    for given in args.plans:
        name, _, names = given.partition("=")
        floats = tuple(b for b in names.split(",") if b)
        unknown = sorted(set(floats) - {n for n, _ in loaded.model.named_modules()})
        if unknown:
            raise SystemExit(f"--plan {name}: not modules of {args.model}: {unknown}")
        plans[name] = floats
    rows = []
    for name, floats in plans.items():
        t0 = time.perf_counter()
        result, *_ = evaluator.judge(Int8Plan(dynamic=True, float_blocks=floats))
        images = [{"image": i} | r for i, r in enumerate(result.to_json()["images"])]
        _common.log(f"{name}: {time.perf_counter() - t0:.0f} s")
        rows.append({"plan": name, "float_blocks": list(floats), "images": images})
    return {
        "date": _common.now_utc(),
        "model": args.model,
        "blocks": blocks,
        "heldout": "; ".join(
            f"image {i}: {label}" for i, label in enumerate(heldout_labels(HELDOUT_IMAGES))
        ),
        "plans": rows,
    }


def render(result: dict[str, Any]) -> str:
    images = len(result["plans"][0]["images"])
    table = [
        [
            f"{p['plan']} ({len(p['float_blocks'])} float)",
            *(
                f"{r['mean_iou']:.4f} / {r['worst_iou']:.4f}" + ("" if r["passed"] else " (misses)")
                for r in p["images"]
            ),
        ]
        for p in result["plans"]
    ]
    header = ["plan", *(f"held-out image {i}" for i in range(images))]
    lines = [
        f"# ExecuTorch per-call int8 encoder of {result['model']}: mask IoU per held-out image",
        "",
        f"- date: {result['date']}; calibrated synthetic weights; behind PyTorch's decoder,"
        " against fp32 PyTorch; bar 0.97 / 0.90 per image",
        f"- {result['heldout']}",
        f"- blocks: {', '.join(result['blocks'])}",
        "",
        _common.md_table(header, table),
    ]
    for p in result["plans"]:
        if p["float_blocks"]:
            lines.append(f"\n`{p['plan']}`: {', '.join(p['float_blocks'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edge_sam")
    parser.add_argument(
        "--plan",
        dest="plans",
        action="append",
        default=[],
        help="NAME=BLOCK,BLOCK: a plan with those blocks float (repeatable)",
    )
    ns = parser.parse_args()
    name = f"executorch_int8_images_{ns.model}"
    raise SystemExit(_common.main(name, lambda: run(ns), render))

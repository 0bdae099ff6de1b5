"""PyTorch eager (the parity reference) vs our ONNX artifacts on onnxruntime: latency per stage.

Run from the repository root:  python benchmarks/bench_latency.py

One process, one set of weights (synthetic seed 0, default bicubic model): the model is exported
to ONNX in a temporary directory and the same loaded model serves as the PyTorch reference.
Each stage is timed interleaved (torch, onnx, torch, onnx, ...) so drift hits both equally:
the encoder, the decoder with N = 1, 5 and 16 points, one box, and 8 boxes in one call.
Writes benchmarks/results/bench_latency.{json,md} and prints the tables. Targets are reported
(met / missed), never asserted.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np

from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import (
    BOX_SINGLE_STAGE,
    Timing,
    box_batch_stage,
    box_set_ratio,
    encoder_input,
    session_stages,
    set_threads,
    time_interleaved,
)
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.pipeline import export_artifacts
from edgesam_export.host.reference import reference_sessions

NAME = "bench_latency"
POINTS = (1, 5, 16)
BOX_BATCH = 8
# (warm-up rounds, timed rounds) per stage kind; a round times both backends once.
PLAN = {"encoder": (2, 25), "decoder": (5, 60), "batched": (2, 25)}
MAX_SECONDS_PER_STAGE = 40.0
# Idle before each timed call so the previous backend's spinning worker threads park first;
# back-to-back, each runtime's spin-waits slowed the other one down by 30-70 % on 2 cores.
GAP_S = 0.05
SPEEDUP_TARGETS = {"encoder": 1.6, "decoder": 1.7}  # torch p50 / onnx p50, at least
BOX_RATIO_TARGET = 1.0  # (8 boxes in one call / 8) / one box, at most


def _plan(name: str) -> tuple[int, int]:
    if name == "encoder":
        return PLAN["encoder"]
    return PLAN["batched"] if name == box_batch_stage(BOX_BATCH) else PLAN["decoder"]


def _target(name: str) -> float | None:
    if name == "encoder":
        return SPEEDUP_TARGETS["encoder"]
    if name.startswith("decoder N="):
        return SPEEDUP_TARGETS["decoder"]
    return None


def run() -> dict[str, Any]:
    set_threads(_common.THREADS)
    start = _common.RunStart()
    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as tmp:
        _common.log("exporting synthetic seed-0 weights (bicubic) to ONNX")
        t0 = time.perf_counter()
        loaded, artifacts = export_artifacts(
            ModelOptions(seed=0), "onnx", OnnxOptions.model_validate({"output": Path(tmp)})
        )
        export_s = time.perf_counter() - t0
        paths = {a.graph: a.path for a in artifacts}
        torch_enc, torch_decs = reference_sessions(loaded)
        ort_enc = open_session(paths["encoder"], threads=_common.THREADS)
        ort_dec = open_session(paths["decoder"], threads=_common.THREADS)

        # Same weights, same maths: the embeddings must agree before timings mean anything.
        feeds = {"image": encoder_input(ort_enc)}
        emb_diff = float(
            np.abs(
                torch_enc.run(feeds)["image_embeddings"] - ort_enc.run(feeds)["image_embeddings"]
            ).max()
        )

        stages = {
            "torch": session_stages(
                torch_enc, torch_decs[False], points=POINTS, box_batch=BOX_BATCH
            ),
            "onnx": session_stages(ort_enc, ort_dec, points=POINTS, box_batch=BOX_BATCH),
        }
        timings: list[Timing] = []
        for st_torch, st_onnx in zip(stages["torch"], stages["onnx"], strict=True):
            assert st_torch.name == st_onnx.name
            warmup, iters = _plan(st_torch.name)
            _common.log(f"timing {st_torch.name}: {warmup} + {iters} interleaved rounds")
            samples = time_interleaved(
                {"torch": st_torch.call, "onnx": st_onnx.call},
                warmup=warmup,
                iters=iters,
                max_seconds=MAX_SECONDS_PER_STAGE,
                gap_s=GAP_S,
            )
            timings += [Timing(st_torch.name, b, samples[b]) for b in ("torch", "onnx")]
        del ort_enc, ort_dec

    by_key = {(t.name, t.backend): t for t in timings}
    names = list(dict.fromkeys(t.name for t in timings))
    speedups = {n: by_key[n, "torch"].p50 / by_key[n, "onnx"].p50 for n in names}
    box = {b: box_set_ratio(timings, BOX_BATCH, backend=b) for b in ("torch", "onnx")}
    targets = [
        {
            "check": f"{n}: torch p50 / onnx p50",
            "target": f">= {_target(n)}",
            "measured": speedups[n],
            "met": speedups[n] >= (_target(n) or 0.0),
        }
        for n in names
        if _target(n) is not None
    ]
    if box["onnx"] is not None:
        targets.append(
            {
                "check": f"onnx {BOX_BATCH} boxes in one call, per set / one box",
                "target": f"<= {BOX_RATIO_TARGET}",
                "measured": box["onnx"],
                "met": box["onnx"] <= BOX_RATIO_TARGET,
            }
        )
    return {
        **start.header(NAME),
        "settings": {
            "threads": _common.THREADS,
            "points": list(POINTS),
            "box_batch": BOX_BATCH,
            "plan_warmup_iters": PLAN,
            "weights": "synthetic seed 0, bicubic",
            "interleaved": True,
            "gap_before_each_call_s": GAP_S,
        },
        "export_seconds": round(export_s, 1),
        "embedding_max_abs_diff": emb_diff,
        "timings": [t.to_json() for t in timings],
        "speedups": speedups,
        "box_ratios": box,
        "targets": targets,
    }


def render(result: dict[str, Any]) -> str:
    timings = [Timing(t["name"], t["backend"], tuple(t["samples_ms"])) for t in result["timings"]]
    by_key = {(t.name, t.backend): t for t in timings}
    names = list(dict.fromkeys(t.name for t in timings))
    rows = []
    for n in names:
        tt, to = by_key[n, "torch"], by_key[n, "onnx"]
        target = _target(n)
        speedup = result["speedups"][n]
        rows.append(
            [
                n,
                f"{tt.p50:.1f}",
                f"{tt.p90:.1f}",
                f"{to.p50:.1f}",
                f"{to.p90:.1f}",
                str(len(tt.samples_ms)),
                f"{speedup:.2f}x",
                "-" if target is None else f">= {target}x",
                "-" if target is None else _common.met(speedup >= target),
            ]
        )
    latency = _common.md_table(
        [
            "stage",
            "torch p50 ms",
            "torch p90 ms",
            "onnx p50 ms",
            "onnx p90 ms",
            "n",
            "speed-up (torch/onnx p50)",
            "target",
            "met",
        ],
        rows,
        right=[False, True, True, True, True, True, True, False, False],
    )
    box_rows = []
    for backend in ("torch", "onnx"):
        ratio = result["box_ratios"][backend]
        single = by_key[BOX_SINGLE_STAGE, backend].p50
        batched = by_key[box_batch_stage(BOX_BATCH), backend].p50
        on_target = backend == "onnx"
        box_rows.append(
            [
                backend,
                f"{batched:.1f}",
                f"{batched / BOX_BATCH:.1f}",
                f"{single:.1f}",
                f"{ratio:.2f}",
                f"<= {BOX_RATIO_TARGET}" if on_target else "(info)",
                _common.met(ratio <= BOX_RATIO_TARGET) if on_target else "-",
            ]
        )
    boxes = _common.md_table(
        [
            "backend",
            f"{BOX_BATCH} boxes, one call (ms)",
            "per box (ms)",
            "1 box alone (ms)",
            "per-set ratio",
            "target",
            "met",
        ],
        box_rows,
        right=[False, True, True, True, True, False, False],
    )
    header = _common.machine_md(result["machine"], result["date"], result["contention"])
    return (
        "# bench_latency: PyTorch eager vs ONNX on onnxruntime\n\n"
        f"{header}\n- weights: synthetic seed 0, bicubic neck (identical in both backends; max"
        f" |embedding difference| {result['embedding_max_abs_diff']:.1e})\n"
        "- interleaved per stage (torch, onnx, torch, onnx, ...) after warm-up, with an untimed"
        f" {result['settings']['gap_before_each_call_s'] * 1e3:.0f} ms idle gap before each call"
        " (lets the other runtime's spinning threads park); ms per call\n\n"
        f"{latency}\n\n"
        f"Batch of {BOX_BATCH} boxes in one decoder call vs one box per call"
        " (per-set ratio = (batched ms / 8) / single-box ms; below 1.0 batching pays):\n\n"
        f"{boxes}\n"
    )


if __name__ == "__main__":
    raise SystemExit(_common.main(NAME, run, render))

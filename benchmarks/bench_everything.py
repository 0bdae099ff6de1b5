"""Segment everything: our numpy generator on ONNX vs segment-anything's, side by side.

Ours: `device.everything.MaskGenerator` over `Predictor` on our ONNX artifacts (onnxruntime),
B grid points per decoder call. Official: segment-anything's `SamAutomaticMaskGenerator`
(PyTorch, torchvision's `batched_nms`) over segment-anything's own `Sam` built from the same
weights: its `PromptEncoder` and `MaskDecoder` load our model's state dicts (official key names,
strict), and the image encoder is our PyTorch EdgeSAM encoder, the module the ONNX encoder was
exported from. Same image, same parameters, `score="iou"` on our side (SAM's generator filters
on the IoU head). Synthetic seed-0 weights, default (bicubic) neck.

Each measurement runs in a fresh child process (so peak memory is per side: the high-water
mark of resident memory is reset with /proc/self/clear_refs just before `generate`), after one
untimed warm-up `generate`; sides alternate, repeated `--repeats` times. Masks are compared by
IoU between the two sides' records.

segment-anything needs torchvision, which does not import beside the project's torch 2.13, so
run this from a separate environment (not a project dependency):

    python3.11 -m venv /work/wt/venvs/everything-bench
    /work/wt/venvs/everything-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        segment-anything onnx onnxruntime onnxslim pydantic typer rich pyyaml
    /work/wt/venvs/everything-bench/bin/python benchmarks/bench_everything.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np

NAME = "bench_everything"
IMAGE = _common.HERE.parent / "tests" / "fixtures" / "edge_sam" / "golden_seed0.npz"
#: Parameter sets. Synthetic weights predict IoU <= 0.6 and full-size stability <= 0.1, so
#: SAM's default thresholds keep nothing (both generators still decode every grid point; the
#: official one also upscales every mask); "loose" lets masks through both filters so that the
#: outputs can be compared and the full pipeline (upscale, boxes, NMS, RLE) is exercised.
#: The last set repeats "loose" with 16 points per decoder call: onnxruntime's arena keeps the
#: decoder's activations for the largest batch seen (about 1.7 GB at 64 prompts), and on CPU a
#: batch of 16 costs about the same per prompt.
CONFIGS: dict[str, dict[str, Any]] = {
    "sam-defaults": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
    "loose": {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.0},
    "loose-b16": {
        "pred_iou_thresh": 0.4,
        "stability_score_thresh": 0.0,
        "points_per_batch": 16,
    },
}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _official_model() -> Any:
    import torch
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from edgesam_export.host.models import load_model

    torch.set_num_threads(_common.THREADS)
    loaded = load_model(None, seed=0, synthetic="untrained")
    spec = loaded.spec
    encoder = loaded.model.image_encoder
    encoder.img_size = spec.img_size  # what SamPredictor reads
    side = spec.img_size // 16
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(side, side),
            input_image_size=(spec.img_size, spec.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=spec.num_mask_tokens - 1,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(spec.pixel_mean),
        pixel_std=list(spec.pixel_std),
    )
    sam.prompt_encoder.load_state_dict(loaded.model.prompt_encoder.state_dict(), strict=True)
    sam.mask_decoder.load_state_dict(loaded.model.mask_decoder.state_dict(), strict=True)
    return sam.eval()


def _our_predictor(artifacts: Path) -> Any:
    from edgesam_export.device.backends import open_session
    from edgesam_export.device.predictor import Predictor

    return Predictor(
        open_session(artifacts / "edge_sam_encoder.onnx", threads=_common.THREADS),
        open_session(artifacts / "edge_sam_decoder.onnx", threads=_common.THREADS),
    )


def _generator(side: str, model: Any, params: dict[str, Any]) -> Any:
    if side == "official":
        from segment_anything import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **params)
    from edgesam_export.device.everything import MaskGenerator

    return MaskGenerator(model, output_mode="uncompressed_rle", score="iou", **params)


def child(side: str, artifacts: Path, params: dict[str, Any]) -> dict[str, Any]:
    """One timed `generate` in this process: seconds, memory, records."""
    image = np.load(IMAGE)["image"]
    rss_start = _rss_kb("VmRSS")
    model = _official_model() if side == "official" else _our_predictor(artifacts)
    # Warm-up on the same model / sessions with one full decoder batch, so that allocators
    # and thread pools are in their steady state before the timed run.
    warm_side = max(1, int(params["points_per_batch"] ** 0.5))
    _generator(side, model, {**params, "points_per_side": warm_side}).generate(image)
    gen = _generator(side, model, params)
    rss_before = _rss_kb("VmRSS")
    _reset_peak()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    records = gen.generate(image)
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    peak = _rss_kb("VmHWM")
    out: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_start_mb": rss_start / 1024,
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": peak / 1024,
        "generate_peak_delta_mb": (peak - rss_before) / 1024,
        "records": [
            {
                "counts": r["segmentation"]["counts"],
                "size": r["segmentation"]["size"],
                "area": int(r["area"]),
                "bbox": [float(v) for v in r["bbox"]],
                "predicted_iou": float(r["predicted_iou"]),
                "stability_score": float(r["stability_score"]),
            }
            for r in records
        ],
    }
    if side == "ours":
        out["stats"] = gen.stats.to_json()
    return out


def _run_child(side: str, artifacts: Path, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--artifacts",
        str(artifacts),
        "--params",
        json.dumps(params),
    ]
    env = {**os.environ, "PYTHONPATH": str(_common.HERE.parent)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(ours: list[dict[str, Any]], official: list[dict[str, Any]]) -> dict[str, Any]:
    """One-to-one matching of masks by IoU (greedy, most certain first)."""
    from edgesam_export.device.everything import rle_to_mask

    if not ours or not official:
        return {"ours": len(ours), "official": len(official), "matched": 0, "min_iou": None}

    def mat(recs: list[dict[str, Any]]) -> np.ndarray:
        return np.stack([rle_to_mask(r) for r in recs]).reshape(len(recs), -1).astype(np.float32)

    a, b = mat(ours), mat(official)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None, :] - inter, 1.0)
    used: set[int] = set()
    ious, score_diffs = [], []
    for j in np.argsort(-iou.max(axis=0), kind="stable"):
        for i in np.argsort(-iou[:, j], kind="stable"):
            if int(i) in used:
                continue
            if iou[i, j] >= 0.5:
                used.add(int(i))
                ious.append(float(iou[i, j]))
                score_diffs.append(abs(ours[i]["predicted_iou"] - official[j]["predicted_iou"]))
            break
    return {
        "ours": len(ours),
        "official": len(official),
        "matched": len(ious),
        "min_iou": min(ious) if ious else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "max_predicted_iou_diff": max(score_diffs) if score_diffs else None,
    }


class _TreeCpuMonitor(_common.CpuMonitor):
    """CpuMonitor that counts the child processes (the measured sides) as this run's own."""

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        base = _common.CpuMonitor._snapshot()
        if base is None:
            return None
        t = os.times()
        return base[0], base[1], base[2] + t.children_user + t.children_system


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgesam_export.device.bench import machine_info

    monitor = _TreeCpuMonitor()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(args.artifacts) if args.artifacts else Path(tmp)
        if not args.artifacts:
            from edgesam_export.host.config import ModelOptions, OnnxOptions
            from edgesam_export.host.pipeline import export_artifacts

            _common.log("exporting the ONNX artifacts (synthetic seed-0 weights, bicubic neck)")
            export_artifacts(
                ModelOptions(synthetic="untrained"), "onnx", OnnxOptions(output=artifacts)
            )
        results: dict[str, Any] = {}
        for name, thresholds in CONFIGS.items():
            if args.configs and name not in args.configs.split(","):
                continue
            params = {
                "points_per_side": args.points_per_side,
                "points_per_batch": args.points_per_batch,
                **thresholds,
            }
            runs: dict[str, list[dict[str, Any]]] = {"official": [], "ours": []}
            for rep in range(args.repeats):
                order = ("official", "ours") if rep % 2 == 0 else ("ours", "official")
                for side in order:
                    _common.log(f"{name}: {side} (round {rep + 1}/{args.repeats})")
                    runs[side].append(_run_child(side, artifacts, params))
            summary = {
                side: {
                    "seconds": [r["seconds"] for r in rs],
                    "median_s": float(np.median([r["seconds"] for r in rs])),
                    "cpu_s": [r["cpu_seconds"] for r in rs],
                    "median_cpu_s": float(np.median([r["cpu_seconds"] for r in rs])),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                    "generate_peak_delta_mb": max(r["generate_peak_delta_mb"] for r in rs),
                    "masks": len(rs[-1]["records"]),
                }
                for side, rs in runs.items()
            }
            summary["ours"]["stats"] = runs["ours"][-1]["stats"]
            summary["speedup"] = summary["official"]["median_s"] / summary["ours"]["median_s"]
            summary["cpu_ratio"] = (
                summary["official"]["median_cpu_s"] / summary["ours"]["median_cpu_s"]
            )
            summary["masks_compared"] = compare(
                runs["ours"][-1]["records"], runs["official"][-1]["records"]
            )
            summary["params"] = params
            results[name] = summary
    return {
        "name": NAME,
        "date": _common.now_utc(),
        "machine": machine_info(),
        "contention": monitor.result(),
        "threads": _common.THREADS,
        "image": "tests/fixtures/edge_sam/golden_seed0.npz `image` (480x640)",
        "repeats": args.repeats,
        "results": results,
        "target_speedup": 2.0,
    }


def _mb(side: dict[str, Any]) -> str:
    return f"{side['generate_peak_delta_mb']:.0f} / {side['peak_rss_mb']:.0f}"


def render(result: dict[str, Any]) -> str:
    rows = []
    for name, s in result["results"].items():
        c = s["masks_compared"]
        iou = "-" if c["min_iou"] is None else f"{c['min_iou']:.4f}"
        rows.append(
            [
                name,
                str(s["params"]["points_per_batch"]),
                f"{s['official']['median_s']:.1f}",
                f"{s['ours']['median_s']:.1f}",
                f"{s['speedup']:.2f}x",
                f"{s['official']['median_cpu_s']:.1f} / {s['ours']['median_cpu_s']:.1f}"
                f" ({s['cpu_ratio']:.2f}x)",
                _common.met(s["speedup"] >= result["target_speedup"]),
                _mb(s["official"]),
                _mb(s["ours"]),
                f"{s['official']['masks']} / {s['ours']['masks']}",
                f"{c['matched']} (min IoU {iou})",
            ]
        )
    p = next(iter(result["results"].values()))["params"]
    table = _common.md_table(
        [
            "params",
            "batch",
            "official s",
            "ours s",
            "speed-up",
            "CPU s official / ours",
            "target 2x",
            "official MB (generate / peak)",
            "ours MB (generate / peak)",
            "masks (official / ours)",
            "matched",
        ],
        rows,
        right=[False, True, True, True, True, True, False, True, True, True, False],
    )
    info = result["machine"]
    lines = [
        "# Segment everything: ours (numpy + onnxruntime) vs segment-anything (PyTorch)",
        "",
        _common.machine_md(info, result["date"], result["contention"]),
        f"- image: {result['image']}; {p['points_per_side']}x{p['points_per_side']} points,"
        f" batch = points per decoder call; median of {result['repeats']} run(s) per side, each"
        " in a fresh process after one warm-up batch",
        "",
        table,
        "",
        "Seconds: wall time of `generate` (speed-up = official / ours); CPU s: its process CPU"
        " time (user + system, all threads), less sensitive to other load on the machine. "
        "MB: growth of peak resident memory during `generate` / peak resident memory of the"
        " process. Thresholds: "
        + "; ".join(
            f"{n}: pred_iou {s['params']['pred_iou_thresh']}, stability"
            f" {s['params']['stability_score_thresh']}"
            for n, s in result["results"].items()
        ),
    ]
    for name, s in result["results"].items():
        st = s["ours"]["stats"]
        calls = st["decoder_calls"]
        lines.append(
            f"- ours, {name}: {calls} decoder calls, {1000 * st['decoder_s'] / max(calls, 1):.0f}"
            f" ms per call (batch {s['params']['points_per_batch']}), {st['masks_upscaled']} of"
            f" {st['masks_decoded']} masks upscaled, postprocessing {st['postprocess_s']:.2f} s"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--artifacts", help="ONNX artifact dir (default: export to a temp dir)")
    parser.add_argument("--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--name", default=NAME, help="results/<name>.{json,md}")
    parser.add_argument("--child", choices=["ours", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.artifacts), json.loads(args.params))))
        return 0
    return _common.main(args.name, lambda: run(args), render)


if __name__ == "__main__":
    raise SystemExit(main())

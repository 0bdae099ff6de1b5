"""Float32 noise per family group: PyTorch reference vs the ONNX export, on held-out inputs.

The fp32 ONNX parity tolerances (`device/tolerances.py`) are derived from what this script
measures: for each family group (`tolerances.FAMILY_GROUPS`), the smallest model of the group
with synthetic weights (the kinds the tests and the CLI use: `untrained`, and `calibrated` where
the model has BatchNorm statistics to recalibrate), exported to ONNX and run on onnxruntime.
The inputs are held out: three generated images that are not the parity test image (the
calibration image of the fp16 analysis and of every parity run), of other sizes and aspect
ratios, each with its own prompt seed, so a tolerance is never fitted to the inputs it judges.

Per check (the names parity judges) it records the worst max |ONNX - PyTorch| over all images,
prompt sets and weight kinds, the reference's scale and the smallest mask IoU; the derived row
is `tolerances.derive_tolerance` of the worst value (NOISE_SAFETY x, rounded up to one
significant digit). Runs one model at a time and rewrites the result files after each, so an
interrupted run keeps what it finished.

    python benchmarks/measure_noise.py                      # four groups: ~45 min, 2 busy cores
    python benchmarks/measure_noise.py --models mobile_sam  # one group
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
import torch

from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import machine_info, set_threads
from edgesam_export.device.contract import VIDEO_GRAPHS
from edgesam_export.device.judge_video import video_cases
from edgesam_export.device.parity import compare_arrays, mask_metrics, prompt_cases
from edgesam_export.device.predictor import decoder_feeds
from edgesam_export.device.runtime import Session
from edgesam_export.device.tolerances import (
    FAMILY_GROUPS,
    NOISE_FLOOR,
    NOISE_SAFETY,
    RELATIVE_CHECKS,
    derive_tolerance,
)
from edgesam_export.host.config import OnnxOptions
from edgesam_export.host.models import LoadedModel, load_model
from edgesam_export.host.reference import reference_sessions, video_sessions

NAME = "noise_fp32"
# The smallest registered model of each family group.
MODELS = ("edge_sam", "slimsam_77", "mobile_sam", "efficientvit_sam_l0", "edgetam")
# (height, width, seed): none of them is the parity test image (480x640, seed 7).
HELD_OUT = ((600, 800, 101), (720, 540, 102), (512, 512, 103))


def held_out_image(height: int, width: int, seed: int) -> np.ndarray:
    """A generated RGB uint8 scene: a smooth random background, random filled ellipses and
    rectangles of random colours (hard edges), and sensor-like noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 8, 3))
    ys = np.linspace(0, coarse.shape[0] - 1, height)
    xs = np.linspace(0, coarse.shape[1] - 1, width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = (
        coarse[y0][:, x0] * (1 - fy) * (1 - fx)
        + coarse[y0][:, x1] * (1 - fy) * fx
        + coarse[y1][:, x0] * fy * (1 - fx)
        + coarse[y1][:, x1] * fy * fx
    )
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(12):
        colour = rng.uniform(0, 255, 3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.03, 0.25) * height, rng.uniform(0.03, 0.25) * width
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        img[mask] = colour
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _kinds(name: str) -> list[str]:
    """`untrained`, plus `calibrated` where it changes the weights (BatchNorm statistics)."""
    probe = load_model(None, model=name, synthetic="untrained")
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in probe.model.modules())
    return ["untrained", "calibrated"] if has_bn else ["untrained"]


def _export(loaded: LoadedModel, out: Path) -> dict[Any, Path]:
    """The ONNX encoder (key "encoder"), IoU decoder (False) and stability decoder (True; the
    SAM 2 layout has none)."""
    from edgesam_export.host.targets.onnx import export

    paths: dict[Any, Path] = {"encoder": export(loaded, "encoder", OnnxOptions(output=out)).path}
    for stab in (False, True) if loaded.spec.io_layout != "sam2" else (False,):
        options = OnnxOptions(output=out, use_stability_score=stab)
        paths[stab] = export(loaded, "decoder", options).path
    for graph in (g for g in loaded.spec.graphs if g in VIDEO_GRAPHS):  # EdgeTAM's tracker
        paths[graph] = export(loaded, graph, OnnxOptions(output=out)).path  # type: ignore[arg-type]
    return paths


def _update(row: dict[str, Any], metrics: dict[str, float], scale: float, where: str) -> None:
    if metrics["max_abs"] >= row.get("max_abs", -1.0):
        row["max_abs"], row["worst"] = metrics["max_abs"], where
    row["mean_abs"] = max(row.get("mean_abs", 0.0), metrics["mean_abs"])
    row["rel"] = max(row.get("rel", 0.0), metrics["rel"])
    row["reference_scale"] = max(row.get("reference_scale", 0.0), scale)
    if "min_mask_iou" in metrics:
        row["min_mask_iou"] = min(row.get("min_mask_iou", 1.0), metrics["min_mask_iou"])
    row["samples"] = row.get("samples", 0) + 1


def _measure(
    ref_enc: Session,
    ref_decs: dict[bool, Session],
    sessions: dict[Any, Session],
    ref_video: dict[str, Session],
) -> dict[str, dict[str, Any]]:
    """Every parity check's worst case over the held-out images and their prompt sets: each
    encoder output (SAM 2: the embeddings and both high-resolution features), and the decoder
    fed every encoder output it takes by name (`predictor.decoder_feeds`, as parity does); the
    video graphs each on the reference chain's calls (`judge_video.video_cases`)."""
    checks: dict[str, dict[str, Any]] = {}
    params = P.Preprocessing.from_metadata(ref_enc.metadata)
    for h, w, seed in HELD_OUT:
        tensor, info = P.preprocess(held_out_image(h, w, seed), params=params)
        ref_feats = ref_enc.run({"image": tensor})
        own_feats = sessions["encoder"].run({"image": tensor})
        image = f"{h}x{w} seed {seed}"
        for name, ref_out in ref_feats.items():
            scale = float(np.abs(ref_out).max())
            row = checks.setdefault(name, {})
            _update(row, compare_arrays(own_feats[name], ref_out), scale, image)
        cases = prompt_cases(params.frame, info.input_size, seed=seed)
        for call in video_cases(ref_video, tensor, cases) if ref_video else []:
            out = sessions[call.graph].run(call.feeds)
            for name, ref_out in call.outputs.items():
                row = checks.setdefault(f"{call.graph}.{name}", {})
                scale = float(np.abs(ref_out).max())
                _update(row, compare_arrays(out[name], ref_out), scale, f"{image}, {call.name}")
        for case in cases:
            coords, labels = case.point_coords, case.point_labels
            for stab in [k for k in (False, True) if k in sessions]:
                dec = sessions[stab]
                if dec.accepts(decoder_feeds(dec, ref_feats, coords, labels)) is not None:
                    continue
                ref = ref_decs[stab].run(decoder_feeds(ref_decs[stab], ref_feats, coords, labels))
                score_key = "stability_scores" if stab else "scores"
                for stage, feats in (("decoder", ref_feats), ("end_to_end", own_feats)):
                    out = dec.run(decoder_feeds(dec, feats, coords, labels))
                    where = f"{image}, {case.name}"
                    s = compare_arrays(out["scores"], ref["scores"])
                    row = checks.setdefault(f"{stage}.{score_key}", {})
                    _update(row, s, float(np.abs(ref["scores"]).max()), where)
                    if stab:  # the masks of both flavours are the same tensor
                        continue
                    m = compare_arrays(out["masks"], ref["masks"])
                    m.update(mask_metrics(out["masks"], ref["masks"], out["scores"], ref["scores"]))
                    row = checks.setdefault(f"{stage}.masks", {})
                    _update(row, m, float(np.abs(ref["masks"]).max()), where)
                    if "object_score_logits" in out:  # SAM 2 layout
                        key = "object_score_logits"
                        o = compare_arrays(out[key], ref[key])
                        row = checks.setdefault(f"{stage}.object_scores", {})
                        _update(row, o, float(np.abs(ref[key]).max()), where)
    return checks


def _plan(models: list[str]) -> list[tuple[str, str]]:
    """(model, weight kind): every group's `untrained` weights first, then `calibrated`."""
    kinds = {name: _kinds(name) for name in models}
    return [
        (name, kind)
        for kind in ("untrained", "calibrated")
        for name in models
        if kind in kinds[name]
    ]


def _derive(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per group and check: the worst measured value (max abs, or for the group's scale-relative
    checks `tolerances.RELATIVE_CHECKS` max abs / max |reference|), where, the derived row."""
    derived: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        relative = RELATIVE_CHECKS.get(r["group"], frozenset())
        for check, row in r["checks"].items():
            metric = "rel" if check in relative else "max_abs"
            slot = derived.setdefault(r["group"], {}).setdefault(check, {"max_abs": -1.0})
            if row[metric] > slot["max_abs"]:
                where = f"{r['model']} {r['weights']} {r['runtime']}: {row['worst']}"
                slot.update(max_abs=row[metric], source=where, metric=metric)
    for rows in derived.values():
        for slot in rows.values():
            slot["tolerance"] = derive_tolerance(slot["max_abs"])
    return derived


def run(models: list[str]) -> dict[str, Any]:
    """Measure the plan one model at a time; the result files are rewritten after each run,
    so an interrupted measurement keeps what it finished."""
    set_threads(_common.THREADS)
    monitor = _common.CpuMonitor()
    started = time.perf_counter()
    # Rerunning some models replaces their runs and keeps the others' (`--models`).
    previous = _common.RESULTS / f"{NAME}.json"
    kept = json.loads(previous.read_text())["runs"] if previous.exists() else []
    runs: list[dict[str, Any]] = [r for r in kept if r["model"] not in models]
    result: dict[str, Any] = {}
    for name, kind in _plan(models):
        loaded = load_model(None, model=name, synthetic=kind)  # type: ignore[arg-type]
        ref_enc, ref_decs = reference_sessions(loaded)
        _common.log(f"{name} ({kind} synthetic weights): exporting to onnx")
        with tempfile.TemporaryDirectory(prefix="noise-") as tmp:
            paths = _export(loaded, Path(tmp))
            sessions = {k: open_session(p) for k, p in paths.items()}
            _common.log(f"{name} ({kind}): measuring onnx")
            checks = _measure(ref_enc, ref_decs, sessions, video_sessions(loaded))
            label = getattr(sessions["encoder"], "runtime_label", "onnxruntime")
        runs.append(
            {
                "model": name,
                "family": loaded.spec.family,
                "group": FAMILY_GROUPS[loaded.spec.family],
                "weights": loaded.source,
                "backend": "onnx",
                "runtime": label,
                "date": _common.now_utc(),
                "load_avg_1m": machine_info().get("load_avg_1m"),
                "checks": checks,
            }
        )
        result = {
            "name": NAME,
            "date": _common.now_utc(),
            "machine": machine_info(),
            "contention": monitor.result(),
            "seconds": round(time.perf_counter() - started, 1),
            "held_out_images": [{"height": h, "width": w, "seed": s} for h, w, s in HELD_OUT],
            "rule": f"tolerance = {NOISE_SAFETY:g} x worst measured max abs (at least"
            f" {NOISE_FLOOR:g}), rounded up to one significant digit",
            "runs": runs,
            "derived": _derive(runs),
        }
        _common.write_results(NAME, result, render(result))
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Float32 noise per family group (PyTorch reference vs the ONNX export, onnxruntime)",
        "",
        _common.machine_md(result["machine"], result["date"], result["contention"]),
        f"- load average (1 min) at the end: {result['machine'].get('load_avg_1m', '?')}",
        f"- held-out inputs: {len(HELD_OUT)} generated images"
        f" ({', '.join(f'{h}x{w}' for h, w, _ in HELD_OUT)}; not the parity test image),"
        " the parity prompt kinds with each image's own seed",
        f"- rule: {result['rule']}",
        f"- wall time: {result['seconds']:.0f} s",
        "",
        "## Derived rows (worst case over images, prompt sets and weight kinds)",
        "",
    ]
    headers = ("group", "check", "measured max abs (rel: relative)", "tolerance", "worst case")
    rows = [
        (
            group,
            check,
            f"{s['max_abs']:.2e}{' rel' if s.get('metric') == 'rel' else ''}",
            f"{s['tolerance']:.0e}",
            s["source"],
        )
        for group, checks in result["derived"].items()
        for check, s in sorted(checks.items())
    ]
    lines += [_common.md_table(headers, rows, [False, False, True, True, False]), ""]
    lines += ["## Every run", ""]
    headers = (
        "model",
        "weights",
        "runtime",
        "check",
        "max abs",
        "rel",
        "mean abs",
        "ref scale",
        "IoU",
    )
    rows = []
    for r in result["runs"]:
        for check, s in sorted(r["checks"].items()):
            iou = f"{s['min_mask_iou']:.4f}" if "min_mask_iou" in s else ""
            rows.append(
                (
                    r["model"],
                    r["weights"],
                    r["runtime"],
                    check,
                    f"{s['max_abs']:.2e}",
                    f"{s['rel']:.1e}",
                    f"{s['mean_abs']:.1e}",
                    f"{s['reference_scale']:.3g}",
                    iou,
                )
            )
    lines.append(_common.md_table(headers, rows, [False] * 4 + [True] * 5))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    return _common.main(NAME, lambda: run(args.models), render)


if __name__ == "__main__":
    raise SystemExit(main())

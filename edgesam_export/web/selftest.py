"""Run the page's self-test in Chromium and judge it against the Python predictor.

The page (`index.html?selftest=IMAGE&prompts=x,y,label;...`) preprocesses the image, runs both
graphs in onnxruntime-web and post-processes in JavaScript; it reports, per decoder token, the
score, area, bounding box, sha256 of the thresholded mask and (with `rle=1`) its run lengths.
`python_reference` computes the same report with `Predictor` over the same ONNX files on
onnxruntime, and `agreement` says how far apart the two are. Used by the browser tests and
`benchmarks/bench_web.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.predictor import Predictor
from edgesam_export.web.browser import Page

Prompt = tuple[float, float, int]  # x, y in image pixels; label 0/1 (points) or 2/3 (box)

#: Documented tolerances of the browser against Python on the same ONNX files (docs/web.md).
#: onnxruntime-web's wasm kernels are not bit-identical to native onnxruntime, so logits differ
#: in the last bits (observed: scores within 8e-7, at most 2 pixels of a mask flipped, i.e. a
#: fraction of 3e-6). Pre-processing and prompts are compared exactly; a mask pixel may differ
#: only where Python's logit lies within NEAR_THRESHOLD of the threshold, so a mask with no
#: such pixel must be bit-identical (same sha256).
SCORE_ATOL = 1e-4
FLIPPED_FRACTION_MAX = 1e-4
NEAR_THRESHOLD = 1e-3


def selftest_url(base: str, image: str, prompts: Sequence[Prompt], **extra: Any) -> str:
    text = ";".join(f"{x:g},{y:g},{int(label)}" for x, y, label in prompts)
    query = f"selftest={quote(image)}&prompts={quote(text, safe=',;')}"
    for key, value in extra.items():
        query += f"&{key}={quote(str(value))}"
    return f"{base}index.html?{query}"


def run_selftest(
    page: Page,
    base: str,
    image: str,
    prompts: Sequence[Prompt],
    timeout: float = 240.0,
    **extra: Any,
) -> dict[str, Any]:
    """Navigate to the self-test and return its JSON report (raises on a page error)."""
    page.goto(selftest_url(base, image, prompts, **extra))
    status = page.wait_for("document.body && document.body.dataset.selftest", timeout=timeout)
    report: dict[str, Any] = json.loads(
        page.evaluate("document.getElementById('selftest').textContent")
    )
    if status != "done" or not report.get("ok"):
        logs = "\n".join(page.console_messages()[-10:])
        raise AssertionError(f"self-test failed: {report.get('error')}\n{logs}")
    return report


def _split(prompts: Sequence[Prompt]) -> dict[str, Any]:
    points = [(x, y) for x, y, label in prompts if label in (0, 1)]
    labels = [label for _, _, label in prompts if label in (0, 1)]
    corners = {label: (x, y) for x, y, label in prompts if label in (2, 3)}
    out: dict[str, Any] = {}
    if points:
        out["points"], out["labels"] = np.array(points, float), np.array(labels, float)
    if corners:
        out["box"] = np.array([*corners[2], *corners[3]], float)
    return out


def mask_sha256(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def decode_rle(runs: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    values = np.arange(len(runs)) % 2
    flat = np.repeat(values.astype(bool), np.asarray(runs, dtype=np.int64))
    if flat.size != shape[0] * shape[1]:
        raise ValueError(f"run lengths cover {flat.size} pixels, expected {shape[0] * shape[1]}")
    return flat.reshape(shape)


def python_reference(
    models_dir: Path,
    image: np.ndarray,
    prompts: Sequence[Prompt],
    num_masks: int | None = None,
    *,
    optimize: bool = True,
) -> dict[str, Any]:
    """The self-test's report computed by `Predictor` on onnxruntime, plus full-res logits.

    The graphs are the folder's encoder and decoder (any model); preprocessing, prompt frame
    and mask tokens come from their metadata as the page reads them. `num_masks` defaults to
    all the decoder's tokens, like the page's self-test. `optimize=False`: onnxruntime's graph
    optimisation off (int8 QDQ graphs then compute their Q/DQ pairs in float).
    """
    from edgesam_export.web.build import read_onnx_artifacts

    found = read_onnx_artifacts(models_dir)
    encoder = open_session(found["encoder"][0], threads=2, optimize=optimize)
    decoder = open_session(found["decoder"][0], threads=2, optimize=optimize)
    predictor = Predictor(encoder, decoder)
    tensor, info = P.preprocess(image, params=predictor.preprocessing)
    predictor.set_image(image)
    split = _split(prompts)
    coords, labels = P.build_prompts(
        split.get("points"),
        split.get("labels"),
        split.get("box"),
        original_size=info.original_size,
        img_size=predictor.frame,
    )
    count = predictor.tokens.count
    n = count if num_masks is None else num_masks
    out = predictor.predict(**split, num_multimask_outputs=n)
    logits = P.postprocess_masks(out.low_res_logits, info)
    # which decoder tokens those are, by the same rule
    tokens, _ = P.select_masks(np.arange(count), np.zeros((count, 1, 1)), n, predictor.tokens)
    masks = []
    for k, mask in enumerate(out.masks):
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if xs.size else None
        masks.append(
            {
                "token": int(tokens[k]),
                "score": float(out.scores[k]),
                "area": int(mask.sum()),
                "bbox": bbox,
                "sha256": mask_sha256(mask),
                "mask": mask,
                "near": np.abs(logits[k]) < NEAR_THRESHOLD,
                "near_threshold": int(np.count_nonzero(np.abs(logits[k]) < NEAR_THRESHOLD)),
            }
        )
    return {
        "input_sha256": hashlib.sha256(tensor.tobytes()).hexdigest(),
        "img_size": predictor.img_size,
        "prompt_frame": predictor.frame,
        "input_size": list(info.input_size),
        "point_coords": coords.ravel().tolist(),
        "point_labels": labels.ravel().tolist(),
        "masks": masks,
    }


#: The int8 agreement rule's pixel bound: a page on static int8 (QDQ) files may flip this many
#: times the mask pixels the same files flip against themselves natively (`int8_rule`), the way
#: the measured tolerance rows are 2-3x the worst value seen.
INT8_NOISE_FACTOR = 2.0


def int8_rule(models_dir: Path, image: np.ndarray, prompts: Sequence[Prompt]) -> dict[str, float]:
    """The bounds a page on static int8 files is held to against Python on the same files, and
    the files' own kernel noise they come from.

    Two correct int8 implementations round a requantisation differently by a step, which the
    network carries on; onnxruntime-web's wasm kernels are one more. The noise is measured
    natively: the default session (Q/DQ fused into integer kernels) against graph optimisation
    off (Q/DQ computed in float), per decoder token, the largest flipped-pixel fraction and
    score difference. Bounds: `flipped_max` = INT8_NOISE_FACTOR x the noise's flipped fraction;
    `score_atol` = the registered `onnx:int8` decoder-scores tolerance (how far int8 scores may
    be from fp32 PyTorch), since score differences come in steps of the output's quantization
    scale and a multiple of one or two steps would say nothing (measured: the page 4 steps from
    Python where the native noise is 1-2; docs/web.md)."""
    from edgesam_export.device.backends import tolerance_row

    fused = python_reference(models_dir, image, prompts)
    plain = python_reference(models_dir, image, prompts, optimize=False)
    flipped, score = 0.0, 0.0
    for a, b in zip(fused["masks"], plain["masks"], strict=True):
        flipped = max(flipped, float(np.mean(a["mask"] != b["mask"])))
        score = max(score, abs(a["score"] - b["score"]))
    return {
        "noise_flipped_fraction": flipped,
        "noise_score_diff": score,
        "flipped_max": INT8_NOISE_FACTOR * flipped,
        "score_atol": float(tolerance_row("onnx", "int8").limits["decoder.scores"]),
    }


def outside_rule(
    agree: dict[str, Any],
    *,
    score_atol: float = SCORE_ATOL,
    flipped_max: float = FLIPPED_FRACTION_MAX,
    float_ties_only: bool = True,
) -> list[str]:
    """What in `agreement`'s numbers (the page's self-test with rle=1) breaks the rule a page is
    held to against Python on the same files, one line per broken bound; empty: within it.

    Per mask: the score within `score_atol`, the flipped pixels within `flipped_max` of the
    mask; with `float_ties_only` (fp32 and weight-only graphs: float compute on both sides) a
    pixel may flip only where Python's logit is within NEAR_THRESHOLD of 0. Static int8 files
    take `int8_rule`'s bounds and `float_ties_only=False`. The browser tests assert it and
    `benchmarks/bench_web.py` reports it."""
    broken = []
    for row in agree["masks"]:
        where = f"token {row['token']}"
        if "flipped_fraction" not in row:
            broken.append(f"{where}: no run lengths (the self-test ran without rle=1)")
            continue
        if not row["score_diff"] <= score_atol:
            broken.append(f"{where}: score differs by {row['score_diff']:.2e} > {score_atol:.1e}")
        if not row["flipped_fraction"] <= flipped_max:
            broken.append(
                f"{where}: {row['flipped']} pixels flipped, a fraction of"
                f" {row['flipped_fraction']:.2e} > {flipped_max:.1e}"
            )
        if float_ties_only and row["flipped_away_from_threshold"]:
            broken.append(
                f"{where}: {row['flipped_away_from_threshold']} pixels flipped where Python's"
                f" logit is not within {NEAR_THRESHOLD:.0e} of the threshold"
            )
    return broken


def agreement(js: dict[str, Any], py: dict[str, Any]) -> dict[str, Any]:
    """Per-mask differences between the browser's report and Python's (numbers, no verdict)."""
    rows = []
    for a, b in zip(js["masks"], py["masks"], strict=True):
        row: dict[str, Any] = {
            "token": a["token"],
            "same_token": a["token"] == b["token"],
            "score_js": a["score"],
            "score_py": b["score"],
            "score_diff": abs(a["score"] - b["score"]),
            "area_js": a["area"],
            "area_py": b["area"],
            "same_hash": a["sha256"] == b["sha256"],
            "same_bbox": a["bbox"] == b["bbox"],
            "near_threshold_py": b["near_threshold"],
        }
        if "rle" in a:
            mask_js = decode_rle(a["rle"], b["mask"].shape)
            flips = mask_js != b["mask"]
            row["flipped"] = int(np.count_nonzero(flips))
            row["flipped_fraction"] = row["flipped"] / b["mask"].size
            row["flipped_away_from_threshold"] = int(np.count_nonzero(flips & ~b["near"]))
        rows.append(row)
    return {
        "input_identical": js["input_sha256"] == py["input_sha256"],
        "frames_identical": js.get("img_size") == py["img_size"]
        and js.get("prompt_frame") == py["prompt_frame"],
        "prompts_identical": js["point_coords"] == py["point_coords"]
        and js["point_labels"] == py["point_labels"],
        "masks": rows,
        "max_score_diff": max(r["score_diff"] for r in rows),
        "max_flipped_fraction": max(r.get("flipped_fraction", 0.0) for r in rows),
        "identical_masks": sum(r["same_hash"] for r in rows),
        "same_tokens": all(r["same_token"] for r in rows),
    }

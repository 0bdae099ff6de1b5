"""Parity: the same inputs through the PyTorch reference and each artifact; metrics; verdict.

Data model after Polygraphy's comparator: every runner sees the same cached feeds, metrics are
pure shared functions, tolerances are per precision and per output. Decoders are checked twice:
on the reference embeddings (isolates the decoder, tight tolerance: catches prompt-convention
slips that end-to-end tolerances hide) and end to end on their own encoder's embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.backends import tolerances_for
from edgesam_export.device.official_contract import ForeignContract, foreign_contract
from edgesam_export.device.runtime import Session


def candidate_precision(session: Session) -> str:
    """The precision an artifact records in its metadata (fp32 when it records none)."""
    return session.metadata.get("precision", "fp32")


def make_test_image(height: int = 480, width: int = 640, seed: int = 7) -> np.ndarray:
    """A structured RGB uint8 image: gradients, filled shapes with hard edges, mild noise.

    Pure noise hides errors that only show on smooth regions and edges; this image has both.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    img = np.stack([40 + 160 * u, 190 - 120 * v, 60 + 120 * u * v], axis=-1)
    shapes = [
        ((x - 0.25 * width) ** 2 + (y - 0.3 * height) ** 2 <= (0.14 * width) ** 2, (230, 110, 40)),
        (
            (x >= 0.5 * width) & (x <= 0.85 * width) & (y >= 0.12 * height) & (y <= 0.45 * height),
            (50, 90, 200),
        ),
        (
            ((x - 0.7 * width) / (0.18 * width)) ** 2 + ((y - 0.75 * height) / (0.15 * height)) ** 2
            <= 1,
            (160, 60, 170),
        ),
        (np.abs(x - 0.2 * width) + np.abs(y - 0.78 * height) <= 0.12 * height, (240, 225, 210)),
    ]
    for mask, colour in shapes:
        img[mask] = colour
    img += np.random.default_rng(seed).normal(0.0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PromptCase:
    """One decoder call: B prompt sets of N points in the S frame (what the graph takes)."""

    name: str
    point_coords: np.ndarray  # (B, N, 2) float32
    point_labels: np.ndarray  # (B, N) float32


def prompt_cases(frame: int, input_size: tuple[int, int], seed: int = 0) -> list[PromptCase]:
    """Points, negative points, boxes, box + point, 1..16 points, and a batch of boxes.

    Coordinates lie inside `input_size`, the image's extent in the `frame` x `frame` prompt
    frame (SAM's 1024 for every family, also when the encoder sees 512).
    """
    del frame  # the cases are placed relative to input_size, which lives in the frame
    h, w = input_size
    rng = np.random.default_rng(seed)

    def pts(*xy: tuple[float, float]) -> np.ndarray:
        return np.array([[[px * w, py * h] for px, py in xy]], dtype=np.float32)

    def lab(*labels: float) -> np.ndarray:
        return np.array([labels], dtype=np.float32)

    cases = [
        PromptCase("1 positive point", pts((0.25, 0.3)), lab(1)),
        PromptCase("point + padding", pts((0.25, 0.3), (0, 0)), lab(1, -1)),
        PromptCase(
            "2 positive + 1 negative", pts((0.6, 0.2), (0.8, 0.4), (0.25, 0.3)), lab(1, 1, 0)
        ),
        PromptCase("box", pts((0.52, 0.6), (0.9, 0.92)), lab(2, 3)),
        PromptCase("point + box", pts((0.2, 0.78), (0.08, 0.6), (0.35, 0.95)), lab(1, 2, 3)),
    ]
    for n in (5, 16):
        coords = (rng.random((1, n, 2)) * [w, h]).astype(np.float32)
        labels = rng.integers(0, 2, (1, n)).astype(np.float32)
        cases.append(PromptCase(f"{n} random points", coords, labels))
    boxes = []
    for _ in range(3):
        x0, y0 = rng.random(2) * [0.6 * w, 0.6 * h]
        bw, bh = (0.1 + 0.3 * rng.random(2)) * [w, h]
        boxes.append([[x0, y0], [x0 + bw, y0 + bh]])
    cases.append(
        PromptCase(
            "batch of 3 boxes",
            np.array(boxes, dtype=np.float32),
            np.tile(np.array([[2, 3]], dtype=np.float32), (3, 1)),
        )
    )
    return cases


def compare_arrays(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max/mean abs error, relative error (max abs over max |ref|), cosine similarity."""
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.shape != r.shape:
        return {
            "shape_mismatch": 1.0,
            "max_abs": float("inf"),
            "mean_abs": float("inf"),
            "rel": float("inf"),
            "cosine": 0.0,
        }
    finite = bool(
        np.isfinite(c).all() == np.isfinite(r).all() and np.array_equal(np.isnan(c), np.isnan(r))
    )
    diff = np.abs(np.nan_to_num(c - r, nan=0.0))
    if not finite:
        diff = np.full_like(diff, np.inf)
    ref_scale = float(np.nanmax(np.abs(r))) if r.size else 0.0
    cn, rn = np.nan_to_num(c).ravel(), np.nan_to_num(r).ravel()
    denom = float(np.linalg.norm(cn) * np.linalg.norm(rn))
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "rel": float(diff.max() / ref_scale) if ref_scale > 0 and diff.size else 0.0,
        "cosine": float(cn @ rn / denom) if denom > 0 else float(np.array_equal(cn, rn)),
    }


def mask_metrics(
    candidate_logits: np.ndarray,
    reference_logits: np.ndarray,
    candidate_scores: np.ndarray,
    reference_scores: np.ndarray,
) -> dict[str, float]:
    """Minimum IoU of the thresholded masks and the share of prompt sets with the same best mask."""
    c = candidate_logits > 0.0
    r = reference_logits > 0.0
    inter = np.logical_and(c, r).sum(axis=(-1, -2))
    union = np.logical_or(c, r).sum(axis=(-1, -2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    agree = np.argmax(candidate_scores, axis=-1) == np.argmax(reference_scores, axis=-1)
    return {"min_mask_iou": float(iou.min()), "top_mask_agreement": float(agree.mean())}


@dataclass
class Comparison:
    artifact: str
    backend: str
    precision: str
    check: str  # e.g. "image_embeddings", "decoder.masks", "end_to_end.scores"
    case: str
    metrics: dict[str, float]
    tolerance: float
    passed: bool


@dataclass
class ParityReport:
    comparisons: list[Comparison] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)  # artifacts that could not run
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            not self.errors and bool(self.comparisons) and all(c.passed for c in self.comparisons)
        )

    def summary(self) -> list[dict[str, Any]]:
        """Worst case per (artifact, check): what the table and CI logs show."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.comparisons:
            key = (c.artifact, c.check)
            row = rows.setdefault(
                key,
                {
                    "artifact": c.artifact,
                    "backend": c.backend,
                    "precision": c.precision,
                    "check": c.check,
                    "tolerance": c.tolerance,
                    "max_abs": 0.0,
                    "mean_abs": 0.0,
                    "rel": 0.0,
                    "cosine": 1.0,
                    "passed": True,
                    "cases": 0,
                    "worst_case": c.case,
                },
            )
            row["cases"] += 1
            if c.metrics["max_abs"] >= row["max_abs"]:
                row["worst_case"] = c.case
            row["max_abs"] = max(row["max_abs"], c.metrics["max_abs"])
            row["mean_abs"] = max(row["mean_abs"], c.metrics["mean_abs"])
            row["rel"] = max(row["rel"], c.metrics["rel"])
            row["cosine"] = min(row["cosine"], c.metrics["cosine"])
            for k in ("min_mask_iou", "top_mask_agreement"):
                if k in c.metrics:
                    row[k] = min(row.get(k, 1.0), c.metrics[k])
            row["passed"] = row["passed"] and c.passed
        return list(rows.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "errors": self.errors,
            "inputs": self.inputs,
            "comparisons": [asdict(c) for c in self.comparisons],
        }


def _judge(
    report: ParityReport,
    artifact: str,
    backend: str,
    check: str,
    case: str,
    metrics: dict[str, float],
    precision: str,
) -> None:
    tolerances, min_iou = tolerances_for(backend, precision)
    # rows without an upscaled-mask entry judge upscaled logits like the low-res ones
    tol = tolerances.get(check) or tolerances[check.replace(".upscaled_masks", ".masks")]
    ok = metrics["max_abs"] <= tol and "shape_mismatch" not in metrics
    if "min_mask_iou" in metrics:
        ok = ok and metrics["min_mask_iou"] >= min_iou
    report.comparisons.append(
        Comparison(artifact, backend, precision, check, case, metrics, tol, ok)
    )


def _judge_decoder(
    report: ParityReport,
    artifact: str,
    backend: str,
    stage: str,
    case: str,
    stability: bool,
    out: Mapping[str, np.ndarray],
    ref: Mapping[str, np.ndarray],
    precision: str,
) -> None:
    """Judge one decoder call's scores and masks under `stage` ("decoder" or "end_to_end")."""
    tag = " (stability)" if stability else ""
    score_check = f"{stage}.stability_scores" if stability else f"{stage}.scores"
    _judge(
        report,
        artifact,
        backend,
        score_check,
        case + tag,
        compare_arrays(out["scores"], ref["scores"]),
        precision,
    )
    metrics = compare_arrays(out["masks"], ref["masks"])
    metrics.update(mask_metrics(out["masks"], ref["masks"], out["scores"], ref["scores"]))
    _judge(report, artifact, backend, f"{stage}.masks", case + tag, metrics, precision)


def check(
    reference_encoder: Session,
    reference_decoders: Mapping[bool, Session],
    encoders: Sequence[tuple[str, Session]],
    decoders: Sequence[tuple[str, Session]],
    *,
    image: np.ndarray | None = None,
    report: ParityReport | None = None,
    record: dict[str, Any] | None = None,
) -> ParityReport:
    """Run every candidate on the same inputs as the reference and judge each output.

    `reference_decoders` maps use_stability_score -> reference decoder session; each candidate
    decoder is compared with the reference of its own flavour, under the tolerances of its own
    backend and precision (both read from its metadata). `record` (optional) receives the raw
    outputs, `record[name][case]`, with the reference's under "reference" (for the report).
    """
    report = report or ParityReport()
    image = make_test_image() if image is None else image
    meta = reference_encoder.metadata
    params = P.Preprocessing.from_metadata(meta)
    tensor, info = P.preprocess(image, params=params)
    report.inputs = {
        "image_shape": list(image.shape),
        "img_size": params.encoder_size,
        "prompt_frame": params.frame,
        "reference": (
            f"PyTorch {meta.get('model', '?')} ({meta.get('upsample_mode', '?')} neck"
            f"{', tanh GELU' if meta.get('gelu_approximate') == 'true' else ''}),"
            f" weights {meta.get('weights', '?')} ({meta.get('weights_source', '?')})"
        ),
        # which runtime produced each artifact's numbers (e.g. the MIL executor on Linux)
        "runtimes": {name: s.runtime_label for name, s in [*encoders, *decoders]},
    }
    if record is not None:  # the report places prompts and masks in this frame
        record["preprocessing"] = params
    ref_emb = reference_encoder.run({"image": tensor})["image_embeddings"]
    embeddings = {"reference": ref_emb}
    for name, enc in encoders:
        emb = enc.run({"image": tensor})["image_embeddings"]
        embeddings[name] = emb
        _judge(
            report,
            name,
            enc.backend,
            "image_embeddings",
            "test image",
            compare_arrays(emb, ref_emb),
            candidate_precision(enc),
        )

    cases = prompt_cases(params.frame, info.input_size)
    report.inputs["prompt_cases"] = [c.name for c in cases]
    own_embedding = next(iter(embeddings[n] for n, _ in encoders), None)
    for name, dec in decoders:
        stab = dec.metadata.get("use_stability_score", "false") == "true"
        ref_dec = reference_decoders[stab]
        foreign = foreign_contract(dec.metadata)
        if foreign is not None:
            _check_foreign(report, name, dec, foreign, ref_dec, ref_emb, own_embedding, cases, info)
            continue
        for case in cases:
            feeds = {"point_coords": case.point_coords, "point_labels": case.point_labels}
            reason = dec.accepts(feeds)
            if reason is not None:  # outside the artifact's declared shapes: listed, not judged
                report.inputs.setdefault("skipped", []).append(
                    {"artifact": name, "case": case.name, "reason": reason}
                )
                continue
            ref = ref_dec.run({"image_embeddings": ref_emb, **feeds})
            if record is not None:  # both flavours share their masks
                record.setdefault("reference", {})[case.name] = ref
            runs = [("decoder", ref_emb)]  # alone, on the reference embeddings
            if own_embedding is not None:  # end to end, on the artifact encoder's embeddings
                runs.append(("end_to_end", own_embedding))
            for stage, embedding in runs:
                out = dec.run({"image_embeddings": embedding, **feeds})
                if record is not None and stage == "decoder":
                    record.setdefault(name, {})[case.name] = out
                _judge_decoder(
                    report,
                    name,
                    dec.backend,
                    stage,
                    case.name,
                    stab,
                    out,
                    ref,
                    candidate_precision(dec),
                )
    return report


def _check_foreign(
    report: ParityReport,
    name: str,
    dec: Session,
    contract: ForeignContract,
    ref_dec: Session,
    ref_emb: np.ndarray,
    own_embedding: np.ndarray | None,
    cases: Sequence[PromptCase],
    info: P.ImageInfo,
) -> None:
    """A decoder with a family's own contract (`official_contract.FOREIGN`) against our
    reference decoder, on the same prompt rows (the contracts add no padding point themselves).

    Batch-1 cases only where the contract has no batch axis. Low-res masks and scores are judged
    like any decoder's (for `return_single_mask`, against the token the contract's rule picks
    from the reference scores); where the contract upscales (segment-anything's), the upscaled
    masks against the reference low-res logits post-processed by `processing.postprocess_masks`
    (bilinear to the padded frame, crop, bilinear to the original size: what it computes).
    """
    stab = dec.metadata.get("use_stability_score", "false") == "true"
    single = dec.metadata.get("return_single_mask", "false") == "true"
    precision = candidate_precision(dec)
    for case in cases:
        if case.point_coords.shape[0] != 1 and not contract.batched:
            continue
        feeds = {"point_coords": case.point_coords, "point_labels": case.point_labels}
        ref = ref_dec.run({"image_embeddings": ref_emb, **feeds})
        ref_scores, ref_masks = ref["scores"], ref["masks"]
        if single:
            idx = contract.single_mask_index(ref_scores, case.point_coords.shape[1])
            ref_scores = np.take_along_axis(ref_scores, idx[:, None], axis=1)
            ref_masks = ref_masks[np.arange(ref_masks.shape[0]), idx][:, None]
        ref_up = P.postprocess_masks(ref_masks[0], info) if contract.upscaled_key else None
        runs = [("decoder", ref_emb)]
        if own_embedding is not None:
            runs.append(("end_to_end", own_embedding))
        for stage, embedding in runs:
            out = dec.run(
                contract.feeds(embedding, case.point_coords, case.point_labels, info.original_size)
            )
            _judge_decoder(
                report,
                name,
                dec.backend,
                stage,
                case.name,
                stab,
                {"scores": out[contract.scores_key], "masks": out[contract.low_res_key]},
                {"scores": ref_scores, "masks": ref_masks},
                precision,
            )
            if contract.upscaled_key is None or ref_up is None:
                continue
            _judge(
                report,
                name,
                dec.backend,
                f"{stage}.upscaled_masks",
                case.name + (" (stability)" if stab else ""),
                compare_arrays(out[contract.upscaled_key][0], ref_up),
                precision,
            )

"""The judge: one set of rules for every parity verdict.

Parity against PyTorch, parity against the reference outputs shipped beside artifacts
(`<stem>_reference.npz`, no torch needed) and `build`'s checks all run `judge()`, so they cannot
disagree on what passes:

- every candidate sees the reference's inputs (its test image and prompt cases); every encoder
  output the reference has is compared (SAM 2: the embeddings and both high-resolution
  features); decoders are fed every encoder output they take by name (`predictor.decoder_feeds`,
  as `Predictor` does) and checked twice, on the reference features (isolates the decoder,
  tight tolerance: catches prompt-convention slips that end-to-end tolerances hide) and end to
  end on the features of the first candidate encoder;
- a case a session refuses (`Session.accepts`: CoreML enumerated shapes, TensorRT profiles) is
  skipped and listed in the report, never run;
- an output holding a NaN or inf fails, naming the output and, for ONNX artifacts, the first node
  that produced one (`nonfinite.first_nonfinite_node`), whatever the reference holds;
- the tolerance is the backend's row for the artifact's precision and family group; a group's
  scale-relative checks (`tolerances.RELATIVE_CHECKS`) bound max abs / max |reference| instead
  of max abs; a recipe may tighten a row (`overrides`), never loosen it.

Metric functions are pure and live in `parity.py`; what the reference is (PyTorch sessions, or
the shipped reference outputs) is a `Reference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.backends import tolerance_row, tolerances_for
from edgesam_export.device.errors import InputError
from edgesam_export.device.judge_video import VideoCase, absent, judge_video
from edgesam_export.device.nonfinite import describe_nonfinite
from edgesam_export.device.official_contract import foreign_contract
from edgesam_export.device.parity import (
    PromptCase,
    candidate_precision,
    compare_arrays,
    make_test_image,
    mask_metrics,
    prompt_cases,
)
from edgesam_export.device.predictor import decoder_feeds
from edgesam_export.device.runtime import Session


@dataclass(frozen=True)
class Expected:
    """What the reference decoder answered for one prompt case, in one scores flavour."""

    scores: np.ndarray  # (B, K) IoU or stability scores
    masks: np.ndarray  # (B, K, h, w) low-res logits on every `stride`-th row and column
    bits: np.ndarray  # (B, K, H, W) bool: low-res logits > 0 on every pixel
    logits: np.ndarray | None  # (B, K, H, W) full low-res logits, where the reference keeps them
    object_scores: np.ndarray | None = None  # (B, 1) object-score logits (SAM 2 layout)

    def pick(self, index: np.ndarray) -> Expected:
        """One token per prompt set (the single-mask rule of a family's contract)."""
        rows = np.arange(self.scores.shape[0])
        return Expected(
            self.scores[rows, index][:, None],
            self.masks[rows, index][:, None],
            self.bits[rows, index][:, None],
            None if self.logits is None else self.logits[rows, index][:, None],
            self.object_scores,
        )


class Reference(Protocol):
    """The inputs every candidate gets and the outputs it is judged against."""

    @property
    def description(self) -> str: ...

    @property
    def image(self) -> np.ndarray:  # the test image, RGB uint8
        ...

    @property
    def preprocessing(self) -> P.Preprocessing: ...

    @property
    def features(self) -> Mapping[str, np.ndarray]:
        """Every output of the reference encoder on `image`, by name: `image_embeddings`, and
        for the SAM 2 layout `high_res_feats_0` / `_1`."""
        ...

    @property
    def stride(self) -> int:  # `Expected.masks` keeps every stride-th row and column
        ...

    @property
    def prompts(self) -> Sequence[PromptCase]: ...

    def expected(self, index: int, stability: bool) -> Expected: ...

    def video_cases(self) -> Sequence[VideoCase] | None:
        """The video graphs' reference calls (`judge_video.video_cases`), None without them."""
        ...

    def record_into(self, record: dict[str, Any]) -> None:
        """Store what the HTML report needs to draw the reference (see `report.py`)."""


class SessionReference:
    """The PyTorch reference (or any sessions) run on the parity test image and prompt cases.

    `decoders` maps use_stability_score -> decoder session; decoder answers are computed once
    per case and flavour and kept, whatever the number of candidates judged against them.
    """

    stride = 1

    def __init__(
        self,
        encoder: Session,
        decoders: Mapping[bool, Session],
        image: np.ndarray | None = None,
        video: Mapping[str, Session] | None = None,
    ) -> None:
        meta = encoder.metadata
        self.image = make_test_image() if image is None else image
        self.preprocessing = P.Preprocessing.from_metadata(meta)
        tensor, info = P.preprocess(self.image, params=self.preprocessing)
        self.features = encoder.run({"image": tensor})
        self.prompts = prompt_cases(self.preprocessing.frame, info.input_size)
        self.decoders = decoders
        self.description = (
            f"PyTorch {meta.get('model', '?')} ({meta.get('upsample_mode', '?')} neck"
            f"{', tanh GELU' if meta.get('gelu_approximate') == 'true' else ''}),"
            f" weights {meta.get('weights', '?')} ({meta.get('weights_source', '?')})"
        )
        self._raw: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
        self._video, self._tensor = video, tensor
        self._video_cases: list[VideoCase] | None = None

    def video_cases(self) -> list[VideoCase] | None:
        if self._video and self._video_cases is None:  # the chain runs once, when asked
            from edgesam_export.device.judge_video import video_cases

            self._video_cases = video_cases(self._video, self._tensor, self.prompts)
        return self._video_cases

    def _run(self, index: int, stability: bool) -> dict[str, np.ndarray]:
        key = (index, stability)
        if key not in self._raw:
            case = self.prompts[index]
            dec = self.decoders[stability]
            feeds = decoder_feeds(dec, self.features, case.point_coords, case.point_labels)
            self._raw[key] = dec.run(feeds)
        return self._raw[key]

    def expected(self, index: int, stability: bool) -> Expected:
        out = self._run(index, stability)
        obj = out.get("object_score_logits")
        return Expected(out["scores"], out["masks"], out["masks"] > 0.0, out["masks"], obj)

    def record_into(self, record: dict[str, Any]) -> None:
        record["preprocessing"] = self.preprocessing  # the report places prompts in this frame
        refs = record.setdefault("reference", {})  # both flavours share their masks
        for (index, _), out in self._raw.items():
            refs.setdefault(self.prompts[index].name, out)


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
    reason: str = ""  # why it failed, where the numbers alone do not say (NaN/inf, shapes)
    estimate: bool = False  # its tolerance was never measured for this check and family
    relative: bool = False  # `tolerance` bounds metrics["rel"] (scale-relative), not max abs


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

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Cases an artifact refused (outside its declared shapes): listed, not judged."""
        return list(self.inputs.get("skipped", []))

    def summary(self) -> list[dict[str, Any]]:
        """Worst case per (artifact, check): what the table and CI logs show."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.comparisons:
            row = rows.setdefault(
                (c.artifact, c.check),
                {
                    "artifact": c.artifact,
                    "backend": c.backend,
                    "precision": c.precision,
                    "check": c.check,
                    "tolerance": c.tolerance,
                    "estimate": c.estimate,
                    "relative": c.relative,
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
            if c.reason and "reason" not in row:
                row["reason"] = f"{c.case}: {c.reason}"
            row["passed"] = row["passed"] and c.passed
        return list(rows.values())

    def notes(self) -> list[str]:
        """One line per failure the table cannot explain and per skipped case, for the CLI."""
        lines = [
            f"{row['artifact']} {row['check']}: {row['reason']}"
            for row in self.summary()
            if "reason" in row
        ]
        lines += [f"skipped {s['artifact']} on {s['case']}: {s['reason']}" for s in self.skipped]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "errors": self.errors,
            "skipped": self.skipped,
            "inputs": self.inputs,
            "comparisons": [asdict(c) for c in self.comparisons],
        }


class Judge:
    """Tolerances and verdicts: the backend's row for the artifact's precision, or a recipe's
    tighter value for a check (`overrides`); a looser override is an error (derive a row)."""

    def __init__(self, overrides: Mapping[str, float] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def tolerance(
        self, backend: str, precision: str, check: str, family: str | None = None
    ) -> tuple[float, float]:
        """(max abs tolerance, minimum mask IoU) for one check of a candidate."""
        rows, min_iou = tolerances_for(backend, precision, family)
        # rows without an upscaled-mask entry judge upscaled logits like the low-res ones
        default = rows.get(check) or rows[check.replace(".upscaled_masks", ".masks")]
        tol = self.overrides.get(check, default)
        if tol > default:
            raise InputError(
                f"parity tolerance {check}: {tol:g} is looser than the {backend} {precision}"
                f" default {default:g}; a recipe may only tighten tolerances (derive a looser row"
                " in device/backends.py instead)"
            )
        return tol, min_iou

    def estimate(self, backend: str, precision: str, check: str, family: str | None = None) -> bool:
        """Whether the verdict rests on a row never measured for this check and family (a
        recipe's own value is the user's, not an estimate)."""
        if check in self.overrides:
            return False
        row = tolerance_row(backend, precision, family)
        key = check if check in row.limits else check.replace(".upscaled_masks", ".masks")
        return row.is_estimate(key, family)

    def relative(self, backend: str, precision: str, check: str, family: str | None = None) -> bool:
        """Whether the row bounds this check relative to the reference's scale."""
        return check in tolerance_row(backend, precision, family).relative

    def verdict(
        self,
        backend: str,
        precision: str,
        check: str,
        metrics: Mapping[str, float],
        family: str | None = None,
    ) -> tuple[float, bool, str]:
        """(tolerance, passed, reason): a NaN/inf or a shape mismatch fails whatever the row."""
        tol, min_iou = self.tolerance(backend, precision, check, family)
        value = metrics["rel" if self.relative(backend, precision, check, family) else "max_abs"]
        reasons = []
        if "shape_mismatch" in metrics:
            reasons.append("output shape differs from the reference's")
        if "absent" in metrics:
            reasons.append(
                "missing on one side (re-export the artifacts and their reference outputs with"
                " this version)"
            )
        if metrics.get("nonfinite"):
            reasons.append(f"{int(metrics['nonfinite'])} non-finite values (NaN/inf)")
        if metrics.get("reference_nonfinite"):
            reasons.append(
                f"the reference holds {int(metrics['reference_nonfinite'])} non-finite values"
                " (NaN/inf weights in the checkpoint?)"
            )
        ok = not reasons and value <= tol
        if "min_mask_iou" in metrics:
            ok = ok and metrics["min_mask_iou"] >= min_iou
        return tol, ok, "; ".join(reasons)


class JudgeRun:
    """One judge() call: the report it fills, and where each artifact first went non-finite."""

    def __init__(self, judge: Judge, report: ParityReport, record: dict[str, Any] | None) -> None:
        self.judge, self.report, self.record = judge, report, record
        self.located: dict[str, str] = {}

    def compare(
        self,
        name: str,
        session: Session,
        check: str,
        case: str,
        metrics: dict[str, float],
        feeds: Mapping[str, np.ndarray],
        output: str,
    ) -> None:
        precision = candidate_precision(session)
        family = session.metadata.get("family")  # rows per family group, where they differ
        tol, ok, reason = self.judge.verdict(session.backend, precision, check, metrics, family)
        if metrics.get("nonfinite"):
            if name not in self.located:  # the search reruns the graph: once per artifact
                self.located[name] = describe_nonfinite(session, feeds, output)
            reason = f"{output}: {reason}{self.located[name]}"
        estimate = self.judge.estimate(session.backend, precision, check, family)
        relative = self.judge.relative(session.backend, precision, check, family)
        self.report.comparisons.append(
            Comparison(
                name,
                session.backend,
                precision,
                check,
                case,
                metrics,
                tol,
                ok,
                reason,
                estimate,
                relative,
            )
        )

    def skip(self, name: str, case: str, reason: str) -> None:
        self.report.inputs.setdefault("skipped", []).append(
            {"artifact": name, "case": case, "reason": reason}
        )


def judge(
    reference: Reference,
    encoders: Sequence[tuple[str, Session]],
    decoders: Sequence[tuple[str, Session]],
    *,
    overrides: Mapping[str, float] | None = None,
    report: ParityReport | None = None,
    record: dict[str, Any] | None = None,
    video: Sequence[tuple[str, Session]] = (),
) -> ParityReport:
    """Run every candidate on the reference's inputs and judge each output (rules above);
    `video` candidates (EdgeTAM's tracker graphs) are judged by `judge_video`.

    Each candidate decoder is compared with the reference of its own scores flavour, under the
    tolerances of its own backend and precision (both read from its metadata). `record`
    (optional) receives the raw outputs, `record[name][case]`, and what the reference
    contributes (`Reference.record_into`), for the HTML report.
    """
    report = report or ParityReport()
    run = JudgeRun(Judge(overrides), report, record)
    params = reference.preprocessing
    tensor, info = P.preprocess(reference.image, params=params)
    report.inputs.update(
        image_shape=list(reference.image.shape),
        img_size=params.encoder_size,
        prompt_frame=params.frame,
        reference=reference.description,
        prompt_cases=[c.name for c in reference.prompts],
        # which runtime produced each artifact's numbers (e.g. the MIL executor on Linux)
        runtimes={name: s.runtime_label for name, s in [*encoders, *decoders]},
    )
    if reference.stride > 1:
        report.inputs["mask_stride"] = reference.stride
    own_features: Mapping[str, np.ndarray] | None = None
    for name, enc in encoders:
        feeds = {"image": tensor}
        out = enc.run(feeds)
        own_features = out if own_features is None else own_features
        if record is not None:
            record.setdefault(name, {})["image_embeddings"] = out["image_embeddings"]
        for output, expected in reference.features.items():  # the embeddings first
            got = out.get(output)
            metrics = compare_arrays(got, expected) if got is not None else absent()
            run.compare(name, enc, output, "test image", metrics, feeds, output)
    for name, dec in decoders:
        _judge_decoder(run, reference, name, dec, own_features, info)
    cases = reference.video_cases() if video else None
    if cases is not None:
        judge_video(run.compare, run.skip, cases, video)
    for name, _ in video if cases is None else ():
        run.skip(name, "every case", "this reference holds no video-graph answers: judge it"
                 " against PyTorch (parity --reference torch, or the checkpoint)")  # fmt: skip
    if record is not None:
        reference.record_into(record)
    return report


def _judge_decoder(
    run: JudgeRun,
    reference: Reference,
    name: str,
    dec: Session,
    own_features: Mapping[str, np.ndarray] | None,
    info: P.ImageInfo,
) -> None:
    """One decoder on every prompt case it accepts, alone and end to end.

    The decoder gets every encoder output it takes by name (`predictor.decoder_feeds`: SAM 2's
    high-resolution features and a zero mask prompt), the reference's and then the first
    candidate encoder's; a decoder answering `object_score_logits` has them judged too.

    A decoder with a family's own contract (`official_contract.FOREIGN`) gets its contract's
    feeds; single-mask files are judged against the token the contract's rule picks from the
    reference scores; where the contract upscales (segment-anything's) and the reference keeps
    full logits, the upscaled masks are judged against the reference logits post-processed by
    `processing.postprocess_masks` (what the contract computes).
    """
    stab = dec.metadata.get("use_stability_score", "false") == "true"
    single = dec.metadata.get("return_single_mask", "false") == "true"
    foreign = foreign_contract(dec.metadata)
    scores_key, masks_key = ("scores", "masks") if foreign is None else (
        foreign.scores_key, foreign.low_res_key
    )  # fmt: skip
    stages = [("decoder", reference.features)]
    if own_features is not None:
        stages.append(("end_to_end", own_features))
    tag = " (stability)" if stab else ""
    score_check = "stability_scores" if stab else "scores"
    for index, case in enumerate(reference.prompts):
        coords, labels = case.point_coords, case.point_labels
        if foreign is not None and coords.shape[0] != 1 and not foreign.batched:
            run.skip(name, case.name, f"{foreign.family} takes one prompt set per call")
            continue
        feeds_of = {
            stage: (
                decoder_feeds(dec, feats, coords, labels)
                if foreign is None
                else foreign.feeds(feats["image_embeddings"], coords, labels, info.original_size)
            )
            for stage, feats in stages
        }
        refused = dec.accepts(feeds_of["decoder"])
        if refused is not None:  # outside the artifact's declared shapes: listed, not judged
            run.skip(name, case.name, refused)
            continue
        exp = reference.expected(index, stab)
        if foreign is not None and single:
            exp = exp.pick(foreign.single_mask_index(exp.scores, coords.shape[1]))
        for stage, feeds in feeds_of.items():
            raw = dec.run(feeds)
            out = {"scores": raw[scores_key], "masks": raw[masks_key]}
            if run.record is not None and stage == "decoder":
                run.record.setdefault(name, {})[case.name] = out
            label = case.name + tag
            metrics = compare_arrays(out["scores"], exp.scores)
            run.compare(name, dec, f"{stage}.{score_check}", label, metrics, feeds, scores_key)
            sub = out["masks"][..., :: reference.stride, :: reference.stride]
            metrics = compare_arrays(sub, exp.masks)
            ref_logits = exp.bits.astype(np.float32) - 0.5  # > 0 exactly on the mask
            metrics.update(mask_metrics(out["masks"], ref_logits, out["scores"], exp.scores))
            run.compare(name, dec, f"{stage}.masks", label, metrics, feeds, masks_key)
            if "object_score_logits" in raw:  # SAM 2 layout: is the object there at all
                got = raw["object_score_logits"]
                ref = exp.object_scores
                metrics = compare_arrays(got, ref) if ref is not None else absent()
                check = f"{stage}.object_scores"
                run.compare(name, dec, check, label, metrics, feeds, "object_score_logits")
            if foreign is None or foreign.upscaled_key is None or exp.logits is None:
                continue
            up_ref = P.postprocess_masks(exp.logits[0], info)
            metrics = compare_arrays(raw[foreign.upscaled_key][0], up_ref)
            check = f"{stage}.upscaled_masks"
            run.compare(name, dec, check, label, metrics, feeds, foreign.upscaled_key)

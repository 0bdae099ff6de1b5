"""One `edgesam-bench` run as a library call: columns, interleaved timings, verdicts, the report.

Device side (numpy and our sessions; never torch). `run_bench` opens every requested backend
of the registry (`device.backends`) on one artifact folder, one column per requested precision
(fp32, fp16, int8 artifacts side by side), warms each once (recording the
memory that took), times every stage of `device.bench` round-robin across the columns, runs the
everything stage, judges each column against the reference (tensor errors, and the end-to-end
mask IoU beside its speed), and returns a `BenchResult` that
knows its JSON, its exit code and its like-for-like speed ratios. The PyTorch columns, the
PyTorch reference and a fresh export come from the host side (`host.benchmark`) through the
`TorchSide` protocol, so this module runs unchanged on a device without torch, where the
reference is the reference outputs shipped in the folder.

Speed ratios divide like by like: "x torch" is PyTorch's p50 over a column's p50 for the same
stage, and only where both ran on the same compute device (`Session.compute_device`). A GPU
PyTorch column next to CPU onnxruntime gives no ratio rather than a meaningless one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.backends import OpenedBackend, open_artifact_backend, unavailable
from edgesam_export.device.bench import (
    ENCODER_STAGES,
    Timing,
    box_set_ratio,
    encoder_input,
    machine_info,
    peak_rss_mb,
    prompt_feeds,
    reset_peak_rss,
    rss_mb,
    session_stages,
    time_interleaved,
)
from edgesam_export.device.errors import ExitCode, InputError
from edgesam_export.device.judge import ParityReport, judge
from edgesam_export.device.mask_bar import MaskBarResult, mask_bar
from edgesam_export.device.parity import make_test_image

Progress = Callable[[str], None]
#: The column every "x torch" ratio divides by: PyTorch as loaded.
TORCH = "torch"
#: Precisions edgesam-bench compares: PyTorch runs the float ones; artifacts record theirs.
TORCH_DTYPES = ("fp32", "fp16", "bf16")
PRECISIONS = (*TORCH_DTYPES, "int8")
#: What the accuracy columns mean, recorded in the JSON beside them.
MASK_IOU_RULE = (
    "end to end (the column's encoder on the reference image, its decoder on every reference"
    " prompt case): IoU of the 256x256 mask of the reference's top-scoring token (logits > 0)"
    " against the reference's, mean and worst over the prompt sets"
)
#: What the "x torch" numbers mean, recorded in the JSON beside them.
X_TORCH_RULE = (
    "p50 of the torch column / p50 of this column, same stage; only between columns that ran"
    " on the same compute device (null otherwise)"
)


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run needs, validated by the caller (the CLI parses, this runs)."""

    backends: tuple[str, ...]  # registry names, "torch" included
    single: bool = True  # one backend was asked for (not "all")
    label: str = ""  # what --backend said, recorded in the JSON
    checkpoint: Path | None = None
    directory: Path | None = None
    points: tuple[int, ...] = (1, 5, 16)
    box_batch: int = 8
    iterations: int = 10
    warmup: int = 2
    threads: int = 2
    device: str = "cpu"  # of the PyTorch columns
    #: one artifact column per backend and precision (recorded in the artifacts' metadata)
    precisions: tuple[str, ...] = ("fp32",)
    cuda_graphs: bool = False
    everything_points: int = 8
    everything_batches: tuple[int, ...] = (16, 64)
    everything_iou_thresh: float = 0.88
    everything_stability_thresh: float = 0.95

    @property
    def precision(self) -> str:
        """The PyTorch columns' dtype: the first listed one torch runs (fp32 when only int8
        is listed, so int8 artifacts still have a PyTorch column to be compared with)."""
        return next((p for p in self.precisions if p in TORCH_DTYPES), "fp32")

    def column_name(self, name: str, precision: str) -> str:
        """A column's name: the backend's, with the precision when several are compared."""
        return name if len(self.precisions) == 1 else f"{name} {precision}"

    @property
    def encoder_iterations(self) -> int:
        """The encoder is ~10x slower than the decoder: half the timed calls, at least one."""
        return max(1, self.iterations // 2)

    @property
    def encoder_warmup(self) -> int:
        return min(self.warmup, 1)


@dataclass
class Reference:
    """What the columns are judged against: PyTorch as loaded, or the shipped reference outputs."""

    kind: str  # "torch" or "outputs"
    note: str
    source: Any  # the judge's reference: `judge.SessionReference` or `ReferenceOutputs`


class TorchSide(Protocol):
    """What the host side adds where torch is installed (`host.benchmark.TorchColumns`)."""

    reason: str  # why there are no PyTorch columns ("" when there are)
    synthetic: bool  # the PyTorch model carries synthetic weights

    def columns(self, settings: BenchSettings) -> list[tuple[str, Callable[[], OpenedBackend]]]:
        """(name, opener) of each PyTorch column, in table order."""
        ...

    def reference(self) -> Reference | None:
        """PyTorch as loaded (fp32, CPU), or None without a loaded model."""
        ...


@dataclass
class BenchResult:
    settings: BenchSettings
    columns: list[OpenedBackend]
    reference: Reference | None = None
    reference_note: str = ""
    synthetic: bool = False
    timings: list[Timing] = field(default_factory=list)
    everything: list[Any] = field(default_factory=list)  # bench_everything.EverythingRun
    image: np.ndarray | None = None
    parity: dict[str, tuple[ParityReport, dict[str, Any]]] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)  # column -> compute device
    #: column -> end-to-end mask IoU against the reference (None: not measurable, see notes)
    accuracy: dict[str, MaskBarResult | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # column -> bytes of its two artifacts

    @property
    def live(self) -> list[OpenedBackend]:
        return [c for c in self.columns if c.available]

    @property
    def failed(self) -> list[str]:
        return [name for name, (rep, _) in self.parity.items() if not rep.passed]

    @property
    def exit_code(self) -> int:
        """0; the one asked-for backend's code when it is unavailable; 4 when parity failed."""
        if not self.live:
            worst = next((c for c in self.columns if not c.available), None)
            if worst is None or not self.settings.single:
                return int(ExitCode.BACKEND_UNAVAILABLE)
            return worst.exit_code
        # one backend asked for: every column of it (each precision listed) must have run
        missing = next((c for c in self.columns if not c.available), None)
        if self.settings.single and missing is not None:
            return missing.exit_code
        return int(ExitCode.PARITY_FAILED) if self.failed else 0

    def x_torch(self) -> dict[tuple[str, str], float]:
        """(stage, column) -> torch p50 / column p50, for columns on the torch column's device."""
        return x_torch(self.timings, self.devices)

    def box_ratios(self) -> dict[str, float]:
        return {
            c.name: r
            for c in self.live
            if (r := box_set_ratio(self.timings, self.settings.box_batch, backend=c.name))
            is not None
        }

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        ratios = self.x_torch()
        backends = []
        for col in self.columns:
            entry = col.to_json() | {"device": self.devices.get(col.name)}
            rep = self.parity.get(col.name)
            if rep is not None:
                entry["parity"] = {
                    "passed": rep[0].passed,
                    "reference": self.reference_note,
                    "summary": rep[0].summary(),
                    "errors": rep[0].errors,
                }
            elif col.available and self.reference is not None:
                entry["parity"] = {"passed": True, "reference": "is the reference"}
            if col.name in self.accuracy:
                acc = self.accuracy[col.name]
                entry["mask_iou"] = None if acc is None else {
                    "mean": acc.mean_iou, "worst": acc.worst_iou, "masks": acc.count
                }  # fmt: skip
            entry["size_bytes"] = self.sizes.get(col.name)
            backends.append(entry)
        payload: dict[str, Any] = {
            "machine": machine_info(),
            "backend": s.label,
            "settings": {
                "points": list(s.points),
                "box_batch": s.box_batch,
                "iterations": s.iterations,
                "warmup": s.warmup,
                "encoder_iterations": s.encoder_iterations,
                "encoder_warmup": s.encoder_warmup,
                "threads": s.threads,
                "device": s.device,
                "precision": s.precision,
                "precisions": list(s.precisions),
                "mask_iou": MASK_IOU_RULE,
                "interleaved": len(self.live) > 1,
                "artifacts": None if s.directory is None else str(s.directory),
                "checkpoint": None if s.checkpoint is None else str(s.checkpoint),
                "everything_points": s.everything_points,
                "everything_batches": list(s.everything_batches),
                "x_torch": X_TORCH_RULE,
            },
            "reference": self.reference_note,
            "backends": backends,
            "timings": [
                t.to_json() | {"x_torch": ratios.get((t.name, t.backend))} for t in self.timings
            ],
            "ratios": {name: {"box_batch_per_set": r} for name, r in self.box_ratios().items()},
        }
        if s.everything_points > 0 and self.image is not None:
            payload["everything"] = {
                "image": f"parity test image {self.image.shape[1]}x{self.image.shape[0]}",
                "points_per_side": s.everything_points,
                "points": s.everything_points**2,
                "batches": list(s.everything_batches),
                "iterations": s.encoder_iterations,
                "warmup": s.encoder_warmup,
                "pred_iou_thresh": s.everything_iou_thresh,
                "stability_score_thresh": s.everything_stability_thresh,
                "runs": [r.to_json() for r in self.everything],
            }
        return payload


def x_torch(timings: Sequence[Timing], devices: dict[str, str]) -> dict[tuple[str, str], float]:
    """torch p50 / column p50 per (stage, column), only where both ran on the same device."""
    torch_device = devices.get(TORCH)
    baseline = {t.name: t.p50 for t in timings if t.backend == TORCH}
    return {
        (t.name, t.backend): baseline[t.name] / t.p50
        for t in timings
        if t.backend != TORCH
        and t.name in baseline
        and t.p50 > 0
        and torch_device is not None
        and devices.get(t.backend) == torch_device
    }


def compute_device(column: OpenedBackend) -> str:
    """Where a column's encoder computes (sessions say so; "cpu" unless they say otherwise)."""
    return str(getattr(column.encoder, "compute_device", "cpu"))


def measured(open_fn: Callable[[], OpenedBackend]) -> OpenedBackend:
    """Open a backend and warm it once; record the resident memory that took."""
    reset_peak_rss()
    before = rss_mb()
    opened = open_fn()
    if opened.available:
        assert opened.encoder is not None and opened.decoder is not None
        features = opened.encoder.run({"image": encoder_input(opened.encoder)})
        frame = P.Preprocessing.from_metadata(opened.encoder.metadata).frame
        opened.decoder.run(prompt_feeds(opened.decoder, features, 1, img_size=frame))
        opened.peak_rss_mb = peak_rss_mb()
        if before is not None:
            opened.rss_added_mb = max(0.0, opened.peak_rss_mb - before)
    return opened


def recorded_metadata(directory: Path) -> list[dict[str, str]]:
    """Artifact metadata as the manifest records it (no runtime needed)."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return []
    try:
        entries = json.loads(manifest.read_text()).get("artifacts", [])
    except (json.JSONDecodeError, OSError):
        return []
    return [e.get("metadata", {}) for e in entries if e.get("metadata")]


def run_bench(
    settings: BenchSettings,
    folder: Path | None,
    progress: Progress,
    torch: TorchSide | None = None,
) -> BenchResult:
    """Open, time and judge every requested backend on the artifacts in `folder`."""
    result = BenchResult(settings, [], synthetic=bool(torch and torch.synthetic))
    for name in settings.backends:
        if name == TORCH:
            if torch is None or torch.reason:
                reason = "torch is not installed here" if torch is None else torch.reason
                result.columns.append(unavailable(name, reason, ExitCode.BACKEND_UNAVAILABLE))
                continue
            for column, opener in torch.columns(settings):
                progress(f"building {column} ({settings.device}, {settings.precision})")
                result.columns.append(measured(opener))
        elif folder is None:
            reason = "no ARTIFACT_DIR given, and no torch here to export one"
            result.columns.append(unavailable(name, reason, ExitCode.BAD_INPUT))
        else:
            for precision in settings.precisions:
                progress(f"opening {name} {precision} artifacts")
                opened = measured(
                    partial(open_artifact_backend, name, folder, precision, settings.threads)
                )
                opened.name = settings.column_name(opened.name, precision)
                if opened.available:
                    result.sizes[opened.name] = sum(
                        (folder / a).stat().st_size for a in opened.artifacts
                    )
                result.columns.append(opened)
    live = result.live
    if not live:
        return result
    result.devices = {c.name: compute_device(c) for c in live}
    result.synthetic = result.synthetic or any(
        c.encoder is not None and c.encoder.metadata.get("weights", "").startswith("synth")
        for c in live
    )
    result.timings = _time_stages(settings, live, progress)
    result.image = make_test_image()  # the image the other stages use
    if settings.everything_points > 0:
        from edgesam_export.device.bench_everything import everything_stage

        result.everything = everything_stage(
            {c.name: (c.encoder, c.decoder) for c in live},  # type: ignore[misc]
            result.image,
            points_per_side=settings.everything_points,
            batches=settings.everything_batches,
            iters=settings.encoder_iterations,
            warmup=settings.encoder_warmup,
            pred_iou_thresh=settings.everything_iou_thresh,
            stability_score_thresh=settings.everything_stability_thresh,
            progress=progress,
        )
    result.reference = torch.reference() if torch is not None and not torch.reason else None
    if result.reference is None:
        result.reference, result.reference_note = _outputs_reference(folder, live)
    else:
        result.reference_note = result.reference.note
    for col in live:
        if result.reference is None or _is_reference(result.reference, col):
            continue
        progress(f"parity of {col.name} against {result.reference_note}")
        result.parity[col.name] = _judge(result.reference, col)
        result.accuracy[col.name] = end_to_end_mask_iou(result.reference.source, col)
    return result


def end_to_end_mask_iou(reference: Any, col: OpenedBackend) -> MaskBarResult | None:
    """The masks a user gets from this column against the reference's (`MASK_IOU_RULE`):
    `mask_bar.mask_bar` over every prompt case the decoder accepts. None for a decoder with a
    family's own contract (the bench times ours only) or when no case could run."""
    from edgesam_export.device.official_contract import foreign_contract

    assert col.encoder is not None and col.decoder is not None
    if foreign_contract(col.decoder.metadata) is not None:
        return None
    from edgesam_export.device.predictor import decoder_feeds as predictor_feeds

    tensor, _ = P.preprocess(reference.image, params=reference.preprocessing)
    features = col.encoder.run({"image": tensor})  # every output the decoder takes, by name
    stab = col.decoder.metadata.get("use_stability_score", "false") == "true"
    pairs = []
    for index, case in enumerate(reference.prompts):
        feeds = predictor_feeds(col.decoder, features, case.point_coords, case.point_labels)
        if col.decoder.accepts(feeds) is not None:
            continue
        exp = reference.expected(index, stab)
        pairs.append((exp.scores, exp.bits, col.decoder.run(feeds)["masks"]))
    return mask_bar(pairs) if pairs else None


def _time_stages(
    settings: BenchSettings, live: list[OpenedBackend], progress: Progress
) -> list[Timing]:
    """Every stage, all columns round-robin within it (drift spreads over all of them)."""
    stages = {
        c.name: session_stages(
            c.encoder,  # type: ignore[arg-type]
            c.decoder,  # type: ignore[arg-type]
            points=settings.points,
            box_batch=settings.box_batch,
            end_to_end=True,
        )
        for c in live
    }
    timings: list[Timing] = []
    names = [s.name for s in next(iter(stages.values()))]
    for i, stage_name in enumerate(names):
        if stage_name in ENCODER_STAGES:
            warm, iters = settings.encoder_warmup, settings.encoder_iterations
        else:
            warm, iters = settings.warmup, settings.iterations
        progress(f"timing {stage_name} ({', '.join(stages)})")
        samples = time_interleaved(
            {b: s[i].call for b, s in stages.items()},
            warmup=warm,
            iters=iters,
            gap_s=0.02 if len(stages) > 1 else 0.0,
        )
        timings += [Timing(stage_name, b, samples[b], warm) for b in stages]
    return timings


def _outputs_reference(
    folder: Path | None, live: list[OpenedBackend]
) -> tuple[Reference | None, str]:
    """Without torch: the reference outputs the export shipped in the artifact folder."""
    if folder is None:
        return None, "none (no torch and no artifact folder)"
    metas = recorded_metadata(folder) or [c.encoder.metadata for c in live if c.encoder]
    if not metas:
        return None, "none (no artifact metadata)"
    from edgesam_export.device.reference_outputs import find_reference_outputs

    try:
        outputs = find_reference_outputs(folder, metas[0])
    except InputError as exc:
        return None, f"none ({exc})"
    note = f"reference outputs {outputs.path.name}"
    return Reference("outputs", note, outputs), note


def _is_reference(reference: Reference, col: OpenedBackend) -> bool:
    """Whether this column computes exactly the reference (torch as loaded, fp32, CPU)."""
    return (
        reference.kind == "torch"
        and col.name == TORCH
        and col.precision == "fp32"
        and compute_device(col) == "cpu"
    )


def _judge(reference: Reference, col: OpenedBackend) -> tuple[ParityReport, dict[str, Any]]:
    record: dict[str, Any] = {}
    report = ParityReport()
    assert col.encoder is not None and col.decoder is not None
    pairs = ([(col.name, col.encoder)], [(col.name, col.decoder)])
    try:
        judge(reference.source, *pairs, report=report, record=record)
    except InputError as exc:  # e.g. no tolerances for this precision
        report.errors.append({"artifact": col.name, "error": str(exc)})
    return report, record

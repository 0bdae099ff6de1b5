"""The everything stage of `edgesam-bench`: segment everything per backend and batch size.

Device side (numpy, our sessions, `everything.MaskGenerator`). For each backend and each
``points_per_batch`` value B, `MaskGenerator.generate` runs on the benchmark image over a
`Predictor` of that backend's sessions; we record the time per image (the whole `generate`:
encoder, every decoder call, post-processing) and, from the generator's own counters, the time
per decoder call and per prompt set, and the masks kept.

Decoders do not all take every B: a CoreML decoder package declares its batch sizes (metadata
``max_batch``, 1 by default), a TensorRT engine its profile ranges. A B the decoder does not
accept (for the full batches or the last, smaller one) is reported as skipped with the reason;
when that leaves a backend out of a requested size, the largest B it does accept (up to the
largest requested) is timed instead, marked as a fallback. A decoder that refuses a shape only
when run is reported the same way, never as a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesam_export.device.bench import Timing, time_interleaved
from edgesam_export.device.errors import EdgeSamExportError
from edgesam_export.device.runtime import Session

#: The default grid: 8x8 points in batches of 16 (four decoder calls) and 64 (one call). The
#: issue's and segment-anything's grid is 32x32 (`--everything-points 32`), ~16x the decoding.
DEFAULT_POINTS_PER_SIDE = 8
DEFAULT_BATCHES = (16, 64)
#: Points per prompt set the generator sends: the grid point plus EdgeSAM's padding point
#: (`Predictor.predict_low_res` pads point-only prompts).
POINTS_PER_PROMPT = 2

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


def stage_name(batch: int) -> str:
    """Name of the everything stage at `batch` prompt sets per decoder call."""
    return f"everything B={batch}"


@dataclass
class EverythingRun:
    """One backend at one batch size: its timings, or why it did not run."""

    backend: str
    points_per_batch: int
    status: str = OK
    reason: str = ""
    fallback: bool = False  # timed because a requested batch size was refused
    warmup: int = 0
    image_ms: tuple[float, ...] = ()  # per generate() call
    stats: list[dict[str, Any]] = field(default_factory=list)  # GenerationStats per timed call
    masks: int = 0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)  # last call's

    def _median(self, key: str, per: str | None = None) -> float | None:
        values = [
            s[key] * 1e3 / (s[per] if per else 1) for s in self.stats if per is None or s.get(per)
        ]
        return round(float(np.median(values)), 3) if values else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": stage_name(self.points_per_batch),
            "backend": self.backend,
            "points_per_batch": self.points_per_batch,
            "status": self.status,
            "reason": self.reason,
            "fallback": self.fallback,
        }
        if self.status != OK:
            return out
        image = Timing(stage_name(self.points_per_batch), self.backend, self.image_ms, self.warmup)
        last = self.stats[-1] if self.stats else {}
        out.update(
            image_ms=image.to_json(),
            decoder_call_ms=self._median("decoder_s", "decoder_calls"),
            decoder_ms_per_prompt=self._median("decoder_s", "points"),
            set_image_ms=self._median("set_image_s"),
            decoder_ms=self._median("decoder_s"),
            postprocess_ms=self._median("postprocess_s"),
            decoder_calls=last.get("decoder_calls"),
            decoder_batch_sizes=last.get("decoder_batch_sizes"),
            masks=self.masks,
        )
        return out


def call_sizes(n_points: int, batch: int) -> list[int]:
    """The distinct batch sizes the generator sends for `n_points` grid points, B at a time."""
    sizes = [batch] if n_points >= batch else []
    if n_points % batch:
        sizes.append(n_points % batch)
    return sizes


def refusal(decoder: Session, batch: int) -> str | None:
    """Why `decoder` will not take `batch` prompt sets in one call (None: it will).

    Reads what the artifact declares: the session's `accepts` (CoreML enumerated shapes and
    ranges), the ``max_batch`` metadata entry, and TensorRT-style ``profiles`` (input name ->
    ``{"min": [...], "max": [...]}``) where a session has them.
    """
    shapes = {
        "point_coords": (batch, POINTS_PER_PROMPT, 2),
        "point_labels": (batch, POINTS_PER_PROMPT),
    }
    limit = decoder.metadata.get("max_batch")
    if limit is not None and limit.strip().isdigit() and batch > int(limit):
        return f"the decoder takes at most {limit} prompt set(s) per call (metadata max_batch)"
    reason = decoder.accepts({k: np.zeros(s, np.float32) for k, s in shapes.items()})
    if reason is not None:
        return reason
    profiles = getattr(decoder, "profiles", None)
    if isinstance(profiles, Mapping):
        for name, shape in shapes.items():
            rng = profiles.get(name)
            if isinstance(rng, Mapping) and "min" in rng and "max" in rng:
                if not all(
                    lo <= s <= hi for lo, s, hi in zip(rng["min"], shape, rng["max"], strict=False)
                ):
                    return (
                        f"{name} shape {shape} is outside the engine's profile"
                        f" {list(rng['min'])}..{list(rng['max'])}"
                    )
    return None


def plan(
    decoder: Session, batches: Sequence[int], n_points: int
) -> list[tuple[int, str | None, bool]]:
    """(batch, refusal or None, is_fallback) for each requested batch, plus a fallback batch.

    A batch is refused when any call it implies (full batches, the last partial one) is. If a
    requested batch is refused, the largest batch up to max(batches) whose calls are all
    accepted is added (when not requested already), marked as a fallback.
    """

    def why(batch: int) -> str | None:
        for size in call_sizes(n_points, batch):
            reason = refusal(decoder, size)
            if reason is not None:
                return f"B={size}: {reason}"
        return None

    rows: list[tuple[int, str | None, bool]] = [(b, why(b), False) for b in batches]
    if any(reason is not None for _, reason, _ in rows):
        top = min(max(batches), n_points)
        accepted = next((b for b in range(top, 0, -1) if why(b) is None), None)
        if accepted is not None and accepted not in batches:
            rows.append((accepted, None, True))
    return rows


def everything_stage(
    columns: Mapping[str, tuple[Session, Session]],
    image: np.ndarray,
    *,
    points_per_side: int = DEFAULT_POINTS_PER_SIDE,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 1,
    warmup: int = 0,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    progress: Callable[[str], None] | None = None,
) -> list[EverythingRun]:
    """Time segment-everything on `image` per backend and batch size (see the module doc).

    `columns` maps a backend name to its (encoder, decoder) sessions. Backends that take the
    same batch size are timed round-robin (`time_interleaved`), `warmup` untimed calls each
    first. Records are kept as COCO RLE (as `edgesam-export everything` writes them); each run
    keeps the last call's records for the report's overlay.
    """
    from edgesam_export.device.everything import MaskGenerator
    from edgesam_export.device.predictor import Predictor

    n_points = points_per_side * points_per_side
    plans = {name: plan(dec, batches, n_points) for name, (_, dec) in columns.items()}
    order = list(dict.fromkeys(b for rows in plans.values() for b, _, _ in rows))
    runs: list[EverythingRun] = []
    for batch in order:
        contenders: dict[str, Callable[[], object]] = {}
        batch_runs: dict[str, EverythingRun] = {}
        collected: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
        for name, rows in plans.items():
            row = next((r for r in rows if r[0] == batch), None)
            if row is None:
                continue
            run = EverythingRun(name, batch, fallback=row[2], warmup=warmup)
            batch_runs[name] = run
            if row[1] is not None:
                run.status, run.reason = SKIPPED, row[1]
                continue
            encoder, decoder = columns[name]
            generator = MaskGenerator(
                Predictor(encoder, decoder),
                points_per_side=points_per_side,
                points_per_batch=batch,
                pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh,
                output_mode="coco_rle",
            )
            collected[name] = []

            def call(gen: MaskGenerator = generator, sink: list[Any] = collected[name]) -> object:
                records = gen.generate(image)
                stats = gen.stats.to_json()
                stats["points"] = n_points
                sink.append((stats, records))
                return records

            contenders[name] = call
        if contenders:
            if progress is not None:
                progress(f"timing {stage_name(batch)} ({', '.join(contenders)})")
            samples = _time_or_refuse(contenders, batch_runs, warmup, iters)
            for name, times in samples.items():
                run = batch_runs[name]
                timed = collected[name][len(collected[name]) - len(times) :]
                run.image_ms = times
                run.stats = [s for s, _ in timed]
                run.records = timed[-1][1]
                run.masks = len(run.records)
        runs += batch_runs.values()
    return runs


def _time_or_refuse(
    contenders: dict[str, Callable[[], object]],
    runs: Mapping[str, EverythingRun],
    warmup: int,
    iters: int,
) -> dict[str, tuple[float, ...]]:
    """Time the contenders interleaved; one that raises is reported with its error, not timed.

    A runtime can refuse a shape only when run (an engine checks its profile at run time): such
    a contender becomes skipped (our typed errors) or failed (a backend's own error), returns
    at once from then on, and its samples are dropped; the others are timed as usual.
    """
    errors: dict[str, Exception] = {}

    def guard(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            if name in errors:
                return None
            try:
                return fn()
            except Exception as exc:  # typed refusals, or onnxruntime's / TensorRT's own errors
                errors[name] = exc
                return None

        return call

    samples = time_interleaved(
        {name: guard(name, fn) for name, fn in contenders.items()},
        warmup=warmup,
        iters=iters,
        gap_s=0.02 if len(contenders) > 1 else 0.0,
    )
    for name, exc in errors.items():
        run = runs[name]
        if isinstance(exc, EdgeSamExportError):
            run.status, run.reason = SKIPPED, str(exc)
        else:
            run.status, run.reason = FAILED, f"{type(exc).__name__}: {exc}"
    return {name: times for name, times in samples.items() if name not in errors}


def overlays(runs: Sequence[EverythingRun], image: np.ndarray) -> dict[str, np.ndarray]:
    """Per backend, the masks of its largest timed batch size painted over `image`."""
    from edgesam_export.device.everything.overlay import render_overlay

    best: dict[str, EverythingRun] = {}
    for run in runs:
        if run.status == OK and (
            run.backend not in best or run.points_per_batch > best[run.backend].points_per_batch
        ):
            best[run.backend] = run
    return {name: render_overlay(image, run.records) for name, run in best.items()}

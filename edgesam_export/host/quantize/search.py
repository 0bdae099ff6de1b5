"""Sensitivity analysis and the search for the fewest float blocks that meet the mask bar.

1. Quantize everything; judge it on the held-out inputs (masks against the PyTorch reference).
   Meets the bar: done, nothing kept float.
2. Sensitivity: quantize one block at a time (everything else float) and measure the SQNR (dB)
   of the graph's output against the float reference on the first held-out image (cheap: one
   run, no decoder; candidates are cut from one QDQ graph, `static.keep_float`). Low SQNR =
   sensitive. The reference outputs are computed once.
3. Search: keep the k most sensitive blocks float, k found by bisection (each probe judged on
   every held-out image and prompt); every probe is a point of the frontier in the report.

The search may be bounded by `budget` (`--search-budget`): a number of graph evaluations, each
sensitivity measurement and each judged probe counting one. Without it the search is complete
(every block measured, the bisection narrowed to one). With it, the sensitivity pass stops at
half the budget (blocks it did not reach rank after the measured ones, in graph order) and the
bisection when the budget is spent. The fewest-float graph that met the bar so far is the
answer; the report says whether the search converged and whether the budget cut it short.
Counted, not timed: the same inputs choose the same blocks on a fast or a loaded machine, so
the written graph does not depend on the machine's load. Timings are hints for the progress
lines only; the report in the graph's metadata holds none (two exports write the same bytes).

The PyTorch reference answers every probe: an encoder candidate's embeddings go through the
PyTorch decoder, a decoder candidate gets the PyTorch embeddings.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.errors import ExportFailedError
from edgesam_export.device.mask_bar import MaskBar, MaskBarResult, by_image, mask_bar
from edgesam_export.host.quantize.data import (
    HELDOUT_PROMPT_SEED,
    Inputs,
    calibration_inputs,
    heldout_images,
    heldout_labels,
    prepare,
)
from edgesam_export.host.quantize.static import StaticQuantizer, quantizable
from edgesam_export.host.quantize.weights import WeightQuantizer
from edgesam_export.host.targets.onnx_weights import set_meta

if TYPE_CHECKING:
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.models import LoadedModel

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def stderr_progress(message: str) -> None:
    """An int8 search's progress (minutes on an encoder), beside the CLI's own lines."""
    print(f"  {message}", file=sys.stderr, flush=True)


def sqnr_db(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when equal, -inf on NaN/inf)."""
    c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    if not np.all(np.isfinite(c)):
        return float("-inf")
    noise = float(np.sum((c - r) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r**2) / noise))


@dataclass
class Point:
    """One probe of the search: which blocks stayed float and what it scored."""

    float_blocks: list[str]
    float_nodes: int
    mean_iou: float
    worst_iou: float
    sqnr_db: float  # of the graph's primary output, over every held-out input
    passed: bool
    images: list[dict[str, Any]] = field(default_factory=list)  # per image (MaskBarResult)


@dataclass
class Report:
    graph: str
    bar: str
    calibration: dict[str, Any]
    heldout: dict[str, Any]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    frontier: list[Point] = field(default_factory=list)
    float_blocks: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    budget: int | None = None  # graph evaluations allowed (None: a complete search)
    evaluations: int = 0  # sensitivity measurements + judged probes
    sensitivity_complete: bool = True  # every block measured (False: the budget cut it short)
    converged: bool = True  # the bisection narrowed k to one (False: the budget ran out)
    bar_met: bool = False
    kind: str = "int8"  # or "int8-weights": the progress lines and errors say which

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Evaluator:
    """Held-out inputs, their float reference outputs (computed once), and the judgement of a
    candidate graph on them."""

    def __init__(
        self,
        graph: str,
        loaded: LoadedModel,
        inputs: Inputs,
        bar: MaskBar,
        fp32: Any = None,
        encoder: Any = None,
    ) -> None:
        """`encoder` (decoder searches): a session whose embeddings the candidate decoders
        get (the reduced encoder shipped beside them), so the bar is judged end to end; the
        reference is always PyTorch's encoder and decoder."""
        from edgesam_export.host.quantize.heldout import MaskReference

        self.graph, self.inputs, self.bar = graph, inputs, bar
        self.fp32 = None if fp32 is None else self._session(fp32)  # paired speed hint
        reference = MaskReference(loaded, inputs, one_set_per_call=False)
        self.decoder, self.embeddings = reference.decoder, reference.embeddings
        self.reference = reference.reference
        self.candidate_embeddings = (
            self.embeddings
            if encoder is None
            else [encoder.run({"image": t})["image_embeddings"] for t in inputs.tensors]
        )
        self.first_cases = len(inputs.prompts[0])

    def _session(self, proto: Any) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    @staticmethod
    def _run(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def quick(self, proto: Any) -> float:
        """SQNR (dB) of the primary output on the first held-out image."""
        session = self._session(proto)
        if self.graph == "encoder":
            emb = self._run(session, {"image": self.inputs.tensors[0]})["image_embeddings"]
            return sqnr_db(emb, self.embeddings[0])
        feeds = list(self.inputs.decoder_feeds(self.candidate_embeddings))[: self.first_cases]
        got = [self._run(session, f)["masks"] for f in feeds]
        ref = [r["masks"] for r in self.reference[: self.first_cases]]
        return sqnr_db(
            np.concatenate([g.ravel() for g in got]), np.concatenate([r.ravel() for r in ref])
        )

    def speedup(self, session: Any) -> float | None:
        """fp32 time / candidate time on the first held-out input, interleaved (a hint)."""
        if self.fp32 is None:
            return None
        if self.graph == "encoder":
            feeds = {"image": self.inputs.tensors[0]}
        else:
            feeds = next(iter(self.inputs.decoder_feeds(self.candidate_embeddings)))
        repeats = 1 if self.graph == "encoder" else 5
        times = {}
        for s in (self.fp32, session):
            self._run(s, feeds)
        for name, s in (("fp32", self.fp32), ("int8", session)):
            t0 = time.perf_counter()
            for _ in range(repeats):
                self._run(s, feeds)
            times[name] = time.perf_counter() - t0
        return times["fp32"] / times["int8"]

    def judge(self, proto: Any) -> tuple[MaskBarResult, float, float, float | None]:
        """(mask bar result, SQNR dB, latency ms, speed-up over fp32) over every held-out
        image and prompt; the two timings are hints for the progress line."""
        session = self._session(proto)
        if self.graph == "encoder":
            first = {"image": self.inputs.tensors[0]}
            self._run(session, first)
            t0 = time.perf_counter()
            emb = [
                self._run(session, {"image": t})["image_embeddings"] for t in self.inputs.tensors
            ]
            latency = (time.perf_counter() - t0) / len(emb)
            outs = [self.decoder.run(f) for f in self.inputs.decoder_feeds(emb)]
            sqnr = sqnr_db(np.stack(emb), np.stack(self.embeddings))
        else:
            feeds = list(self.inputs.decoder_feeds(self.candidate_embeddings))
            self._run(session, feeds[0])
            t0 = time.perf_counter()
            outs = [self._run(session, f) for f in feeds]
            latency = (time.perf_counter() - t0) / len(outs)
            sqnr = sqnr_db(
                np.concatenate([o["masks"].ravel() for o in outs]),
                np.concatenate([r["masks"].ravel() for r in self.reference]),
            )
        pairs = [
            (ref["scores"], ref["masks"], out["masks"])
            for ref, out in zip(self.reference, outs, strict=True)
        ]
        result = mask_bar(pairs, self.bar, images=self.inputs.feed_images())
        return result, sqnr, 1000 * latency, self.speedup(session)


class Quantizer(Protocol):
    """Makes the search's candidates: everything quantized but `exclude`, or `only` those."""

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Any: ...


class CandidateJudge(Protocol):
    """Judges the search's candidates (`Evaluator` for ONNX graphs, `pt2e.ProgramEvaluator`
    for ExecuTorch programs)."""

    def quick(self, candidate: Any) -> float: ...

    def judge(self, candidate: Any) -> tuple[MaskBarResult, float, float, float | None]: ...


def search(
    quantizer: Quantizer,
    evaluator: CandidateJudge,
    block_map: dict[str, list[str]],
    report: Report,
    progress: Progress = _quiet,
    budget: int | None = None,
    cost: Mapping[str, float] | None = None,
) -> Any:
    """The candidate (a QDQ graph; an ExecuTorch plan) with the fewest float blocks that meets
    the bar (steps in the module doc); fills `report`. Raises ExportFailedError when no
    partly quantized candidate it probed meets it.

    `cost` (bytes a block costs kept float; weight-only int8) ranks blocks by the noise their
    quantization adds per unit of cost (10^(-SQNR/10) / cost) instead of by SQNR alone, so the
    bisection buys the most accuracy per byte: a large weight ranks after small ones that
    harm the output as much."""
    report.budget = budget

    def over(share: float = 1.0) -> bool:
        return budget is not None and report.evaluations >= share * budget

    def used() -> str:
        n = report.evaluations
        return f"{n} evaluated" + ("" if budget is None else f" of --search-budget {budget}")

    def probe(kept: Sequence[str]) -> tuple[Any, Point]:
        nodes = [n for b in kept for n in block_map[b]]
        proto = quantizer.quantize(exclude=nodes)
        result, sqnr, latency, speedup = evaluator.judge(proto)
        report.evaluations += 1
        point = Point(
            list(kept),
            len(nodes),
            result.mean_iou,
            result.worst_iou,
            sqnr,
            result.passed,
            result.to_json().get("images", []),
        )
        report.frontier.append(point)
        speed = "" if speedup is None else f", {speedup:.2f}x fp32"
        progress(
            f"{report.kind} {report.graph}: {len(kept)} block(s) float:"
            f" mean IoU {result.mean_iou:.4f},"
            f" worst {result.worst_iou:.4f}, SQNR {sqnr:.1f} dB ({latency:.0f} ms{speed}: a"
            f" hint) ({'meets' if result.passed else 'misses'} {report.bar}; {used()})"
        )
        return proto, point

    progress(f"{report.kind} {report.graph}: judging every block quantized")
    best, point = probe([])
    if point.passed:
        report.bar_met = True
        return best
    names = list(block_map)
    for i, name in enumerate(names, 1):
        if over(0.5):
            report.sensitivity_complete = False
            progress(
                f"{report.kind} {report.graph}: sensitivity stopped at half the search budget"
                f" ({i - 1}/{len(names)} blocks measured; the rest rank after them)"
            )
            break
        db = evaluator.quick(quantizer.quantize(only=block_map[name]))
        report.evaluations += 1
        report.sensitivity.append({"block": name, "nodes": len(block_map[name]), "sqnr_db": db})
        progress(
            f"{report.kind} {report.graph}: sensitivity [{i}/{len(names)}] {name}:"
            f" {db:.1f} dB ({used()})"
        )

    measured = rank(report.sensitivity, cost)
    ranking = measured + [n for n in names if n not in set(measured)]
    lo, hi, best = 0, len(ranking), None
    while hi - lo > 1:
        if over():
            report.converged = False
            progress(
                f"{report.kind} {report.graph}: search budget spent ({used()}); k in ({lo}, {hi}]"
            )
            break
        mid = (lo + hi) // 2
        proto, point = probe(ranking[:mid])
        if point.passed:
            hi, best = mid, proto
        else:
            lo = mid
    if best is None:
        cut = "" if report.converged else f" within --search-budget {budget}"
        raise ExportFailedError(
            f"{report.kind} {report.graph}: no partly quantized graph meets the accuracy target"
            f" {report.bar}{cut} (closest: {_closest(report.frontier)}); loosen"
            " --accuracy-target, raise --search-budget, or export fp32/fp16"
        )
    report.float_blocks = ranking[:hi]
    report.float_nodes = [n for b in ranking[:hi] for n in block_map[b]]
    report.bar_met = True
    return best


def rank(
    sensitivity: Sequence[dict[str, Any]], cost: Mapping[str, float] | None = None
) -> list[str]:
    """Blocks most harmful first: by SQNR alone, or with `cost` by the noise their
    quantization adds per unit of cost (10^(-SQNR/10) / cost); ties keep graph order."""

    def harm(s: dict[str, Any]) -> float:
        if cost is None:
            return -s["sqnr_db"]
        noise = 10.0 ** min(-s["sqnr_db"] / 10.0, 300.0)  # -inf dB (NaN outputs): the most
        return noise / max(float(cost[s["block"]]), 1.0)

    return [s["block"] for s in sorted(sensitivity, key=harm, reverse=True)]


def _closest(frontier: Sequence[Point]) -> str:
    p = max(frontier, key=lambda p: (p.worst_iou, p.mean_iou))
    return f"{len(p.float_blocks)} float blocks, mean IoU {p.mean_iou:.4f}, worst {p.worst_iou:.4f}"


def quantize_graph(
    proto: Any,
    loaded: LoadedModel,
    options: OnnxOptions,
    progress: Progress = _quiet,
    *,
    encoder: Path | None = None,
) -> Any:
    """Static int8 QDQ (`--quantize int8`) or weight-only int8 (`int8-weights`) of one of our
    fp32 graphs (encoder or decoder), searched to meet `options.accuracy_target`; the report
    rides in the metadata (`int8.report`).

    Static int8 calibrates its activation ranges on the calibration images and searches on the
    held-out images. Weight-only int8 has no ranges to calibrate: it searches on the calibration
    images (its selection set) and judges the chosen graph once on the held-out images, which
    the search never saw; a miss there fails the export.

    A decoder exported beside a reduced encoder (`encoder`: that file) is calibrated on its
    embeddings and judged end to end: the candidate decoder on the shipped encoder's
    embeddings against PyTorch's encoder and decoder, so the bar holds for the pair a user
    runs (each graph judged alone beside PyTorch's other can meet it while the pair misses)."""
    from edgesam_export.host.reference import reference_sessions

    weights_only = options.quantize == "int8-weights"
    kind = "int8-weights" if weights_only else "int8"
    meta = {p.key: p.value for p in proto.metadata_props}
    graph = meta.get("graph", "encoder")
    params = _preprocessing(loaded)
    bar = MaskBar.parse(options.accuracy_target)
    # weight-only: the calibration images are its selection images (the same default of 8: it
    # was 3 when the option was not set, which the CLI, setting every option, never hit)
    held_images = heldout_images(options.heldout_images)
    calibration = calibration_inputs(
        options.calibration, options.calibration_images, params, held_images
    )
    heldout = prepare(held_images, params, HELDOUT_PROMPT_SEED)
    searched_on = calibration if weights_only else heldout
    progress(f"{kind} {graph}: PyTorch reference on {len(searched_on.tensors)} image(s)")
    paired = None
    if encoder is not None and graph == "decoder":
        from edgesam_export.device.backends import open_session

        progress(f"{kind} {graph}: judged end to end, on the embeddings of {encoder.name}")
        paired = open_session(encoder)
    evaluator = Evaluator(
        graph, loaded, searched_on, bar, fp32=None if weights_only else proto, encoder=paired
    )
    feeds: list[dict[str, Any]] = []
    if weights_only:
        pass
    elif graph == "encoder":
        feeds = [{"image": t} for t in calibration.tensors]
    else:
        source_encoder = paired if paired is not None else reference_sessions(loaded)[0]
        emb = [source_encoder.run({"image": t})["image_embeddings"] for t in calibration.tensors]
        feeds = list(calibration.decoder_feeds(emb))
    source = options.calibration_source()
    report = Report(
        graph,
        str(bar),
        {
            "source": source,
            "images": len(calibration.tensors),
            "feeds": len(feeds),
            "method": "selection" if weights_only else options.calibration_method,
            "activation_symmetric": options.activation_symmetric,
        },
        {
            "images": len(held_images),
            "prompt_cases": sum(len(c) for c in heldout.prompts),
            "masks": None,
        },
        kind=kind,
    )
    quantizer: Any
    if weights_only:
        quantizer = WeightQuantizer(proto)
    else:
        quantizer = StaticQuantizer(
            proto,
            feeds,
            options.calibration_method,
            options.activation_symmetric,
            quantizable(proto),
        )
    block_map = quantizer.blocks()
    with quantizer:
        quantized = search(
            quantizer,
            evaluator,
            block_map,
            report,
            progress,
            options.search_budget,
            cost=quantizer.costs() if weights_only else None,
        )
    final = (
        report.frontier[-1]
        if not report.float_blocks
        else next(p for p in reversed(report.frontier) if p.float_blocks == report.float_blocks)
    )
    if weights_only:  # the selection set chose it; the held-out images judge it
        progress(
            f"{kind} {graph}: judging the chosen graph on {len(held_images)} held-out image(s)"
        )
        result, *_ = Evaluator(graph, loaded, heldout, bar, encoder=paired).judge(quantized)
        report.heldout["masks"] = result.count
        report.heldout["mean_iou"], report.heldout["worst_iou"] = result.mean_iou, result.worst_iou
        mean, worst, passed = result.mean_iou, result.worst_iou, result.passed
        images = result.to_json().get("images", [])
    else:  # searched on the held-out images: the chosen probe's result is their judgement
        report.heldout["masks"] = sum(int(r["scores"].shape[0]) for r in evaluator.reference)
        mean, worst, passed, images = final.mean_iou, final.worst_iou, final.passed, final.images
    report.heldout["images"] = images
    per_image = by_image(images, heldout_labels(len(held_images)))
    progress(
        f"{kind} {graph}: held-out mean IoU {mean:.4f}, worst {worst:.4f}"
        f" ({'meets' if passed else 'misses'} {report.bar}); {per_image}"
    )
    if not passed:  # weight-only int8 (static int8's chosen probe met the bar)
        raise ExportFailedError(
            f"{kind} {graph}: {len(report.float_blocks)} float16 weight(s) met {report.bar}"
            f" on the {len(calibration.tensors)} selection image(s), but the held-out images"
            f" give mean IoU {mean:.4f} / worst {worst:.4f} ({per_image}); select on more"
            " images (--calibration-images, --calibration), loosen --accuracy-target, or"
            " export fp32/fp16"
        )
    meta = {p.key: p.value for p in quantized.metadata_props} | meta
    meta |= {
        "precision": kind,
        "int8.method": "weights" if weights_only else "static-qdq",
        "int8.calibration": f"{source} ({len(calibration.tensors)} images"
        + (", selection)" if weights_only else ")"),
        # weight mode: the blocks are weights, listed once under the target's own key
        "int8.float_weights" if weights_only else "int8.float_blocks": ",".join(
            report.float_blocks
        ),
        "int8.mask_iou": f"mean {mean:.4f} worst {worst:.4f}",
        "int8.bar": f"{report.bar} met",
        "int8.report": json.dumps(report.to_json()),
    }
    if not weights_only:  # what stays float stores its large weights as float16 (static.py)
        meta["int8.float_storage"] = "float16"
    if paired is not None and encoder is not None:  # what the bar was judged end to end with
        from edgesam_export.device.manifest import file_sha256

        meta["int8.judged_with"] = f"{encoder.name} sha256:{file_sha256(encoder)}"
    set_meta(quantized, meta)
    return quantized


def _preprocessing(loaded: LoadedModel) -> P.Preprocessing:
    from edgesam_export.host.metadata import base_metadata

    return P.Preprocessing.from_metadata(
        base_metadata(loaded, graph="encoder", use_stability_score=False)
    )

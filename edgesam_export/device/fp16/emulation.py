"""fp16 emulated on onnxruntime's fp32 kernels: the ONNX side of the fp16 analysis.

Device side: onnx, onnxruntime and numpy only (imported on use).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgesam_export.device.errors import BackendUnavailableError
from edgesam_export.device.fp16.criterion import (
    FP16_MIN_NORMAL,
    FP16_MIN_SUBNORMAL,
    PRECISION_LOSS_REL,
    SIGNIFICANT,
    TensorRange,
    calibration_inputs,
    classify,
    criterion,
)
from edgesam_export.device.parity import compare_arrays, nonfinite_count

_FLOAT = 1  # TensorProto.FLOAT
_FLOAT16 = 10


def _require() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the fp16 report runs on onnxruntime ({exc.name} is missing):"
            " pip install 'edgesam-export[onnx]'"
        ) from None
    return onnx, ort


def node_name(node: Any) -> str:
    """A node's name, or its first output when the exporter left it unnamed."""
    return str(node.name or node.output[0])


def _float_outputs(model: Any) -> dict[str, str]:
    """fp32 tensor produced by a node -> that node's name."""
    from edgesam_export.device.trt_check import tensor_types

    types = tensor_types(model)
    return {
        out: node_name(node)
        for node in model.graph.node
        for out in node.output
        if out and types.get(out) == _FLOAT
    }


def _emulated_nodes(
    model: Any, pins: set[str], suffix: str, float_outs: Mapping[str, str]
) -> tuple[list[Any], list[Any], dict[str, str]]:
    """The graph's nodes re-emitted with fp16 rounding; returns (nodes, initializers, renames).

    Every tensor of the copy is renamed with `suffix` so it can live beside the original.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    init_by_name = {i.name: i for i in graph.initializer}
    input_names = {i.name for i in graph.input} - set(init_by_name)
    float_inputs = {
        i.name for i in graph.input if i.name in input_names and i.type.tensor_type.elem_type == 1
    }
    nodes: list[Any] = []
    inits: list[Any] = []
    rounded_inits: dict[str, str] = {}
    rename: dict[str, str] = {}

    def cast_pair(src: str, dst: str) -> None:
        mid = dst + "__h"
        nodes.append(helper.make_node("Cast", [src], [mid], to=_FLOAT16, name=mid))
        nodes.append(helper.make_node("Cast", [mid], [dst], to=_FLOAT, name=dst + "__f"))

    for name in sorted(float_inputs):
        rename[name] = name + suffix
        cast_pair(name, name + suffix)

    def source(t: str, pinned: bool) -> str:
        if not t:
            return t
        if t in init_by_name:
            init = init_by_name[t]
            if init.data_type != _FLOAT or pinned:
                return t
            if t not in rounded_inits:
                arr = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
                inits.append(numpy_helper.from_array(arr, t + suffix))
                rounded_inits[t] = t + suffix
            return rounded_inits[t]
        if t in float_inputs and pinned:
            return t
        return rename.get(t, t)

    for node in graph.node:
        pinned = node_name(node) in pins
        copy = helper.make_node(
            node.op_type,
            [source(t, pinned) for t in node.input],
            [],
            name=node_name(node) + suffix,
            domain=node.domain,
        )
        copy.attribute.extend(node.attribute)
        for out in node.output:
            if not out:
                copy.output.append("")
                continue
            rename[out] = out + suffix
            if out in float_outs and not pinned:
                copy.output.append(out + suffix + "__raw")
            else:
                copy.output.append(out + suffix)
        nodes.append(copy)
        for out in node.output:
            if out and out in float_outs and not pinned:
                cast_pair(out + suffix + "__raw", out + suffix)
    return nodes, inits, rename


def emulated_model(model: Any, pins: Iterable[str] = ()) -> Any:
    """A copy of `model` computing with fp16 rounding everywhere except in `pins` (node names).

    Same inputs and outputs (float32) as the original.
    """
    _require()
    float_outs = _float_outputs(model)
    nodes, inits, rename = _emulated_nodes(model, set(pins), "__e", float_outs)
    graph = model.graph
    from onnx import helper

    outputs = []
    for o in graph.output:
        nodes.append(helper.make_node("Identity", [rename.get(o.name, o.name)], [o.name]))
        outputs.append(o)
    keep = {i.name for i in graph.initializer}
    new_graph = helper.make_graph(
        nodes,
        graph.name + "_fp16_emulated",
        list(graph.input),
        outputs,
        initializer=[i for i in graph.initializer if i.name in keep] + inits,
    )
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


_STATS = ("absmax", "err", "lost", "flushed", "count", "minnz")


def _instrumented_model(model: Any) -> tuple[Any, list[tuple[str, str]]]:
    """fp32 graph + its unpinned emulated twin, with per-tensor statistics as extra outputs.

    For each fp32 tensor t (producer node n), one call's `TensorRange.update` counts computed
    in the graph (`t|absmax`, `t|lost`, `t|flushed`, `t|count`, `t|minnz`) plus `t|err`, max
    |t_emulated - t|. Returns (model, [(t, n)]).
    """
    from onnx import TensorProto, helper

    float_outs = _float_outputs(model)
    nodes, inits, rename = _emulated_nodes(model, set(), "__e", float_outs)
    graph = model.graph
    stats_nodes: list[Any] = []
    outputs = list(graph.output)
    consts = [
        helper.make_tensor(f"fp16|{k}", TensorProto.FLOAT, [], [v])
        for k, v in (
            ("normal", FP16_MIN_NORMAL),
            ("flush", FP16_MIN_SUBNORMAL / 2),
            ("significant", SIGNIFICANT),
            ("zero", 0.0),
            ("inf", math.inf),
        )
    ]
    tracked = []
    for i, (t, producer) in enumerate(float_outs.items()):
        k = f"s{i}"

        def n(op: str, ins: list[str], out: str, **kw: Any) -> None:
            stats_nodes.append(helper.make_node(op, ins, [out], **kw))

        n("Abs", [t], k + "abs")
        n("ReduceMax", [k + "abs"], t + "|absmax", keepdims=0)
        n("Sub", [rename[t], t], k + "d")
        n("Abs", [k + "d"], k + "ad")
        n("ReduceMax", [k + "ad"], t + "|err", keepdims=0)
        n("Greater", [k + "abs", "fp16|zero"], k + "nz")
        n("Mul", [t + "|absmax", "fp16|significant"], k + "thr")
        n("Less", [k + "abs", k + "thr"], k + "small")
        n("Not", [k + "small"], k + "matters")
        n("Less", [k + "abs", "fp16|normal"], k + "sub")
        n("And", [k + "matters", k + "sub"], k + "l0")
        n("And", [k + "l0", k + "nz"], k + "l")
        n("Less", [k + "abs", "fp16|flush"], k + "f0")
        n("And", [k + "f0", k + "nz"], k + "f")
        for flag, stat in (("l", "lost"), ("f", "flushed")):
            n("Cast", [k + flag], k + flag + "c", to=_FLOAT)
            n("ReduceSum", [k + flag + "c"], f"{t}|{stat}", keepdims=0)
        n("Size", [t], k + "size")
        n("Cast", [k + "size"], t + "|count", to=_FLOAT)
        n("Where", [k + "nz", k + "abs", "fp16|inf"], k + "nzabs")
        n("ReduceMin", [k + "nzabs"], t + "|minnz", keepdims=0)
        for stat in _STATS:
            outputs.append(helper.make_tensor_value_info(f"{t}|{stat}", TensorProto.FLOAT, []))
        tracked.append((t, producer))
    for o in graph.output:
        outputs.append(
            helper.make_tensor_value_info(o.name + "|emulated", o.type.tensor_type.elem_type, None)
        )
        stats_nodes.append(helper.make_node("Identity", [rename[o.name]], [o.name + "|emulated"]))
    new_graph = helper.make_graph(
        list(graph.node) + nodes + stats_nodes,
        graph.name + "_fp16_report",
        list(graph.input),
        outputs,
        initializer=list(graph.initializer) + inits + consts,
    )
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out, tracked


def _session(model: Any) -> Any:
    _, ort = _require()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No graph optimisation: a fused or eliminated Cast pair would skip the rounding.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_emulated(
    model: Any, feeds: Mapping[str, np.ndarray], pins: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """Outputs of the fp16-emulated graph (with `pins` kept fp32) for one feed."""
    sess = _session(emulated_model(model, pins))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


@dataclass
class LayerStats:
    node: str
    op: str
    tensor: str
    absmax: float  # over all calibration inputs, fp32 run
    rel_error: float  # accumulated: max |emulated - fp32| / max |fp32|
    lost_share: float  # values that matter yet are subnormal in fp16 (TensorRange)
    flushed_share: float  # values fp16 rounds to zero (information only)
    overflow: bool  # classify(): the one criterion
    near_overflow: bool
    underflow: bool
    nonfinite: bool  # the emulated tensor holds inf/NaN (here or upstream overflowed)
    precision_loss: bool  # finite, but accumulated error above PRECISION_LOSS_REL


@dataclass
class Fp16Report:
    """Per-layer ranges and flags, the chosen pins, and end-to-end errors with and without."""

    graph: str
    weights: str  # what the ONNX metadata says the weights are (checkpoint, synthetic-...)
    inputs: list[str]  # the calibration inputs used
    layers: list[LayerStats] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)  # nodes `--fp32-layers auto` keeps in fp32
    error_unpinned: dict[str, float] = field(default_factory=dict)  # output -> max abs error
    error_pinned: dict[str, float] = field(default_factory=dict)
    nonfinite_unpinned: dict[str, bool] = field(default_factory=dict)
    nonfinite_pinned: dict[str, bool] = field(default_factory=dict)
    # the fp32 graph's own output holds NaN/inf on the calibration inputs: broken weights,
    # not an fp16 problem (no pin can fix it)
    nonfinite_fp32: dict[str, bool] = field(default_factory=dict)
    output_scale: dict[str, float] = field(default_factory=dict)  # max |fp32 output|

    @property
    def overflowing(self) -> list[str]:
        return [s.node for s in self.layers if s.overflow]

    @property
    def near_overflowing(self) -> list[str]:
        return [s.node for s in self.layers if s.near_overflow and not s.overflow]

    @property
    def underflowing(self) -> list[str]:
        return [s.node for s in self.layers if s.underflow]

    @property
    def nonfinite_layers(self) -> list[str]:
        return [s.node for s in self.layers if s.nonfinite]

    def nonfinite_problems(self) -> list[str]:
        """Outputs that hold NaN/inf in fp32 (broken weights) or in fp16 despite the pins: the
        graph must not be built as is (`trt-check --fp16` exits 4 on them)."""
        lines = [
            f"{self.graph} output {o!r} is NaN/inf in fp32 already: the weights are broken"
            " (`edgesam-export parity` names the first node)"
            for o, bad in self.nonfinite_fp32.items()
            if bad
        ]
        lines += [
            f"{self.graph} output {o!r} is NaN/inf in fp16 even with the {len(self.pins)} pins"
            for o, bad in self.nonfinite_pinned.items()
            if bad and not self.nonfinite_fp32.get(o)
        ]
        return lines

    @property
    def precision_losing(self) -> list[str]:
        return [s.node for s in self.layers if s.precision_loss]

    def worst_layers(self, n: int = 10) -> list[LayerStats]:
        return sorted(self.layers, key=lambda s: -s.absmax)[:n]

    def to_json(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "weights": self.weights,
            "calibration_inputs": self.inputs,
            **criterion(),
            "layers": len(self.layers),
            "overflowing": self.overflowing,
            "near_overflow": self.near_overflowing,
            "underflow": self.underflowing,
            "precision_loss": self.precision_losing,
            "nonfinite": len(self.nonfinite_layers),
            "pins": self.pins,
            "end_to_end": {
                "max_abs_error_unpinned": self.error_unpinned,
                "max_abs_error_pinned": self.error_pinned,
                "nonfinite_unpinned": self.nonfinite_unpinned,
                "nonfinite_pinned": self.nonfinite_pinned,
                "nonfinite_fp32": self.nonfinite_fp32,
                "output_scale": self.output_scale,
            },
            "per_layer": [asdict(s) for s in self.layers],
        }


def _sum_bounds(
    model: Any, producers: Mapping[str, Any], absmax: Mapping[str, float]
) -> dict[str, float]:
    """Worst case of each ReduceSum output: reduced element count x max |input|.

    Counting reductions (stability scores sum 0/1 over 256x256 = 65536 pixels) stay small on
    calibration inputs and overflow on a mask that covers everything; the bound catches them.
    """
    from onnx import numpy_helper

    from edgesam_export.device.trt_check import _require_onnx

    onnx = _require_onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    shapes = {
        vi.name: [
            d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim
        ]
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
    }
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    bounds: dict[str, float] = {}
    for t, node in producers.items():
        if node.op_type != "ReduceSum" or node.input[0] not in absmax:
            continue
        shape = shapes.get(node.input[0], [])
        axes = consts.get(node.input[1]) if len(node.input) > 1 else None
        if axes is None:
            axes = np.arange(len(shape))
        count = 1
        for a in np.atleast_1d(axes).tolist():
            dim = shape[int(a)] if -len(shape) <= int(a) < len(shape) else 0
            count *= dim if dim > 0 else 1
        bounds[t] = count * absmax[node.input[0]]
    return bounds


def _max_error(emulated: np.ndarray, fp32: np.ndarray) -> tuple[float, bool]:
    """(max abs error, whether the emulated output holds NaN/inf), by the judge's metrics: a
    NaN on either side is an infinite error, and NaN on both sides is never "finite"."""
    metrics = compare_arrays(emulated, fp32)
    return metrics["max_abs"], bool(metrics.get("nonfinite"))


def fp16_report(
    model: Any,
    feeds: Sequence[Mapping[str, np.ndarray]],
    feed_names: Sequence[str],
    pins: Iterable[str] | None = None,
) -> Fp16Report:
    """Emulate fp16 on `feeds`; `pins=None` chooses them (the near-overflow layers)."""
    meta = {p.key: p.value for p in model.metadata_props}
    report = Fp16Report(
        meta.get("graph", "unknown"), meta.get("weights", "unknown"), list(feed_names)
    )
    instrumented, tracked = _instrumented_model(model)
    sess = _session(instrumented)
    names = [o.name for o in sess.get_outputs()]
    out_names = [o.name for o in model.graph.output]
    ops = {node_name(n): n.op_type for n in model.graph.node}
    inputs_of = {t: n for n in model.graph.node for t in n.output}
    ranges = {t: TensorRange(ops.get(producer, "?"), producer) for t, producer in tracked}
    err = {t: 0.0 for t, _ in tracked}
    references: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        values = dict(zip(names, sess.run(names, dict(feed)), strict=True))
        for t, _ in tracked:
            s = {k: float(values[f"{t}|{k}"]) for k in _STATS}
            ranges[t].add(
                s["absmax"], int(s["lost"]), int(s["flushed"]), int(s["count"]), s["minnz"]
            )
            err[t] = max(err[t], s["err"] if np.isfinite(s["err"]) else float("inf"))
        references.append({o: values[o] for o in out_names})
        for o in out_names:
            e, nf = _max_error(values[o + "|emulated"], values[o])
            report.error_unpinned[o] = max(report.error_unpinned.get(o, 0.0), e)
            report.nonfinite_unpinned[o] = report.nonfinite_unpinned.get(o, False) or nf
            report.nonfinite_fp32[o] = report.nonfinite_fp32.get(o, False) or bool(
                nonfinite_count(values[o])
            )
            report.output_scale[o] = max(
                report.output_scale.get(o, 0.0), float(np.abs(values[o]).max())
            )
    seen = {t: r.max_abs for t, r in ranges.items()}
    for feed in feeds:  # network inputs feed reductions too
        for name, value in feed.items():
            if np.issubdtype(value.dtype, np.floating):
                seen[name] = max(seen.get(name, 0.0), float(np.abs(value).max()))
    bounds = _sum_bounds(model, inputs_of, seen)
    for t, producer in tracked:
        r = ranges[t]
        rel = err[t] / r.max_abs if r.max_abs > 0 else 0.0
        verdict = classify(r, bounds.get(t, 0.0))
        report.layers.append(
            LayerStats(
                node=producer,
                op=r.op_type,
                tensor=t,
                absmax=r.max_abs,
                rel_error=rel,
                lost_share=r.lost_share,
                flushed_share=r.flushed_share,
                overflow=verdict.overflow,
                near_overflow=verdict.near_overflow,
                underflow=verdict.underflow,
                nonfinite=not np.isfinite(err[t]),
                precision_loss=bool(np.isfinite(rel) and rel > PRECISION_LOSS_REL),
            )
        )
    if pins is None:
        chosen = [s.node for s in report.layers if s.near_overflow]
    else:
        chosen = list(pins)
    report.pins = list(dict.fromkeys(chosen))
    if report.pins:
        emu = _session(emulated_model(model, report.pins))
        for feed, ref in zip(feeds, references, strict=True):
            outs = dict(zip(out_names, emu.run(out_names, dict(feed)), strict=True))
            for o in out_names:
                e, nf = _max_error(outs[o], ref[o])
                report.error_pinned[o] = max(report.error_pinned.get(o, 0.0), e)
                report.nonfinite_pinned[o] = report.nonfinite_pinned.get(o, False) or nf
    else:
        report.error_pinned = dict(report.error_unpinned)
        report.nonfinite_pinned = dict(report.nonfinite_unpinned)
    return report


def calibration_feeds(
    model: Any, embeddings: np.ndarray | None = None
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Calibration inputs for an edgesam-export ONNX graph, from its metadata.

    Encoder: the parity test image, preprocessed. Decoder: the CALIBRATION_CASES on
    `embeddings` (the fp32 encoder's output on that image; give it, or the report says it used
    a unit-normal stand-in).
    """
    meta = {p.key: p.value for p in model.metadata_props}
    tensor, cases = calibration_inputs(meta)
    if meta.get("graph") == "encoder":
        return [{"image": tensor}], ["parity test image (480x640)"]
    label = "embeddings of the parity test image"
    if embeddings is None:
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        embeddings = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        label = "unit-normal stand-in embeddings (no encoder given)"
    feeds = [
        {
            "image_embeddings": embeddings,
            "point_coords": c.point_coords,
            "point_labels": c.point_labels,
        }
        for c in cases
    ]
    return feeds, [f"{c.name} on {label}" for c in cases]

"""TensorRT readiness of an ONNX graph, checked without TensorRT or a GPU.

What the TensorRT ONNX parser accepts is recorded as data (`data/trt_onnx_operators.json`: the
operator support table of onnx-tensorrt for one TensorRT version, with its source); the
attribute restrictions that table states in prose are encoded here as rules. Every finding names
the node (or input) it is about and says what to do. Device side: needs only `onnx` and numpy.

Rules: opset range and operator domains; operators the parser does not support; per-operator
data types; data types TensorRT has no kernels for (int16, double, ...); int64 data tensors
(supported, but a cost); attribute restrictions (Resize modes, constant `axes`, pooling
dilations, TopK); dynamic input dimensions not covered by the requested optimisation profiles;
shape-tensor pitfalls (a network input used as a shape, shapes computed from tensor values,
data-dependent output shapes).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from edgesam_export.device.errors import ArtifactError, BackendUnavailableError, InputError
from edgesam_export.device.trt_qdq import check_qdq as _check_qdq

Severity = Literal["error", "warning"]
DimRange = tuple[int, int, int]  # (min, opt, max) of one dynamic dimension

# ONNX TensorProto data type number -> the name the parser's table uses.
_TYPE_NAMES: dict[int, str] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    14: "COMPLEX64",
    15: "COMPLEX128",
    16: "BF16",
}
# Types TensorRT networks cannot carry (DOUBLE is only down-cast by the parser, with clamping:
# we refuse it so that nothing is silently changed).
_FORBIDDEN_TYPES = {
    "INT16",
    "UINT16",
    "UINT32",
    "UINT64",
    "DOUBLE",
    "STRING",
    "COMPLEX64",
    "COMPLEX128",
}
# Operand positions that hold indices, shapes or axes rather than the operator's data type "T".
_NON_DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2),  # scale and zero point: `_check_qdq`
    "DequantizeLinear": (1, 2),
    "Gather": (1,),
    "GatherElements": (1,),
    "GatherND": (1,),
    "ScatterND": (1,),
    "ScatterElements": (1,),
    "Where": (0,),
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Unsqueeze": (1,),
    "Squeeze": (1,),
    "Pad": (1, 3),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "TopK": (1,),
    "Split": (1,),
    "CumSum": (1,),
    "OneHot": (0, 1),
    "ConstantOfShape": (0,),
    "Shape": (0,),
    "Size": (0,),
    "Cast": (0,),  # checked separately, with its `to` attribute
    "CastLike": (0, 1),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),
}
# Inputs whose values TensorRT treats as shape tensors (op -> operand positions).
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Resize": (2, 3),
    "Upsample": (1,),
    "TopK": (1,),
    "Pad": (1,),
    "Split": (1,),
    "OneHot": (1,),
}
# Operands that must be initializers (or Constant outputs) for the parser.
_CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    "ReduceSum": (1, "axes"),
    "ReduceMean": (1, "axes"),
    "ReduceMax": (1, "axes"),
    "ReduceMin": (1, "axes"),
    "ReduceProd": (1, "axes"),
    "ReduceL1": (1, "axes"),
    "ReduceL2": (1, "axes"),
    "ReduceLogSum": (1, "axes"),
    "ReduceLogSumExp": (1, "axes"),
    "ReduceSumSquare": (1, "axes"),
    "Slice": (3, "axes"),
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    "Pad": (3, "axes"),
    "CumSum": (1, "axis"),
}
_DATA_DEPENDENT_OPS = {"NonZero", "NonMaxSuppression", "Unique", "Compress"}
_RESIZE_COORDS = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_INT64_COST_ELEMENTS = 4096  # an int64 data tensor this large is worth a look (see docs)


@cache
def parser_support() -> dict[str, Any]:
    """The recorded operator support table (TensorRT version, opset range, source, operators)."""
    data = resources.files("edgesam_export.device").joinpath("data/trt_onnx_operators.json")
    text = data.read_text()
    table: dict[str, Any] = json.loads(text)
    return table


def parse_range(text: str, what: str) -> DimRange:
    """'MIN:OPT:MAX' (or one number N for N:N:N) -> (min, opt, max), validated."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--{what} must be MIN:OPT:MAX integers, got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"--{what} must be MIN:OPT:MAX, got {text!r}")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"--{what} needs 1 <= MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


@dataclass(frozen=True)
class Finding:
    rule: str  # opset | operator | dtype | attribute | profile | shape-tensor
    severity: Severity
    where: str  # the node (op type and name) or the input it is about
    message: str


@dataclass
class ReadinessReport:
    path: str
    tensorrt_version: str
    source: str
    nodes: int = 0
    operators: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "passed": self.passed,
            "tensorrt_parser_version": self.tensorrt_version,
            "operator_table_source": self.source,
            "nodes": self.nodes,
            "operators": self.operators,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [asdict(f) for f in self.findings],
        }


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise BackendUnavailableError(
            "the TensorRT readiness check reads ONNX files with onnx: pip install onnx"
        ) from None
    return onnx


def load_onnx(path: Path) -> Any:
    onnx = _require_onnx()
    if not path.is_file():
        raise ArtifactError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ArtifactError(f"cannot read {path} as ONNX: {str(exc)[:200]}") from None


def _where(node: Any) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor that shape inference can name (inputs, values, outputs)."""
    onnx = _require_onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph inference rejects still gets checked on what it declares
        inferred = model
    graph = inferred.graph
    types: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_attributes(node: Any, constants: set[str], add: Any) -> None:
    op = node.op_type
    if op == "Resize":
        mode = _attr(node, "mode", "nearest")
        if mode not in ("nearest", "linear"):
            add(
                "attribute",
                "error",
                node,
                f"Resize mode '{mode}' is not supported (only"
                " nearest and linear): export the upsampling another way (our encoder uses"
                " constant matmuls for bicubic) or use --upsample bilinear",
            )
        coords = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if coords not in _RESIZE_COORDS:
            add(
                "attribute",
                "error",
                node,
                f"Resize coordinate_transformation_mode '{coords}'"
                f" is not supported ({', '.join(sorted(_RESIZE_COORDS))})",
            )
        if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in (
            _RESIZE_NEAREST
        ):
            add("attribute", "error", node, "Resize nearest_mode is not supported")
        if _attr(node, "antialias", 0):
            add("attribute", "error", node, "Resize antialias=1 is not supported")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            add("attribute", "error", node, "Resize keep_aspect_ratio_policy must be 'stretch'")
    elif op in ("MaxPool", "AveragePool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            add("attribute", "error", node, f"{op} supports 2D or 3D pooling only")
        if any(d != 1 for d in _attr(node, "dilations", [])):
            add("attribute", "error", node, f"{op} dilations must be all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            add("attribute", "error", node, "MaxPool's Indices output is not supported")
    elif op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            add("attribute", "error", node, "TopK needs sorted=1")
    elif op == "LayerNormalization":
        if any(o for o in node.output[1:]):
            add(
                "attribute",
                "error",
                node,
                "LayerNormalization: only the first output (Y) is"
                " supported; drop the Mean/InvStdDev outputs",
            )
    elif op == "Constant":
        for a in node.attribute:
            if a.name in ("sparse_value", "value_string", "value_strings"):
                add("attribute", "error", node, f"Constant '{a.name}' is not supported")
    if op in _CONSTANT_INPUTS:
        pos, what = _CONSTANT_INPUTS[op]
        if len(node.input) > pos and node.input[pos] and node.input[pos] not in constants:
            add(
                "attribute",
                "error",
                node,
                f"{op} `{what}` must be an initializer (a constant"
                " tensor), but it is computed at run time: fold it when exporting",
            )


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output if out}


def _value_sources(tensor: str, producers: dict[str, Any], inputs: set[str]) -> set[str]:
    """Network inputs whose *values* (not only their shapes) flow into `tensor`."""
    found: set[str] = set()
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in inputs:
            found.add(t)
            continue
        node = producers.get(t)
        if node is None or node.op_type in ("Shape", "Size"):
            continue  # an initializer, or a shape read: static or shape-only
        stack.extend(i for i in node.input if i)
    return found


def check_model(
    model: Any,
    profiles: Mapping[str, DimRange] | None = None,
    path: str = "<memory>",
) -> ReadinessReport:
    """Check one ONNX model against the recorded parser support; `profiles` maps each dynamic
    input dimension's name (e.g. 'num_points') to the (min, opt, max) the engine will get."""
    table = parser_support()
    support: dict[str, dict[str, Any]] = table["operators"]
    report = ReadinessReport(path, table["tensorrt_version"], table["source"])
    graph = model.graph
    report.nodes = len(graph.node)
    report.operators = dict(sorted(Counter(n.op_type for n in graph.node).items()))
    seen: set[tuple[str, str, str]] = set()

    def add(rule: str, severity: Severity, node: Any, message: str) -> None:
        where = node if isinstance(node, str) else _where(node)
        if (rule, where, message) not in seen:
            seen.add((rule, where, message))
            report.findings.append(Finding(rule, severity, where, message))

    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not table["opset_min"] <= imp.version <= table["opset_max"]:
                add(
                    "opset",
                    "error",
                    "model",
                    f"opset {imp.version} is outside the parser's"
                    f" range {table['opset_min']}..{table['opset_max']} (TensorRT"
                    f" {table['tensorrt_version']}): re-export with --opset 17",
                )
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH, GRAPHS
        for node in graph.node:
            if any(a.type in (5, 10) for a in node.attribute):
                add(
                    "operator",
                    "warning",
                    node,
                    "control flow with subgraphs: only the outer graph is checked",
                )

    types = tensor_types(model)
    constants = {i.name for i in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"
    }
    names = {v: k for k, v in _TYPE_NAMES.items()}
    zero_points = {i.name: i for i in graph.initializer if i.data_type in (2, 3)}  # (U)INT8
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            add(
                "operator",
                "error",
                node,
                f"custom domain '{node.domain}': TensorRT needs a"
                " plugin for it; export with standard ONNX operators",
            )
            continue
        entry = support.get(node.op_type)
        if entry is None or not entry["supported"]:
            state = "not in" if entry is None else "marked unsupported in"
            add(
                "operator",
                "error",
                node,
                f"{node.op_type} is {state} the TensorRT"
                f" {table['tensorrt_version']} ONNX parser's operator table",
            )
            continue
        allowed = set(entry["types"])
        skip = _NON_DATA_INPUTS.get(node.op_type, ())
        data_inputs = [t for i, t in enumerate(node.input) if t and i not in skip]
        for t in data_inputs:
            kind = _TYPE_NAMES.get(types.get(t, 0))
            if kind and allowed and kind not in allowed and kind not in _FORBIDDEN_TYPES:
                add(
                    "dtype",
                    "error",
                    node,
                    f"input '{t}' is {kind}; the parser supports"
                    f" {node.op_type} on {', '.join(sorted(allowed))} only",
                )
        if node.op_type == "Cast":
            to = _TYPE_NAMES.get(int(_attr(node, "to", 0)), "?")
            if to not in allowed:
                add(
                    "dtype",
                    "error",
                    node,
                    f"Cast to {to}: TensorRT casts only to {', '.join(sorted(allowed))}",
                )
        for t in list(node.input) + list(node.output):
            kind = _TYPE_NAMES.get(types.get(t, 0))
            if kind in _FORBIDDEN_TYPES:
                fix = "use int32" if kind.startswith(("INT", "UINT")) else "use float32"
                add(
                    "dtype",
                    "error",
                    node,
                    f"tensor '{t}' is {kind}, which TensorRT does not"
                    f" support: {fix} (e.g. sum int32 counts for stability scores)",
                )
        _check_attributes(node, constants, add)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(node, constants, zero_points, add)
        if node.op_type in _DATA_DEPENDENT_OPS:
            add(
                "shape-tensor",
                "error",
                node,
                f"{node.op_type} has a data-dependent output"
                " shape: the engine would need an output allocator; keep shapes static",
            )
    _check_int64_cost(model, types, names["INT64"], add)
    _check_shape_tensors(model, add)
    _check_profiles(model, dict(profiles or {}), add)
    return report


def _static_size(vi: Any) -> int | None:
    dims = vi.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    size = 1
    for d in dims:
        size *= d.dim_value
    return size


def _check_int64_cost(model: Any, types: dict[str, int], int64: int, add: Any) -> None:
    """int64 is supported since TensorRT 10 but runs slower than int32: flag big data tensors."""
    onnx = _require_onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if types.get(vi.name) != int64:
            continue
        size = _static_size(vi)
        if size is not None and size >= _INT64_COST_ELEMENTS:
            add(
                "dtype",
                "warning",
                vi.name,
                f"int64 tensor of {size} elements: int64 arithmetic"
                " is slower than int32 in TensorRT; cast to int32 if values fit",
            )


def _check_shape_tensors(model: Any, add: Any) -> None:
    graph = model.graph
    producers = _producers(graph)
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    for node in graph.node:
        for pos in _SHAPE_INPUTS.get(node.op_type, ()):
            if len(node.input) <= pos or not node.input[pos]:
                continue
            t = node.input[pos]
            if t in inputs:
                add(
                    "shape-tensor",
                    "error",
                    node,
                    f"network input '{t}' is used as a shape:"
                    " TensorRT then needs shape-input profiles; make it a constant or derive it"
                    " with Shape",
                )
                continue
            sources = _value_sources(t, producers, inputs)
            if sources:
                add(
                    "shape-tensor",
                    "error",
                    node,
                    f"operand '{t}' is a shape computed from the"
                    f" values of {', '.join(sorted(sources))}: a data-dependent shape that"
                    " profiles cannot cover; compute it from Shape() or constants",
                )


def _check_profiles(model: Any, profiles: dict[str, DimRange], add: Any) -> None:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    used: set[str] = set()
    for vi in graph.input:
        if vi.name in initializers:
            continue
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            name = dim.dim_param
            if not name:
                add(
                    "profile",
                    "error",
                    vi.name,
                    f"axis {axis} is dynamic without a name: give it"
                    " a dim_param so an optimisation profile can cover it",
                )
                continue
            used.add(name)
            if name not in profiles:
                add(
                    "profile",
                    "error",
                    vi.name,
                    f"dynamic axis {axis} '{name}' is not covered by"
                    " an optimisation profile (give --points/--batch MIN:OPT:MAX)",
                )
                continue
            lo, opt, hi = profiles[name]
            if not 1 <= lo <= opt <= hi:
                add(
                    "profile",
                    "error",
                    vi.name,
                    f"profile for '{name}' must satisfy 1 <= min <="
                    f" opt <= max, got {lo}:{opt}:{hi}",
                )
    for name in sorted(set(profiles) - used):
        add(
            "profile",
            "warning",
            "model",
            f"profile for '{name}' given, but no input of this"
            " graph has a dynamic axis of that name (ignored)",
        )


def check_path(path: Path, profiles: Mapping[str, DimRange] | None = None) -> ReadinessReport:
    return check_model(load_onnx(path), profiles, str(path))

"""ONNX weight storage transforms, below both the precision step (`targets/onnx_precision.py`)
and the int8 searches (`host/quantize/`), which use them:

- `to_int8_weights` / `weight_names`: weight-only int8 storage (int8 initializers with one
  symmetric scale per output channel, dequantized in the graph by Cast + Mul), float compute;
- `float_weights_as_float16`: what a static int8 graph keeps float stores its large weights as
  float16, cast back to float32 in the graph;
- `initializer_key`: an initializer's identity by value (type, shape, bytes), by which the ONNX
  target stores each constant once and `onnx_switch` shares weights between two graphs;
- `set_meta`: merge keys into the graph's metadata.

onnx is imported on use, numpy only at import: importable wherever the ONNX files are read.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

#: weight-only int8: the ops whose weight input (input 1) is quantized
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: weights with fewer elements stay float (biases, norms, tiny projections: no size to gain)
WEIGHT_MIN_ELEMENTS = 1024
_FLOAT = 1  # onnx.TensorProto.FLOAT (onnx is imported on use)


def weight_names(proto: Any, min_elements: int = WEIGHT_MIN_ELEMENTS) -> dict[str, int]:
    """The weights `to_int8_weights` stores as int8, in graph order, with their channel axis:
    float32 initializers of at least `min_elements` elements read as the weight input of a
    Conv/ConvTranspose/Gemm (input 1) or MatMul (whichever side is a constant). An initializer
    shared by several nodes is listed only if every user agrees on its channel axis."""
    import onnx

    inits = {t.name: t for t in proto.graph.initializer}
    axes: dict[str, set[int]] = {}
    for node in proto.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        for index in (0, 1) if node.op_type == "MatMul" else (1,):
            init = inits.get(node.input[index])
            if init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2:
                continue
            if int(np.prod(init.dims)) < min_elements:
                continue
            axis = _weight_axis(node, index, len(init.dims))
            if axis is not None:
                axes.setdefault(init.name, set()).add(axis)
    return {name: next(iter(a)) for name, a in axes.items() if len(a) == 1}


def to_int8_weights(
    proto: Any, min_elements: int = WEIGHT_MIN_ELEMENTS, keep: Collection[str] = ()
) -> Any:
    """Weight-only int8: per-output-channel symmetric int8 weights, float compute.

    Each weight of `weight_names` is replaced by an int8 initializer and a float32 scale per
    output channel, dequantized in the graph by Cast and Mul (folded back to the float weight
    when a session loads). The weights named in `keep` (the ones the accuracy search found
    sensitive, `host/quantize/weights.py`) and every other float32 initializer of at least
    `min_elements` elements (the decoder's dense positional encoding, an Add input) are stored
    as float16 and cast back to float32 in the graph: half the bytes, an error of 2^-11 of each
    value (int8: up to 1/254 of the channel's peak). Smaller tensors (biases, norms) stay
    float32. The metadata lists the weights kept at float16 (`int8.float_weights`)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    axes = weight_names(proto, min_elements)
    keep = set(keep)
    unknown = keep - set(axes)
    if unknown:
        raise ValueError(f"not int8 weights of this graph: {', '.join(sorted(unknown))}")
    halves = [
        t.name
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
        and int(np.prod(t.dims)) >= min_elements
        and (t.name not in axes or t.name in keep)
    ]
    new_nodes = []
    quantized: list[str] = []
    for name, axis in axes.items():
        if name in keep:
            continue
        weight = numpy_helper.to_array(inits[name]).astype(np.float32)
        q, scale = quantize_per_channel(weight, axis)
        shape = [1] * q.ndim
        shape[axis] = -1  # the scale broadcasts along the output channels
        qname, sname, fname = f"{name}_int8", f"{name}_scale", f"{name}_int8_float"
        graph.initializer.remove(inits[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, qname),
                numpy_helper.from_array(scale.reshape(shape), sname),
            ]
        )
        # Cast + Mul rather than DequantizeLinear: onnxruntime fuses DequantizeLinear -> MatMul
        # into MatMulNBits, whose default accuracy level quantizes the activations (int8 compute,
        # a different answer per kernel). Cast and Mul of initializers are constant-folded to the
        # float weight when the session loads: float compute on every runtime. The product keeps
        # the weight's name, so every user reads it unchanged.
        new_nodes += [
            helper.make_node("Cast", [qname], [fname], name=f"{name}_cast", to=_FLOAT),
            helper.make_node("Mul", [fname, sname], [name], name=f"{name}_dequantize"),
        ]
        quantized.append(name)
    new_nodes += _float16_casts(proto, halves)  # float16 storage, cast back like the int8
    ordered = [*new_nodes, *(_copy(n) for n in graph.node)]  # before every user
    del graph.node[:]
    graph.node.extend(ordered)
    set_meta(
        proto,
        {
            "precision": "int8-weights",
            "int8.method": "weights",
            "int8.ops": ",".join(WEIGHT_OPS),
            "int8.weights": str(len(quantized)),
            "int8.float_weights": ",".join(n for n in axes if n in keep),
        },
    )
    return proto


def float_weights_as_float16(proto: Any, min_elements: int = WEIGHT_MIN_ELEMENTS) -> Any:
    """Every float32 initializer of at least `min_elements` elements stored as float16 and cast
    back to float32 in the graph (constant-folded when a session loads: float compute, half the
    bytes, 2^-11 of each value). Static int8 applies it to what its QDQ graph keeps float: the
    float blocks' weights and the decoder's dense positional encoding (its int8 weights, int32
    biases and small tensors are left as they are)."""
    import onnx

    halves = [
        t.name
        for t in proto.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) >= min_elements
    ]
    casts = _float16_casts(proto, halves)
    if casts:
        ordered = [*casts, *(_copy(n) for n in proto.graph.node)]  # before every user
        del proto.graph.node[:]
        proto.graph.node.extend(ordered)
    return proto


def _float16_casts(proto: Any, names: Collection[str]) -> list[Any]:
    """Store the named float32 initializers as float16 (`<name>_fp16`); returns the Cast nodes
    that give each back under its own name (the caller puts them before every user)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    casts = []
    for name in names:
        value = numpy_helper.to_array(inits[name])
        graph.initializer.remove(inits[name])
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float16), f"{name}_fp16"))
        casts.append(
            helper.make_node("Cast", [f"{name}_fp16"], [name], name=f"{name}_cast", to=_FLOAT)
        )
    return casts


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _weight_axis(node: Any, index: int, rank: int) -> int | None:
    """The output-channel axis of `node`'s weight input `index`, or None when it has none."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":  # W @ x: (..., M, K), one scale per output row; x @ W: per column
        return rank - 2 if index == 0 else rank - 1
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return 1 if group == 1 else None  # (C_in, C_out/group, ...): grouped ones stay float
    return 0  # Conv: (C_out, C_in/group, ...)


def quantize_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 along `axis`: q = round(w / s) in [-127, 127], s = max|w| / 127."""
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    peak = np.abs(weight).max(axis=reduce)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def initializer_key(tensor: Any) -> tuple[int, tuple[int, ...], bytes]:
    """What makes two initializers the same tensor whatever their names: type, shape, bytes."""
    from onnx import numpy_helper

    return tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes()


def set_meta(proto: Any, extra: dict[str, str]) -> None:
    """`extra` added to the graph's metadata (replacing what it names), sorted by key."""
    meta = {p.key: p.value for p in proto.metadata_props} | extra
    del proto.metadata_props[:]
    for key in sorted(meta):
        proto.metadata_props.add(key=key, value=meta[key])

"""Reduced-precision ONNX: a real fp16 graph, static int8 QDQ, dynamic or weight-only int8.

Post-processing of the fp32 graph that `targets/onnx.py` builds, driven by the same fp16
safety analysis as the TensorRT target:

- fp16: float weights and activations in float16 (onnxruntime's float16 converter), except
  the nodes the fp16 safety report pins (overflow or near-overflow on the calibration input),
  which stay float32 with Casts around them. Inputs and outputs stay float32 (`keep_io_types`),
  so the I/O contract and every caller are unchanged; the cast to fp16 happens inside.
- int8: static QDQ (int8 weights per channel, activations quantized with ranges calibrated on
  images), with the blocks that break the masks kept float by a sensitivity search against
  an accuracy target (`host/quantize/`, docs/quantize.md).
- int8-dynamic: onnxruntime's dynamic quantization (weights int8 ahead of time, activations
  quantized per call from their observed range); MatMul and Gemm only: dynamically quantized
  Conv (ConvInteger) is slower than fp32 on onnxruntime's CPU kernels and loses more accuracy.
- int8-weights: weight-only int8 storage with float compute. Each large Conv/ConvTranspose/
  MatMul/Gemm weight becomes an int8 initializer with one symmetric scale per output channel,
  dequantized in the graph (Cast + Mul, see `to_int8_weights`); activations stay float, so every
  kernel is the float one and the graph agrees with itself across runtimes (the web page).
  The weights whose int8 error breaks the masks are kept float16, found by the same search
  as static int8 (`host/quantize/weights.py`). A smaller download, no speed gain.

Each records `precision` (fp16 | int8 | int8-dynamic | int8-weights) and what was kept in fp32
in the ONNX metadata; parity reads it and judges the artifact with its own tolerance row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgesam_export.device.backends import unavailable_error
from edgesam_export.host.config import OnnxOptions

if (
    TYPE_CHECKING
):  # `to_fp16` also serves TensorRT builds from ONNX files, where torch may be absent
    from edgesam_export.host.models import LoadedModel

INT8_OPS = ("MatMul", "Gemm")
#: weight-only int8: the ops whose weight input (input 1) is quantized
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: weights with fewer elements stay float (biases, norms, tiny projections: no size to gain)
WEIGHT_MIN_ELEMENTS = 1024
_FLOAT = 1  # onnx.TensorProto.FLOAT (onnx is imported on use)


def reduce_precision(
    proto: Any,
    loaded: LoadedModel,
    options: OnnxOptions,
    progress: Callable[[str], None] | None = None,
    encoder: Path | None = None,
) -> Any:
    """The hook `targets/onnx.py` calls on its finished fp32 graph. `encoder`: the reduced
    encoder this run exported beside a decoder, whose embeddings the decoder's int8 search then
    calibrates and is judged on (end to end against PyTorch)."""
    if options.quantize in ("int8", "int8-weights"):
        from edgesam_export.host.quantize import quantize_graph
        from edgesam_export.host.quantize.search import stderr_progress

        return quantize_graph(proto, loaded, options, progress or stderr_progress, encoder=encoder)
    if options.quantize == "int8-dynamic":
        return to_int8(proto)
    embeddings = None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("graph") == "decoder":  # calibrate on the reference encoder's embeddings
        embeddings = reference_embeddings(loaded)
    return to_fp16(proto, safety_pins(proto, embeddings))


def reference_embeddings(loaded: LoadedModel) -> np.ndarray:
    """The PyTorch encoder's embeddings of the parity test image (the calibration input)."""
    from edgesam_export.device import processing as P
    from edgesam_export.device.parity import make_test_image
    from edgesam_export.host.reference import reference_sessions

    spec = loaded.spec
    tensor, _ = P.preprocess(make_test_image(), spec.img_size, spec.pixel_mean, spec.pixel_std)
    encoder, _ = reference_sessions(loaded)
    return encoder.run({"image": tensor})["image_embeddings"]


def safety_pins(proto: Any, embeddings: np.ndarray | None = None) -> list[str]:
    """Nodes the fp16 safety report pins to fp32 on this graph's calibration inputs."""
    from edgesam_export.device.fp16 import calibration_feeds, fp16_report

    feeds, names = calibration_feeds(proto, embeddings)
    return fp16_report(proto, feeds, names).pins


def to_fp16(proto: Any, pins: list[str]) -> Any:
    """float16 weights and activations, `pins` kept float32, float32 inputs and outputs."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # the registry's one hint (exit 6): the onnx export extra
        raise unavailable_error(
            "onnx", exc.name or "onnxruntime.transformers.float16", export=True
        ) from None
    converted = convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=list(pins) or None, disable_shape_infer=False
    )
    _toposort(converted.graph)
    _set_meta(converted, {"precision": "fp16", "fp16.fp32_nodes": ",".join(pins)})
    return converted


def _toposort(graph: Any) -> None:
    """Order nodes so each comes after its inputs' producers (the converter appends the
    input casts at the end, which onnxruntime tolerates and the ONNX checker rejects)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        rest = []
        for node in pending:
            if all(t in available for t in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave it to the checker
            ordered += rest
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def to_int8(proto: Any) -> Any:
    """Dynamic int8 quantization of MatMul/Gemm weights (onnxruntime.quantization)."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # the registry's one hint (exit 6): the onnx export extra
        raise unavailable_error(
            "onnx", exc.name or "onnxruntime.quantization", export=True
        ) from None
    meta = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(proto, str(src))
        quantize_dynamic(src, dst, op_types_to_quantize=list(INT8_OPS), weight_type=QuantType.QInt8)
        quantized = onnx.load(str(dst))
    meta |= {"precision": "int8-dynamic", "int8.method": "dynamic", "int8.ops": ",".join(INT8_OPS)}
    _set_meta(quantized, meta)
    return quantized


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
    _set_meta(
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


def _set_meta(proto: Any, extra: dict[str, str]) -> None:
    meta = {p.key: p.value for p in proto.metadata_props} | extra
    del proto.metadata_props[:]
    for key in sorted(meta):
        proto.metadata_props.add(key=key, value=meta[key])

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
  dequantized in the graph (Cast + Mul, `targets/onnx_weights.py`); activations stay float, so every
  kernel is the float one and the graph agrees with itself across runtimes (the web page).
  The weights whose int8 error breaks the masks are kept float16, found by the same search
  as static int8 (`host/quantize/weights.py`). A smaller download, no speed gain.

Each records `precision` (fp16 | int8 | int8-dynamic | int8-weights) and what was kept in fp32
in the ONNX metadata; parity reads it and judges the artifact with its own tolerance row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgesam_export.device.backends import unavailable_error
from edgesam_export.host.config import OnnxOptions
from edgesam_export.host.targets.onnx_weights import set_meta

if (
    TYPE_CHECKING
):  # `to_fp16` also serves TensorRT builds from ONNX files, where torch may be absent
    from edgesam_export.host.models import LoadedModel

INT8_OPS = ("MatMul", "Gemm")


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
    set_meta(converted, {"precision": "fp16", "fp16.fp32_nodes": ",".join(pins)})
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
    set_meta(quantized, meta)
    return quantized

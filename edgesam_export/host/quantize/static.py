"""onnxruntime static QDQ quantization with calibration ranges computed once.

Every candidate of the sensitivity analysis and the search is the same fp32 graph quantized
with a different set of float nodes. The graph is calibrated and quantized once (every
quantizable node, `quantize_static`); a candidate is that QDQ graph with its float nodes given
back their fp32 inputs (`keep_float`: the node reads the tensor before its QuantizeLinear and its
fp32 weights; Q/DQ nodes nothing reads any more are pruned). A candidate costs milliseconds to
build instead of a `quantize_static` call (8 s on the EdgeSAM encoder here), which is what makes
a per-block sensitivity pass affordable.

Choices (see docs/quantize.md): QDQ format (what TensorRT's explicit quantization and
onnxruntime's fused int8 kernels consume), int8 weights per output channel, uint8 activations
(asymmetric; `activation_symmetric` makes them int8 symmetric, TensorRT's convention, and keeps
biases float: TensorRT's parser takes DequantizeLinear on int8 only), biases otherwise quantized
to int32 (onnxruntime's default), MinMax ranges unless told otherwise. Attention's products of
two activations (`q @ k^T`, `attn @ v`: MatMuls with no constant operand) and its Softmax stay
float (`activation_products`), as PT2E's XNNPACK quantizer leaves them: quantizing them is what
broke EdgeSAM's token-to-image attentions (all-int8 held-out mask IoU 0.68 / 0.44 with them,
0.96 / 0.91 without; docs/quantize.md).

What int8 computes differs per graph (`quantizable`): in an encoder every node it handles
(the convolutions run as one int8 chain, QLinearConv into QLinearConv); in a decoder only the
products with a 2-D weight (`weight_matmuls`), the rest float. A decoder's elementwise work
(residual adds, LayerNorm, GELU on 65k-pixel maps) runs slower as QLinear kernels between Q/DQ
pairs than in float, and its single-row heads (Gemm on one token per prompt set) gain nothing:
measured on EdgeSAM's decoder (`benchmarks/measure_int8_decoder_forms.py`), its weight
products in int8 ran 1.08x / 1.07x its folded fp32 graph at 1 / 5 points, where the plain
layout with every op int8 had run 0.81x / 0.91x (docs/quantize.md).
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from edgesam_export.device.backends import unavailable_error
from edgesam_export.host.quantize.data import FeedReader
from edgesam_export.host.targets.onnx_weights import float_weights_as_float16

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
_BLOCK = re.compile(r"\.\d+$")


def block_of(node_name: str) -> str | None:
    """The block a node belongs to, from its exported name: the path up to the first indexed
    module and one part below it (`/image_encoder/features.7/token_mixer/...` ->
    `image_encoder/features.7/token_mixer`), at most 4 parts; None for a name without a path
    (onnxslim's `Add_8`: `blocks` puts it with the node before it)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        return None
    kept: list[str] = []
    for i, part in enumerate(parts[:4]):
        kept.append(part)
        if _BLOCK.search(part):
            kept += parts[i + 1 : i + 2]
            break
    return "/".join(kept[:4])


def blocks(proto: Any) -> dict[str, list[str]]:
    """Block -> its node names, in graph order (nodes without a name are given one first).

    A node whose name has no module path joins the block of the node before it in graph order
    (the ops between two named modules belong to the one they follow), so the sensitivity
    analysis never runs per stray op.
    """
    out: dict[str, list[str]] = {}
    current = "(graph start)"
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
        current = block_of(node.name) or current
        out.setdefault(current, []).append(node.name)
    return out


def weight_matmuls(proto: Any) -> list[str]:
    """The MatMul nodes with a 2-D weight (an initializer operand): the products a decoder's
    int8 pays for (the upscaling's GEMMs over 4096 and 16384 rows, the token projections and
    MLPs). Batched weights (a folded attention's per-head matrices) are not among them."""
    matrices = {t.name for t in proto.graph.initializer if len(t.dims) == 2}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "MatMul" and any(i in matrices for i in n.input)
    ]


def quantizable(proto: Any) -> set[str] | None:
    """The nodes static int8 may quantize in this graph: a decoder's weight products
    (`weight_matmuls`), every node of any other graph (None)."""
    meta = {p.key: p.value for p in proto.metadata_props}
    return set(weight_matmuls(proto)) if meta.get("graph") == "decoder" else None


def activation_products(proto: Any) -> list[str]:
    """The nodes static int8 leaves float: MatMuls whose operands are both computed (neither an
    initializer nor a Constant) and Softmax."""
    constant = {t.name for t in proto.graph.initializer}
    constant |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "Softmax"
        or (n.op_type == "MatMul" and not any(i in constant for i in n.input))
    ]


class StaticQuantizer:
    """One fp32 graph, its calibration feeds, and quantize(excluded nodes) -> QDQ ModelProto."""

    def __init__(
        self,
        proto: Any,
        feeds: Sequence[dict[str, Any]],
        method: CalibrationMethod = "minmax",
        activation_symmetric: bool = False,
        int8_nodes: set[str] | None = None,
    ) -> None:
        """`int8_nodes`: the only nodes a candidate may quantize (`quantizable`); None: all."""
        try:
            import onnx
            from onnxruntime import quantization as q
        except ImportError as exc:  # the registry's one hint (exit 6): the onnx export extra
            raise unavailable_error(
                "onnx", exc.name or "onnxruntime.quantization", export=True
            ) from None
        self.onnx, self.q = onnx, q
        self.reader = FeedReader(feeds)
        self.method = method
        self.activation_symmetric = activation_symmetric
        self._tmp = tempfile.TemporaryDirectory(prefix="edgesam-int8.")
        self.dir = Path(self._tmp.name)
        self.src = self.dir / "fp32.onnx"
        self.cache = self.dir / "ranges.json"
        onnx.save(proto, str(self.src))
        self.fp32 = proto
        self.node_names = [n.name for n in proto.graph.node]
        self.always_float = set() if int8_nodes is None else set(self.node_names) - set(int8_nodes)
        self._full: Any = None

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> StaticQuantizer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def blocks(self) -> dict[str, list[str]]:
        """Search blocks (`blocks`), each holding only the nodes a candidate may quantize; a
        block with none of them is not searched."""
        return {
            block: kept
            for block, names in blocks(self.fp32).items()
            if (kept := [n for n in names if n not in self.always_float])
        }

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Any:
        """The QDQ graph with `exclude` kept float (or only `only` quantized), as it ships: what
        stays float stores its large weights as float16 (`float_weights_as_float16`), so every
        candidate is judged on the bytes it would be written with."""
        if self._full is None:
            self._full = self._quantize_all()
        floats = set(exclude) | self.always_float
        if only is not None:
            floats |= set(self.node_names) - set(only)
        return float_weights_as_float16(keep_float(self._full, self.fp32, floats))

    def _quantize_all(self) -> Any:
        q = self.q
        methods = {
            "minmax": q.CalibrationMethod.MinMax,
            "percentile": q.CalibrationMethod.Percentile,
            "entropy": q.CalibrationMethod.Entropy,
        }
        # Keep Relu/Clip even where the Q/DQ after them would make them redundant: a candidate
        # that keeps such a node's producer float needs the activation.
        extra: dict[str, Any] = {
            "ActivationSymmetric": self.activation_symmetric,
            "QDQKeepRemovableActivations": True,
            # TensorRT's parser takes DequantizeLinear on int8 only: float biases for its graphs
            "QuantizeBias": not self.activation_symmetric,
        }
        if self.method == "percentile":
            extra["CalibPercentile"] = 99.999
        dst = self.dir / "int8.onnx"
        self.reader.rewind()
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "consider pre-processing" warnings on every call
        try:
            q.quantize_static(
                self.src,
                dst,
                self.reader,
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                activation_type=q.QuantType.QInt8
                if self.activation_symmetric
                else q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=methods[self.method],
                nodes_to_exclude=activation_products(self.fp32),
                extra_options=extra,
                calibration_cache_path=self.cache,
            )
        finally:
            root.setLevel(level)
        return self.onnx.load(str(dst))


def keep_float(qdq: Any, fp32: Any, names: set[str]) -> Any:
    """A copy of the QDQ graph `qdq` (made from `fp32`, same node names) with the nodes `names`
    computing in float: each reads the fp32 graph's inputs (the tensors before their
    QuantizeLinear, the fp32 weights); Q/DQ nodes and initializers left unread are pruned."""
    out = copy.deepcopy(qdq)
    if not names:
        return out
    fp_nodes = {n.name: n for n in fp32.graph.node}
    fp_inits = {i.name: i for i in fp32.graph.initializer}
    kept = {i.name: i for i in out.graph.initializer}
    made = {o for n in out.graph.node for o in n.output}
    for node in out.graph.node:
        if node.name in names and node.name in fp_nodes:
            inputs = []
            for name in fp_nodes[node.name].input:
                if name in fp_inits and name not in kept:
                    # the fp32 weight; under another name where quantize_static gave its own
                    # name to a DequantizeLinear (biases: int32 with the input's scale)
                    new = f"{name}_float" if name in made else name
                    if new not in kept:
                        init = copy.deepcopy(fp_inits[name])
                        init.name = new
                        out.graph.initializer.append(init)
                        kept[new] = init
                    name = new
                inputs.append(name)
            del node.input[:]
            node.input.extend(inputs)
    # A float node that makes a graph output writes it directly (quantize_static renamed the
    # node's output and put a Q/DQ pair before the graph output).
    made_by = {o: n for n in out.graph.node for o in n.output}
    for output in out.graph.output:
        dq = made_by.get(output.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = made_by.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        producer = made_by.get(q.input[0])
        if producer is not None and producer.name in names:
            producer.output[list(producer.output).index(q.input[0])] = output.name
            dq.output[0] = f"{output.name}.unused"
    _prune(out.graph)
    return out


def _prune(graph: Any) -> None:
    """Drop nodes whose outputs nothing reads (not graph outputs), then unread initializers."""
    wanted = {o.name for o in graph.output}
    while True:
        read = wanted | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = wanted | {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in read]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)

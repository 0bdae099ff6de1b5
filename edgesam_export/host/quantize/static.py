"""onnxruntime static QDQ quantization with calibration ranges computed once.

Every candidate of the sensitivity analysis and the search is the same fp32 graph quantized
with a different set of float nodes; the activation ranges do not depend on that set, so the
calibration pass (the expensive part: the graph run with every tensor as an output) runs once
and its ranges are reused from onnxruntime's calibration cache.

Choices (see docs/quantize.md): QDQ format (what TensorRT's explicit quantization and
onnxruntime's fused int8 kernels consume), int8 weights per output channel, uint8 activations
(asymmetric; `activation_symmetric` makes them int8 symmetric, TensorRT's convention), biases
quantized to int32 (onnxruntime's default), MinMax ranges unless told otherwise.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from edgesam_export.device.errors import BackendUnavailableError
from edgesam_export.host.quantize.data import FeedReader

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


class StaticQuantizer:
    """One fp32 graph, its calibration feeds, and quantize(excluded nodes) -> QDQ ModelProto."""

    def __init__(
        self,
        proto: Any,
        feeds: Sequence[dict[str, Any]],
        method: CalibrationMethod = "minmax",
        activation_symmetric: bool = False,
    ) -> None:
        try:
            import onnx
            from onnxruntime import quantization as q
        except ImportError:
            raise BackendUnavailableError(
                "--quantize int8 uses onnxruntime.quantization: pip install onnxruntime"
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
        self.node_names = [n.name for n in proto.graph.node]

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> StaticQuantizer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Any:
        """The QDQ graph with `exclude` kept float (or only `only` quantized)."""
        q = self.q
        methods = {
            "minmax": q.CalibrationMethod.MinMax,
            "percentile": q.CalibrationMethod.Percentile,
            "entropy": q.CalibrationMethod.Entropy,
        }
        extra: dict[str, Any] = {"ActivationSymmetric": self.activation_symmetric}
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
                nodes_to_exclude=list(exclude),
                nodes_to_quantize=None if only is None else list(only),
                calibrate_method=methods[self.method],
                extra_options=extra,
                calibration_cache_path=self.cache,
            )
        finally:
            root.setLevel(level)
        return self.onnx.load(str(dst))

"""trt-check's rules for Q/DQ graphs (static int8, `onnx --quantize int8`), as TensorRT's
explicit quantization documents them: constant scales, signed int8, zero points 0."""

from __future__ import annotations

from typing import Any


def check_qdq(node: Any, constants: set[str], zero_points: dict[str, Any], add: Any) -> None:
    """TensorRT's explicit quantization (a QDQ graph, `onnx --quantize int8`): constant scales,
    signed int8, zero points 0 (symmetric only)."""
    if len(node.input) > 1 and node.input[1] not in constants:
        add("quantization", "error", node, f"{node.op_type} scale must be an initializer")
    if len(node.input) < 3 or not node.input[2]:
        return
    zp = zero_points.get(node.input[2])
    if zp is None:
        if node.input[2] not in constants:
            add("quantization", "error", node, f"{node.op_type} zero point must be an initializer")
        return
    if zp.data_type == 2:  # UINT8
        add(
            "quantization",
            "error",
            node,
            f"{node.op_type} is uint8 (asymmetric): TensorRT quantizes to signed int8 with zero"
            " points 0; export with --quantize int8 --activation-symmetric",
        )
        return
    from onnx import numpy_helper

    if numpy_helper.to_array(zp).any():
        add(
            "quantization",
            "error",
            node,
            f"{node.op_type} zero point is not 0: TensorRT's quantization is symmetric; export"
            " with --quantize int8 --activation-symmetric",
        )

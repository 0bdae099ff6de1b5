"""`targets/onnx_switch.py`: one decoder graph holding both attention forms, picking one per call
by the point count (`--attention auto`). Tiny graphs stand in for the two forms here; the real
decoders are exported in tests/test_targets_onnx.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesam_export.host.targets.onnx_switch import switch_on_points, switched_metadata


def _form(offset: float, scale_name: str, points: str = "point_coords") -> onnx.ModelProto:
    """out = point_coords * 3 + offset, the 3 summed from a 1024 x 2 table (large and the same
    bytes in both forms under other names: stored once, outside the branches); the same
    intermediate names in both forms; a different offset (small: each branch keeps its own)."""
    table = numpy_helper.from_array(np.full((1024, 2), 3.0 / 1024, np.float32), scale_name)
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    shift = numpy_helper.from_array(np.full((2,), offset, np.float32), "offset")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", [scale_name, "axes"], ["scale"], keepdims=0),
            helper.make_node("Mul", [points, "scale"], ["t"], name="mul"),
            helper.make_node("Add", ["t", "offset"], ["out"], name="add"),
        ],
        "decoder",
        [helper.make_tensor_value_info(points, TensorProto.FLOAT, ["B", "N", 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "N", 2])],
        initializer=[table, axes, shift],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_switch_runs_the_few_points_form_below_the_limit_and_the_other_from_it():
    model = switch_on_points(_form(1.0, "scale_a"), _form(100.0, "scale_b"), projected_from=4)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Shape", "Gather", "Less", "If"]
    # outside: the shared table once and the switch's two scalars; inside: each branch's own
    assert len(model.graph.initializer) == 3
    branches = {a.name: a.g for a in model.graph.node[-1].attribute}
    for branch in branches.values():
        assert sorted(t.dims[0] for t in branch.initializer) == [1, 2]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n, offset in ((1, 1.0), (3, 1.0), (4, 100.0), (16, 100.0)):
        x = np.arange(2 * n * 2, dtype=np.float32).reshape(2, n, 2)
        (out,) = session.run(None, {"point_coords": x})
        np.testing.assert_array_equal(out, x * 3.0 + offset)


def test_switch_refuses_forms_that_differ_in_their_io_or_have_no_point_count():
    with pytest.raises(ValueError, match="differ in their I/O"):
        switch_on_points(_form(1.0, "s"), _form(2.0, "s", points="other"), 4)
    with pytest.raises(ValueError, match="no point count"):
        switch_on_points(_form(1.0, "s", points="other"), _form(2.0, "s", points="other"), 4)


def test_switched_metadata_keeps_what_the_projected_form_says_differently():
    few = {"decoder.attention": "folded", "int8.mask_iou": "mean 0.98", "model": "edge_sam"}
    many = {"decoder.attention": "projected", "int8.mask_iou": "mean 0.97", "model": "edge_sam"}
    assert switched_metadata(few, many, 9) == {
        "decoder.attention": "auto",
        "decoder.attention.projected_from": "9",
        "int8.mask_iou": "mean 0.98",
        "int8.mask_iou.projected": "mean 0.97",
        "model": "edge_sam",
    }

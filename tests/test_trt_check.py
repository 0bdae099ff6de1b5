"""TensorRT readiness: our graphs pass; small hand-made graphs breaking each rule fail by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesam_export.device.trt_check import check_model, check_path, parse_range, parser_support
from edgesam_export.host.targets.tensorrt import dims_for

F, I16, I32, I64, DBL = (
    TensorProto.FLOAT,
    TensorProto.INT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.DOUBLE,
)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _errors(model, profiles=None):
    return [(f.rule, f.where, f.message) for f in check_model(model, profiles).errors]


def test_operator_table_is_recorded_with_its_version():
    table = parser_support()
    assert table["tensorrt_version"] == "10.1"
    assert "onnx-tensorrt" in table["source"] and "commit" in table["source"]
    ops = table["operators"]
    assert ops["Conv"]["supported"] and "FP16" in ops["Conv"]["types"]
    assert not ops["ConvInteger"]["supported"]
    assert "INT16" not in ops["ReduceSum"]["types"]


@pytest.mark.parametrize(
    "name", ["edge_sam_encoder.onnx", "edge_sam_decoder.onnx", "edge_sam_decoder_stability.onnx"]
)
def test_bilinear_graphs_are_ready(bilinear_artifacts: Path, name: str):
    model = onnx.load(str(bilinear_artifacts / name), load_external_data=False)
    report = check_model(model, dims_for(model))
    assert report.passed, report.findings
    assert report.nodes > 100


def test_default_graphs_are_ready(default_artifacts: Path):
    for name in ("edge_sam_encoder.onnx", "edge_sam_decoder.onnx"):
        model = onnx.load(str(default_artifacts / name))
        assert check_model(model, dims_for(model)).passed


def test_decoder_without_profiles_names_each_dynamic_axis(default_artifacts: Path):
    report = check_path(default_artifacts / "edge_sam_decoder.onnx")
    msgs = {(f.where, f.message.split("'")[1]) for f in report.errors}
    assert msgs == {
        ("point_coords", "batch"),
        ("point_coords", "num_points"),
        ("point_labels", "batch"),
        ("point_labels", "num_points"),
    }


def official_int16_stability() -> onnx.ModelProto:
    """EdgeSAM's official stability score: counts summed as int16 rows, then int32."""
    thr = numpy_helper.from_array(np.array(1.0, np.float32), "thr")
    axis = numpy_helper.from_array(np.array([-1], np.int64), "axis")
    nodes = [
        helper.make_node("Greater", ["masks", "thr"], ["gt"], name="/Greater"),
        helper.make_node("Cast", ["gt"], ["gt16"], to=I16, name="/Cast_int16"),
        helper.make_node("ReduceSum", ["gt16", "axis"], ["rows"], keepdims=0, name="/ReduceSum"),
        helper.make_node("Cast", ["rows"], ["rows32"], to=I32, name="/Cast_int32"),
        helper.make_node("ReduceSum", ["rows32", "axis"], ["count"], keepdims=0, name="/Sum2"),
        helper.make_node("Cast", ["count"], ["scores"], to=F, name="/Cast_float"),
    ]
    return _model(
        nodes, [_vi("masks", F, [1, 4, 256, 256])], [_vi("scores", F, [1, 4])], [thr, axis]
    )


def test_official_int16_stability_score_fails_naming_the_nodes():
    errors = _errors(official_int16_stability())
    wheres = {w for _, w, _ in errors}
    assert "Cast '/Cast_int16'" in wheres and "ReduceSum '/ReduceSum'" in wheres
    assert any("INT16" in m and "use int32" in m for _, _, m in errors)
    assert {r for r, _, _ in errors} == {"dtype"}


def test_unsupported_operator_and_custom_domain():
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["y"], name="/qconv"),
        helper.make_node("MyOp", ["y"], ["z"], name="/custom", domain="com.example"),
    ]
    x, w = _vi("x", TensorProto.UINT8, [1, 1, 4, 4]), _vi("w", TensorProto.UINT8, [1, 1, 1, 1])
    errors = _errors(_model(nodes, [x, w], [_vi("z", I32, None)]))
    assert ("operator", "ConvInteger '/qconv'") in {(r, w) for r, w, _ in errors}
    assert any(w == "MyOp '/custom'" and "plugin" in m for _, w, m in errors)


def test_bicubic_resize_fails_on_its_mode():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="/neck/Resize")
    model = _model([node], [_vi("x", F, [1, 2, 4, 4])], [_vi("y", F, [1, 2, 8, 8])], [scales])
    (err,) = _errors(model)
    assert err[:2] == ("attribute", "Resize '/neck/Resize'") and "cubic" in err[2]


def test_runtime_axes_double_and_opset():
    axes = helper.make_node("Shape", ["x"], ["shape"], name="/shape")
    node = helper.make_node("ReduceSum", ["x", "shape"], ["y"], name="/sum")
    cast = helper.make_node("Cast", ["y"], ["z"], to=DBL, name="/to_double")
    model = _model([axes, node, cast], [_vi("x", F, [4])], [_vi("z", DBL, None)], opset=21)
    rules = {(r, w) for r, w, _ in _errors(model)}
    assert ("attribute", "ReduceSum '/sum'") in rules  # axes computed at run time
    assert ("dtype", "Cast '/to_double'") in rules
    assert ("opset", "model") in rules


def test_shape_tensor_pitfalls():
    # a network input used as a shape, a shape computed from input values, NonZero
    r1 = helper.make_node("Reshape", ["x", "shape_in"], ["y1"], name="/reshape_input")
    to_int = helper.make_node("Cast", ["x"], ["xi"], to=I64, name="/cast")
    r2 = helper.make_node("Reshape", ["x", "xi"], ["y2"], name="/reshape_values")
    nz = helper.make_node("NonZero", ["x"], ["y3"], name="/nonzero")
    model = _model(
        [r1, to_int, r2, nz],
        [_vi("x", F, [2]), _vi("shape_in", I64, [1])],
        [_vi("y1", F, None), _vi("y2", F, None), _vi("y3", I64, None)],
    )
    got = {(w, m.split(":")[0]) for r, w, m in _errors(model) if r == "shape-tensor"}
    assert ("Reshape '/reshape_input'", "network input 'shape_in' is used as a shape") in got
    assert any(w == "Reshape '/reshape_values'" and "values of x" in m for w, m in got)
    assert any(w == "NonZero '/nonzero'" for w, _ in got)


def test_profile_rules():
    node = helper.make_node("Identity", ["x"], ["y"], name="/id")
    x = helper.make_tensor_value_info("x", F, ["num_points", None])
    model = _model([node], [x], [_vi("y", F, None)])
    errors = _errors(model)
    assert any("'num_points' is not covered" in m for _, _, m in errors)
    assert any("dynamic without a name" in m for _, _, m in errors)
    errors = _errors(model, {"num_points": (4, 2, 8)})
    assert any("1 <= min <= opt <= max" in m for _, _, m in errors)


def test_big_int64_tensor_is_a_warning_not_an_error():
    node = helper.make_node("Add", ["x", "x"], ["y"], name="/add64")
    model = _model([node], [_vi("x", I64, [64, 128])], [_vi("y", I64, [64, 128])])
    report = check_model(model)
    assert report.passed and any("int64" in f.message for f in report.warnings)


@pytest.mark.parametrize(
    ("text", "expected"), [("1:2:32", (1, 2, 32)), ("4", (4, 4, 4)), ("2:2:2", (2, 2, 2))]
)
def test_parse_range(text, expected):
    assert parse_range(text, "points") == expected


@pytest.mark.parametrize("text", ["0:1:2", "3:2:4", "1:2", "a:b:c"])
def test_parse_range_rejects(text):
    from edgesam_export.device.errors import InputError

    with pytest.raises(InputError, match="--points"):
        parse_range(text, "points")


@pytest.mark.parametrize("symmetric", [False, True])
def test_qdq_graphs_need_symmetric_int8(symmetric: bool):
    """TensorRT's explicit quantization: the default uint8 QDQ graph fails naming the fix; the
    --activation-symmetric graph (int8, zero points 0) passes the quantization rules."""
    from test_quantize import _two_convs

    from edgesam_export.host.quantize.static import StaticQuantizer

    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    with StaticQuantizer(_two_convs(), feeds, activation_symmetric=symmetric) as quantizer:
        qdq = quantizer.quantize()
    report = check_model(qdq)
    found = [f for f in report.findings if f.rule == "quantization"]
    assert report.operators["QuantizeLinear"] >= 2
    if symmetric:
        assert found == [] and report.passed, report.findings
    else:
        assert found and all("--activation-symmetric" in f.message for f in found)
        assert not report.passed

"""fp16 safety: the emulation rounds like fp16, the report names overflowing layers on raw
weights, and on calibrated weights stays inside the documented fp16 tolerances; fp16 and int8
ONNX graphs pass parity under their derived rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesam_export.device.backends import PRECISION_ROWS, tolerances_for
from edgesam_export.device.fp16 import (
    FP16_MAX,
    calibration_feeds,
    emulated_model,
    fp16_report,
    run_emulated,
)
from edgesam_export.host.config import OnnxOptions
from edgesam_export.host.models import LoadedModel, load_model
from edgesam_export.host.targets.onnx import export

F = TensorProto.FLOAT


def _tiny(scale: float) -> onnx.ModelProto:
    """y = (x + 1e-4) * scale, then a sum over 4 values (nodes /add, /mul, /sum)."""
    inits = [
        numpy_helper.from_array(np.array(1e-4, np.float32), "eps"),
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "eps"], ["a"], name="/add"),
        helper.make_node("Mul", ["a", "scale"], ["m"], name="/mul"),
        helper.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=0, name="/sum"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_emulation_rounds_every_intermediate_to_fp16():
    model = _tiny(3.0)
    x = np.ones((1, 4), np.float32)
    got = run_emulated(model, {"x": x})["y"]
    # by hand in float16: 1 + 1e-4 rounds to 1, * 3 = 3, sum of four = 12
    a = (x.astype(np.float16) + np.float16(1e-4)).astype(np.float16)
    expected = (a * np.float16(3.0)).astype(np.float16).astype(np.float32).sum(1)
    np.testing.assert_array_equal(got, expected)
    exact = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert got[0] == 12.0 and exact[0] != 12.0  # the Cast pairs were not folded away


def test_report_names_overflow_and_pins_fix_it():
    model = _tiny(30000.0)  # each product 3e4 (near 65504), their sum 1.2e5 (overflows)
    x = np.ones((1, 4), np.float32)
    report = fp16_report(model, [{"x": x}], ["ones"])
    assert report.overflowing == ["/sum"]
    assert report.near_overflowing == ["/mul"]
    assert report.pins == ["/mul", "/sum"]
    assert report.nonfinite_unpinned["y"] and not report.nonfinite_pinned["y"]
    assert np.isinf(report.error_unpinned["y"]) and report.error_pinned["y"] < 1e-3 * 1.2e5
    pinned = run_emulated(model, {"x": x}, report.pins)["y"]
    assert np.isfinite(pinned).all()


def test_static_sum_bound_pins_counting_reductions():
    """A sum of 65536 ones overflows fp16 whatever the calibration inputs showed."""
    inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0, name="/count")]
    graph = helper.make_graph(
        nodes,
        "count",
        [helper.make_tensor_value_info("x", F, [1, 256, 256])],
        [helper.make_tensor_value_info("y", F, [1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sparse = np.zeros((1, 256, 256), np.float32)
    sparse[0, :8, :8] = 1.0  # 64 pixels on the calibration input
    report = fp16_report(model, [{"x": sparse}], ["sparse mask"])
    assert report.overflowing == [] and report.pins == ["/count"]
    full = np.ones_like(sparse)
    assert np.isinf(run_emulated(model, {"x": full})["y"]).all()
    assert run_emulated(model, {"x": full}, report.pins)["y"][0] == 65536.0


def test_emulated_model_keeps_io_and_metadata(default_artifacts: Path):
    model = onnx.load(str(default_artifacts / "edge_sam_decoder.onnx"))
    emu = emulated_model(model)
    assert [i.name for i in emu.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in emu.graph.output] == ["scores", "masks"]
    assert {p.key for p in emu.metadata_props} == {p.key for p in model.metadata_props}


def test_raw_fixture_weights_overflow_in_fp16(default_artifacts: Path):
    """Raw (uncalibrated) synthetic weights: the encoder's residual stream passes 65504."""
    model = onnx.load(str(default_artifacts / "edge_sam_encoder.onnx"))
    assert dict((p.key, p.value) for p in model.metadata_props)["weights"] == "synthetic-untrained"
    feeds, names = calibration_feeds(model)
    report = fp16_report(model, feeds, names)
    assert len(report.overflowing) > 50
    assert any(n.startswith("/image_encoder/neck/") for n in report.overflowing)
    assert any(n.startswith("/image_encoder/features.") for n in report.overflowing)
    assert report.nonfinite_unpinned["image_embeddings"]
    assert not report.nonfinite_pinned["image_embeddings"]
    assert set(report.overflowing) <= set(report.pins)


@pytest.fixture(scope="module")
def calibrated() -> LoadedModel:
    return load_model(None, synthetic="calibrated")


@pytest.fixture(scope="module")
def calibrated_artifacts(tmp_path_factory: pytest.TempPathFactory, calibrated: LoadedModel) -> Path:
    out = tmp_path_factory.mktemp("calibrated")
    export(calibrated, "encoder", OnnxOptions(output=out))
    export(calibrated, "decoder", OnnxOptions(output=out))
    return out


def test_calibrated_weights_stay_inside_fp16_tolerance(calibrated_artifacts: Path):
    """The 'Done when': no overflow, and fp16-emulated errors inside TensorRT's fp16 row."""
    tol, _ = tolerances_for("tensorrt", "fp16")
    enc = onnx.load(str(calibrated_artifacts / "edge_sam_encoder.onnx"))
    feeds, names = calibration_feeds(enc)
    enc_report = fp16_report(enc, feeds, names)
    assert enc_report.weights == "synthetic-calibrated"
    assert enc_report.overflowing == [] and enc_report.pins == []
    assert enc_report.error_unpinned["image_embeddings"] <= tol["image_embeddings"]
    assert enc_report.error_unpinned["image_embeddings"] > 1e-3  # it did round
    embeddings = ort.InferenceSession(str(calibrated_artifacts / "edge_sam_encoder.onnx")).run(
        None, feeds[0]
    )[0]
    dec = onnx.load(str(calibrated_artifacts / "edge_sam_decoder.onnx"))
    feeds, names = calibration_feeds(dec, embeddings)
    dec_report = fp16_report(dec, feeds, names)
    assert dec_report.overflowing == []
    assert dec_report.error_pinned["masks"] <= tol["decoder.masks"]
    assert dec_report.error_pinned["scores"] <= tol["decoder.scores"]


def test_fp16_rows_are_derived_not_copied():
    assert tolerances_for("tensorrt", "fp16") == tolerances_for("onnx", "fp16")
    derived, _ = tolerances_for("onnx", "fp16")
    assert derived["image_embeddings"] != PRECISION_ROWS["fp16"].limits["image_embeddings"]
    assert tolerances_for("onnx", "int8-dynamic")[1] == 0.85


def test_reduced_precision_decoders_pass_parity(tmp_path: Path, calibrated: LoadedModel):
    """fp16 and dynamic int8 decoders exported side by side, judged in one parity run (static
    int8: tests/test_quantize.py)."""
    from edgesam_export.host.pipeline import verify_artifacts

    fp16 = export(calibrated, "decoder", OnnxOptions(output=tmp_path, precision="fp16"))
    int8 = export(calibrated, "decoder", OnnxOptions(output=tmp_path, quantize="int8-dynamic"))
    for art, kind, weight_type in (
        (fp16, "fp16", TensorProto.FLOAT16),
        (int8, "int8-dynamic", TensorProto.INT8),
    ):
        assert art.path.name == f"edge_sam_decoder_{kind}.onnx"
        assert art.metadata["precision"] == kind
        model = onnx.load(str(art.path))
        assert {v.type.tensor_type.elem_type for v in model.graph.input} == {F}  # float32 I/O
        assert {v.type.tensor_type.elem_type for v in model.graph.output} == {F}
        assert weight_type in {i.data_type for i in model.graph.initializer}
    report = verify_artifacts(None, tmp_path, loaded=calibrated)
    assert report.passed, report.summary()
    assert {c.precision for c in report.comparisons} == {"fp16", "int8-dynamic"}


def test_fp16_and_int8_together_is_refused():
    with pytest.raises(ValueError, match="not both"):
        OnnxOptions(precision="fp16", quantize="int8")


def test_fp16_max_is_float16_max():
    assert FP16_MAX == float(np.finfo(np.float16).max)


def test_coreml_fp16_report_feeds_follow_the_recorded_preprocessing():
    """The CoreML fp16 report feeds the model's own input: an EfficientViT-SAM-L encoder gets a
    512 input normalised /255, and its decoder gets prompts in the 1024 prompt frame."""
    from edgesam_export.device import processing as P
    from edgesam_export.device.fp16 import CALIBRATION_CASES, coreml_fp16_report
    from edgesam_export.device.parity import make_test_image, prompt_cases

    meta = {
        "img_size": "512",
        "prompt_frame": "1024",
        "normalize": "unit",
        "pad": "before-normalize",
        "pixel_mean": "[123.675, 116.28, 103.53]",
        "pixel_std": "[58.395, 57.12, 57.375]",
    }
    seen: dict[str, list[dict[str, np.ndarray]]] = {"encoder": [], "decoder": []}

    class Fake:
        def __init__(self, kind: str) -> None:
            self.kind, self.metadata, self.path = kind, meta, Path(f"{kind}.mlpackage")

        def accepts(self, feeds):
            return None

        def run_recorded(self, feeds, record):
            seen[self.kind].append(feeds)
            if self.kind == "encoder":
                return {"image_embeddings": np.zeros((1, 256, 64, 64), np.float32)}
            return {}

    coreml_fp16_report(Fake("encoder"), [("decoder", Fake("decoder"))])
    params = P.Preprocessing.from_metadata(meta)
    expected, info = P.preprocess(make_test_image(), params=params)
    (enc_feeds,) = seen["encoder"]
    assert enc_feeds["image"].shape == (1, 3, 512, 512)
    np.testing.assert_array_equal(enc_feeds["image"], expected)
    cases = [c for c in prompt_cases(1024, info.input_size) if c.name in CALIBRATION_CASES]
    assert len(seen["decoder"]) == len(cases) > 0
    for case, feeds in zip(cases, seen["decoder"], strict=True):
        np.testing.assert_array_equal(feeds["point_coords"], case.point_coords)
    assert max(float(f["point_coords"].max()) for f in seen["decoder"]) > 512


def _scaled(values: np.ndarray) -> onnx.ModelProto:
    """y = x * 1 (node /id): a graph whose one tracked tensor holds exactly `values`."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["y"], name="/id")],
        "scaled",
        [helper.make_tensor_value_info("x", F, list(values.shape))],
        [helper.make_tensor_value_info("y", F, list(values.shape))],
        initializer=[one],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# (values, expected flags): a GELU-like tail next to O(1) values flushes but is harmless; a
# whole tensor below fp16's normal range underflows; 3e4 is near overflow; 7e4 overflows.
_CRITERION_CASES = {
    "harmless tail": (np.array([3.0, -1e-9, -1e-12, 0.5]), (False, False, False)),
    "underflow": (np.array([3e-6, -2e-6, 1e-6, 4e-5]), (False, False, True)),
    "near overflow": (np.array([3e4, 1.0, -2.0, 0.5]), (False, True, False)),
    "overflow": (np.array([7e4, 1.0, -2.0, 0.5]), (True, True, False)),
}


@pytest.mark.parametrize("case", sorted(_CRITERION_CASES))
def test_one_criterion_for_onnx_graphs_and_coreml_ops(case: str):
    """Both callers judge the same values the same way (they once used two criteria: the
    CoreML report called 3e4 safe while the ONNX report pinned it, and the ONNX report never
    used its documented flush share)."""
    from edgesam_export.device.fp16 import TensorRange, classify, op_summary

    values, (overflow, near, under) = _CRITERION_CASES[case]
    x = values.astype(np.float32)[None]
    recorded = TensorRange("mul", "/id")
    recorded.update(x)
    verdict = classify(recorded)
    assert (verdict.overflow, verdict.near_overflow, verdict.underflow) == (overflow, near, under)
    summary = op_summary({"y": recorded})
    assert summary["safe"] == (not verdict.unsafe)
    assert bool(summary["underflow"]) == under
    assert bool(summary["overflow"] or summary["near_overflow"]) == near

    (layer,) = fp16_report(_scaled(x), [{"x": x}], [case]).layers
    assert (layer.overflow, layer.near_overflow, layer.underflow) == (overflow, near, under)
    assert layer.lost_share == recorded.lost_share  # counted in the graph, the same rule
    assert layer.flushed_share == recorded.flushed_share
    assert layer.absmax == recorded.max_abs


def test_tensor_range_counts():
    """`lost` counts only values that matter for their op; `flushed` those fp16 rounds to 0."""
    from edgesam_export.device.fp16 import TensorRange

    tail = TensorRange("gelu", "tail")
    tail.update(np.array([3.0, -1e-9, -1e-12, 0.5], np.float32))
    assert tail.flushed == 2 and tail.lost == 0 and tail.count == 4
    small = TensorRange("mul", "small")
    small.update(np.array([3e-6, -2e-6, 1e-6, 4e-5], np.float32))
    assert small.lost == 4 and small.min_nonzero_abs == np.float32(1e-6)


def test_underflow_is_reported_not_pinned():
    """Underflow costs bits, not infs: listed in the report, never an fp32 pin."""
    x = np.array([[3e-6, -2e-6, 1e-6, 4e-5]], np.float32)
    report = fp16_report(_scaled(x), [{"x": x}], ["tiny"])
    assert report.underflowing == ["/id"] and report.pins == []
    assert report.to_json()["underflow"] == ["/id"]

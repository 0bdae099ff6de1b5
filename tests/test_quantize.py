"""Static int8 (issue 17): the mask bar, calibration kept apart from the held-out images, the
exclusion mechanics of the QDQ quantizer, and the decoder's static int8 export against the bar.
The encoder search (minutes) is heavy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesam_export.device.errors import InputError
from edgesam_export.device.mask_bar import MaskBar, mask_bar, top_mask_ious
from edgesam_export.device.models import get_spec
from edgesam_export.host.config import ExecuTorchOptions, OnnxOptions
from edgesam_export.host.quantize.data import (
    calibration_images,
    calibration_inputs,
    check_disjoint,
    heldout_images,
    synthetic_image,
)
from edgesam_export.host.quantize.static import StaticQuantizer, block_of, blocks

F = TensorProto.FLOAT


def _masks(rng: np.random.Generator, b: int = 2, k: int = 4, size: int = 32) -> np.ndarray:
    return rng.normal(size=(b, k, size, size)).astype(np.float32)


def test_mask_bar_identical_masks_pass_and_flipped_fail():
    rng = np.random.default_rng(0)
    scores, masks = rng.random((2, 4)).astype(np.float32), _masks(rng)
    same = mask_bar([(scores, masks, masks.copy())])
    assert same.passed and same.mean_iou == 1.0 and same.worst_iou == 1.0 and same.count == 2
    flipped = mask_bar([(scores, masks, -masks)])
    assert not flipped.passed and flipped.worst_iou == 0.0


def test_mask_bar_judges_the_reference_top_token_only():
    rng = np.random.default_rng(1)
    scores, masks = np.array([[0.1, 0.9, 0.2, 0.3]], np.float32), _masks(rng, b=1)
    cand = -masks
    cand[0, 1] = masks[0, 1]  # only the top-scoring token agrees
    assert top_mask_ious(scores, masks, cand) == [1.0]


def test_mask_bar_worst_iou_and_nan():
    rng = np.random.default_rng(2)
    scores, masks = rng.random((1, 4)).astype(np.float32), _masks(rng, b=1)
    k = int(scores.argmax())
    cand = masks.copy()
    cand[0, k, :4] = -np.abs(masks[0, k, :4]) - 1  # 4 of 32 rows lost
    ref = masks[0, k] > 0
    expected = np.count_nonzero(ref[4:]) / np.count_nonzero(ref)
    result = mask_bar([(scores, masks, cand)], MaskBar(0.5, 0.5))
    assert result.worst_iou == pytest.approx(expected) and result.passed
    assert not mask_bar([(scores, masks, cand)], MaskBar(0.5, expected + 1e-3)).passed
    nan = masks.copy()
    nan[0, k, 0, 0] = np.nan
    assert top_mask_ious(scores, masks, nan) == [0.0]
    with pytest.raises(InputError, match="differ"):
        top_mask_ious(scores, masks, masks[..., :16])
    assert not mask_bar([]).passed  # nothing judged is not a pass


def test_mask_bar_judges_each_image_too_and_names_the_one_that_misses():
    """With each triple's image index, the result holds every image's own mean and worst (an
    image with nothing judged counts 0 masks and misses) and `by_image` names the ones under
    the bar; the overall verdict is unchanged by the split."""
    rng = np.random.default_rng(3)
    scores, masks = rng.random((2, 4)).astype(np.float32), _masks(rng)
    pairs = [(scores, masks, masks.copy()), (scores, masks, -masks), (scores, masks, masks)]
    result = mask_bar(pairs, images=[0, 1, 0])
    plain = mask_bar(pairs)
    assert (result.mean_iou, result.worst_iou, result.count) == (
        plain.mean_iou,
        plain.worst_iou,
        plain.count,
    )
    assert [(r.count, r.mean_iou, r.passed) for r in result.images] == [
        (4, 1.0, True),
        (2, 0.0, False),
    ]
    assert result.count == 6 and not result.passed
    text = result.by_image(["first", "second"])
    assert text == "image 0 (first) 1.0000 / 1.0000; image 1 (second) 0.0000 / 0.0000 misses"
    assert result.to_json()["images"][1] == {
        "mean_iou": 0.0,
        "worst_iou": 0.0,
        "masks": 2,
        "passed": False,
    }
    gap = mask_bar(pairs[:1], images=[2])  # images 0 and 1 had nothing judged
    assert [r.count for r in gap.images] == [0, 0, 2] and not gap.images[0].passed
    assert mask_bar(pairs).images == () and mask_bar(pairs).by_image() == ""
    with pytest.raises(ValueError, match="2 image indices for 3"):
        mask_bar(pairs, images=[0, 1])


def test_accuracy_target_parses_and_refuses_nonsense():
    assert MaskBar.parse("miou=0.95,worst=0.8") == MaskBar(0.95, 0.8)
    assert MaskBar.parse("worst=0.5") == MaskBar(0.97, 0.5)
    for bad in ("miou", "miou=1.5", "iou=0.9", "miou=x"):
        with pytest.raises(InputError, match="miou=X,worst=Y"):
            MaskBar.parse(bad)
    with pytest.raises(ValueError, match="miou=X"):
        OnnxOptions(quantize="int8", accuracy_target="worst=2")


def test_static_options_need_static_int8(tmp_path: Path):
    with pytest.raises(ValueError, match="applies to --quantize int8"):
        OnnxOptions(calibration=tmp_path)
    with pytest.raises(ValueError, match="applies to --quantize int8"):
        OnnxOptions(quantize="int8-dynamic", accuracy_target="miou=0.9")
    assert OnnxOptions(quantize="int8", calibration=tmp_path).calibration == tmp_path


def test_calibration_images_are_never_the_heldout_images(tmp_path: Path):
    calib, held = calibration_images(None, 4), heldout_images(2)
    check_disjoint(calib, held)  # the built-in sets are apart
    assert len({c.tobytes() for c in calib}) == 4  # and each image is its own
    assert not np.array_equal(synthetic_image(0), synthetic_image(1))
    with pytest.raises(InputError, match="held-out"):
        check_disjoint([*calib, held[1]], held)
    np.save(tmp_path / "a.npy", held[0])
    params = get_spec("edge_sam").preprocessing
    with pytest.raises(InputError, match="held-out"):  # what both int8 targets load them with
        calibration_inputs(tmp_path, 8, params, held)
    assert len(calibration_inputs(None, 2, params, held).tensors) == 2
    with pytest.raises(InputError, match="not a folder"):
        calibration_images(tmp_path / "a.npy", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.png or \.npy"):
        calibration_images(tmp_path / "empty", 1)


def test_the_calibration_source_is_the_folder_name_never_its_path(tmp_path: Path):
    """Reports and metadata name the folder, so the same recipe gives the same bytes on any
    machine; the built-in set is "synthetic"."""
    folder = tmp_path / "street"
    folder.mkdir()
    assert OnnxOptions(quantize="int8").calibration_source() == "synthetic"
    assert ExecuTorchOptions(precision="int8").calibration_source() == "synthetic"
    assert OnnxOptions(quantize="int8", calibration=folder).calibration_source() == "street"
    given = ExecuTorchOptions(precision="int8", calibration=folder)
    assert given.calibration_source() == "street"


def test_block_of_groups_nodes_by_indexed_module():
    assert block_of("/image_encoder/features.7/token_mixer/m/Conv") == (
        "image_encoder/features.7/token_mixer"
    )
    assert block_of("/image_encoder/neck/neck.1/Pow") == "image_encoder/neck/neck.1"
    assert block_of("/transformer/layers.0/self_attn/q_proj/MatMul") == (
        "transformer/layers.0/self_attn"
    )
    assert block_of("/a/b/c/d/e/f/Conv") == "a/b/c/d"
    assert block_of("Add_8") is None


def test_blocks_put_pathless_nodes_with_the_node_before():
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name="Relu_0"),
            helper.make_node("Relu", ["a"], ["b"], name="/net/blocks.0/act/Relu"),
            helper.make_node("Relu", ["b"], ["c"], name="Add_8"),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, [1])],
        [helper.make_tensor_value_info("y", F, [1])],
    )
    assert blocks(helper.make_model(graph)) == {
        "(graph start)": ["Relu_0"],
        "net/blocks.0/act": ["/net/blocks.0/act/Relu", "Add_8", "Relu_3"],
    }


def _two_convs() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), "w2")
    b1 = numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b1")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="/net/blocks.0/Conv", pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["b"], name="/net/blocks.0/Relu"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="/net/blocks.1/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", F, [1, 4, 16, 16])],
        [w1, w2, b1],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized_weights(proto: onnx.ModelProto) -> set[str]:
    """Which float weights a QuantizeLinear or an int8 initializer stands for."""
    ints = {i.name for i in proto.graph.initializer if i.data_type == TensorProto.INT8}
    return {w for w in ("w1", "w2") if any(name.startswith(w) for name in ints)}


def test_exclusion_keeps_the_named_blocks_float_with_one_calibration():
    proto = _two_convs()
    block_map = blocks(proto)
    assert list(block_map) == ["net/blocks.0", "net/blocks.1"]  # Conv/Relu directly below
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    with StaticQuantizer(proto, feeds) as quantizer:
        full = quantizer.quantize()
        assert quantizer.cache.is_file()  # the ranges are computed once, then reused
        first = quantizer.cache.read_bytes()
        part = quantizer.quantize(exclude=block_map["net/blocks.0"])
        only = quantizer.quantize(only=block_map["net/blocks.0"])
        assert quantizer.cache.read_bytes() == first
    assert _quantized_weights(full) == {"w1", "w2"}
    assert _quantized_weights(part) == {"w2"}
    assert _quantized_weights(only) == {"w1"}
    x = feeds[0]
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, x)[0]
    for q in (full, part, only):
        got = ort.InferenceSession(q.SerializeToString()).run(None, x)[0]
        assert 0 < np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    # every node float: no Q/DQ left (pruned), the fp32 graph's numbers exactly
    with StaticQuantizer(proto, feeds) as quantizer:
        none = quantizer.quantize(exclude=quantizer.node_names)
    assert {n.op_type for n in none.graph.node} == {"Conv", "Relu"}
    assert {i.name for i in none.graph.initializer} == {"w1", "w2", "b1_float"}
    got = ort.InferenceSession(none.SerializeToString()).run(None, x)[0]
    np.testing.assert_array_equal(got, ref)


def test_attention_products_and_softmax_stay_float():
    """Static int8 quantizes the projection (a MatMul with a constant weight) and leaves the
    products of two activations and the Softmax float, as PT2E's XNNPACK quantizer does."""
    from edgesam_export.host.quantize.static import activation_products

    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"], name="/attn/q_proj/MatMul"),
        helper.make_node("Transpose", ["x"], ["xt"], name="/attn/Transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "xt"], ["logits"], name="/attn/MatMul"),
        helper.make_node("Softmax", ["logits"], ["p"], name="/attn/Softmax", axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["y"], name="/attn/MatMul_1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [1, 16, 8])],
        [helper.make_tensor_value_info("y", F, [1, 16, 8])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert activation_products(proto) == ["/attn/MatMul", "/attn/Softmax", "/attn/MatMul_1"]
    feeds = [{"x": rng.normal(size=(1, 16, 8)).astype(np.float32)} for _ in range(3)]
    with StaticQuantizer(proto, feeds) as quantizer:
        full = quantizer.quantize()
        assert set(quantizer.blocks()) == {"attn", "attn/q_proj"}
    # limited to some nodes (a decoder's weight products): only blocks holding them are searched
    with StaticQuantizer(proto, feeds, int8_nodes={"/attn/q_proj/MatMul"}) as quantizer:
        assert quantizer.blocks() == {"attn/q_proj": ["/attn/q_proj/MatMul"]}
    producers = {o: n for n in full.graph.node for o in n.output}
    quantized = {n.input[0] for n in full.graph.node if n.op_type == "QuantizeLinear"}
    by_name = {n.name: n for n in full.graph.node}
    assert producers[by_name["/attn/q_proj/MatMul"].input[1]].op_type == "DequantizeLinear"
    assert by_name["/attn/q_proj/MatMul"].output[0] in quantized
    for name in activation_products(proto):  # float ops on float results: no Q after them
        node = by_name[name]
        assert node.op_type in ("MatMul", "Softmax") and node.output[0] not in quantized, name
    # the softmax reads the float logits, not a dequantized copy
    assert producers[by_name["/attn/Softmax"].input[0]].name == "/attn/MatMul"


def test_keep_float_matches_quantize_static_exclusion(tmp_path: Path):
    """A candidate cut from the one QDQ graph computes what onnxruntime's own exclusion of the
    same nodes computes."""
    from onnxruntime import quantization as q

    from edgesam_export.host.quantize.data import FeedReader

    proto = _two_convs()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    onnx.save(proto, str(tmp_path / "fp32.onnx"))
    for exclude in (["/net/blocks.0/Conv"], ["/net/blocks.1/Conv"]):
        q.quantize_static(
            tmp_path / "fp32.onnx",
            tmp_path / "own.onnx",
            FeedReader(feeds),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
        with StaticQuantizer(proto, feeds) as quantizer:
            cut = quantizer.quantize(exclude=exclude)
        x = feeds[0]
        own = ort.InferenceSession(str(tmp_path / "own.onnx")).run(None, x)[0]
        got = ort.InferenceSession(cut.SerializeToString()).run(None, x)[0]
        np.testing.assert_allclose(got, own, rtol=0, atol=1e-5 * np.abs(own).max())


class _Quantizer:
    """Stands in for StaticQuantizer: a 'graph' is the set of nodes left quantized."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes

    def quantize(self, exclude=(), only=None):
        return frozenset(self.nodes if only is None else only) - set(exclude)


class _Evaluator:
    """Each quantized node costs IoU in proportion to its harm (the search sees only results)."""

    def __init__(self, harm: dict[str, float], bar: MaskBar) -> None:
        self.harm, self.bar = harm, bar

    def quick(self, proto: frozenset[str]) -> float:
        return -10 * sum(self.harm[n] for n in proto)

    def judge(self, proto: frozenset[str]):
        from edgesam_export.device.mask_bar import MaskBarResult

        loss = sum(self.harm[n] for n in proto)
        return MaskBarResult(self.bar, 1 - loss, 1 - 2 * loss, 10), -loss, 1.0, 1.5


def test_search_keeps_the_fewest_most_sensitive_blocks_float():
    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.host.quantize.search import Report, search

    harm = {"a": 0.001, "b": 0.04, "c": 0.002, "d": 0.03, "e": 0.001}
    block_map = {f"block.{n}": [n] for n in harm}
    bar = MaskBar(0.97, 0.9)
    report = Report("encoder", str(bar), {}, {})
    lines: list[str] = []
    kept = search(_Quantizer(list(harm)), _Evaluator(harm, bar), block_map, report, lines.append)
    assert kept == frozenset({"a", "c", "e"})  # b and d (the harmful ones) stay float
    assert report.float_blocks == ["block.b", "block.d"] and report.float_nodes == ["b", "d"]
    assert [s["block"] for s in report.sensitivity] == list(block_map)
    assert report.frontier[0].float_blocks == [] and not report.frontier[0].passed
    assert any(p.passed and p.float_blocks == ["block.b", "block.d"] for p in report.frontier)
    assert any("sensitivity [5/5]" in line for line in lines)
    # a bar nothing partly quantized meets: the closest point is named, nothing is returned
    strict = MaskBar(0.9999, 0.9999)
    with pytest.raises(ExportFailedError, match="no partly quantized graph meets"):
        search(
            _Quantizer(list(harm)),
            _Evaluator(harm, strict),
            block_map,
            Report("encoder", str(strict), {}, {}),
        )
    # all quantized already meets the bar: no sensitivity run, nothing float
    easy = Report("decoder", "miou=0.5,worst=0.5", {}, {})
    assert search(_Quantizer(list(harm)), _Evaluator(harm, MaskBar(0.5, 0.5)), block_map, easy)
    assert easy.sensitivity == [] and easy.float_blocks == [] and len(easy.frontier) == 1
    assert easy.bar_met and easy.evaluations == 1 and easy.budget is None


def test_search_with_costs_keeps_the_most_harm_per_byte_float():
    """Weight-only int8 ranks blocks by harm per byte: a cheap block that harms nearly as much
    as an expensive one is kept float first."""
    from edgesam_export.host.quantize.search import Report, search

    harm = {"big": 0.4, "small": 0.3, "c": 0.001, "d": 0.001}
    block_map = {n: [n] for n in harm}
    bar = MaskBar(0.55, 0.1)  # one of big/small float is enough (loss <= 0.45)
    by_harm, by_byte = Report("encoder", str(bar), {}, {}), Report("encoder", str(bar), {}, {})
    search(_Quantizer(list(harm)), _Evaluator(harm, bar), block_map, by_harm)
    cost = {"big": 1000, "small": 10, "c": 10, "d": 10}
    search(_Quantizer(list(harm)), _Evaluator(harm, bar), block_map, by_byte, cost=cost)
    assert by_harm.float_blocks == ["big"] and by_byte.float_blocks == ["small"]


def test_search_budget_counts_evaluations_for_sensitivity_and_bisection():
    """The budget is a number of graph evaluations (one per sensitivity measurement and per
    judged probe), not seconds: the same inputs choose the same blocks at any machine load."""
    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.host.quantize.search import Report, search

    harm = {"b": 0.04, "d": 0.03, "a": 0.001, "c": 0.002, "e": 0.001}
    block_map = {f"block.{n}": [n] for n in harm}
    bar = MaskBar(0.97, 0.9)
    # 6: the all-int8 probe (1), sensitivity until half the budget (b and d measured: 3; the
    # rest rank after them in graph order), then the bisection until 6 (two probes converge)
    report = Report("encoder", str(bar), {}, {})
    lines: list[str] = []
    kept = search(_Quantizer(list(harm)), _Evaluator(harm, bar), block_map, report, lines.append, 6)
    assert [s["block"] for s in report.sensitivity] == ["block.b", "block.d"]
    assert not report.sensitivity_complete and report.converged and report.bar_met
    assert report.float_blocks == ["block.b", "block.d"] and kept == frozenset({"a", "c", "e"})
    assert any("sensitivity stopped at half the search budget (2/5" in line for line in lines)
    assert [len(p.float_blocks) for p in report.frontier] == [0, 2, 1]
    assert report.evaluations == 5 and report.budget == 6
    assert any("5 evaluated of --search-budget 6" in line for line in lines)
    # the same budget twice: the same report, whatever the time each evaluation took
    again = Report("encoder", str(bar), {}, {})
    search(_Quantizer(list(harm)), _Evaluator(harm, bar), block_map, again, budget=6)
    assert again.to_json() == report.to_json()
    # a budget spent before any partly quantized graph met the bar: a clear failure
    short = Report("encoder", str(bar), {}, {})
    with pytest.raises(ExportFailedError, match=r"within --search-budget 1 .*--search-budget"):
        search(_Quantizer(list(harm)), _Evaluator(harm, bar), block_map, short, budget=1)
    assert not short.converged and not short.bar_met and len(short.frontier) == 1


@pytest.fixture(scope="module")
def calibrated():
    from edgesam_export.host.models import load_model

    return load_model(None, synthetic="calibrated")


@pytest.mark.extended
def test_searched_int8_weights_export_writes_the_same_bytes_twice(tmp_path: Path, calibrated):
    """The search's budget is counted and its report holds no timings: two searched exports of
    the same encoder (the sensitivity pass cut by the budget, then a bisection) are one file."""
    from edgesam_export.host.targets.onnx import export

    options = {
        "graphs": ("encoder",),
        "quantize": "int8-weights",
        "accuracy_target": "miou=0.95,worst=0.85",
        "search_budget": 8,
        "heldout_images": 1,
    }
    a, b = (
        export(calibrated, "encoder", OnnxOptions(output=tmp_path / d, **options)) for d in "ab"
    )
    report = json.loads(a.metadata["int8.report"])
    assert report["evaluations"] > 4 and not report["sensitivity_complete"], report
    assert report["bar_met"] and report["float_blocks"], report
    # the float16 weights are listed once, under the weight mode's own key
    assert a.metadata["int8.float_weights"] == ",".join(report["float_blocks"])
    assert "int8.float_blocks" not in a.metadata
    assert "seconds" not in report and "latency_ms" not in report["frontier"][0]
    assert a.path.read_bytes() == b.path.read_bytes()


def _cheap_int8_decoder(output: Path, attention: str | None) -> OnnxOptions:
    """A decoder's static int8 kept cheap: 2 calibration images, 1 held-out image and a target
    the all-quantized decoder meets (so no sensitivity run)."""
    return OnnxOptions(
        output=output,
        graphs=("decoder",),
        quantize="int8",
        calibration_images=2,
        heldout_images=1,
        accuracy_target="miou=0.3,worst=0.1",
        attention=attention,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("attention", [None, "projected"])
def test_decoder_static_int8_export_path(tmp_path: Path, calibrated, attention):
    """The export path end to end on the decoder, kept cheap: 2 calibration images, 1 held-out
    image and a target the all-quantized decoder meets (so no sensitivity run); the real bar is
    the heavy test below. A decoder's int8 is its weight products only (`weight_matmuls`),
    folded by default; projected, in the plain layout onnxruntime's integer kernels take."""
    import json

    from edgesam_export.host.targets.onnx import export

    art = export(calibrated, "decoder", _cheap_int8_decoder(tmp_path, attention))
    assert art.metadata["decoder.attention"] == (attention or "folded")
    assert art.path.name == "edge_sam_decoder_int8.onnx"
    meta = art.metadata
    assert meta["precision"] == "int8" and meta["int8.method"] == "static-qdq"
    assert meta["int8.calibration"] == "synthetic (2 images)" and meta["int8.float_blocks"] == ""
    report = json.loads(meta["int8.report"])
    assert len(report["frontier"]) == 1
    point = report["frontier"][0]
    assert point["passed"] and meta["int8.mask_iou"] == (
        f"mean {point['mean_iou']:.4f} worst {point['worst_iou']:.4f}"
    )
    # searched on the held-out images: the chosen probe's per-image result is their judgement
    image = {k: point[k] for k in ("mean_iou", "worst_iou")} | {"masks": 10, "passed": True}
    assert point["images"] == [image]
    assert report["heldout"] == {"images": [image], "prompt_cases": 8, "masks": 10}
    model = onnx.load(str(art.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # only the weight products read dequantized tensors: every other node computes in float
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    products = [n for n in model.graph.node if set(n.input) & dequantized]
    assert products and {n.op_type for n in products} == {"MatMul"}, products
    for node in products:  # each reads an int8 2-D weight through its DequantizeLinear
        weights = [
            inits[producers[i].input[0]]
            for i in node.input
            if i in dequantized and producers[i].input[0] in inits
        ]
        assert [len(w.dims) for w in weights] == [2], node.name
    assert any(n.name.startswith("/upscaling/") for n in products)
    if attention == "projected":
        # the plain attention layout: no projection weight on the left of its MatMul
        # (onnxruntime has no integer kernel for a left weight quantized per channel)
        for node in products:
            left = producers.get(node.input[0])
            assert not (left and left.op_type == "DequantizeLinear" and left.input[0] in inits)
    # the image-side key projections exist (and are int8) in the projected form only
    image_keys = [n for n in products if "cross_attn_token_to_image/k_proj" in n.name]
    assert bool(image_keys) == (attention == "projected"), image_keys
    assert {v.type.tensor_type.elem_type for v in model.graph.input} == {F}
    assert {v.type.tensor_type.elem_type for v in model.graph.output} == {F}


@pytest.mark.extended
def test_decoder_static_int8_auto_attention_searches_each_form(tmp_path: Path, calibrated):
    """`--attention auto` with static int8: each form searched on its own (the folded one's
    report as the file's, the projected one's beside it), joined under the If that runs the
    projected form from `projected_from(int8=True)` points; the image-side key projections are
    int8 products in that branch only."""
    from edgesam_export.host.targets.onnx import export
    from edgesam_export.host.targets.onnx_switch import projected_from

    art = export(calibrated, "decoder", _cheap_int8_decoder(tmp_path, "auto"))
    meta = art.metadata
    assert meta["decoder.attention"] == "auto" and meta["precision"] == "int8"
    assert meta["decoder.attention.projected_from"] == str(projected_from(int8=True))
    assert meta["int8.mask_iou"].startswith("mean ") and "int8.report" in meta
    assert meta["int8.mask_iou.projected"].startswith("mean ") and "int8.report.projected" in meta
    model = onnx.load(str(art.path))
    (switch,) = [n for n in model.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in switch.attribute}
    for branch, projected in (("then_branch", False), ("else_branch", True)):
        nodes = branches[branch].node
        dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
        keys = [
            n.name
            for n in nodes
            if n.op_type == "MatMul"
            and "cross_attn_token_to_image/k_proj" in n.name
            and set(n.input) & dequantized
        ]
        assert bool(keys) == projected, (branch, keys)
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    embeddings = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    for n in (1, 16):
        feeds = {
            "image_embeddings": embeddings,
            "point_coords": np.full((1, n, 2), 300.0, np.float32),
            "point_labels": np.ones((1, n), np.float32),
        }
        scores, masks = session.run(None, feeds)
        assert (
            masks.shape == (1, 4, 256, 256)
            and np.isfinite(masks).all()
            and np.isfinite(scores).all()
        )


@pytest.mark.heavy
def test_decoder_int8_meets_the_mask_bar_heavy(tmp_path: Path, calibrated):
    """Default options (the bar: mean 0.97, worst 0.90): the searched decoder passes parity
    with its own row and the bar on 5 held-out images (more than the search judged on)."""
    from edgesam_export.host.pipeline import verify_artifacts
    from edgesam_export.host.quantize.data import HELDOUT_PROMPT_SEED, heldout_images, prepare
    from edgesam_export.host.quantize.search import Evaluator, _preprocessing
    from edgesam_export.host.targets.onnx import export

    art = export(calibrated, "decoder", OnnxOptions(output=tmp_path, quantize="int8"))
    report = verify_artifacts(None, tmp_path, loaded=calibrated)
    assert report.passed, report.summary()
    inputs = prepare(heldout_images(5), _preprocessing(calibrated), HELDOUT_PROMPT_SEED)
    result, *_ = Evaluator("decoder", calibrated, inputs, MaskBar()).judge(onnx.load(art.path))
    assert result.passed, result.to_json()


@pytest.mark.heavy
def test_encoder_int8_search_heavy(tmp_path: Path, calibrated):
    """The bounded encoder search (docs/quantize.md): on the calibrated synthetic encoder only a
    graph with 60 of its 62 blocks float meets the bar (the complete search finds it in 25
    evaluations); a budget of 6 evaluations stops before any graph meets it, and the export
    fails naming the closest point, leaving nothing behind."""
    import time

    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.host.targets.onnx import export

    t0 = time.perf_counter()
    options = OnnxOptions(output=tmp_path, graphs=("encoder",), quantize="int8", search_budget=6)
    with pytest.raises(ExportFailedError, match=r"closest: .*--search-budget"):
        export(calibrated, "encoder", options)
    assert time.perf_counter() - t0 < 3600
    assert not list(tmp_path.glob("*int8*"))


@pytest.mark.parametrize("flavour", ["10", "8.6"])
def test_trt_int8_engine_is_explicit_quantization_of_the_qdq_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavour: str
):
    """`trt --int8`: the engine is parsed from the symmetric QDQ graph itself (no calibrator);
    strongly typed (TensorRT 10) takes int8 from the Q/DQ nodes and sets no precision flag,
    the weakly typed path (8.6) sets BuilderFlag.INT8. The fake records the calls."""
    import json
    import sys

    import fake_tensorrt

    from edgesam_export.host.targets.tensorrt import EnginePlan, build_engine, sidecar_path

    trt = fake_tensorrt.make(flavour)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    with StaticQuantizer(_two_convs(), feeds, activation_symmetric=True) as quantizer:
        qdq = quantizer.quantize()
    src = tmp_path / "net_int8.onnx"
    onnx.save(qdq, str(src))
    plan = EnginePlan(
        onnx=src, engine=tmp_path / "net_int8.engine", graph="decoder", profiles={}, int8=True
    )
    assert plan.precision == "int8" and plan.typed_onnx == src
    build_engine(plan, trt)
    assert trt.calls.parsed == [src]
    assert trt.calls.builder_flags == ([] if flavour == "10" else ["INT8"])
    assert json.loads(sidecar_path(plan.engine).read_text())["precision"] == "int8"


def test_trt_int8_needs_a_folder_of_qdq_graphs():
    from typer.testing import CliRunner

    from edgesam_export.cli.export import app

    result = CliRunner().invoke(app, ["trt", "--int8", "--print-trtexec"])
    assert result.exit_code == 3, result.output
    assert "onnx --quantize int8 --activation-symmetric" in " ".join(result.output.split())
    both = CliRunner().invoke(app, ["trt", "--int8", "--fp16", "--print-trtexec"])
    assert both.exit_code == 3 and "not both" in both.output


@pytest.mark.heavy
def test_second_family_decoder_int8_search_heavy(tmp_path: Path):
    """The same method on MobileSAM (no family-specific code): calibrated synthetic weights,
    a bounded search, and the written graph meets the bar it was searched for on held-out
    images it was not calibrated on (8 here, more than the 5 the search judged on)."""
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize.data import HELDOUT_PROMPT_SEED, heldout_images, prepare
    from edgesam_export.host.quantize.search import Evaluator, _preprocessing
    from edgesam_export.host.targets.onnx import export

    loaded = load_model(None, model="mobile_sam", synthetic="calibrated")
    options = OnnxOptions(output=tmp_path, graphs=("decoder",), quantize="int8")
    art = export(loaded, "decoder", options)
    assert art.path.name == "mobile_sam_decoder_int8.onnx" and art.metadata["int8.bar"].endswith(
        "met"
    )
    inputs = prepare(heldout_images(8), _preprocessing(loaded), HELDOUT_PROMPT_SEED)
    result, *_ = Evaluator("decoder", loaded, inputs, MaskBar()).judge(onnx.load(art.path))
    assert result.passed, result.to_json()


# --------------------------------------------------------------------------------------
# weight-only int8 (--quantize int8-weights)
# --------------------------------------------------------------------------------------


def _weights_graph(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (1,8,12,12) -> Conv -> ConvTranspose -> flatten -> x @ W -> Gemm(transB) -> W @ y,
    plus a small Conv weight (< 1024 elements) and biases that must stay float."""
    w = {
        "conv_w": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),  # 1152: quantized, axis 0
        "conv_b": rng.normal(size=(16,)).astype(np.float32),
        "small_w": rng.normal(size=(16, 16, 1, 1)).astype(np.float32),  # 256: stays float
        "convt_w": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),  # ConvTranspose: axis 1
        "right_w": rng.normal(size=(100, 48)).astype(np.float32),  # x @ W: axis 1
        "gemm_w": rng.normal(size=(32, 48)).astype(np.float32),  # transB: axis 0
        "gemm_b": rng.normal(size=(32,)).astype(np.float32),
        "left_w": rng.normal(size=(64, 128)).astype(np.float32),  # W @ y: axis 0 (rows)
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "small_w"], ["s"]),
        helper.make_node("ConvTranspose", ["s", "convt_w"], ["t"], strides=[2, 2]),  # 25x25
        helper.make_node("Slice", ["t", "st", "en", "ax"], ["t10"]),  # (1, 8, 25, 10)
        helper.make_node("Reshape", ["t10", "shape"], ["f"]),  # (20, 100)
        helper.make_node("MatMul", ["f", "right_w"], ["r"]),  # (20, 48)
        helper.make_node("Gemm", ["r", "gemm_w", "gemm_b"], ["g"], transB=1),  # (20, 32)
        helper.make_node("Reshape", ["g", "shape2"], ["g2"]),  # (128, 5)
        helper.make_node("MatMul", ["left_w", "g2"], ["y"]),  # (64, 5)
    ]
    consts = {
        "st": np.array([0], np.int64),
        "en": np.array([10], np.int64),
        "ax": np.array([3], np.int64),
        "shape": np.array([-1, 100], np.int64),
        "shape2": np.array([128, -1], np.int64),
    }
    graph = helper.make_graph(
        nodes,
        "w",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 5])],
        [numpy_helper.from_array(v, k) for k, v in {**w, **consts}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, w


def test_int8_weights_stores_int8_per_channel_and_computes_in_float(tmp_path: Path):
    from edgesam_export.host.targets.onnx_weights import quantize_per_channel, to_int8_weights

    rng = np.random.default_rng(7)
    model, w = _weights_graph(rng)
    x = rng.normal(size=(1, 8, 12, 12)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    fp32 = run(model)
    quantized = to_int8_weights(onnx.load_from_string(model.SerializeToString()))
    onnx.checker.check_model(quantized, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    expected_axes = {"conv_w": 0, "convt_w": 1, "right_w": 1, "gemm_w": 0, "left_w": 0}
    producers = {n.output[0]: n for n in quantized.graph.node}
    for name, axis in expected_axes.items():
        q, scale = inits[f"{name}_int8"], inits[f"{name}_scale"]
        assert name not in inits and q.dtype == np.int8 and scale.dtype == np.float32
        # one scale per output channel, on that channel's axis
        assert scale.size == w[name].shape[axis] and scale.shape[axis] == scale.size
        assert np.abs(q).max() == 127  # symmetric: each channel's peak maps to 127
        assert np.abs(q * scale - w[name]).max() <= scale.max() / 2 + 1e-6
        mul = producers[name]  # the weight's users read Mul(Cast(int8), scale)
        assert mul.op_type == "Mul" and mul.input[1] == f"{name}_scale"
        assert producers[mul.input[0]].op_type == "Cast"
    for name in ("conv_b", "small_w", "gemm_b"):  # biases and small tensors: float as they were
        assert inits[name].dtype == np.float32 and np.array_equal(inits[name], w[name])
    meta = {p.key: p.value for p in quantized.metadata_props}
    assert meta["precision"] == "int8-weights" and meta["int8.method"] == "weights"
    assert meta["int8.weights"] == "5"
    # float compute on dequantized weights: the same graph with those weights put back agrees to
    # float noise, and the fp32 graph within the int8 weight error (~1% per layer)
    restored = onnx.load_from_string(model.SerializeToString())
    for t in restored.graph.initializer:
        if t.name in expected_axes:
            q, s = quantize_per_channel(w[t.name], expected_axes[t.name])
            shape = [1] * q.ndim
            shape[expected_axes[t.name]] = -1
            t.CopyFrom(numpy_helper.from_array(q * s.reshape(shape), t.name))
    # onnxruntime's full optimization keeps float kernels (no MatMulNBits, no integer ops)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized.SerializeToString(), opts)
    ops = {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
    assert not ops & {"MatMulNBits", "DequantizeLinear", "MatMulInteger", "ConvInteger"}, ops
    got = run(quantized)
    np.testing.assert_allclose(got, run(restored), rtol=1e-5, atol=1e-4 * np.abs(fp32).max())
    rel = np.abs(got - fp32).max() / np.abs(fp32).max()
    assert 0 < rel < 0.05, rel
    # the file holds int8: the quantized weights take a quarter of their float32 bytes
    assert len(quantized.SerializeToString()) < 0.4 * len(model.SerializeToString())


def test_int8_weights_is_weight_only_in_options():
    with pytest.raises(ValueError, match="applies to --quantize int8 \\(static\\) only"):
        OnnxOptions(quantize="int8-weights", calibration_method="entropy")
    searched = OnnxOptions(quantize="int8-weights", accuracy_target="miou=0.9", search_budget=60)
    assert searched.accuracy_target == "miou=0.9,worst=0.9"
    with pytest.raises(ValueError, match="not both"):
        OnnxOptions(precision="fp16", quantize="int8-weights")


def test_encoder_quantize_gives_the_encoder_its_own_mode(tmp_path: Path):
    both = OnnxOptions(quantize="int8", encoder_quantize="int8-weights")
    assert both.for_graph("encoder").quantize == "int8-weights"
    assert both.for_graph("decoder").quantize == "int8"
    assert both.for_graph("encoder").encoder_quantize is None
    fp32_encoder = OnnxOptions(quantize="int8", encoder_quantize="none")
    assert fp32_encoder.for_graph("encoder").quantize is None
    assert OnnxOptions(quantize="int8").for_graph("encoder").quantize == "int8"
    # the calibration and static-only options follow whichever graph uses them
    assert OnnxOptions(encoder_quantize="int8", calibration_method="entropy").calibrates()
    assert OnnxOptions(encoder_quantize="int8-weights", calibration=tmp_path).calibrates()
    with pytest.raises(ValueError, match="static"):
        OnnxOptions(quantize="int8-weights", encoder_quantize="none", calibration_method="entropy")
    with pytest.raises(ValueError, match="applies to --quantize"):
        OnnxOptions(quantize="int8-dynamic", encoder_quantize="none", calibration_images=3)
    with pytest.raises(ValueError, match="not exported"):
        OnnxOptions(graphs=("decoder",), quantize="int8", encoder_quantize="int8-weights")
    with pytest.raises(ValueError, match="not both"):
        OnnxOptions(precision="fp16", encoder_quantize="int8-weights")
    # exported encoder first whatever the order given: the decoder can be judged beside it
    assert OnnxOptions(graphs=("decoder", "encoder")).graphs == ("encoder", "decoder")


def test_export_reduces_each_graph_by_its_own_mode(tmp_path: Path, calibrated, monkeypatch):
    """`export` hands each graph its own options: the encoder's mode names its file and is what
    the reduction step sees (the reduction itself is stubbed: the wiring is under test)."""
    from edgesam_export.host.targets import onnx_precision
    from edgesam_export.host.targets.onnx import export

    seen: dict[str, tuple[str | None, str | None]] = {}

    def reduce(proto, loaded, options, progress=None, encoder=None):
        graph = {p.key: p.value for p in proto.metadata_props}["graph"]
        seen[graph] = (options.quantize, encoder and encoder.name)
        return proto

    monkeypatch.setattr(onnx_precision, "reduce_precision", reduce)
    options = OnnxOptions(output=tmp_path, quantize="int8", encoder_quantize="int8-weights")
    names = {g: export(calibrated, g, options).path.name for g in ("encoder", "decoder")}
    # the decoder is handed the reduced encoder this run wrote (its search runs end to end)
    paired = "edge_sam_encoder_int8-weights.onnx"
    assert seen == {"encoder": ("int8-weights", None), "decoder": ("int8", paired)}
    assert names == {
        "encoder": "edge_sam_encoder_int8-weights.onnx",
        "decoder": "edge_sam_decoder_int8.onnx",
    }


@pytest.mark.extended
def test_decoder_beside_a_reduced_encoder_is_searched_end_to_end(tmp_path: Path, calibrated):
    """With the encoder reduced in the same run, the decoder's int8 search calibrates on and is
    judged with that encoder's embeddings (the pair a user runs), and says so; alone, it uses
    PyTorch's."""
    from edgesam_export.device.manifest import file_sha256
    from edgesam_export.host.targets.onnx import export

    common = {
        "quantize": "int8",
        "calibration_images": 2,
        "heldout_images": 1,
        "accuracy_target": "miou=0.3,worst=0.1",
    }
    pair = OnnxOptions(output=tmp_path / "pair", encoder_quantize="int8-weights", **common)
    enc = export(calibrated, "encoder", pair)
    dec = export(calibrated, "decoder", pair)
    alone = export(
        calibrated, "decoder", OnnxOptions(output=tmp_path / "alone", graphs=("decoder",), **common)
    )
    assert enc.path.name == "edge_sam_encoder_int8-weights.onnx"
    judged = f"{enc.path.name} sha256:{file_sha256(enc.path)}"
    assert dec.metadata["int8.judged_with"] == judged
    assert "int8.judged_with" not in alone.metadata
    # other embeddings: other ranges and another judgement of the same all-int8 decoder
    assert dec.metadata["int8.mask_iou"] != alone.metadata["int8.mask_iou"]
    assert dec.path.read_bytes() != alone.path.read_bytes()


def test_int8_weights_keeps_named_weights_float16(tmp_path: Path):
    """`keep` weights are stored float16 (cast back in the graph), the others int8; a name that
    is no int8 weight of the graph is refused."""
    from edgesam_export.host.targets.onnx_weights import to_int8_weights, weight_names

    rng = np.random.default_rng(3)
    model, w = _weights_graph(rng)
    assert list(weight_names(model)) == ["conv_w", "convt_w", "right_w", "gemm_w", "left_w"]
    with pytest.raises(ValueError, match="small_w"):
        to_int8_weights(onnx.load_from_string(model.SerializeToString()), keep=["small_w"])
    kept = to_int8_weights(onnx.load_from_string(model.SerializeToString()), keep=["right_w"])
    inits = {t.name: numpy_helper.to_array(t) for t in kept.graph.initializer}
    assert inits["right_w_fp16"].dtype == np.float16 and "right_w_int8" not in inits
    assert np.array_equal(inits["right_w_fp16"], w["right_w"].astype(np.float16))
    assert inits["conv_w_int8"].dtype == np.int8 and inits["gemm_b"].dtype == np.float32
    meta = {p.key: p.value for p in kept.metadata_props}
    assert meta["int8.weights"] == "4" and meta["int8.float_weights"] == "right_w"
    # every Cast and Mul is folded at load: onnxruntime runs the fp32 graph's own float ops
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(kept.SerializeToString(), opts)
    ops = {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
    assert not ops & {"Cast", "Mul", "MatMulNBits", "DequantizeLinear"}, ops


def _sensitive_graph(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    """x (32, 64) @ A @ B @ C, where B is the one weight int8 breaks: each of its columns holds
    one huge value (row 0), so the per-column int8 scale rounds the rest to zero; row 0 meets
    A's column 0, which is zero, so the float graph does not feel it."""
    a, b, c = (rng.normal(size=(64, 64)).astype(np.float32) for _ in range(3))
    a[:, 0] = 0
    b[0] = 1e4
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "A"], ["xa"]),
            helper.make_node("MatMul", ["xa", "B"], ["xb"]),
            helper.make_node("MatMul", ["xb", "C"], ["y"]),
        ],
        "s",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 64])],
        [numpy_helper.from_array(v, k) for k, v in {"A": a, "B": b, "C": c}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, rng.normal(size=(32, 64)).astype(np.float32)


class _GraphEvaluator:
    """Judges a candidate of the tiny graph as the mask bar would: its output > 0 as the mask,
    against the fp32 graph's."""

    def __init__(self, model: onnx.ModelProto, x: np.ndarray, bar: MaskBar) -> None:
        self.x, self.bar = x, bar
        self.ref = self._run(model)

    def _run(self, proto: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(proto.SerializeToString()).run(None, {"x": self.x})[0]

    def quick(self, proto: onnx.ModelProto) -> float:
        from edgesam_export.host.quantize.search import sqnr_db

        return sqnr_db(self._run(proto), self.ref)

    def judge(self, proto: onnx.ModelProto):
        from edgesam_export.device.mask_bar import mask_bar

        got = self._run(proto)
        pairs = [
            (np.ones((1, 1)), self.ref[None, None, i : i + 8], got[None, None, i : i + 8])
            for i in range(0, 32, 8)
        ]
        return mask_bar(pairs, self.bar), self.quick(proto), 1.0, None


def test_int8_weights_search_keeps_the_one_sensitive_weight_float16():
    """The static search's machinery on weights: the weight whose int8 form breaks the masks is
    found by the sensitivity pass and kept float16; every other weight is int8."""
    from edgesam_export.host.quantize.search import Report, search
    from edgesam_export.host.quantize.weights import WeightQuantizer

    model, x = _sensitive_graph(np.random.default_rng(5))
    bar = MaskBar(0.97, 0.9)
    evaluator = _GraphEvaluator(model, x, bar)
    report = Report("encoder", str(bar), {}, {})
    with WeightQuantizer(model) as quantizer:
        assert not evaluator.judge(quantizer.quantize())[0].passed  # all int8 misses the bar
        best = search(quantizer, evaluator, quantizer.blocks(), report)
    assert report.float_blocks == ["B"] and report.bar_met
    assert min(report.sensitivity, key=lambda s: s["sqnr_db"])["block"] == "B"
    meta = {p.key: p.value for p in best.metadata_props}
    assert meta["int8.float_weights"] == "B" and meta["int8.weights"] == "2"
    assert evaluator.judge(best)[0].passed


@pytest.mark.heavy  # both graphs with the search (minutes of CPU)
def test_int8_weights_edgesam_meets_the_mask_bar_within_15_mb_heavy(tmp_path: Path, calibrated):
    """Issue 17: `onnx --quantize int8-weights` on the calibrated synthetic EdgeSAM, searched on
    its selection images, meets the mask bar end to end (both graphs int8-weights, against
    fp32 PyTorch) on held-out images it never chose on, 5 here (the export judged 3), with both
    files together <= 15 MB."""
    from edgesam_export.device.backends import open_session
    from edgesam_export.host.quantize.heldout import heldout_mask_bar
    from edgesam_export.host.targets.onnx import export

    # the default, complete search (97 encoder weights measured, ~1.3 s each quiet)
    options: dict = {"quantize": "int8-weights"}
    arts = {
        g: export(calibrated, g, OnnxOptions(output=tmp_path, graphs=(g,), **options))
        for g in ("encoder", "decoder")
    }
    size = sum(a.path.stat().st_size for a in arts.values())
    for g, art in arts.items():
        meta = art.metadata
        print(
            f"{g}: {art.path.stat().st_size / 1e6:.2f} MB, float16 weights"
            f" [{meta['int8.float_weights']}], held-out {meta['int8.mask_iou']}"
        )
        assert meta["precision"] == "int8-weights" and meta["int8.bar"].endswith("met")
        for point in json.loads(meta["int8.report"])["frontier"]:
            print(
                f"  {len(point['float_blocks'])} float16: selection {point['mean_iou']:.4f}"
                f" / {point['worst_iou']:.4f}, SQNR {point['sqnr_db']:.1f} dB"
            )
    print(f"both: {size / 1e6:.2f} MB")
    assert size <= 15_000_000
    sessions = {g: open_session(a.path) for g, a in arts.items()}
    result = heldout_mask_bar(calibrated, sessions["encoder"], sessions["decoder"], images=5)
    print(result.to_json())
    assert result.passed, result.to_json()

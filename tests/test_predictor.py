"""The runtime predictor reproduces EdgeSAM's PyTorch predictor on any session."""

from __future__ import annotations

import numpy as np
import pytest

from edgesam_export.device.backends import open_session
from edgesam_export.device.errors import InputError
from edgesam_export.device.predictor import Predictor
from edgesam_export.device.processing import ProcessingError
from edgesam_export.host.reference import reference_sessions


@pytest.fixture(scope="module")
def torch_predictor(bilinear_model, golden) -> Predictor:
    enc, decs = reference_sessions(bilinear_model)
    p = Predictor(enc, decs[False])
    p.set_image(golden["image"])
    return p


@pytest.fixture(scope="module")
def onnx_predictor(bilinear_artifacts, golden) -> Predictor:
    p = Predictor(
        open_session(bilinear_artifacts / "edge_sam_encoder.onnx", threads=2),
        open_session(bilinear_artifacts / "edge_sam_decoder.onnx", threads=2),
    )
    p.set_image(golden["image"])
    return p


def _flipped_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a != b))


@pytest.mark.parametrize("which", ["torch", "onnx"])
def test_predictor_matches_official_predictor(request, golden, which):
    """Every predictor prompt set of the file (points, box, or both), 1 and 3 masks."""
    pred = request.getfixturevalue(f"{which}_predictor")
    assert golden.pred_sets()
    for name in golden.pred_sets():
        for mode, k in (("single", 1), ("multi", 3)):
            out = pred.predict(**golden.pred_prompt(name), num_multimask_outputs=k)
            where = f"prompt set {name}, {mode}"
            # end to end: our encoder on the image, then the decoder
            np.testing.assert_allclose(
                out.low_res_logits,
                golden[f"pred_{name}_{mode}_low_res_logits"],
                atol=5e-3,
                err_msg=where,
            )
            np.testing.assert_allclose(
                out.scores, golden[f"pred_{name}_{mode}_scores"], atol=2e-4, err_msg=where
            )
            expected = golden[f"pred_{name}_{mode}_masks"]
            assert out.masks.shape == expected.shape and out.masks.dtype == bool
            assert _flipped_fraction(out.masks, expected) <= 2e-4, where


def test_four_masks_are_single_then_multi(torch_predictor, golden):
    name = golden.pred_sets()[0]
    out = torch_predictor.predict(**golden.pred_prompt(name), num_multimask_outputs=4)
    ref = np.concatenate(
        [golden[f"pred_{name}_single_low_res_logits"], golden[f"pred_{name}_multi_low_res_logits"]]
    )
    np.testing.assert_allclose(out.low_res_logits, ref, atol=5e-3)
    masks = np.concatenate(
        [golden[f"pred_{name}_single_masks"], golden[f"pred_{name}_multi_masks"]]
    )
    assert _flipped_fraction(out.masks, masks) <= 2e-4


def test_padding_point_can_be_turned_off(torch_predictor, golden):
    """pad=False reproduces EdgeSAM's ONNX client (points sent as-is): the dec_<x> arrays of a
    point-only prompt set; the default pad=True (the PyTorch predictor) differs."""
    names = [
        n
        for n in golden.pred_sets()
        if "box" not in golden.pred_prompt(n) and n in golden.dec_sets()
    ]
    assert names, "the golden file has no point-only prompt set"
    for name in names:
        prompt = golden.pred_prompt(name)
        out = torch_predictor.predict(**prompt, num_multimask_outputs=4, pad=False)
        np.testing.assert_allclose(out.low_res_logits, golden[f"dec_{name}_masks"][0], atol=5e-3)
        padded = torch_predictor.predict(**prompt, num_multimask_outputs=4)
        assert np.abs(padded.low_res_logits - out.low_res_logits).max() > 0.05


def test_batch_of_boxes(onnx_predictor, golden):
    h, w = golden.original_size
    boxes = np.array([[0.02, 0.04, 0.3, 0.45], [0.5, 0.1, 0.95, 0.6], [0.1, 0.5, 0.6, 0.98]])
    boxes = (boxes * [w, h, w, h]).astype(np.float32)
    out = onnx_predictor.predict(box=boxes, num_multimask_outputs=3)
    assert out.masks.shape == (3, 3, h, w)
    assert out.scores.shape == (3, 3)
    for i, box in enumerate(boxes):
        single = onnx_predictor.predict(box=box, num_multimask_outputs=3)
        np.testing.assert_allclose(single.low_res_logits, out.low_res_logits[i], atol=1e-4)


def test_predict_before_set_image(bilinear_model):
    enc, decs = reference_sessions(bilinear_model)
    with pytest.raises(InputError, match="set_image"):
        Predictor(enc, decs[False]).predict(points=np.array([[1.0, 2.0]]), labels=np.array([1]))


def test_bad_prompt_and_image(torch_predictor):
    with pytest.raises(ProcessingError):
        torch_predictor.predict(points=np.array([[np.nan, 2.0]]), labels=np.array([1]))
    with pytest.raises(ProcessingError):
        torch_predictor.predict(points=np.array([[1.0, 2.0]]), labels=np.array([7]))
    with pytest.raises(ProcessingError):
        torch_predictor.predict(
            points=np.array([[1.0, 2.0]]), labels=np.array([1]), num_multimask_outputs=2
        )
    with pytest.raises(ProcessingError):
        torch_predictor.set_image(np.zeros((10, 10, 3), np.float32))


def test_session_rejects_wrong_feed(torch_predictor):
    with pytest.raises(InputError, match="expected shape"):
        torch_predictor.encoder.run({"image": np.zeros((1, 3, 512, 512), np.float32)})
    with pytest.raises(InputError, match="float32"):
        torch_predictor.encoder.run({"image": np.zeros((1, 3, 1024, 1024), np.float64)})
    with pytest.raises(InputError, match="feeds"):
        torch_predictor.encoder.run({"pixels": np.zeros((1, 3, 1024, 1024), np.float32)})


def test_torch_reference_sessions_return_contiguous_outputs(bilinear_model, golden) -> None:
    """As every runtime's session does: the encoder's last op leaves PyTorch's embeddings as a
    strided (channels-last) view, and each consumer (a decoder session, a benchmark's feeds)
    then paid a strided copy of the 4 MB tensor per call."""
    from edgesam_export.device import processing as P
    from edgesam_export.host.reference import torch_sessions

    # the export graphs (optimized=True): the neck's channels-last LayerNorm ends in a transpose
    enc, dec = torch_sessions(bilinear_model, optimized=True)
    tensor, _ = P.preprocess(golden["image"], params=bilinear_model.spec.preprocessing)
    embeddings = enc.run({"image": tensor})["image_embeddings"]
    assert embeddings.flags["C_CONTIGUOUS"]
    feeds = {
        "image_embeddings": embeddings,
        "point_coords": np.array([[[500.0, 400.0]]], np.float32),
        "point_labels": np.array([[1.0]], np.float32),
    }
    assert all(v.flags["C_CONTIGUOUS"] for v in dec.run(feeds).values())

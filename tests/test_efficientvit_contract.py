"""EfficientViT-SAM's own ONNX decoder contract (`--decoder-contract efficientvit`).

The exported decoders run on onnxruntime against the outputs of the official
`DecoderOnnxModel(return_single_mask=False/True)` stored in the L0 fixture (prompts as its
runner encodes them: no padding point), parity judges them, and families without the contract
refuse it. `onnx_l0_seed0.npz` holds the fixture's `onnx_*` keys that `golden_l0_seed0.npz`
lacks (low-res logits subsampled 2x per axis, as there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.errors import InputError
from edgesam_export.device.official_contract import (
    EFFICIENTVIT_DECODER_INPUTS,
    EFFICIENTVIT_DECODER_OUTPUTS,
    efficientvit_feeds,
)
from edgesam_export.host.config import OnnxOptions
from edgesam_export.host.models import get_spec, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "efficientvit_sam"
MODEL = "efficientvit_sam_l0"
# The fixture README's float32 tolerances (>= 8x the float32-vs-float64 noise of the official
# code) for the low-res logits and the IoU predictions.
LOGIT_TOL = 2e-4
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in ("golden_l0_seed0.npz", "onnx_l0_seed0.npz"):
        with np.load(FIXTURES / name, allow_pickle=False) as data:
            out.update({k: data[k] for k in data.files})
    for p in "cd":  # the official multi output is token 0 then tokens 1..3 (fixture README)
        out[f"onnx_{p}_multi_low_res_sub2"] = np.concatenate(
            [out[f"{p}_single_low_res_sub2"], out[f"{p}_multi_low_res_sub2"]]
        )[None]
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, golden):
    """The two contract decoders (all tokens, single mask) of the fixture's weights (seed 0),
    the reference outputs beside them, and our encoder's embeddings of the fixture image."""
    from edgesam_export.host.pipeline import write_reference_outputs
    from edgesam_export.host.targets.onnx import export

    loaded = load_model(None, model=MODEL, synthetic="untrained")
    out = tmp_path_factory.mktemp("evit_contract")
    paths = {
        single: export(
            loaded,
            "decoder",
            OnnxOptions(output=out, decoder_contract="efficientvit", return_single_mask=single),
        ).path
        for single in (False, True)
    }
    write_reference_outputs(loaded, out, MODEL)
    tensor, _ = P.preprocess(golden["image"], params=loaded.spec.preprocessing)
    with torch.inference_mode():
        emb = loaded.model.image_encoder(torch.from_numpy(tensor)).numpy()
    return loaded, out, paths, emb


def test_contract_files_match_the_official_export(exported):
    """Names, order, dynamic axes and metadata of both files."""
    _, _, paths, _ = exported
    for single, path in paths.items():
        assert path.name == f"{MODEL}_decoder_efficientvit{'_single' if single else ''}.onnx"
        proto = onnx.load(str(path), load_external_data=False)
        assert tuple(i.name for i in proto.graph.input) == EFFICIENTVIT_DECODER_INPUTS
        assert tuple(o.name for o in proto.graph.output) == EFFICIENTVIT_DECODER_OUTPUTS

        def dims(value):
            return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

        shapes = {v.name: dims(v) for v in [*proto.graph.input, *proto.graph.output]}
        k = 1 if single else 4
        assert shapes["image_embeddings"] == [1, 256, 64, 64]
        assert shapes["point_coords"] == ["batch_size", "num_points", 2]
        assert shapes["point_labels"] == ["batch_size", "num_points"]
        assert shapes["masks"] == ["batch_size", k, 256, 256]
        assert shapes["iou_predictions"] == ["batch_size", k]
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["decoder_contract"] == "efficientvit"
        assert meta["return_single_mask"] == str(single).lower()


def test_onnx_contract_matches_decoderonnxmodel_golden(exported, golden):
    """onnxruntime, all tokens and single mask, prompts a-d as the official runner sends them."""
    _, _, paths, emb = exported
    multi, single = open_session(paths[False]), open_session(paths[True])
    worst = {"multi": 0.0, "single": 0.0, "iou": 0.0}
    for p in "abcd":
        feeds = efficientvit_feeds(emb, golden[f"onnx_{p}_point_coords"],
                                   golden[f"onnx_{p}_point_labels"])  # fmt: skip
        assert feeds["point_coords"].shape[1] == golden[f"onnx_{p}_point_labels"].shape[1]
        for kind, sess in (("multi", multi), ("single", single)):
            out = sess.run(feeds)
            masks, iou = out["masks"], out["iou_predictions"]
            ref_masks = golden[f"onnx_{p}_{kind}_low_res_sub2"]
            ref_iou = golden[f"onnx_{p}_{kind}_iou_predictions"]
            assert masks.shape == (1, 1 if kind == "single" else 4, 256, 256)
            assert iou.shape == ref_iou.shape
            np.testing.assert_allclose(masks[..., ::2, ::2], ref_masks, rtol=0, atol=LOGIT_TOL,
                                       err_msg=f"{p} {kind}")  # fmt: skip
            np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=SCORE_TOL, err_msg=f"{p} {kind}")
            worst[kind] = max(worst[kind], float(np.abs(masks[..., ::2, ::2] - ref_masks).max()))
            worst["iou"] = max(worst["iou"], float(np.abs(iou - ref_iou).max()))
        # the single file keeps the token of highest IoU among all four (here not token 0)
        best = int(np.argmax(golden[f"onnx_{p}_multi_iou_predictions"][0]))
        assert golden[f"onnx_{p}_single_iou_predictions"][0, 0] == pytest.approx(
            golden[f"onnx_{p}_multi_iou_predictions"][0, best]
        )
    print(f"max abs vs DecoderOnnxModel goldens: {json.dumps(worst)}")


def test_batch_axis_runs_prompt_rows_independently(exported, golden):
    """The official file's batch_size axis: two prompt rows on one embedding = two calls."""
    _, _, paths, emb = exported
    sess = open_session(paths[True])
    coords = np.concatenate([golden["onnx_c_point_coords"], golden["onnx_c_point_coords"] / 2])
    labels = np.concatenate([golden["onnx_c_point_labels"]] * 2)
    both = sess.run(efficientvit_feeds(emb, coords, labels))
    for row in range(2):
        alone = sess.run(efficientvit_feeds(emb, coords[row : row + 1], labels[row : row + 1]))
        for key in EFFICIENTVIT_DECODER_OUTPUTS:
            np.testing.assert_allclose(both[key][row], alone[key][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("reference", ["torch", "outputs"])
def test_parity_judges_the_contract(exported, reference):
    """Parity (against PyTorch, and against the reference outputs as on a device without torch)
    runs each contract decoder on every prompt case, batched ones included, and judges its
    low-res masks and IoU, picking the reference token by the contract's single-mask rule."""
    from edgesam_export.host.pipeline import verify_artifacts

    loaded, out, paths, _ = exported
    if reference == "torch":
        report = verify_artifacts(None, out, loaded=loaded)
    else:
        report = verify_artifacts(None, out, reference="outputs")
    assert report.passed, [r for r in report.summary() if not r["passed"]] or report.errors
    checks = {(r["artifact"], r["check"]) for r in report.summary()}
    for path in paths.values():
        assert (path.name, "decoder.masks") in checks
        assert (path.name, "decoder.scores") in checks
        assert not any(a == path.name and "upscaled" in c for a, c in checks)
    assert not report.inputs.get("skipped")
    cases = {c.case for c in report.comparisons if c.artifact == paths[True].name}
    assert any("batch" in c for c in cases), cases


def test_contract_refused_where_the_family_has_none(tmp_path):
    assert "efficientvit" in get_spec(MODEL).decoder_contracts
    assert "efficientvit" not in get_spec("edge_sam").decoder_contracts
    assert "official" not in get_spec(MODEL).decoder_contracts
    result = CliRunner().invoke(
        app,
        ["onnx", "--model", "edge_sam", "--synthetic", "untrained", "--decoder",
         "--decoder-contract", "efficientvit", "--output", str(tmp_path), "--no-verify"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output  # InputError: bad input
    assert "edge_sam has no efficientvit ONNX decoder contract" in result.output
    assert not list(tmp_path.glob("*.onnx"))
    from edgesam_export.host.targets.onnx import export

    lm = load_model(None, model=MODEL, synthetic="untrained")
    with pytest.raises(InputError, match="has no official ONNX decoder contract"):
        export(lm, "decoder", OnnxOptions(output=tmp_path, decoder_contract="official"))
    with pytest.raises(InputError, match="needs --decoder-contract official or efficientvit"):
        export(lm, "decoder", OnnxOptions(output=tmp_path, return_single_mask=True))

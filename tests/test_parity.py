"""The parity checker passes faithful artifacts and fails corrupted ones with distinct codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.errors import ExitCode
from edgesam_export.device.parity import compare_arrays, make_test_image, mask_metrics, prompt_cases

runner = CliRunner()


@pytest.fixture(scope="module")
def parity_json(default_artifacts: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parity") / "report.json"
    result = runner.invoke(app, ["parity", str(default_artifacts), "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_good_artifacts_pass(parity_json):
    assert parity_json["passed"] is True
    checks = {(r["artifact"], r["check"]) for r in parity_json["summary"]}
    assert ("edge_sam_encoder.onnx", "image_embeddings") in checks
    assert ("edge_sam_decoder.onnx", "decoder.masks") in checks
    assert ("edge_sam_decoder.onnx", "end_to_end.masks") in checks
    for row in parity_json["summary"]:
        assert row["max_abs"] <= row["tolerance"]
        assert row["cosine"] > 0.9999


def test_report_covers_the_promised_prompts(parity_json):
    cases = parity_json["inputs"]["prompt_cases"]
    assert any("box" in c for c in cases) and any("negative" in c for c in cases)
    assert "16 random points" in cases and "batch of 3 boxes" in cases
    dec = [c for c in parity_json["comparisons"] if c["check"] == "decoder.masks"]
    assert all(
        {"min_mask_iou", "top_mask_agreement", "rel", "cosine"} <= set(c["metrics"]) for c in dec
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unreadable_artifact_exits_5(default_artifacts: Path, tmp_path: Path):
    bad = _copy(default_artifacts, tmp_path / "bad")
    enc = bad / "edge_sam_encoder.onnx"
    enc.write_bytes(enc.read_bytes()[:4096])
    result = runner.invoke(app, ["parity", str(bad)])
    assert result.exit_code == ExitCode.ARTIFACT_UNREADABLE, result.output
    assert "edge_sam_encoder.onnx" in result.output


def test_perturbed_weights_exit_4(default_artifacts: Path, tmp_path: Path):
    bad = _copy(default_artifacts, tmp_path / "perturbed")
    path = bad / "edge_sam_decoder.onnx"
    model = onnx.load(str(path))
    # Nudge the largest weight tensor by 1% of its scale: readable, runs, but wrong.
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr += np.float32(0.01) * np.abs(arr).mean()
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["parity", str(bad), "--json", str(out)])
    assert result.exit_code == ExitCode.PARITY_FAILED, result.output
    report = json.loads(out.read_text())
    assert report["passed"] is False
    failed = {r["artifact"] for r in report["summary"] if not r["passed"]}
    assert failed == {"edge_sam_decoder.onnx"}


def test_missing_directory_is_bad_input(tmp_path: Path):
    result = runner.invoke(app, ["parity", str(tmp_path / "nope")])
    assert result.exit_code == ExitCode.BAD_INPUT


def test_wrong_checkpoint_is_refused(default_artifacts: Path, tmp_path: Path):
    """Artifacts from synthetic weights need no CKPT; a checkpoint they did not come from is
    refused before any comparison."""
    import torch

    from edgesam_export.host.models import synth_state_dict

    ckpt = tmp_path / "other.pth"
    torch.save(synth_state_dict("edge_sam", 5), ckpt)
    result = runner.invoke(app, ["parity", str(ckpt), str(default_artifacts)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "synthetic weights" in result.output


def test_compare_arrays_metrics():
    ref = np.linspace(-1, 1, 100, dtype=np.float32)
    m = compare_arrays(ref + 0.01, ref)
    assert m["max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert m["mean_abs"] == pytest.approx(0.01, rel=1e-3)
    assert m["rel"] == pytest.approx(0.01, rel=1e-3)
    assert 0.999 < m["cosine"] <= 1.0
    nan = ref.copy()
    nan[3] = np.nan
    assert compare_arrays(nan, ref)["max_abs"] == float("inf")
    assert compare_arrays(ref[:5], ref)["max_abs"] == float("inf")


def test_mask_metrics():
    ref = np.zeros((1, 2, 8, 8), np.float32) - 1
    ref[..., :4, :] = 1
    cand = ref.copy()
    cand[0, 1, 4, :] = 1  # 8 extra pixels on 32
    m = mask_metrics(cand, ref, np.array([[0.1, 0.9]]), np.array([[0.2, 0.8]]))
    assert m["min_mask_iou"] == pytest.approx(32 / 40)
    assert m["top_mask_agreement"] == 1.0


def test_prompt_cases_cover_sizes():
    cases = prompt_cases(1024, (768, 1024))
    ns = {c.point_coords.shape[1] for c in cases}
    assert 1 in ns and 16 in ns
    assert any(c.point_coords.shape[0] > 1 for c in cases)
    for c in cases:
        assert c.point_coords.dtype == np.float32 and c.point_labels.dtype == np.float32
        assert c.point_coords.shape[:2] == c.point_labels.shape


def test_test_image_is_structured():
    img = make_test_image()
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    assert len(np.unique(img.reshape(-1, 3)[:, 0])) > 100  # not flat

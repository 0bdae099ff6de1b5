"""EdgeTAM on CoreML: the six graphs as `.mlpackage` through the one export path, run by the
MIL executor (`device/runtime/mil.py`, the CoreML session off macOS), against the official
goldens with the same assertions and tolerances as the ONNX rows (tests/test_edgetam.py and
tests/test_edgetam_video.py; the fixture README's float32-vs-float64 table, never widened).

Image mode (`extended`: one module-scoped export of the two image graphs, ~2-3 min): the numpy
`Predictor` over the packages with torch, cv2 and PIL blocked, prompts a-e single and
multimask; the decoder package against our PyTorch decoder with B=2 and a mask prompt.
Video mode (`heavy`: all six graphs, 8 frames through the executor, ~10 min on 2 cores): the
tracker over CoreML sessions, both objects, every frame, and the memory intermediates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_edgetam import (
    FIXTURE,
    _manifest_state,
    _torch_preprocess,
    check_decoder_matches_torch_and_golden,
    check_device_report,
)
from test_edgetam_video import FIXTURE as VIDEO_FIXTURE
from test_edgetam_video import check_memory_intermediates, check_tracked_video

TESTS = Path(__file__).parent
GRAPHS_IMAGE = ("encoder", "decoder")


def _export(out: Path, graphs: tuple[str, ...] | None) -> Path:
    """`edgesam-export coreml --model edgetam [--encoder --decoder] --max-batch 2` on the
    goldens' weights (synthetic seed 0) through the pipeline (packages, reference outputs and
    manifest published together)."""
    from edgesam_export.host.config import CoreMLOptions, ModelOptions
    from edgesam_export.host.pipeline import export_artifacts

    chosen = {} if graphs is None else {"graphs": graphs}
    options = CoreMLOptions(output=out, max_batch=2, **chosen)
    export_artifacts(ModelOptions(model="edgetam", synthetic="untrained"), "coreml", options)
    return out


@pytest.fixture(scope="module")
def tam_coreml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("edgetam_coreml") / "export", GRAPHS_IMAGE)


@pytest.fixture(scope="module")
def tam_golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "golden_trim.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def tam_model():
    from edgesam_export.host.models.edgetam import build_edgetam, load_state_dict_checked

    model = build_edgetam()
    load_state_dict_checked(model, _manifest_state())
    return model


@pytest.fixture(scope="module")
def tam_features(tam_model, tam_golden) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tam_model.encode_image(_torch_preprocess(tam_golden["image"]))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(VIDEO_FIXTURE, allow_pickle=False) as g:
        return {k: g[k] for k in g.files}


def _blocked_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "torch_blocker"), str(TESTS.parent)]),
    }


@pytest.mark.extended
def test_coreml_image_packages_carry_the_registry_contract(tam_coreml: Path) -> None:
    """Names and order of every input and output from `spec.graph_io`; flexible axes where
    the contract has symbolic ones (RangeDims: enumerated shapes cannot express this decoder,
    docs/coreml.md); the SAM 2 metadata the predictor reads; the MIL executor runs them."""
    from edgesam_export.device.backends import open_session
    from edgesam_export.device.models import get_spec

    spec = get_spec("edgetam")
    manifest = json.loads((tam_coreml / "manifest.json").read_text())
    assert sorted(e["graph"] for e in manifest["artifacts"]) == sorted(GRAPHS_IMAGE)
    for graph in GRAPHS_IMAGE:
        session = open_session(tam_coreml / f"edgetam_{graph}.mlpackage")
        assert session.runtime_label.startswith("MIL executor") or sys.platform == "darwin"
        inputs, outputs = spec.graph_io(graph)
        assert [t.name for t in session.inputs] == [t.name for t in inputs]
        assert [t.name for t in session.outputs] == [t.name for t in outputs]
        assert session.metadata["model"] == "edgetam" and session.metadata["graph"] == graph
    dec = open_session(tam_coreml / "edgetam_decoder.mlpackage")
    assert dec.metadata["single_mask_stability"] == "[0.98, 0.05]"
    assert dec.metadata["point_shapes"] == "range"
    assert json.loads(dec.metadata["coreml.flexible_axes"]) == {
        "batch": "1..2",
        "num_points": "1..16",
    }
    coords = np.zeros((3, 2, 2), np.float32)  # B = 3 is outside the declared 1..2
    assert dec.accepts({"point_coords": coords}) is not None


@pytest.mark.extended
def test_coreml_image_packages_pass_the_one_judge(tam_coreml: Path) -> None:
    """`parity DIR` (what the export's verification runs) on the packages against the shipped
    reference outputs: every encoder output, the decoder alone and end to end, object scores,
    under the `coreml` rows for this layout (`device/tolerances.py`)."""
    from edgesam_export.host.pipeline import verify_artifacts

    report = verify_artifacts(None, tam_coreml, reference="outputs")
    rows = report.summary()
    print("coreml judge:", json.dumps(rows, default=str))
    assert report.passed, rows
    checks = {r["check"] for r in rows}
    assert {"decoder.masks", "decoder.object_scores"} <= checks, checks


@pytest.mark.extended
def test_coreml_decoder_matches_torch_and_golden(tam_coreml, tam_model, tam_golden, tam_features):
    """The decoder package vs our PyTorch decoder, B=2 (a box set with the padding point, and
    prompt e with its mask input), on the same features: the ONNX row's assertions."""
    from edgesam_export.device.backends import open_session

    dec = open_session(tam_coreml / "edgetam_decoder.mlpackage")
    check_decoder_matches_torch_and_golden(dec, tam_model, tam_golden, tam_features)


@pytest.mark.extended
def test_coreml_predictor_reproduces_goldens_without_torch(tam_coreml: Path) -> None:
    """`Predictor` over the packages (MIL executor) with torch, cv2 and PIL blocked: prompts
    a-e, multimask and single, with the ONNX row's tolerances."""
    proc = subprocess.run(
        [
            sys.executable,
            str(TESTS / "edgetam_device_check.py"),
            str(tam_coreml),
            str(FIXTURE / "golden_trim.npz"),
            ".mlpackage",
        ],
        capture_output=True,
        text=True,
        env=_blocked_env(),
        cwd=TESTS.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print("coreml image mode:", json.dumps(r))
    check_device_report(r)


# --------------------------------------------------------------------------- video (heavy)


@pytest.fixture(scope="module")
def video_coreml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgesam-export coreml --model edgetam --max-batch 2`: every registered graph."""
    return _export(tmp_path_factory.mktemp("edgetam_coreml_video") / "export", None)


@pytest.mark.heavy
def test_coreml_export_writes_every_graph_and_the_tracker_opens_it(video_coreml: Path) -> None:
    """The default CoreML export publishes the registry's six graphs, each with its contract;
    `VideoTracker.open(dir, backend="coreml")` runs the packages' sessions."""
    from edgesam_export.device.models import get_spec
    from edgesam_export.device.runtime.coreml import CoreMLSession
    from edgesam_export.video import VideoTracker

    spec = get_spec("edgetam")
    manifest = json.loads((video_coreml / "manifest.json").read_text())
    assert sorted(e["graph"] for e in manifest["artifacts"]) == sorted(spec.graphs)
    tracker = VideoTracker.open(video_coreml, backend="coreml")
    for graph, session in tracker.sessions.items():
        assert isinstance(session, CoreMLSession) and session.metadata["graph"] == graph
        inputs, outputs = spec.graph_io(graph)
        assert [t.name for t in session.inputs] == [t.name for t in inputs]
        assert [t.name for t in session.outputs] == [t.name for t in outputs]
    attention = tracker.sessions["memory_attention"]
    assert json.loads(attention.metadata["coreml.flexible_axes"]) == {
        "B": "1..2",
        "S": "1..7",
        "K": "1..16",
    }
    assert [t.dtype for t in attention.inputs if t.name == "memory_tpos"] == ["int32"]


@pytest.mark.heavy
def test_coreml_memory_graphs_match_golden_intermediates(video_coreml: Path, golden) -> None:
    """Memory encoder + perceiver and the memory-conditioned features of frame 1, both objects
    batched, on the packages: the ONNX row's checks and tolerances."""
    worst = check_memory_intermediates(video_coreml, ".mlpackage", golden)
    print("coreml memory intermediates:", json.dumps(worst))


@pytest.mark.heavy
def test_coreml_tracker_matches_golden_video_torch_blocked(video_coreml, golden, tmp_path):
    """Both objects, all 8 frames, one batched tracker over the CoreML sessions (MIL executor
    off macOS), torch/cv2/PIL import-blocked: the ONNX row's checks and tolerances."""
    worst = check_tracked_video(video_coreml, "coreml", golden, tmp_path)
    print("coreml tracker:", json.dumps(worst))

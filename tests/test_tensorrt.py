"""TensorRT target without TensorRT: profiles, trtexec lines, sidecar, CLI exit codes, the
runtime's refusals. Real builds run only where `tensorrt` imports and a GPU is present."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.errors import (
    ArtifactError,
    BackendUnavailableError,
    ExitCode,
    InputError,
)
from edgesam_export.device.runtime import artifact_suffixes, open_session
from edgesam_export.host.targets.tensorrt import (
    DEFAULT_DIMS,
    EnginePlan,
    dims_for,
    engine_path,
    profile_shapes,
    sidecar,
    sidecar_path,
    trtexec_command,
)

runner = CliRunner()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _decoder(default_artifacts: Path) -> tuple[Path, onnx.ModelProto]:
    path = default_artifacts / "edge_sam_decoder.onnx"
    return path, onnx.load(str(path))


def test_profiles_of_the_decoder(default_artifacts: Path):
    _, model = _decoder(default_artifacts)
    dims = dims_for(model, {"num_points": (1, 3, 8), "batch": None})
    assert dims == {"num_points": (1, 3, 8), "batch": DEFAULT_DIMS["batch"]}
    shapes = profile_shapes(model, dims)
    lo, hi = DEFAULT_DIMS["batch"][0], DEFAULT_DIMS["batch"][2]
    assert shapes == {
        "point_coords": ((lo, 1, 2), (1, 3, 2), (hi, 8, 2)),
        "point_labels": ((lo, 1), (1, 3), (hi, 8)),
    }
    with pytest.raises(InputError, match="num_points"):
        profile_shapes(model, {"batch": (1, 1, 1)})


def test_encoder_has_no_dynamic_axes(default_artifacts: Path):
    model = onnx.load(str(default_artifacts / "edge_sam_encoder.onnx"))
    assert dims_for(model, {"batch": (1, 2, 4)}) == {}
    assert profile_shapes(model, {}) == {}


def _plan(onnx_path: Path, tmp_path: Path, **kw) -> EnginePlan:
    return EnginePlan(
        onnx=onnx_path,
        engine=engine_path(onnx_path, tmp_path, kw.get("fp16", False)),
        graph="decoder",
        profiles={"point_coords": ((1, 1, 2), (1, 2, 2), (4, 16, 2))},
        onnx_metadata={"model": "edge_sam", "graph": "decoder"},
        **kw,
    )


def test_trtexec_line_fp16_with_pins(default_artifacts: Path, tmp_path: Path):
    path, _ = _decoder(default_artifacts)
    plan = _plan(
        path, tmp_path, fp16=True, fp32_layers=("/a/Pow", "/b/Add"), timing_cache=tmp_path / "tc"
    )
    args = trtexec_command(plan)
    assert args[0] == "trtexec" and f"--onnx={path}" in args
    assert f"--saveEngine={tmp_path / 'edge_sam_decoder_fp16.engine'}" in args
    assert "--minShapes=point_coords:1x1x2" in args
    assert "--optShapes=point_coords:1x2x2" in args
    assert "--maxShapes=point_coords:4x16x2" in args
    assert "--fp16" in args and "--precisionConstraints=obey" in args
    assert "--layerPrecisions=/a/Pow:fp32,/b/Add:fp32" in args
    assert "--layerOutputTypes=/a/Pow:fp32,/b/Add:fp32" in args
    assert f"--timingCacheFile={tmp_path / 'tc'}" in args
    assert "--memPoolSize=workspace:1024M" in args


def test_trtexec_line_fp32_has_no_precision_flags(default_artifacts: Path, tmp_path: Path):
    path, _ = _decoder(default_artifacts)
    args = trtexec_command(_plan(path, tmp_path, fp32_layers=("/x",)))
    assert not any(a.startswith(("--fp16", "--layerPrecisions", "--precision")) for a in args)


def test_sidecar_records_build_and_source(default_artifacts: Path, tmp_path: Path):
    path, _ = _decoder(default_artifacts)
    plan = _plan(path, tmp_path, fp16=True, fp32_layers=("/a/Pow",))
    side = sidecar(plan, "10.7.0", {"name": "Orin", "compute_capability": "8.7"}, [], [])
    from edgesam_export.device.artifacts import file_sha256

    assert side["source_onnx"] == {"file": path.name, "sha256": file_sha256(path)}
    assert side["precision"] == "fp16" and side["metadata"]["precision"] == "fp16"
    assert side["metadata"]["model"] == "edge_sam" and side["graph"] == "decoder"
    assert side["fp32_layers"] == ["/a/Pow"] and side["tensorrt_version"] == "10.7.0"
    assert side["gpu"]["compute_capability"] == "8.7"
    assert side["profiles"]["point_coords"] == {
        "min": [1, 1, 2],
        "opt": [1, 2, 2],
        "max": [4, 16, 2],
    }
    assert side["trtexec"] == trtexec_command(plan)
    json.dumps(side)  # serialisable as is
    assert sidecar_path(plan.engine).name == "edge_sam_decoder_fp16.engine.json"


def test_layer_names_map_back_to_pinned_nodes():
    from edgesam_export.host.targets.tensorrt import layer_owner

    nodes = {"/Add", "/Add_1", "/neck/Pow"}
    pinned = {"/Add", "/neck/Pow"}
    assert layer_owner("/Add", pinned, nodes) == "/Add"
    assert layer_owner("/Add_1", pinned, nodes) is None  # another node, not a part of /Add
    assert layer_owner("/Add_57", pinned, nodes) == "/Add"  # a further layer of /Add
    assert layer_owner("/neck/Pow_3", pinned, nodes) == "/neck/Pow"
    assert layer_owner("/neck/Powder", pinned, nodes) is None


def test_engine_suffix_is_registered():
    assert ".engine" in artifact_suffixes()


def test_engine_without_sidecar_is_unreadable(tmp_path: Path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match="sidecar"):
        open_session(engine)


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when tensorrt is missing")
def test_engine_session_names_the_install(tmp_path: Path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 16)
    sidecar_path(engine).write_text(json.dumps({"graph": "decoder"}))
    with pytest.raises(BackendUnavailableError, match="pip install 'tensorrt>=10'"):
        open_session(engine)


@pytest.mark.skipif(HAS_TRT, reason="checks the behaviour without tensorrt")
def test_trt_without_tensorrt_exits_6_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["trt", "--decoder", "-o", str(out)])
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE, result.output
    assert "pip install 'tensorrt>=10'" in result.output
    assert not out.exists()


def test_trt_print_trtexec_on_a_directory(bilinear_artifacts: Path, tmp_path: Path):
    report = tmp_path / "trt.json"
    result = runner.invoke(
        app,
        [
            "trt",
            str(bilinear_artifacts),
            "--print-trtexec",
            "--fp16",
            "--points",
            "1:4:16",
            "--json",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("trtexec ")]
    assert len(lines) == 3  # encoder, decoder, stability decoder
    for line in lines:
        args = shlex.split(line)
        assert "--fp16" in args
        if "decoder" in line:
            assert "--maxShapes=point_coords:64x16x2,point_labels:64x16" in args
    engines = json.loads(report.read_text())["engines"]
    assert {Path(e["engine"]).name for e in engines} == {
        "edge_sam_encoder_fp16.engine",
        "edge_sam_decoder_fp16.engine",
        "edge_sam_decoder_stability_fp16.engine",
    }
    assert all(e["readiness"]["passed"] for e in engines)
    assert not list(bilinear_artifacts.glob("*.engine"))


def test_trt_fp32_layers_names_must_exist(default_artifacts: Path):
    result = runner.invoke(
        app,
        ["trt", str(default_artifacts), "--print-trtexec", "--fp16", "--fp32-layers", "/nope"],
    )
    assert result.exit_code == ExitCode.BAD_INPUT and "/nope" in result.output


def test_trt_check_passes_ours_and_fails_int16(default_artifacts: Path, tmp_path: Path):
    from test_trt_check import official_int16_stability

    result = runner.invoke(app, ["trt-check", str(default_artifacts)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ready for the TensorRT 10.1 ONNX parser") == 2
    bad = tmp_path / "official_stability.onnx"
    onnx.save(official_int16_stability(), str(bad))
    result = runner.invoke(app, ["trt-check", str(bad), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == ExitCode.EXPORT_FAILED
    assert "NOT READY" in result.output and "INT16" in result.output
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["passed"] is False and payload["graphs"][0]["readiness"]["errors"] >= 2


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (no wheel reachable here)")
@pytest.mark.parametrize("model", ["edge_sam", "efficientvit_sam_l0", "mobile_sam"])
def test_real_engine_build_and_parity(
    default_artifacts: Path, family_artifacts, tmp_path: Path, model: str
):
    """Where TensorRT and a GPU exist: build each family's decoder engine, run it on the
    shapes its graph and metadata give (embeddings, mask tokens), and run parity on it."""
    import shutil

    from edgesam_export.device.contract import MaskTokens
    from edgesam_export.host.pipeline import verify_artifacts
    from edgesam_export.host.targets.tensorrt import build_engine, input_dims, require_tensorrt

    trt = require_tensorrt()
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # no GPU / driver
        pytest.skip(f"TensorRT cannot create a builder here: {exc}")
    del builder
    folder = default_artifacts if model == "edge_sam" else family_artifacts(model, sidecar=False)
    src = tmp_path / f"{model}_decoder.onnx"
    shutil.copy(folder / src.name, src)
    onnx_model = onnx.load(str(src))
    plan = EnginePlan(
        onnx=src,
        engine=tmp_path / f"{model}_decoder.engine",
        graph="decoder",
        profiles=profile_shapes(onnx_model, dims_for(onnx_model)),
        onnx_metadata={p.key: p.value for p in onnx_model.metadata_props},
    )
    build_engine(plan, trt)
    session = open_session(plan.engine)
    assert session.metadata["precision"] == "fp32"
    assert session.metadata["prompt_frame"] == plan.onnx_metadata["prompt_frame"]
    embed = input_dims(onnx_model)["image_embeddings"]
    tokens = MaskTokens.from_metadata(session.metadata)
    out = session.run(
        {
            "image_embeddings": np.zeros(embed, np.float32),
            "point_coords": np.zeros((2, 3, 2), np.float32),
            "point_labels": np.ones((2, 3), np.float32),
        }
    )
    assert out["masks"].shape == (2, tokens.count, 4 * embed[2], 4 * embed[3])
    src.unlink()  # parity over the engine alone
    report = verify_artifacts(None, tmp_path)
    assert report.passed, report.summary()


def test_trt_on_onnx_graphs_needs_no_torch(default_artifacts: Path):
    """On a device: readiness, profiles and trtexec lines from ONNX files, torch blocked."""
    import subprocess
    import sys

    from test_device_side import BLOCKER

    code = BLOCKER + (
        "from typer.testing import CliRunner\n"
        "from edgesam_export.cli.export import app\n"
        f"r = CliRunner().invoke(app, ['trt', {str(default_artifacts)!r}, '--print-trtexec'])\n"
        "print(r.exit_code, r.output.count('trtexec --onnx'), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-3:] == ["0", "2", "False"]

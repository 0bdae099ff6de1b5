"""CoreML target: conversion, package metadata, and parity of the SAVED packages on the numpy
MIL executor (golden fixture, PyTorch reference, precisions, tampering, mixed folders, CLI).

Conversions are slow, so each package is built once per session: a bicubic encoder and an IoU
decoder from the golden fixture's weights (fp32, enumerated shapes), an fp16 range-shaped
stability decoder and an int8 decoder (through the CLI) from calibrated synthetic weights.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN, model_for, read_golden
from typer.testing import CliRunner

pytest.importorskip("coremltools")

from edgesam_export.cli.export import app
from edgesam_export.device.backends import open_session
from edgesam_export.device.errors import InputError
from edgesam_export.device.fp16 import TensorRange
from edgesam_export.device.runtime.coreml import MIL_EXECUTOR, CoreMLSession
from edgesam_export.device.runtime.mil import read_spec
from edgesam_export.host.config import CoreMLOptions
from edgesam_export.host.models import LoadedModel, load_model
from edgesam_export.host.pipeline import verify_artifacts
from edgesam_export.host.reference import reference_sessions
from edgesam_export.host.targets.coreml import deployment_target, export

runner = CliRunner()


@functools.cache
def calibrated() -> LoadedModel:
    return load_model(None, synthetic="calibrated")


@pytest.fixture(scope="session")
def golden0():
    return read_golden(GOLDEN)


@pytest.fixture(scope="session")
def fp32_decoder(tmp_path_factory, golden0) -> Path:
    """IoU decoder (fp32, enumerated 1..16 points) from the golden weights, in its folder."""
    out = tmp_path_factory.mktemp("coreml_fp32")
    export(model_for(golden0.seed, "bicubic"), "decoder", CoreMLOptions(output=out))
    return out / "edge_sam_decoder.mlpackage"


@pytest.fixture(scope="session")
def fp32_pair(fp32_decoder, golden0) -> Path:
    """The decoder's folder plus the bicubic encoder from the same weights."""
    out = fp32_decoder.parent
    export(model_for(golden0.seed, "bicubic"), "encoder", CoreMLOptions(output=out))
    return out


@pytest.fixture(scope="session")
def fp16_range_stability(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coreml_fp16")
    opts = CoreMLOptions(
        output=out, precision="fp16", point_shapes="range", use_stability_score=True
    )
    return export(calibrated(), "decoder", opts).path


def _mil(path: Path) -> CoreMLSession:
    session = open_session(path, runtime="mil")
    assert isinstance(session, CoreMLSession)
    return session


def test_packages_carry_descriptions_and_metadata(fp32_pair) -> None:
    for graph in ("encoder", "decoder"):
        spec = read_spec(fp32_pair / f"edge_sam_{graph}.mlpackage")
        meta = spec.description.metadata
        assert meta.author == "edgesam-export"
        assert "synthetic" in meta.license.lower()
        assert meta.versionString and graph in meta.shortDescription
        for feature in [*spec.description.input, *spec.description.output]:
            assert len(feature.shortDescription) > 20, feature.name
        user = dict(meta.userDefined)
        for key in (
            "family",
            "img_size",
            "pixel_mean",
            "pixel_std",
            "num_mask_tokens",
            "use_stability_score",
            "upsample_mode",
            "precision",
            "checkpoint_sha256",
            "weights",
            "edgesam_export.version",
            "coreml.coremltools_version",
            "coreml.patches",
        ):
            assert key in user, key
        assert user["graph"] == graph and user["precision"] == "fp32"
        assert user["upsample_mode"] == "bicubic" and user["weights"] == "synthetic-untrained"
    dec = dict(read_spec(fp32_pair / "edge_sam_decoder.mlpackage").description.metadata.userDefined)
    assert dec["point_count_range"] == "1..16" and dec["point_shapes"] == "enumerated"
    assert dec["coreml.minimum_deployment_target"] == "iOS18"


def test_bicubic_encoder_matches_golden_and_fp16_report_flags_random_weights(
    fp32_pair, golden0
) -> None:
    """The trained (bicubic) neck survives CoreML conversion exactly; on the fixture's random
    weights (activations ~4e7) the fp16 safety report lists overflowing ops."""
    from edgesam_export.device.fp16 import op_summary

    enc = _mil(fp32_pair / "edge_sam_encoder.mlpackage")
    assert enc.runtime_label == MIL_EXECUTOR
    record: dict[str, TensorRange] = {}
    emb = enc.run_recorded({"image": golden0["input_tensor"]}, record)["image_embeddings"]
    assert np.abs(emb - golden0["embeddings_bicubic"]).max() < 5e-3
    assert np.abs(emb - golden0["embeddings_bilinear"]).max() > 0.1
    summary = op_summary(record)
    assert not summary["safe"] and summary["overflow"]
    assert summary["overflow"][0]["max_abs"] > 65504
    assert {row["op_type"] for row in summary["overflow"]} <= {
        "conv",
        "add",
        "mul",
        "gelu",
        "reduce_mean",
        "relu",
        "sub",
        "pow",
        "batch_norm",
        "matmul",
        "sigmoid",
        "sqrt",
        "real_div",
        "transpose",  # the neck's channels-last LayerNorm moves the overflowing map
    }


def test_decoder_matches_golden(fp32_decoder, golden0) -> None:
    """The official decoder's outputs (on the fixture's bilinear embeddings), same tolerances
    as the ONNX golden test."""
    dec = _mil(fp32_decoder)
    for name in golden0.dec_sets():
        out = dec.run(
            {
                "image_embeddings": golden0["embeddings_bilinear"],
                "point_coords": golden0[f"dec_{name}_point_coords"],
                "point_labels": golden0[f"dec_{name}_point_labels"],
            }
        )
        assert np.abs(out["masks"] - golden0[f"dec_{name}_masks"]).max() < 5e-5, name
        assert np.abs(out["scores"] - golden0[f"dec_{name}_scores"]).max() < 2e-5, name


def test_every_point_count_1_to_16_runs_on_the_executor(fp32_decoder, golden0) -> None:
    dec = _mil(fp32_decoder)
    _, refs = reference_sessions(model_for(golden0.seed, "bicubic"))
    rng = np.random.default_rng(3)
    emb = golden0["embeddings_bicubic"]
    for n in range(1, 17):
        feeds = {
            "image_embeddings": emb,
            "point_coords": (rng.random((1, n, 2)) * 1024).astype(np.float32),
            "point_labels": rng.integers(-1, 4, (1, n)).astype(np.float32),
        }
        out, ref = dec.run(feeds), refs[False].run(feeds)
        assert np.abs(out["masks"] - ref["masks"]).max() < 1e-4, n
        assert np.abs(out["scores"] - ref["scores"]).max() < 5e-5, n
    too_many = {**feeds, "point_coords": np.zeros((1, 17, 2), np.float32)}
    too_many["point_labels"] = np.ones((1, 17), np.float32)
    with pytest.raises(InputError, match="enumerated shapes"):
        dec.run(too_many)
    assert "B in 1..1" in (dec.accepts({"point_coords": np.zeros((2, 1, 2), np.float32)}) or "")


def test_fp32_parity_end_to_end_on_the_saved_packages(fp32_pair) -> None:
    report = verify_artifacts(None, fp32_pair)
    assert report.passed, report.summary()
    checks = {row["check"] for row in report.summary()}
    assert {"image_embeddings", "decoder.masks", "end_to_end.masks"} <= checks
    assert set(report.inputs["runtimes"].values()) == {MIL_EXECUTOR}
    assert "bicubic neck" in report.inputs["reference"]
    assert "synthetic-untrained" in report.inputs["reference"]
    # the B=3 prompt set is outside the enumerated shapes: listed as skipped, not judged
    assert [s["case"] for s in report.inputs["skipped"]] == ["batch of 3 boxes"]


@pytest.mark.extended
def test_fp16_range_stability_decoder_passes_its_tolerances(fp16_range_stability) -> None:
    dec = _mil(fp16_range_stability)
    assert dec.metadata["precision"] == "fp16" and dec.metadata["point_shapes"] == "range"
    assert dec.metadata["use_stability_score"] == "true"
    assert dec.inputs[1].shape == (1, "num_points", 2)
    report = verify_artifacts(None, fp16_range_stability.parent)
    assert report.passed, report.summary()
    rows = report.summary()
    assert {r["precision"] for r in rows} == {"fp16"}
    assert {r["check"] for r in rows} == {"decoder.stability_scores", "decoder.masks"}
    # fp16 really rounds: not bit-equal to the fp32 reference
    assert max(r["max_abs"] for r in rows) > 1e-5


@pytest.mark.extended
def test_int8_decoder_through_the_cli(tmp_path) -> None:
    out = tmp_path / "int8"
    result = runner.invoke(
        app,
        ["coreml", "--decoder", "--quantize", "int8", "-o", str(out), "--json", "-"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    (art,) = payload["artifacts"]
    assert art["metadata"]["precision"] == "int8" and art["metadata"]["weights"] == (
        "synthetic-calibrated"
    )
    assert payload["parity"]["passed"]
    assert {r["precision"] for r in payload["parity"]["summary"]} == {"int8"}
    weights = Path(art["path"]) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    assert weights.stat().st_size < 8e6  # int8 weights: about a quarter of fp32's 20 MB


def test_impossible_option_combinations_fail_clearly() -> None:
    with pytest.raises(InputError, match="iOS18"):
        deployment_target(CoreMLOptions(minimum_deployment_target="iOS17"))
    assert deployment_target(CoreMLOptions(point_shapes="range")) == "iOS16"
    assert deployment_target(CoreMLOptions(minimum_deployment_target="macos15")) == "macOS15"
    result = runner.invoke(
        app, ["coreml", "--decoder", "--minimum-deployment-target", "iOS16", "-o", "unused"]
    )
    assert result.exit_code == 3 and "--point-shapes range" in result.output
    result = runner.invoke(app, ["coreml", "--minimum-deployment-target", "iOS99"])
    assert result.exit_code == 3 and "iOS18" in result.output


@pytest.mark.extended
def test_tampered_package_fails_and_mixed_folders_are_checked_per_source(
    tmp_path, fp32_decoder
) -> None:
    """A package whose weights changed after export fails parity; `onnx` into the same folder
    verifies only its own file; the folder (CoreML from untrained weights, ONNX from calibrated
    ones) is then judged per backend and per recorded weights, never across them."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    package = folder / "edge_sam_decoder.mlpackage"
    shutil.copytree(fp32_decoder, package)
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    # inside the largest blob (between two 0xDEADBEEF blob headers), flip the sign of 4096 floats
    headers = [i for i in range(0, len(data) - 3, 64) if data[i : i + 4] == b"\xef\xbe\xad\xde"]
    start, end = max(
        zip(headers, [*headers[1:], len(data)], strict=True), key=lambda se: se[1] - se[0]
    )
    first = start + 128  # past the blob's 64-byte header and the data's 64-byte alignment
    assert end - first > 4 * 4096
    for i in range(first + 3, first + 3 + 4 * 4096, 4):
        data[i] ^= 0x80
    weights.write_bytes(bytes(data))

    result = runner.invoke(app, ["onnx", "--decoder", "-o", str(folder), "--json", "-"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {r["artifact"] for r in payload["parity"]["summary"]} == {"edge_sam_decoder.onnx"}

    report = verify_artifacts(None, folder)
    assert not report.errors
    verdicts = {}
    for row in report.summary():
        verdicts.setdefault(row["artifact"], []).append(row["passed"])
    assert all(verdicts["edge_sam_decoder.onnx"])
    assert not all(verdicts["edge_sam_decoder.mlpackage"])
    assert len(report.inputs["references"]) == 2
    assert not any(row["check"].startswith("end_to_end") for row in report.summary())


@pytest.mark.extended
def test_bench_coreml_runs_the_executor_and_says_so(fp32_pair) -> None:
    from edgesam_export.cli.bench import app as bench_app

    args = ["--backend", "coreml", "--artifacts", str(fp32_pair), "--points", "1"]
    args += ["--box-batch", "1", "--iters", "1", "--warmup", "0", "--json", "-"]
    result = runner.invoke(bench_app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {t["backend"] for t in payload["timings"]} == {f"coreml ({MIL_EXECUTOR})"}
    assert [t["name"] for t in payload["timings"]][:2] == ["encoder", "decoder N=1"]


def test_gelu_approximate_is_judged_against_a_tanh_gelu_reference(tmp_path) -> None:
    """`--gelu-approximate` (EdgeSAM's option, on onnx as on coreml) changes the maths: parity
    compares it with the tanh-GELU PyTorch graph, and the exact reference would reject it."""
    from edgesam_export.device.judge import SessionReference, judge
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.targets.onnx import export as onnx_export

    art = onnx_export(calibrated(), "decoder", OnnxOptions(output=tmp_path, gelu_approximate=True))
    assert art.metadata["gelu_approximate"] == "true"
    report = verify_artifacts(None, tmp_path)
    assert report.passed, report.summary()
    assert "tanh GELU" in report.inputs["reference"]
    enc, decs = reference_sessions(calibrated())  # the exact-GELU model
    exact = judge(SessionReference(enc, decs), [], [(art.path.name, open_session(art.path))])
    assert not exact.passed


def _macos(monkeypatch: pytest.MonkeyPatch, load_error: Exception | None) -> list[str]:
    """Pretend to be macOS; coremltools' MLModel raises `load_error` (or loads a stand-in)."""
    import sys

    import coremltools as ct

    loaded: list[str] = []

    def fake_mlmodel(path: str, compute_units: object = None) -> object:
        if load_error is not None:
            raise load_error
        loaded.append(path)
        return object()

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ct.models, "MLModel", fake_mlmodel)
    return loaded


def test_on_macos_a_package_coreml_cannot_load_is_an_error(fp32_decoder, monkeypatch) -> None:
    """Fault 12: `runtime="auto"` fell back to the MIL executor on any CoreML load error, so a
    macOS run "verified" a package CoreML never ran. On macOS CoreML must run it."""
    from edgesam_export.device.errors import ArtifactError

    _macos(monkeypatch, RuntimeError("Error compiling model: unsupported op"))
    with pytest.raises(ArtifactError, match=r"CoreML cannot load .*Error compiling model"):
        open_session(fp32_decoder)
    loaded = _macos(monkeypatch, None)
    session = open_session(fp32_decoder)
    assert loaded == [str(fp32_decoder)] and session.runtime_label != MIL_EXECUTOR


def test_off_macos_auto_is_the_executor_and_coreml_is_unavailable(fp32_decoder) -> None:
    from edgesam_export.device.errors import BackendUnavailableError

    assert open_session(fp32_decoder).runtime_label == MIL_EXECUTOR
    with pytest.raises(BackendUnavailableError, match="only runs on macOS"):
        open_session(fp32_decoder, runtime="coreml")


def test_coreml_session_takes_no_thread_count(fp32_decoder) -> None:
    """`CoreMLSession(threads=)` was accepted and dropped: an option that does nothing."""
    with pytest.raises(TypeError, match="threads"):
        open_session(fp32_decoder, threads=2)


def test_outputs_parity_and_bench_record_the_runtime(
    fp32_pair, default_artifacts, tmp_path
) -> None:
    """Every parity result (against PyTorch or the shipped reference outputs) and every bench
    column says which runtime ran, and the macOS CI check reads it: it fails on a report whose
    packages ran on the MIL executor, or that ran no package."""
    import subprocess
    import sys

    from edgesam_export.device.backends import open_artifact_backend
    from edgesam_export.device.judge import judge
    from edgesam_export.device.reference_outputs import read_reference_outputs
    from edgesam_export.device.runtime.coreml import COREML_RUNTIME

    outputs = read_reference_outputs(default_artifacts / "edge_sam_reference.npz")
    enc = open_session(default_artifacts / "edge_sam_encoder.onnx")
    report = judge(outputs, [("edge_sam_encoder.onnx", enc)], [])
    assert report.passed and report.inputs["runtimes"] == {"edge_sam_encoder.onnx": "onnx"}
    report.inputs["runtimes"]["dec.mlpackage"] = MIL_EXECUTOR  # as the judge records it
    assert open_artifact_backend("coreml", fp32_pair).to_json()["runtime"] == (MIL_EXECUTOR)
    script = Path(__file__).parents[1] / ".github" / "scripts" / "require_coreml_runtime.py"

    def ci_check(payload: dict) -> subprocess.CompletedProcess[str]:
        (tmp_path / "parity.json").write_text(json.dumps(payload))
        cmd = [sys.executable, str(script), str(tmp_path / "parity.json")]
        return subprocess.run(cmd, capture_output=True, text=True)

    run = ci_check(report.to_json())
    assert run.returncode == 1 and "dec.mlpackage ran on" in run.stderr
    run = ci_check({"inputs": {"runtimes": {"a.mlpackage": COREML_RUNTIME, "b.onnx": "onnx"}}})
    assert run.returncode == 0, run.stderr
    run = ci_check({"inputs": {"runtimes": {"b.onnx": "onnx"}}})
    assert run.returncode == 1 and "no CoreML package" in run.stderr

"""The backend registry is the only table of backends: every reader sees the same entries."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field
from typer.testing import CliRunner

from edgesam_export.device import backends
from edgesam_export.device.backends import (
    Backend,
    ToleranceRow,
    availability,
    backend_for_path,
    get_backend,
    tolerance_row,
    tolerances_for,
)
from edgesam_export.device.errors import BackendUnavailableError, ExitCode, InputError
from edgesam_export.device.runtime.base import Session
from edgesam_export.host.config import ExportOptions


class FakeSession(Session):
    """Stands in for a runtime: records what it was opened with."""

    opened: ClassVar[list[tuple[Path, dict[str, object]]]] = []

    def __init__(self, path: Path, **kwargs: object) -> None:
        FakeSession.opened.append((path, kwargs))
        super().__init__("encoder", [], [], {"graph": "encoder"})

    def _run(self, feeds):  # type: ignore[no-untyped-def]
        return {}


def _fake_export(loaded, graph, options):  # type: ignore[no-untyped-def]
    raise AssertionError("not called")


def _fake_target():  # type: ignore[no-untyped-def]
    from edgesam_export.host.targets import Target

    return Target(name="fakert", export=_fake_export)


FAKE_TARGET = None  # set by the fixture: the registry imports "module:attr" strings


@pytest.fixture
def fake() -> Iterator[Backend]:
    global FAKE_TARGET
    FAKE_TARGET = _fake_target()
    entry = backends.register(
        Backend(
            name="fakert",
            aliases=("frt",),
            suffixes=(".fake",),
            exporter=f"{__name__}:FAKE_TARGET",
            session=f"{__name__}:FakeSession",
            requires="edgesam_no_such_module",
            install_hint="pip install fakert",
            bench_label="Fake RT",
        )
    )
    try:
        yield entry
    finally:
        backends.unregister("fakert")


def test_aliases_resolve_to_one_entry() -> None:
    assert get_backend("trt") is get_backend("tensorrt")
    assert get_backend("trt").name == "tensorrt"
    assert backend_for_path("x_encoder.engine") is get_backend("tensorrt")
    assert backend_for_path(Path("a/x_decoder.onnx")).name == "onnx"
    assert backend_for_path("x_decoder.mlpackage").name == "coreml"
    assert {"torch", "onnx", "coreml", "tensorrt"} <= set(backends.backend_names())
    assert "trt" in backends.backend_names(aliases=True)


def test_unknown_names_list_the_allowed_ones_in_one_line() -> None:
    with pytest.raises(InputError) as info:
        get_backend("tflite")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == ExitCode.BAD_INPUT
    for name in ("onnx", "coreml", "tensorrt", "trt", "torch"):
        assert name in message
    with pytest.raises(InputError, match=r"no runtime for '\.tflite'.*\.engine"):
        backend_for_path("m_encoder.tflite")


def test_runtime_dispatch_reads_the_registry(fake: Backend, tmp_path: Path) -> None:
    FakeSession.opened.clear()
    session = backends.open_session(tmp_path / "m_encoder.fake", threads=2)
    assert isinstance(session, FakeSession)
    assert FakeSession.opened == [(tmp_path / "m_encoder.fake", {"threads": 2})]
    assert ".fake" in backends.artifact_suffixes()


def test_a_registered_backend_is_a_host_target_and_a_bench_choice(fake: Backend) -> None:
    from edgesam_export.cli.bench import _wanted
    from edgesam_export.host.targets import get_target

    assert get_target("frt") is FAKE_TARGET
    assert _wanted("FRT") == ["fakert"]
    assert "fakert" in _wanted("all")
    with pytest.raises(InputError, match=r"allowed: .*fakert, frt.*all"):
        _wanted("nope")


def test_unknown_bench_backend_exits_3_in_one_line() -> None:
    from edgesam_export.cli.bench import app

    result = CliRunner().invoke(app, ["--backend", "tflite"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "tensorrt, trt" in result.stderr and "pydantic" not in result.stderr


def test_availability_names_the_module_and_the_install(
    fake: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = availability("frt")
    assert "edgesam_no_such_module" in reason and "pip install fakert" in reason
    with pytest.raises(BackendUnavailableError, match="pip install fakert"):
        backends.require("fakert")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable, even where installed
    assert "edgesam-export[tensorrt]" in availability("trt")
    assert availability("onnx") == ""


def test_tolerance_rows_come_from_the_backend_then_the_precision(fake: Backend) -> None:
    fp32, iou32 = tolerances_for("onnx", "fp32")
    fp16, iou16 = tolerances_for("onnx", "fp16")
    assert fp16["image_embeddings"] > fp32["image_embeddings"] and iou16 < iou32 == 0.99
    assert tolerances_for("trt", "fp16") == tolerances_for("tensorrt", "fp16") == (fp16, iou16)
    # a backend without its own rows is judged by the precision's rows
    generic = backends.PRECISION_ROWS["fp16"]
    assert tolerances_for("fakert", "fp16") == (dict(generic.limits), generic.min_mask_iou)
    assert tolerances_for("fakert", "fp16") != (fp16, iou16)
    assert tolerances_for("fakert", "fp16") != tolerances_for("torch", "fp16")  # its own row
    with pytest.raises(InputError, match="no parity tolerances for precision 'int4'"):
        tolerances_for("onnx", "int4")
    with pytest.raises(InputError, match="unknown backend"):
        tolerances_for("tflite", "fp32")


def test_every_row_is_measured_or_labelled_an_estimate() -> None:
    from edgesam_export.device.tolerances import CHECKS, GroupRows

    found = [r for b in backends.all_backends() for r in b.tolerances.values()]
    found += list(backends.PRECISION_ROWS.values())
    rows = [g for r in found for g in (r.rows.values() if isinstance(r, GroupRows) else [r])]
    for row in rows:
        assert bool(row.measured) != row.estimate
        assert set(row.limits) <= set(CHECKS)
    assert backends.PRECISION_ROWS["bf16"].estimate  # the fallback: no backend measured it
    assert "H200" in tolerance_row("torch", "bf16").measured
    assert "0.9926" in tolerance_row("tensorrt", "fp16").measured
    with pytest.raises(ValueError, match="measured"):
        ToleranceRow({"image_embeddings": 1.0}, 0.9)


def test_names_and_suffixes_are_registered_once(fake: Backend) -> None:
    with pytest.raises(ValueError, match="already registered: trt"):
        backends.register(Backend(name="trt2", aliases=("trt",)))
    with pytest.raises(ValueError, match="suffix already claimed"):
        backends.register(Backend(name="onnx2", suffixes=(".onnx",)))


class FakeOptions(ExportOptions):
    """A fake backend's recipe options."""

    speed: int = Field(1, ge=1)


def test_a_registered_backend_is_a_recipe_kind(fake: Backend) -> None:
    from edgesam_export.host.recipes import parse_recipe

    text = "name: r\ntargets: [{name: t, kind: frt, options: {speed: 3}}]\n"
    with pytest.raises(InputError, match="unknown target kind 'frt'"):
        parse_recipe(text)  # the fixture's entry has no recipe options
    backends.unregister("fakert")
    backends.register(replace(fake, recipe_options=f"{__name__}:FakeOptions"))
    (target,) = parse_recipe(text).targets
    assert target.kind == "fakert" and isinstance(target.options, FakeOptions)
    assert target.options.speed == 3
    with pytest.raises(InputError, match=r"targets\[0\]\.options\.speed: .*greater than"):
        parse_recipe(text.replace("speed: 3", "speed: 0"), "r.yaml")


def test_tensorrt_is_a_recipe_kind_with_the_trt_options() -> None:
    from edgesam_export.host.config import TensorRTOptions
    from edgesam_export.host.recipes import parse_recipe

    text = (
        "name: r\ntargets:\n  - name: engines\n    kind: trt\n"
        "    options: {precision: fp16, workspace_mb: 512, points: '1:2:8', batch: '1:1:4'}\n"
    )
    (target,) = parse_recipe(text).targets
    assert target.kind == "tensorrt"  # the alias is recorded under the backend's name
    assert isinstance(target.options, TensorRTOptions)
    assert (target.options.precision, target.options.workspace_mb) == ("fp16", 512)
    assert "tensorrt" in target.packages()
    with pytest.raises(InputError, match=r"options\.points: points must be MIN:OPT:MAX"):
        parse_recipe(text.replace("'1:2:8'", "'1:x'"), "r.yaml")


def test_tensorrt_target_without_tensorrt_is_recorded_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never as passed, and before any model is loaded (the registry's availability check)."""
    from edgesam_export.device import manifest as mf
    from edgesam_export.host import build as B

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable, even where installed
    monkeypatch.setattr(B, "_load", lambda *_: pytest.fail("loaded a model for nothing"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: eng\ntargets: [{name: engines, kind: trt}]\n")
    result = B.build([recipe], tmp_path / "out")
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE
    manifest = mf.read(tmp_path / "out" / "eng")
    (target,) = manifest["targets"]
    assert (target["kind"], target["status"]) == ("tensorrt", "unavailable")
    assert "edgesam-export[tensorrt]" in target["error"] and target["artifacts"] == []
    assert manifest["status"] != "passed" and manifest["artifacts"] == []


def test_tensorrt_exporter_comes_from_the_registry() -> None:
    from edgesam_export.host.targets import get_target

    assert get_target("trt") is get_target("tensorrt")
    assert get_target("trt").name == "tensorrt"
    with pytest.raises(InputError, match="exports nothing"):
        get_target("torch")


def test_tensorrt_export_needs_tensorrt_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgesam_export.host.config import TensorRTOptions
    from edgesam_export.host.targets import get_target

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "out"
    with pytest.raises(BackendUnavailableError, match="pip install"):
        get_target("trt").export(None, "decoder", TensorRTOptions(output=out))  # type: ignore[arg-type]
    assert not out.exists()


@pytest.mark.extended
def test_tensorrt_export_builds_the_engine_from_a_ready_onnx_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything but TensorRT itself: the ONNX source, readiness, the profile from the options,
    the plan, and the artifact (engine + sidecar, precision recorded). Engines are built for real
    in tests/test_tensorrt.py where TensorRT runs."""
    from conftest import model_for

    from edgesam_export.host.config import TensorRTOptions
    from edgesam_export.host.targets import tensorrt as T

    plans: list[T.EnginePlan] = []

    def fake_build(plan: T.EnginePlan, trt: object) -> Path:
        assert plan.onnx.is_file()  # the source exists while the engine is built
        plans.append(plan)
        plan.engine.write_bytes(b"engine")
        T.sidecar_path(plan.engine).write_text("{}")
        return plan.engine

    monkeypatch.setattr(T, "require_tensorrt", lambda: object())
    monkeypatch.setattr(T, "build_engine", fake_build)
    options = TensorRTOptions(output=tmp_path, precision="fp16", points="1:3:9", workspace_mb=256)
    artifact = T.TARGET.export(model_for(0, "bicubic"), "decoder", options)
    (plan,) = plans
    assert artifact.path == tmp_path / "edge_sam_decoder_fp16.engine" == plan.engine
    assert artifact.backend == "tensorrt" and artifact.graph == "decoder"
    assert artifact.metadata["precision"] == "fp16" and plan.fp16 and plan.workspace_mb == 256
    assert artifact.data_files == [T.sidecar_path(plan.engine)]
    assert plan.profiles["point_coords"] == ((1, 1, 2), (1, 3, 2), (64, 9, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "edge_sam_decoder_fp16.engine",
        "edge_sam_decoder_fp16.engine.json",
    ]  # the ONNX source stayed in its temporary folder
    assert not plan.onnx.exists()


def test_opened_sessions_and_bench_columns_carry_the_registry_names(fake: Backend) -> None:
    from edgesam_export.device.backends import OpenedBackend

    session = backends.open_session("m_encoder.fake")
    assert session.backend == "fakert"  # the registry's name, whatever the class says
    assert OpenedBackend("fakert").to_json()["label"] == "Fake RT"
    assert OpenedBackend("coreml (mil)").label == "Core ML"
    assert OpenedBackend("torch").label == "PyTorch" and OpenedBackend("torch-opt").label == ""


def test_artifact_names_take_the_registry_suffix(fake: Backend, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from edgesam_export.host.targets import artifact_path

    loaded = SimpleNamespace(source="w/edge_sam_3x.pth", synthetic=False)
    options = ExportOptions(output=tmp_path, use_stability_score=True)
    path = artifact_path(loaded, "decoder", options, "frt")  # type: ignore[arg-type]
    assert path == tmp_path / "edge_sam_3x_decoder_stability.fake"
    assert (
        artifact_path(loaded, "encoder", options, "coreml").name == "edge_sam_3x_encoder.mlpackage"
    )  # type: ignore[arg-type]


def test_export_of_a_backend_that_cannot_run_fails_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgesam_export.host.models as models
    from edgesam_export.host.config import CoreMLOptions, ModelOptions
    from edgesam_export.host.pipeline import export_artifacts

    monkeypatch.setitem(sys.modules, "coremltools", None)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded for nothing"))
    with pytest.raises(BackendUnavailableError, match=r"edgesam-export\[coreml\]"):
        export_artifacts(ModelOptions(), "coreml", CoreMLOptions(output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_onnxruntime_names_the_device_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device running ONNX artifacts needs only onnxruntime; the session said
    `edgesam-export[onnx]`, the export extra, which pulls torch."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=r"'edgesam-export\[onnxruntime\]'"):
        backends.open_session(tmp_path / "m_encoder.onnx")


def test_static_int8_without_onnxruntime_quantization_names_the_export_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--quantize int8` missing onnxruntime.quantization says it through the registry's one
    hint (exit 6, the onnx export extra), not a pip line of its own."""
    import onnxruntime

    from edgesam_export.host.quantize.static import StaticQuantizer

    # not importable, whether or not an earlier test imported it (then it is an attribute)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    monkeypatch.delattr(onnxruntime, "quantization", raising=False)
    with pytest.raises(BackendUnavailableError) as info:
        StaticQuantizer(None, [])
    assert str(info.value) == backends.unavailable_reason(
        "onnx", "onnxruntime.quantization", export=True
    )
    assert "onnxruntime.quantization does not import" in str(info.value)
    assert "pip install 'edgesam-export[onnx]'" in str(info.value)
    assert info.value.exit_code == ExitCode.BACKEND_UNAVAILABLE

"""TensorRT target without TensorRT: profiles, trtexec lines, sidecar, CLI exit codes, the
runtime's refusals, and builds and runs through a stand-in `tensorrt` module of each API
flavour (`fake_tensorrt`: TensorRT 10, 11 and 8.6) that records how the engine was built.
Real builds run only where `tensorrt` imports and a GPU is present."""

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
from edgesam_export.device.backends import artifact_suffixes, open_session
from edgesam_export.device.errors import (
    ArtifactError,
    BackendUnavailableError,
    ExitCode,
    InputError,
)
from edgesam_export.host.targets.tensorrt import (
    DEFAULT_DIMS,
    STRONG,
    WEAK,
    EnginePlan,
    build_engine,
    dims_for,
    engine_path,
    fp16_graph_path,
    profile_shapes,
    sidecar,
    sidecar_path,
    trtexec_command,
    write_fp16_graph,
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
    fp16 = kw.get("fp16", False)
    if fp16:  # the fp16 graph a strongly typed build parses
        kw["fp16_onnx"], kw["fp32_layers"] = write_fp16_graph(
            onnx_path, kw.get("fp32_layers", ()), fp16_graph_path(onnx_path, tmp_path)
        )
    return EnginePlan(
        onnx=onnx_path,
        engine=engine_path(onnx_path, tmp_path, fp16),
        graph="decoder",
        profiles={"point_coords": ((1, 1, 2), (1, 2, 2), (4, 16, 2))},
        onnx_metadata={"model": "edge_sam", "graph": "decoder"},
        **kw,
    )


def _pinnable(model: onnx.ModelProto) -> tuple[str, str]:
    """Two node names of the decoder that the fp16 graph can keep in fp32."""
    names = [n.name for n in model.graph.node if n.op_type in ("Pow", "Add", "MatMul")]
    return names[0], names[1]


def test_trtexec_line_is_strongly_typed_from_the_fp16_graph(
    default_artifacts: Path, tmp_path: Path
):
    """Fault 11: the line used --fp16, --layerPrecisions and --precisionConstraints, which
    TensorRT 10 deprecates and 11 removes; the fp16 graph now carries the types and pins."""
    path, model = _decoder(default_artifacts)
    pins = _pinnable(model)
    plan = _plan(path, tmp_path, fp16=True, fp32_layers=pins, timing_cache=tmp_path / "tc")
    args = trtexec_command(plan)
    fp16_graph = tmp_path / "edge_sam_decoder_fp16.onnx"
    assert args[:3] == ["trtexec", f"--onnx={fp16_graph}", "--stronglyTyped"]
    assert f"--saveEngine={tmp_path / 'edge_sam_decoder_fp16.engine'}" in args
    assert "--minShapes=point_coords:1x1x2" in args
    assert "--optShapes=point_coords:1x2x2" in args
    assert "--maxShapes=point_coords:4x16x2" in args
    assert not any(a.startswith(("--fp16", "--layer", "--precision")) for a in args)
    assert f"--timingCacheFile={tmp_path / 'tc'}" in args
    assert "--memPoolSize=workspace:1024M" in args
    typed = onnx.load(str(fp16_graph))
    meta = {p.key: p.value for p in typed.metadata_props}
    assert meta["precision"] == "fp16" and meta["fp16.fp32_nodes"] == ",".join(pins)
    assert plan.fp32_layers == pins
    assert {i.type.tensor_type.elem_type for i in typed.graph.input} == {onnx.TensorProto.FLOAT}
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in typed.graph.initializer}
    # an fp16 graph already there keeps its own pins unless others are asked for
    assert write_fp16_graph(path, None, fp16_graph) == (fp16_graph, pins)
    assert write_fp16_graph(path, (), fp16_graph) == (fp16_graph, ())


def test_trtexec_line_fp32_has_no_precision_flags(default_artifacts: Path, tmp_path: Path):
    path, _ = _decoder(default_artifacts)
    args = trtexec_command(_plan(path, tmp_path, fp32_layers=("/x",)))
    assert args[:3] == ["trtexec", f"--onnx={path}", "--stronglyTyped"]
    assert not any(a.startswith(("--fp16", "--layerPrecisions", "--precision")) for a in args)


def test_sidecar_records_build_and_source(default_artifacts: Path, tmp_path: Path):
    path, model = _decoder(default_artifacts)
    pin = _pinnable(model)[0]
    plan = _plan(path, tmp_path, fp16=True, fp32_layers=(pin,))
    side = sidecar(plan, "10.7.0", {"name": "Orin", "compute_capability": "8.7"}, [], [])
    from edgesam_export.device.artifacts import file_sha256

    assert side["source_onnx"] == {"file": path.name, "sha256": file_sha256(path)}
    assert plan.fp16_onnx is not None and side["typing"] == STRONG
    assert side["network_onnx"] == {
        "file": plan.fp16_onnx.name,
        "sha256": file_sha256(plan.fp16_onnx),
    }
    assert side["precision"] == "fp16" and side["metadata"]["precision"] == "fp16"
    assert side["metadata"]["model"] == "edge_sam" and side["graph"] == "decoder"
    assert side["fp32_layers"] == [pin] and side["tensorrt_version"] == "10.7.0"
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
    with pytest.raises(BackendUnavailableError, match="pip install 'tensorrt>=10,<12'"):
        open_session(engine)


@pytest.mark.skipif(HAS_TRT, reason="checks the behaviour without tensorrt")
def test_trt_without_tensorrt_exits_6_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["trt", "--decoder", "-o", str(out)])
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE, result.output
    assert "no engine was built or checked" in result.output
    assert "pip install 'tensorrt>=10,<12'" in result.output
    assert not out.exists()


def test_trt_print_trtexec_on_a_directory(bilinear_artifacts: Path, tmp_path: Path):
    """Fault 10: the --saveEngine paths went to the source folder whatever -o said. They
    follow --output now, and so do the fp16 graphs the strongly typed lines read."""
    report, out = tmp_path / "trt.json", tmp_path / "out"
    before = sorted(p.name for p in bilinear_artifacts.iterdir())
    args = ["trt", str(bilinear_artifacts), "--print-trtexec", "--fp16", "--points", "1:4:16"]
    result = runner.invoke(app, [*args, "-o", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "no engine was built or checked" in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("trtexec ")]
    assert len(lines) == 3  # encoder, decoder, stability decoder
    for line in lines:
        args = shlex.split(line)
        assert args[1].startswith(f"--onnx={out}/") and args[1].endswith("_fp16.onnx")
        assert "--stronglyTyped" in args and "--fp16" not in args
        assert any(a.startswith(f"--saveEngine={out}/") for a in args)
        if "decoder" in line:
            assert "--maxShapes=point_coords:64x16x2,point_labels:64x16" in args
    engines = json.loads(report.read_text())["engines"]
    assert {Path(e["engine"]) for e in engines} == {
        out / "edge_sam_encoder_fp16.engine",
        out / "edge_sam_decoder_fp16.engine",
        out / "edge_sam_decoder_stability_fp16.engine",
    }
    assert all(Path(e["fp16_onnx"]).is_file() for e in engines)
    assert all(e["readiness"]["passed"] and not e["built"] for e in engines)
    assert sorted(p.name for p in bilinear_artifacts.iterdir()) == before


def test_trt_print_trtexec_output_folder_is_checkable(default_artifacts: Path, tmp_path: Path):
    """With -o, the lines' engines land in another folder: the reference outputs of the
    source folder go there too, so the advised `parity DIR --reference outputs` can run."""
    out = tmp_path / "engines"
    result = runner.invoke(app, ["trt", str(default_artifacts), "--print-trtexec", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"--saveEngine={out}/edge_sam_decoder.engine" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["edge_sam_reference.npz"]
    assert "--reference outputs" in result.output


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
    if model == "edge_sam":
        folder = default_artifacts
    else:
        folder = family_artifacts(model, reference_outputs=False)
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


# --- builds and runs through the stand-in tensorrt module --------------------------------------


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch):
    """Install a fake `tensorrt` of the requested flavour; sessions use its host memory."""
    import sys

    import fake_tensorrt

    from edgesam_export.device.runtime import tensorrt as trt_runtime

    def install(flavour: str = "10"):
        module = fake_tensorrt.make(flavour)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(trt_runtime, "_device", lambda: module.device)
        return module

    return install


@pytest.mark.parametrize("flavour", ["10", "11"])
def test_fp16_engine_is_strongly_typed_from_the_fp16_graph(
    default_artifacts: Path, tmp_path: Path, fake_trt, flavour: str
):
    """Fault 11: fp16 engines were built with BuilderFlag.FP16, OBEY_PRECISION_CONSTRAINTS and
    per-layer precisions (deprecated in TensorRT 10, AttributeError on 11). Now the network is
    strongly typed and parsed from the fp16 graph; no precision flag or layer type is set."""
    trt = fake_trt(flavour)
    path, model = _decoder(default_artifacts)
    plan = _plan(path, tmp_path, fp16=True, fp32_layers=_pinnable(model))
    build_engine(plan, trt)
    assert trt.calls.network_flags == [1 << 0]  # 1 << int(STRONGLY_TYPED)
    assert trt.calls.parsed == [plan.fp16_onnx]
    assert trt.calls.builder_flags == [] and trt.calls.layer_precisions == []
    side = json.loads(sidecar_path(plan.engine).read_text())
    assert side["typing"] == STRONG and side["network_onnx"]["file"] == "edge_sam_decoder_fp16.onnx"
    assert side["tensorrt_version"] == trt.__version__


def test_weakly_typed_flags_only_where_strong_typing_is_absent(
    default_artifacts: Path, tmp_path: Path, fake_trt
):
    """TensorRT 8.6 (no STRONGLY_TYPED): the flag path, chosen by feature detection, pins the
    requested nodes' layers in a network parsed from the float32 graph."""
    trt = fake_trt("8.6")
    path, model = _decoder(default_artifacts)
    pins = _pinnable(model)
    plan = _plan(path, tmp_path, fp16=True, fp32_layers=pins)
    build_engine(plan, trt)
    assert trt.calls.network_flags == [0] and trt.calls.parsed == [path]
    assert trt.calls.builder_flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert set(trt.calls.layer_precisions) == set(pins)
    assert json.loads(sidecar_path(plan.engine).read_text())["typing"] == WEAK


def test_trt_checks_the_engines_it_builds(default_artifacts: Path, tmp_path: Path, fake_trt):
    """Deliverable 1: `trt` built engines and never checked them. Each engine built now runs
    parity (here against the folder's reference outputs, copied beside the engines in -o),
    and an engine whose outputs are off fails with exit 4."""
    trt = fake_trt("10")
    out = tmp_path / "engines"
    args = ["trt", str(default_artifacts), "--decoder", "-o", str(out)]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "ok.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ok.json").read_text())
    assert payload["parity"]["passed"] and payload["engines"][0]["built"]
    assert payload["parity"]["inputs"]["runtimes"] == {
        "edge_sam_decoder.engine": f"TensorRT {trt.__version__}"
    }
    assert (out / "edge_sam_decoder.engine").is_file()
    assert (out / "edge_sam_reference.npz").is_file()
    assert not list(default_artifacts.glob("*.engine"))
    trt.corrupt = 0.5  # an engine whose outputs are off
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.PARITY_FAILED, result.output


def test_refused_input_shape_is_an_error(default_artifacts: Path, tmp_path: Path, fake_trt):
    """Fault 11: the result of `set_input_shape` was ignored, so a shape the engine refused
    ran anyway on stale shapes. A refusal is now an InputError naming the input."""
    trt = fake_trt("10")
    path, _ = _decoder(default_artifacts)
    plan = EnginePlan(onnx=path, engine=tmp_path / "d.engine", graph="decoder", profiles={})
    build_engine(plan, trt)
    session = open_session(plan.engine)
    feeds = {
        "image_embeddings": np.zeros((1, 256, 64, 64), np.float32),
        "point_coords": np.zeros((1, 2, 2), np.float32),
        "point_labels": np.ones((1, 2), np.float32),
    }
    assert session.run(feeds)["scores"].shape == (1, 4)
    trt.accept_shapes = False
    with pytest.raises(InputError, match=r"TensorRT refused shape .* input 'image_embeddings'"):
        session.run(feeds)


def test_tensorrt_session_takes_no_unknown_arguments(tmp_path: Path):
    """`TensorRTSession(**_)` swallowed every keyword (threads=, providers=...)."""
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(TypeError, match="threads"):
        open_session(engine, threads=2)


def test_torch_fallback_copies_and_runs_on_one_stream(monkeypatch: pytest.MonkeyPatch):
    """Fault 11: the torch-CUDA fallback copied on torch's current stream and ran the engine
    on its own stream (no ordering between them). Every copy now runs on the engine's stream."""
    import contextlib
    import sys
    import types

    from edgesam_export.device.runtime.tensorrt import _TorchCuda

    current: list[object] = ["default"]
    seen: list[tuple[str, object]] = []

    class Buffer:
        def __init__(self, n: int) -> None:
            self.data = np.zeros(n, np.uint8)

        def __getitem__(self, s: slice) -> Buffer:
            view = Buffer(0)
            view.data = self.data[s]
            return view

        def copy_(self, src) -> None:
            seen.append(("to_device", current[-1]))
            self.data[:] = src.numpy()

        def cpu(self):
            seen.append(("to_host", current[-1]))
            return types.SimpleNamespace(numpy=lambda: self.data.copy())

        def data_ptr(self) -> int:
            return id(self)

    @contextlib.contextmanager
    def stream(s):
        current.append(s)
        yield
        current.pop()

    engine_stream = types.SimpleNamespace(cuda_stream=7, synchronize=lambda: None)
    cuda = types.SimpleNamespace(
        is_available=lambda: True, Stream=lambda: engine_stream, stream=stream
    )
    fake_torch = types.SimpleNamespace(
        cuda=cuda,
        uint8="uint8",
        empty=lambda n, dtype, device: Buffer(n),
        from_numpy=lambda a: types.SimpleNamespace(numpy=lambda: a),
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    device = _TorchCuda()
    ptr = device.alloc(16)
    device.to_device(ptr, np.arange(4, dtype=np.float32))
    back = np.empty(4, np.float32)
    device.to_host(back, ptr)
    np.testing.assert_array_equal(back, np.arange(4, dtype=np.float32))
    assert device.handle() == 7
    assert seen == [("to_device", engine_stream), ("to_host", engine_stream)]


def test_registry_target_builds_fp16_engines_strongly_typed(tmp_path: Path, fake_trt):
    """The registry's TensorRT target (recipes, build) builds an fp16 engine from the ONNX fp16
    export of the graph, its safety pins kept float32: on TensorRT 11 no weak flag exists."""
    from conftest import model_for

    from edgesam_export.host.config import TensorRTOptions
    from edgesam_export.host.targets.tensorrt import TARGET

    trt = fake_trt("11")
    options = TensorRTOptions(output=tmp_path, precision="fp16")
    artifact = TARGET.export(model_for(0, "bicubic"), "decoder", options)
    assert artifact.path == tmp_path / "edge_sam_decoder_fp16.engine"
    (parsed,) = trt.calls.parsed
    assert parsed.name == "edge_sam_decoder_fp16.onnx" and trt.calls.builder_flags == []
    side = json.loads(sidecar_path(artifact.path).read_text())
    assert side["typing"] == STRONG and side["network_onnx"]["file"] == parsed.name
    assert side["source_onnx"]["file"] == "edge_sam_decoder.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "edge_sam_decoder_fp16.engine",
        "edge_sam_decoder_fp16.engine.json",
    ]

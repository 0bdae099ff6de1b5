"""TensorRT readiness for every family, checked without TensorRT.

Per family (one representative variant each, the list derived from the registry): the ONNX
graphs pass the readiness check under the default optimisation profiles; the profiles follow
the graph (encoder input = the variant's img_size, static; decoder embeddings = its embedding
shape; point counts and batch from the profile ranges); the engine sidecar carries the prompt
frame, preprocessing and mask tokens, so a session over the engine drives `Predictor` right;
the fp16 calibration feeds use the variant's preprocessing and prompt frame. Building engines
needs TensorRT and a GPU (tests/test_tensorrt.py::test_real_engine_build_and_parity).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device import processing as P
from edgesam_export.device.contract import MaskTokens, Preprocessing, TensorSpec
from edgesam_export.device.errors import ExitCode
from edgesam_export.device.fp16 import calibration_feeds
from edgesam_export.device.parity import make_test_image
from edgesam_export.device.predictor import Predictor
from edgesam_export.device.runtime import Session
from edgesam_export.device.runtime.tensorrt import outside_profile
from edgesam_export.device.trt_check import check_model
from edgesam_export.host.models import get_spec, list_specs
from edgesam_export.host.targets.tensorrt import (
    DEFAULT_DIMS,
    EnginePlan,
    dims_for,
    engine_path,
    fp16_graph_path,
    input_dims,
    model_conventions,
    profile_shapes,
    sidecar,
    trtexec_command,
    write_fp16_graph,
)

# Per-family export rows: `make test-extended` (CI runs it), not the default run.
pytestmark = pytest.mark.extended

runner = CliRunner()

# One variant per family. "default" runs in `make test`; "heavy" exports (ViT-B's 94M-parameter
# encoder, SlimSAM's pruned ViT-B) run with `pytest -m heavy`.
REPRESENTATIVES: dict[str, tuple[str, str]] = {
    "EdgeSAM": ("edge_sam", "default"),
    "EfficientViT-SAM": ("efficientvit_sam_l0", "default"),
    "MobileSAM": ("mobile_sam", "default"),
    "SlimSAM": ("slimsam_77", "heavy"),
    "SAM": ("sam_vit_b", "heavy"),
}


def _cases() -> list[object]:
    return [
        pytest.param(model, marks=pytest.mark.heavy) if where == "heavy" else model
        for model, where in REPRESENTATIVES.values()
    ]


# Families whose graphs have another I/O layout (SAM 2: high-res features, mask prompt, object
# score) check TensorRT readiness in their own module: family -> (module, test).
ELSEWHERE: dict[str, tuple[str, str]] = {
    "EdgeTAM": ("test_edgetam", "test_tensorrt_parser_readiness"),
}


def test_every_family_has_a_tensorrt_readiness_case() -> None:
    import importlib

    families = {s.family for s in list_specs()}
    assert families == set(REPRESENTATIVES) | set(ELSEWHERE), (
        "a family without a TensorRT readiness test"
    )
    for family, (model, _) in REPRESENTATIVES.items():
        assert get_spec(model).family == family
    for module, test in ELSEWHERE.values():
        assert callable(getattr(importlib.import_module(module), test)), (module, test)


@pytest.fixture(scope="module")
def graphs(request: pytest.FixtureRequest, family_artifacts):
    """model -> {"encoder": (path, ModelProto), "decoder": (path, ModelProto)}."""
    cache: dict[str, dict[str, tuple[Path, onnx.ModelProto]]] = {}

    def get(model: str) -> dict[str, tuple[Path, onnx.ModelProto]]:
        if model not in cache:
            if model == "edge_sam":  # the session's default export, shared with other tests
                folder = request.getfixturevalue("default_artifacts")
            else:
                folder = family_artifacts(model, reference_outputs=model == "efficientvit_sam_l0")
            found = {}
            for graph in ("encoder", "decoder"):
                path = folder / f"{model}_{graph}.onnx"
                found[graph] = (path, onnx.load(str(path), load_external_data=False))
            cache[model] = found
        return cache[model]

    return get


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("name", _cases())
def test_graphs_are_ready_and_profiles_follow_the_variant(graphs, name: str) -> None:
    spec = get_spec(name)
    found = graphs(name)
    enc_path, enc = found["encoder"]
    dec_path, dec = found["decoder"]
    for path, model in (found["encoder"], found["decoder"]):
        report = check_model(model, dims_for(model), str(path))
        assert report.passed, [f for f in report.findings if f.severity == "error"]
    # encoder: static input at the variant's own size (512 for EfficientViT-SAM-L), no profile
    assert input_dims(enc) == {"image": [1, 3, spec.img_size, spec.img_size]}
    assert _meta(enc)["img_size"] == str(spec.img_size)
    assert _meta(enc)["prompt_frame"] == str(spec.frame)
    assert dims_for(enc) == {} and profile_shapes(enc, {}) == {}
    # decoder: static embeddings of the variant's shape; prompts dynamic in batch and points
    dims = input_dims(dec)
    assert dims["image_embeddings"] == [1, *spec.embed_shape]
    assert dims["point_coords"] == ["batch", "num_points", 2]
    lo_b, opt_b, hi_b = DEFAULT_DIMS["batch"]
    lo_n, opt_n, hi_n = DEFAULT_DIMS["num_points"]
    assert profile_shapes(dec, dims_for(dec)) == {
        "point_coords": ((lo_b, lo_n, 2), (opt_b, opt_n, 2), (hi_b, hi_n, 2)),
        "point_labels": ((lo_b, lo_n), (opt_b, opt_n), (hi_b, hi_n)),
    }
    outputs = {o.name: o for o in dec.graph.output}
    count = spec.tokens.count
    score_dims = outputs["scores"].type.tensor_type.shape.dim
    assert score_dims[1].dim_value == count
    _, h, w = spec.embed_shape
    mask_dims = [d.dim_value for d in outputs["masks"].type.tensor_type.shape.dim][1:]
    assert mask_dims == [count, 4 * h, 4 * w]
    # the trtexec lines: the encoder has no shape flags, the decoder covers both prompts
    for path, model, graph in ((enc_path, enc, "encoder"), (dec_path, dec, "decoder")):
        plan = EnginePlan(
            onnx=path,
            engine=engine_path(path, path.parent, False),
            graph=graph,
            profiles=profile_shapes(model, dims_for(model)),
            onnx_metadata=_meta(model),
        )
        args = trtexec_command(plan)
        shaped = [a for a in args if a.startswith(("--minShapes", "--optShapes", "--maxShapes"))]
        if graph == "encoder":
            assert shaped == []
        else:
            assert f"--maxShapes=point_coords:{hi_b}x{hi_n}x2,point_labels:{hi_b}x{hi_n}" in args


class _Stub(Session):
    """A session that only carries metadata: what a TensorRT session exposes from its sidecar."""

    backend = "stub"

    def __init__(self, graph: str, meta: dict[str, str]) -> None:
        super().__init__(graph, [TensorSpec("x", "float32", (1,))], [], meta)

    def _run(self, feeds):  # pragma: no cover - never run
        raise AssertionError


@pytest.mark.parametrize("name", _cases())
def test_engine_sidecar_carries_frame_preprocessing_and_tokens(
    graphs, name: str, tmp_path: Path
) -> None:
    spec = get_spec(name)
    sides = {}
    for graph, (path, model) in graphs(name).items():
        fp16_onnx, _ = write_fp16_graph(path, (), fp16_graph_path(path, tmp_path))
        plan = EnginePlan(
            onnx=path,
            engine=engine_path(path, tmp_path, True),
            graph=graph,
            profiles=profile_shapes(model, dims_for(model)),
            fp16=True,
            fp16_onnx=fp16_onnx,
            onnx_metadata=_meta(model),
        )
        side = sidecar(plan, "10.x (not built here)", {"name": "none"}, [], [])
        json.dumps(side)
        pre = side["preprocessing"]
        assert (pre["encoder_size"], pre["prompt_frame"]) == (spec.img_size, spec.frame)
        assert (pre["normalize"], pre["pad"]) == (spec.normalize, spec.pad)
        assert pre["pixel_mean"] == list(spec.pixel_mean)
        assert side["mask_tokens"] == {
            "count": spec.tokens.count,
            "single": list(spec.tokens.single),
            "multi": list(spec.tokens.multi),
        }
        assert Preprocessing.from_metadata(side["metadata"]) == spec.preprocessing
        assert MaskTokens.from_metadata(side["metadata"]) == spec.tokens
        assert side["metadata"]["precision"] == "fp16" and side["metadata"]["model"] == name
        sides[graph] = side
    # what runtime/tensorrt.py hands to Predictor: the sidecar's metadata
    predictor = Predictor(
        _Stub("encoder", sides["encoder"]["metadata"]),
        _Stub("decoder", sides["decoder"]["metadata"]),
    )
    assert (predictor.img_size, predictor.frame) == (spec.img_size, spec.frame)
    assert predictor.preprocessing == spec.preprocessing and predictor.tokens == spec.tokens


def test_conventions_of_graphs_older_than_the_frame_keys() -> None:
    old = {"img_size": "1024", "pixel_mean": "[1, 2, 3]", "pixel_std": "[4, 5, 6]"}
    got = model_conventions(old)
    assert got["preprocessing"]["prompt_frame"] == 1024
    assert got["preprocessing"]["normalize"] == "sam"
    assert got["mask_tokens"] == {"count": 4, "single": [0], "multi": [1, 2, 3]}
    assert got["metadata"]["prompt_frame"] == "1024" and got["metadata"]["pad"] == (
        "after-normalize"
    )
    assert "preprocessing" not in model_conventions({})  # not our graph: tokens only


def test_feeds_outside_the_profiles_are_named() -> None:
    profiles = {"point_coords": {"min": [1, 1, 2], "opt": [1, 2, 2], "max": [4, 8, 2]}}
    inside = {"point_coords": np.zeros((2, 8, 2), np.float32), "x": np.zeros(3)}
    assert outside_profile(profiles, inside) is None
    reason = outside_profile(profiles, {"point_coords": np.zeros((1, 17, 2), np.float32)})
    assert reason is not None and "point_coords" in reason and "--points" in reason


def test_l0_calibration_feeds_use_its_preprocessing_and_frame(graphs) -> None:
    """The fp16 safety report (trt-check --fp16, --fp32-layers auto) calibrates L0 on its
    own input: 512 x 512 with /255 normalisation, prompts in the 1024 frame."""
    spec = get_spec("efficientvit_sam_l0")
    found = graphs(spec.name)
    (feed,), _ = calibration_feeds(found["encoder"][1])
    expected, info = P.preprocess(make_test_image(), params=spec.preprocessing)
    np.testing.assert_array_equal(feed["image"], expected)
    assert info.img_size == 1024 and max(info.input_size) == 1024
    emb = np.zeros((1, *spec.embed_shape), np.float32)
    feeds, _ = calibration_feeds(found["decoder"][1], emb)
    top = max(float(f["point_coords"].max()) for f in feeds)
    assert 512 < top <= 1024, "prompts placed in the 512 encoder frame"


def test_l0_trt_dry_run_and_fp16_check(graphs, tmp_path: Path) -> None:
    """`trt DIR --print-trtexec` and `trt-check --fp16` on the L0 graphs, without TensorRT."""
    folder = graphs("efficientvit_sam_l0")["encoder"][0].parent
    report, out = tmp_path / "trt.json", tmp_path / "out"
    result = runner.invoke(
        app,
        ["trt", str(folder), "--print-trtexec", "--fp16", "-o", str(out), "--json", str(report)],
    )
    assert result.exit_code == 0, result.output
    engines = json.loads(report.read_text())["engines"]
    assert {Path(e["engine"]) for e in engines} == {
        out / "efficientvit_sam_l0_encoder_fp16.engine",
        out / "efficientvit_sam_l0_decoder_fp16.engine",
    }
    lines = [shlex.split(e["trtexec"]) for e in engines]
    assert all("--stronglyTyped" in args and "--fp16" not in args for args in lines)
    assert all(args[1].startswith(f"--onnx={out}/") for args in lines)  # the fp16 graphs
    assert all(e["readiness"]["passed"] for e in engines)
    assert not list(folder.glob("*.engine")) and not list(folder.glob("*_fp16.onnx"))
    decoder = folder / "efficientvit_sam_l0_decoder.onnx"
    out = tmp_path / "check.json"
    result = runner.invoke(app, ["trt-check", str(decoder), "--fp16", "--json", str(out)])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(out.read_text())["graphs"]
    end_to_end = entry["fp16"]["end_to_end"]
    assert all(np.isfinite(v) for v in end_to_end["max_abs_error_pinned"].values())


def test_trt_model_option_reaches_the_export(tmp_path: Path) -> None:
    result = runner.invoke(app, ["trt", "--help"])
    assert result.exit_code == 0 and "--model" in result.output
    result = runner.invoke(
        app, ["trt", "--model", "no_such_model", "--print-trtexec", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "no_such_model" in result.output and "efficientvit_sam_l0" in result.output


@pytest.mark.heavy
def test_official_contract_decoder_is_not_ready(tmp_path: Path) -> None:
    """SAM/MobileSAM's official ONNX decoder sizes its upscaled masks from the *values* of
    orig_im_size: a data-dependent shape the readiness check names (the default contract
    returns low-res masks of a fixed size and is ready)."""
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.models import load_model
    from edgesam_export.host.targets.onnx import export

    loaded = load_model(None, model="mobile_sam", synthetic="untrained")
    art = export(loaded, "decoder", OnnxOptions(output=tmp_path, decoder_contract="official"))
    model = onnx.load(str(art.path))
    report = check_model(model, dims_for(model), str(art.path))
    assert not report.passed
    assert {f.rule for f in report.errors} == {"shape-tensor"}
    assert all("orig_im_size" in f.message for f in report.errors)

"""`edgesam-export` through Typer's runner: help, happy paths, exit codes for bad input."""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import Field
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.errors import ExitCode
from edgesam_export.host.config import ExportOptions
from edgesam_export.host.models import synth_state_dict

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["onnx"], ["parity"], ["models"]])
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_help_documents_exit_codes():
    assert "4 parity failed" in runner.invoke(app, ["--help"]).output


def test_models_lists_edge_sam():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "edge_sam" in result.output


def test_onnx_decoder_from_checkpoint_with_verification(tmp_path: Path):
    ckpt = tmp_path / "edge_sam_3x.pth"
    torch.save(synth_state_dict("edge_sam", 4), ckpt)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "onnx",
            str(ckpt),
            "--decoder",
            "--use-stability-score",
            "--output",
            str(out),
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "edge_sam_3x_decoder_stability.onnx").is_file()
    assert not (out / "edge_sam_3x_encoder.onnx").exists()
    payload = json.loads(result.stdout)  # tables go to stderr with --json -
    assert payload["parity"]["passed"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"][0]["metadata"]["weights"] == "checkpoint"
    assert manifest["parity"]["passed"] is True
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    # the parity command re-checks with the checkpoint, reading options from the metadata
    assert runner.invoke(app, ["parity", str(ckpt), str(out)]).exit_code == 0
    other = tmp_path / "other.pth"
    torch.save(synth_state_dict("edge_sam", 5), other)
    refused = runner.invoke(app, ["parity", str(other), str(out)])
    assert refused.exit_code == ExitCode.BAD_INPUT
    assert "not the checkpoint these artifacts were exported from" in refused.output
    # without a checkpoint, --reference auto falls back to the reference outputs shipped there
    fallback = runner.invoke(app, ["parity", str(out)])
    assert fallback.exit_code == 0, fallback.output
    assert "reference outputs" in fallback.output


def test_synthetic_run_is_labelled(tmp_path: Path):
    result = runner.invoke(app, ["onnx", "--decoder", "--no-verify", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "not trained" in result.output
    assert "calibrated" in result.output  # the CLI default without a checkpoint


def test_calibrated_export_verifies_against_calibrated_reference(tmp_path: Path):
    """The CLI default (calibrated) artifacts verify without CKPT."""
    result = runner.invoke(app, ["onnx", "--decoder", "--no-verify", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["parity", str(tmp_path), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["passed"] and report["summary"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["onnx", "missing.pth"], "not found"),
        (["onnx", "--opset", "5"], "opset"),
        (["onnx", "--model", "sam_vit_z"], "unknown model"),
    ],
)
def test_bad_input_exit_3(tmp_path: Path, args, needle):
    result = runner.invoke(app, [*args, "-o", str(tmp_path)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert needle in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def _one_line_error(result) -> str:
    """The whole output of a refused value: one line, no pydantic text, no documentation URL."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for word in ("pydantic", "http", "Value error", "validation error", "Usage:", "Traceback"):
        assert word not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["onnx", "--precision", "fp8"], "--precision: 'fp8'; allowed: fp32, fp16"),
        (["onnx", "--opset", "5"], "--opset: 5; allowed: 11..21"),
        (
            ["onnx", "--quantize", "int4"],
            "--quantize: 'int4'; allowed: int8, int8-dynamic, int8-weights",
        ),
        (["onnx", "--decoder-contract", "sam"], "allowed: edgesam, official, efficientvit"),
        (["coreml", "--minimum-deployment-target", "iOS9"], "'iOS9'; allowed: iOS15, iOS16"),
        (["onnx", "--upsample", "nearest"], "--upsample: 'nearest'; allowed: bicubic, bilinear"),
        (["coreml", "--max-batch", "0"], "--max-batch: 0; allowed: 1..16"),
        (["onnx", "--opset", "x"], "--opset: 'x'"),
        (["parity", "--reference", "x"], "--reference: 'x'; allowed: auto, torch, outputs, golden"),
    ],
)
def test_bad_option_values_are_one_line_naming_the_allowed_values(tmp_path: Path, args, allowed):
    """Fault 10: `--precision fp8`, `--opset 5` and `--minimum-deployment-target iOS9` printed
    pydantic's multi-line text with an errors.pydantic.dev URL; Typer's own refusals printed a
    usage block. Every bad value now ends the same way: one line naming the allowed values."""
    result = runner.invoke(app, [*args, "-o", str(tmp_path)] if args[0] != "parity" else args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _one_line_error(result)
    assert line.startswith("error: invalid value for ") and allowed in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (["onnx", "CKPT", "--seed", "3"], "--seed only applies"),
        (["onnx", "CKPT", "--synthetic", "untrained"], "--synthetic only applies"),
        (["coreml", "CKPT", "--seed", "0", "--synthetic", "calibrated"], "--seed and --synthetic"),
        (["onnx", "--encoder", "--use-stability-score"], "--use-stability-score applies to the"),
        (["onnx", "--encoder", "--decoder-contract", "official"], "--decoder-contract applies"),
        (["onnx", "--encoder", "--return-single-mask"], "--return-single-mask applies"),
        (["coreml", "--encoder", "--max-batch", "4"], "--max-batch applies to the decoder"),
    ],
)
def test_a_flag_that_would_be_ignored_is_an_error(tmp_path: Path, args, flags):
    """Fault 10: `--seed`/`--synthetic` with a checkpoint and decoder options with `--encoder`
    were silently ignored; now they exit 3 naming the flag, before any model is loaded."""
    ckpt = tmp_path / "edge_sam.pth"
    ckpt.write_bytes(b"never read: the flags are refused first")
    out = tmp_path / "out"
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert flags in _one_line_error(result)
    assert not out.exists()


def test_unknown_model_fails_before_anything_prints(tmp_path: Path):
    """Fault 10: `--model sam_vit_z` printed the synthetic-weights banner and a load message
    before its error; now the error is the only line."""
    result = runner.invoke(app, ["onnx", "--model", "sam_vit_z", "-o", str(tmp_path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    line = _one_line_error(result)
    assert "unknown model 'sam_vit_z'" in line and "edge_sam" in line
    assert "SYNTHETIC" not in result.output and "loading" not in result.output


def test_simplifier_is_the_one_simplify_option():
    """`--simplify/--no-simplify` said what `--simplifier` says; only `--simplifier` is left,
    and an options object (a recipe) with `simplify` is refused as an unknown key."""
    from pydantic import ValidationError

    from edgesam_export.host.config import OnnxOptions

    help_text = runner.invoke(app, ["onnx", "--help"]).output
    assert "--simplifier" in help_text and "--no-simplify" not in help_text
    assert runner.invoke(app, ["onnx", "--no-simplify"]).exit_code == ExitCode.USAGE
    with pytest.raises(ValidationError, match="simplify"):
        OnnxOptions(simplify=False)  # type: ignore[call-arg]


def test_attention_follows_the_target_and_precision():
    """`--attention`: folded for float decoders and onnxruntime's static int8 (it quantizes the
    weight products folded keeps), projected for ExecuTorch int8 (PT2E quantizes the image-side
    projections), which refuses folded; an encoder-only export refuses the option."""
    from pydantic import ValidationError

    from edgesam_export.host.config import ExecuTorchOptions, OnnxOptions

    assert OnnxOptions().attention_form() == "folded"
    assert OnnxOptions(quantize="int8").attention_form() == "folded"
    assert OnnxOptions(quantize="int8", attention="projected").attention_form() == "projected"
    assert OnnxOptions(quantize="int8-weights").attention_form() == "folded"
    assert OnnxOptions(attention="projected").attention_form() == "projected"
    assert ExecuTorchOptions(precision="int8").attention_form() == "projected"
    assert OnnxOptions(quantize="int8", attention="folded").attention_form() == "folded"
    with pytest.raises(ValidationError, match="attention folded"):
        ExecuTorchOptions(precision="int8", attention="folded")
    with pytest.raises(ValidationError, match="attention"):
        OnnxOptions(graphs=("encoder",), attention="projected")
    result = runner.invoke(app, ["executorch", "--precision", "int8", "--attention", "folded"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    # auto (both forms in one graph, an If on the point count) is ONNX's alone
    auto = OnnxOptions(attention="auto")
    assert auto.switches_attention() and auto.attention_form() == "folded"
    assert not OnnxOptions(attention="projected").switches_attention()
    with pytest.raises(ValidationError, match="attention"):
        ExecuTorchOptions(attention="auto")  # type: ignore[arg-type]
    result = runner.invoke(app, ["executorch", "--attention", "auto"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output


def test_decoder_attention_is_recorded_for_sam_decoders_and_refused_elsewhere():
    """The one rule both targets apply (`targets.decoder_attention`): SAM-layout decoders
    record their form; EdgeTAM's decoder (SAM 2's layout, its own attention) refuses
    `--attention` and records nothing; encoders record nothing."""
    from types import SimpleNamespace

    from edgesam_export.device.errors import InputError
    from edgesam_export.device.models import get_spec
    from edgesam_export.host.config import ExecuTorchOptions, OnnxOptions
    from edgesam_export.host.targets import decoder_attention

    sam = SimpleNamespace(spec=get_spec("edge_sam"))
    tam = SimpleNamespace(spec=get_spec("edgetam"))
    for options in (OnnxOptions, ExecuTorchOptions):
        assert decoder_attention(sam, "decoder", options()) == {"decoder.attention": "folded"}  # type: ignore[arg-type]
        given = options(attention="projected")
        assert decoder_attention(sam, "decoder", given) == {"decoder.attention": "projected"}  # type: ignore[arg-type]
        if options is OnnxOptions:
            auto = options(attention="auto")
            assert decoder_attention(sam, "decoder", auto) == {"decoder.attention": "auto"}  # type: ignore[arg-type]
        assert decoder_attention(sam, "encoder", options()) == {}  # type: ignore[arg-type]
        assert decoder_attention(tam, "decoder", options()) == {}  # type: ignore[arg-type]
        with pytest.raises(InputError, match="drop --attention"):
            decoder_attention(tam, "decoder", given)  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [["onnx", "--no-such-option"], ["no-such-command"], ["parity"]])
def test_usage_errors_exit_2(args):
    """Unknown options, unknown commands and missing arguments stay usage errors (2)."""
    assert runner.invoke(app, args).exit_code == ExitCode.USAGE


@pytest.mark.parametrize("command", [["onnx"], ["parity"], ["models"]])
def test_help_is_readable_at_80_columns(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    assert "…" not in result.output and "<bool>" not in result.output
    if command == ["onnx"]:
        for option in ("--use-stability-score", "--synthetic", "--no-verify", "--upsample"):
            assert option in result.output


def test_models_json():
    result = runner.invoke(app, ["models", "--json", "-"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)["models"]
    edge = next(m for m in models if m["name"] == "edge_sam")
    assert edge["encoder_input"] == 1024 and edge["mask_tokens"]["count"] == 4


def test_image_renamed_pth_gets_its_own_message(tmp_path: Path):
    from edgesam_export.device.png import encode_png

    fake = tmp_path / "edge_sam_3x.pth"
    fake.write_bytes(encode_png(np.zeros((8, 8, 3), dtype=np.uint8)))
    result = runner.invoke(app, ["onnx", str(fake), "-o", str(tmp_path / "o")])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "is a PNG image, not a model checkpoint" in result.output
    assert "pickles" not in result.output


def test_output_that_is_a_file_exit_3(tmp_path: Path):
    target = tmp_path / "artifacts"
    target.write_text("not a directory")
    result = runner.invoke(app, ["onnx", "--decoder", "-o", str(target)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "must be a directory" in result.output
    assert target.read_text() == "not a directory"


def test_truncated_checkpoint_exit_3(tmp_path: Path):
    ckpt = tmp_path / "full.pth"
    torch.save(synth_state_dict("edge_sam", 0), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    out = tmp_path / "out"
    result = runner.invoke(app, ["onnx", str(ckpt), "-o", str(out)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "truncated" in result.output
    assert not out.exists()


def test_foreign_checkpoint_exit_3(tmp_path: Path):
    state = {
        k: v
        for k, v in synth_state_dict("edge_sam", 0).items()
        if not k.startswith("image_encoder.")
    }
    state["image_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(1)
    ckpt = tmp_path / "sam_vit_b.pth"
    torch.save(state, ckpt)
    result = runner.invoke(app, ["onnx", str(ckpt), "-o", str(tmp_path / "o")])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "SAM (ViT-B/L/H)" in result.output


def test_parity_needs_a_directory(tmp_path: Path):
    result = runner.invoke(app, ["parity", str(tmp_path / "nothing")])
    assert result.exit_code == ExitCode.BAD_INPUT


class FakeOptions(ExportOptions):
    """Export the encoder and/or decoder to the fake runtime (a test backend)."""

    precision: Literal["fp32", "int4"] = Field("fp32", description="Precision of the program")
    tile: int = Field(8, ge=2, le=32, description="Tile size of the fake kernels")
    fast_math: bool = Field(False, description="Let the fake compiler reorder sums")
    DECODER_ONLY = (*ExportOptions.DECODER_ONLY, "tile")


def test_a_new_backend_is_a_registry_entry_and_an_options_class(tmp_path, monkeypatch):
    """Issue 18: adding a backend changes nothing in the CLI. A fake entry (in-test registry
    entry + options class) gets `edgesam-export fake` with its flags, help and allowed values,
    and its values reach the one export path as its typed options."""
    from edgesam_export.cli.export import build_app
    from edgesam_export.device import backends
    from edgesam_export.host import pipeline

    entry = backends.Backend(
        name="fakert",
        suffixes=(".fake",),
        exporter="nowhere.fake:TARGET",  # never imported: export_and_check is replaced below
        recipe_options=f"{FakeOptions.__module__}:FakeOptions",
        bench_label="Fake RT",
    )
    backends.register(entry)
    try:
        fake_app = build_app()
        help_text = runner.invoke(fake_app, ["fakert", "--help"], terminal_width=80).output
        for option in ("--tile", "--fast-math", "--precision", "--encoder", "--output", "--json"):
            assert option in help_text, help_text
        assert "<fp32|int4>" in help_text and "Tile size of the fake kernels" in help_text
        assert "to the fake runtime" in help_text  # the options class's docstring
        assert "fakert" in runner.invoke(fake_app, ["--help"]).output
        assert "fakert" not in runner.invoke(app, ["--help"]).output  # built before registering

        bad = runner.invoke(fake_app, ["fakert", "--tile", "64", "-o", str(tmp_path / "o")])
        assert bad.exit_code == ExitCode.BAD_INPUT
        assert "invalid value for --tile: 64; allowed: 2..32" in bad.output
        refused = runner.invoke(fake_app, ["fakert", "--encoder", "--tile", "4"])
        assert refused.exit_code == ExitCode.BAD_INPUT and "--tile applies to the decoder" in (
            refused.output
        )

        seen = {}

        def fake_export(model, target, options, progress, *, verify, wait):
            seen.update(target=target, options=options, model=model, verify=verify)
            raise backends.BackendUnavailableError("fake runtime stops here")

        monkeypatch.setattr(pipeline, "export_and_check", fake_export)
        args = ["fakert", "--decoder", "--tile", "4", "--fast-math", "--precision", "INT4"]
        result = runner.invoke(fake_app, [*args, "--no-verify", "-o", str(tmp_path / "x")])
        assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE, result.output
        assert seen["target"] == "fakert" and seen["verify"] is False
        assert seen["options"] == FakeOptions(
            graphs=("decoder",), tile=4, fast_math=True, precision="int4", output=tmp_path / "x"
        )
    finally:
        backends.unregister("fakert")


def test_every_generated_option_has_help_and_every_field_an_option():
    """Each export command generated from the registry offers every field of its options
    class (bar graphs/output, which --encoder/--decoder and --output stand for), with help."""
    from edgesam_export.cli.backend_command import option_fields
    from edgesam_export.cli.export import export_backends
    from edgesam_export.device.backends import recipe_options

    names = [b.name for b in export_backends()]
    assert {"onnx", "coreml", "executorch"} <= set(names) and "tensorrt" not in names
    for entry in export_backends():
        command = app.registered_commands[names.index(entry.name)]
        assert command.name == entry.name
        params = inspect.signature(command.callback).parameters
        for field in option_fields(recipe_options(entry)):
            assert field in params, (entry.name, field)
            option = typing.get_args(params[field].annotation)[1]
            description = recipe_options(entry).model_fields[field].description
            assert description and option.help.startswith(description), (entry.name, field)


def test_trt_profile_options_are_the_tensorrt_options_fields():
    """`trt` and `trt-check` take --points/--batch (and `trt` --use-stability-score) from
    TensorRTOptions' fields (one definition with the recipes'): their help is the field's."""
    from edgesam_export.cli.tensorrt import trt_check_cmd, trt_cmd
    from edgesam_export.host.config import TensorRTOptions

    profile = ("points", "batch")
    for command, fields in ((trt_cmd, (*profile, "use_stability_score")), (trt_check_cmd, profile)):
        hints = typing.get_type_hints(command, include_extras=True)
        for field in fields:
            option = typing.get_args(hints[field])[1]
            assert option.help.startswith(TensorRTOptions.model_fields[field].description)


# Each case runs in a fresh interpreter: blocking a package that earlier tests imported leaves
# its half-imported submodules behind (executorch's namespace packages then fail to import for
# every later test in the process).
_BLOCKED_CHILD = """
import json, sys
from pathlib import Path
blocked, kind, a, b, tmp = sys.argv[1:]
sys.modules[blocked] = None  # its import now fails
from edgesam_export.device.backends import BackendUnavailableError, open_session
try:
    if kind == "session":
        artifact = Path(tmp) / f"m_decoder{a}"
        artifact.write_bytes(b"\\0" * 16)
        artifact.with_name(artifact.name + ".json").write_text('{"graph": "decoder"}')
        open_session(artifact)
    else:
        getattr(__import__(a, fromlist=[b]), b)()
except BackendUnavailableError as exc:
    print(json.dumps({"message": str(exc)}))
else:
    print(json.dumps({"message": None}))
"""


def _blocked_session(suffix: str) -> tuple[str, str, str]:
    return ("session", suffix, "")


def _call(module: str, name: str) -> tuple[str, str, str]:
    return ("call", module, name)


@pytest.mark.parametrize(
    ("backend", "export", "blocked", "trigger"),
    [
        ("onnx", True, "onnxslim", _call("edgesam_export.host.targets.onnx", "_require_onnx")),
        ("onnx", False, "onnxruntime", _blocked_session(".onnx")),
        (
            "coreml",
            True,
            "coremltools",
            _call("edgesam_export.host.targets.coreml", "require_coremltools"),
        ),
        (
            "coreml",
            False,
            "coremltools.proto",
            _call("edgesam_export.device.runtime.mil", "require_coremltools_proto"),
        ),
        (
            "executorch",
            True,
            "executorch.exir",
            _call("edgesam_export.host.targets.executorch", "_require_executorch"),
        ),
        ("executorch", False, "executorch.runtime", _blocked_session(".pte")),
        (
            "tensorrt",
            True,
            "tensorrt",
            _call("edgesam_export.host.targets.tensorrt", "require_tensorrt"),
        ),
        ("tensorrt", False, "tensorrt", _blocked_session(".engine")),
    ],
)
def test_unavailable_errors_say_the_registry_hint(
    tmp_path: Path, backend, export, blocked, trigger
):
    """Each backend's 'not installed' error (exporting, or running its artifacts) carries the
    install hint of its registry entry and no other: the hint is written once, in the entry."""
    import subprocess
    import sys

    from edgesam_export.device.backends import get_backend

    entry = get_backend(backend)
    hint = (entry.export_hint or entry.install_hint) if export else entry.install_hint
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED_CHILD, blocked, *trigger, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout.strip().splitlines()[-1])["message"]
    assert message is not None, f"no BackendUnavailableError: {done.stderr}"
    assert hint in message, message
    assert message.count("pip install") == hint.count("pip install"), message
    assert ("exporting to" in message) is export


def test_docs_cli_lists_every_command_and_option():
    """docs/cli.md carries every command of both apps with every option, its help and default,
    generated from the apps: a new command, option or help text that is not there fails here."""
    from edgesam_export.cli.reference import PAGE, generate, rewrite

    page = PAGE.read_text()
    stale = "docs/cli.md is stale: run python -m edgesam_export.cli.reference --write"
    assert rewrite(page) == page, stale
    block = generate()
    for command in ("onnx", "coreml", "executorch", "trt", "trt-check", "parity", "recipe check"):
        assert f"### edgesam-export {command}\n" in block
    assert "### edgesam-bench\n" in block and "`--max-batch`" in block
    assert "`--precision` `<fp32|fp16>`" in block

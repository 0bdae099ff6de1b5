"""Recipe schema: shipped recipes load; bad recipes fail with file:line: field: what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.backends import all_backends
from edgesam_export.device.errors import InputError
from edgesam_export.host.config import OnnxOptions
from edgesam_export.host.recipes import (
    Recipe,
    json_schema,
    load_recipe,
    parse_recipe,
    target_entries,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))

GOOD = """\
name: demo
weights: {synthetic: untrained, seed: 3}
targets:
  - name: decoder
    kind: onnx
    upsample: bilinear
    parity: {tolerances: {decoder.masks: 5.0e-5}}
    options:
      graphs: [decoder]
      simplifier: onnxsim
"""

# The registry's recipe kinds (names and aliases), as error messages list them.
KINDS = ", ".join(sorted(n for b in all_backends() if b.recipe_kind for n in b.names))


def _error(text: str) -> str:
    with pytest.raises(InputError) as info:
        parse_recipe(text, "r.yaml")
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipes_load(path: Path) -> None:
    loaded = load_recipe(path)
    assert loaded.recipe.name == path.stem
    assert len(loaded.sha256) == 64
    assert loaded.recipe.targets


def test_shipped_recipes_cover_edge_sam_and_3x() -> None:
    assert {"edge_sam", "edge_sam_3x", "ci-smoke"} <= {p.stem for p in SHIPPED}


def test_good_recipe_maps_onto_typed_options() -> None:
    recipe = parse_recipe(GOOD)
    (target,) = recipe.targets
    assert target.kind == "onnx"
    assert isinstance(target.options, OnnxOptions)
    assert target.options.graphs == ("decoder",)
    assert target.options.simplifier == "onnxsim"
    assert target.upsample == "bilinear"
    assert target.parity is not None and target.parity.tolerances == {"decoder.masks": 5e-5}
    assert recipe.weights.synthetic == "untrained" and recipe.weights.seed == 3
    assert recipe.directory == "demo"


def test_every_target_kind_is_an_options_class() -> None:
    """The target kinds are the registry's: each member's `options` is a typed ExportOptions
    subclass and its `kind` the backend's name and aliases."""
    kinds = set()
    for entry in target_entries():
        options = entry.model_fields["options"].annotation
        assert isinstance(options, type) and "graphs" in options.model_fields
        kinds.add(entry.model_fields["kind"].annotation.__args__)  # type: ignore[union-attr]
    assert kinds == {b.names for b in all_backends() if b.recipe_kind}  # and nothing else
    assert {("onnx",), ("coreml",), ("tensorrt", "trt")} <= kinds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: a\ncolour: red\ntargets: [{name: t, kind: onnx}]\n",
            "r.yaml:2:1: colour: unknown key 'colour'; allowed: version, name, description",
        ),
        (
            "name: a\ntargets:\n  - name: t\n    kind: onnx\n    options:\n      opset: 40\n",
            "r.yaml:6:14: targets[0].options.opset: Input should be less than or equal to 21",
        ),
        (
            "name: a\ntargets:\n  - name: t\n    kind: onnx\n    options: {simplifier: slim}\n",
            "targets[0].options.simplifier: Input should be 'onnxslim', 'onnxsim' or 'none'",
        ),
        (
            "name: a\ntargets:\n  - name: t\n    kind: onnx\n    options:\n      grafs: []\n",
            "r.yaml:6:7: targets[0].options.grafs: unknown key 'grafs'; allowed: graphs,"
            " use_stability_score, opset, simplifier",
        ),
        (
            "name: a\ntargets:\n  - name: t\n    kind: tflite\n",
            f"r.yaml:3:5: targets[0]: unknown target kind 'tflite'; allowed: {KINDS}",
        ),
        (
            "name: a\ntargets:\n  - name: t\n",
            f"r.yaml:3:5: targets[0]: each target needs a kind; allowed: {KINDS}",
        ),
        (
            "name: a\nweights:\n  synthetic: noise\ntargets: [{name: t, kind: onnx}]\n",
            "r.yaml:3:14: weights.synthetic: Input should be 'untrained' or 'calibrated'",
        ),
        (
            "name: A B\ntargets: [{name: t, kind: onnx}]\n",
            "r.yaml:1:7: name: 'A B' is not allowed: use lowercase letters, digits",
        ),
        (
            "name: a\ntargets: []\n",
            "r.yaml:2:10: targets: List should have at least 1 item",
        ),
        (
            "targets: [{name: t, kind: onnx}]\n",
            "r.yaml:1:1: name: required field is missing",
        ),
        (
            "name: a\ntargets:\n  - {name: t, kind: onnx}\n  - {name: t, kind: onnx}\n",
            "target name 't' is used twice",
        ),
        (
            "name: a\ntargets:\n  - name: t\n    kind: onnx\n    options: {output: /tmp/x}\n",
            "r.yaml:5:14: targets[0].options: options.output is set by the build",
        ),
        (
            "name: a\nparity:\n  tolerances: {masks: 1.0e-3}\ntargets: [{name: t, kind: onnx}]\n",
            "r.yaml:3:15: parity.tolerances: unknown parity check 'masks'; allowed: image_emb",
        ),
        (
            "name: a\nname: b\ntargets: [{name: t, kind: onnx}]\n",
            "r.yaml:2:1: name: duplicate key (first at line 1)",
        ),
        (
            "name: a\ntargets: [{name: t, kind: onnx}\n",
            "r.yaml:3:1: not valid YAML",
        ),
        ("- just\n- a list\n", "r.yaml: a recipe is a YAML mapping"),
    ],
    ids=[
        "unknown-top-key",
        "out-of-range",
        "bad-literal",
        "unknown-option",
        "unknown-kind",
        "missing-kind",
        "bad-synthetic",
        "bad-name",
        "no-targets",
        "missing-name",
        "duplicate-target",
        "output-in-options",
        "unknown-parity-check",
        "duplicate-key",
        "yaml-syntax",
        "not-a-mapping",
    ],
)
def test_bad_recipe_messages(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_all_problems_are_reported_at_once() -> None:
    text = (
        "name: a\nweights: {seeed: 1}\ntargets:\n  - name: t\n    kind: onnx\n"
        "    options: {opset: 5}\n"
    )
    message = _error(text)
    assert "r.yaml:2:11: weights.seeed: unknown key" in message
    assert "targets[0].options.opset: Input should be greater than or equal to 11" in message


def test_unknown_model_names_the_registered_ones(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("name: a\nmodel: edge_sam_9x\ntargets: [{name: t, kind: onnx}]\n")
    with pytest.raises(
        InputError,
        match=r"m.yaml:2:8: model: unknown model 'edge_sam_9x';"
        r" allowed: .*edge_sam",
    ):
        load_recipe(path)


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name
    mapping = schema["properties"]["targets"]["items"]["discriminator"]["mapping"]
    assert set(mapping) == set(KINDS.split(", ")) >= {"onnx", "coreml", "tensorrt", "trt"}
    onnx_options = schema["$defs"]["OnnxOptions"]["properties"]
    assert onnx_options["simplifier"]["enum"] == ["onnxslim", "onnxsim", "none"]


def test_recipe_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(app, ["recipe", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(json.dumps(json_schema()))


def test_recipe_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["recipe", "check", *map(str, SHIPPED)])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\ntargets: [{name: t, kind: onnx, options: {opset: 99}}]\n")
    result = runner.invoke(app, ["recipe", "check", str(bad)])
    assert result.exit_code == 3
    assert "bad.yaml:2:" in result.output and "opset" in result.output


def test_recipe_is_frozen() -> None:
    recipe = parse_recipe(GOOD)
    with pytest.raises(ValueError):
        recipe.name = "other"  # type: ignore[misc]
    assert isinstance(recipe, Recipe)


@pytest.mark.parametrize(
    ("kind", "mode", "needs"),
    [
        ("onnx", "quantize: int8", "--quantize int8 or int8-weights"),
        ("executorch", "precision: int8", "--precision int8"),
    ],
)
def test_calibration_options_are_one_definition_for_every_int8_target(
    kind: str, mode: str, needs: str
) -> None:
    """ONNX and ExecuTorch take `calibration`/`calibration_images` from one typed definition
    (host/config.py `CalibrationFolder`, `CalibrationCount`, `Int8Calibration`): the same
    range and help, the field names recipes use, and refused without the int8 mode."""
    from edgesam_export.host.config import ExecuTorchOptions

    head = f"name: a\ntargets:\n  - name: t\n    kind: {kind}\n    options:\n"
    recipe = parse_recipe(
        head + f"      {mode}\n      calibration: cal\n      calibration_images: 3\n"
    )
    options = recipe.targets[0].options
    assert (options.calibration, options.calibration_images) == (Path("cal"), 3)
    assert f"calibration_images applies to {needs}" in _error(
        head + "      calibration_images: 3\n"
    )
    assert "less than or equal to 256" in _error(
        head + f"      {mode}\n      calibration_images: 999\n"
    )
    onnx, et = OnnxOptions.model_fields, ExecuTorchOptions.model_fields
    for name in ("calibration", "calibration_images"):
        assert repr(onnx[name]) == repr(et[name])

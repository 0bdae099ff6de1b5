"""`edgesam-export models`: every registered variant, with sizes, parameters and targets."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.host.models import list_specs

runner = CliRunner()


def test_models_json_lists_every_variant():
    result = runner.invoke(app, ["models", "--json", "-"])
    assert result.exit_code == 0, result.output
    start = result.stdout.index("{")
    rows = {r["name"]: r for r in json.loads(result.stdout[start:])["models"]}
    assert set(rows) == {s.name for s in list_specs()}
    l0 = rows["efficientvit_sam_l0"]
    assert (l0["encoder_input"], l0["prompt_frame"], l0["normalize"]) == (512, 1024, "unit")
    assert l0["parameters"] == 34_792_784 and l0["targets_verified"] == ["onnx", "coreml"]
    assert rows["sam_vit_h"]["targets_verified"] == ["onnx", "coreml"]  # both heavy rows
    assert rows["mobile_sam"]["targets_verified"] == ["onnx", "coreml"]
    assert rows["edge_sam"]["parameters"] == 9_582_112
    assert rows["efficientvit_sam_xl1"]["parameters"] == 203_346_128
    assert rows["edge_sam"]["mask_tokens"] == {"count": 4, "single": [0], "multi": [1, 2, 3]}


def test_models_table_names_families_and_frames():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for text in ("EfficientViT-SAM", "efficientvit_sam_xl1", "EdgeSAM", "frame"):
        assert text in result.output

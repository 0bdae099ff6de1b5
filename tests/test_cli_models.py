"""`edgesam-export models`: every registered variant, with sizes, parameters and targets."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.models import list_specs

runner = CliRunner()


def test_models_json_lists_every_variant():
    result = runner.invoke(app, ["models", "--json", "-"])
    assert result.exit_code == 0, result.output
    start = result.stdout.index("{")
    rows = {r["name"]: r for r in json.loads(result.stdout[start:])["models"]}
    assert set(rows) == {s.name for s in list_specs()}
    l0 = rows["efficientvit_sam_l0"]
    assert (l0["encoder_input"], l0["prompt_frame"], l0["normalize"]) == (512, 1024, "unit")
    assert l0["parameters"] == 34_792_784
    assert l0["targets_verified"] == ["onnx", "coreml", "executorch"]  # the heavy ET row
    assert rows["sam_vit_h"]["targets_verified"] == ["onnx", "coreml", "executorch"]  # heavy
    assert rows["mobile_sam"]["targets_verified"] == ["onnx", "coreml", "executorch"]
    assert rows["edge_sam"]["parameters"] == 9_582_112
    assert rows["efficientvit_sam_xl1"]["parameters"] == 203_346_128
    assert rows["edge_sam"]["mask_tokens"] == {"count": 4, "single": [0], "multi": [1, 2, 3]}


def test_models_table_names_families_and_frames():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for text in ("EfficientViT-SAM", "efficientvit_sam_xl1", "EdgeSAM", "frame"):
        assert text in result.output


def test_parameter_counts_from_layouts_equal_a_meta_build_of_every_variant():
    """`models` counts parameters from the shipped layouts (no torch); the count must be what
    the torch model has, for every registered variant."""
    import torch

    from edgesam_export.device.models import parameter_count
    from edgesam_export.host.models import build_model

    for spec in list_specs():
        with torch.device("meta"):
            model = build_model(spec)
        assert parameter_count(spec) == sum(p.numel() for p in model.parameters()), spec.name


def test_models_and_recipe_check_run_with_torch_blocked(tmp_path):
    """The model table is torch-free data: `models` and `recipe check` work on a device
    install (landed main imported torch for a type hint in the registry)."""
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).parents[1] / "recipes" / "ci-smoke.yaml"
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'cv2', 'PIL'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgesam_export.cli.export import main\n"
        "sys.argv = ['edgesam-export'] + sys.argv[1:]\n"
        "main()\n"
    )
    for args in (["models", "--json", str(tmp_path / "m.json")], ["recipe", "check", str(recipe)]):
        proc = subprocess.run(
            [sys.executable, "-c", blocker, *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert "blocked" not in proc.stderr
    rows = json.loads((tmp_path / "m.json").read_text())["models"]
    assert {r["name"] for r in rows} == {s.name for s in list_specs()}

"""`--simplifier onnxslim|onnxsim|none` on `edgesam-export onnx`, and its manifest.

Parity of all three simplifiers is proven by the build tests (tests/test_build.py builds the
decoder with each); here: the CLI choice, the missing-package error, and the rewritten manifest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device import manifest as mf


def test_missing_onnxsim_is_exit_6_naming_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # "not installed"
    result = CliRunner().invoke(
        app,
        [
            "onnx",
            "--decoder",
            "--simplifier",
            "onnxsim",
            "--synthetic",
            "untrained",
            "-o",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 6, result.output
    assert "pip install onnxsim" in result.stderr
    assert not any(p.suffix == ".onnx" for p in tmp_path.iterdir())


def test_no_verify_export_does_not_keep_a_stale_parity_verdict(tmp_path: Path) -> None:
    """The old write_manifest merged: "parity": "passed" survived next to overwritten files."""
    stale = {
        "artifacts": [{"path": "edge_sam_decoder.onnx", "sha256": "0" * 64, "parity": "passed"}],
        "parity": {"passed": True, "summary": [], "errors": []},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(stale))
    result = CliRunner().invoke(
        app,
        [
            "onnx",
            "--decoder",
            "--no-verify",
            "--simplifier",
            "none",
            "--synthetic",
            "untrained",
            "-o",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = mf.read(tmp_path)
    assert "parity" not in manifest
    (entry,) = manifest["artifacts"]
    assert entry["parity"] == "unchecked"
    assert entry["metadata"]["onnx.simplifier"] == "none"
    assert entry["sha256"] == mf.file_sha256(tmp_path / "edge_sam_decoder.onnx")
    assert mf.verify(tmp_path).ok

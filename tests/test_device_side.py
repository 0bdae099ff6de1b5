"""The device/host rule: device-side modules import with torch, cv2 and PIL blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DEVICE_MODULES = (
    "edgesam_export.contract",
    "edgesam_export.processing",
    "edgesam_export.processing.resize",
    "edgesam_export.processing.image",
    "edgesam_export.processing.prompts",
    "edgesam_export.processing.masks",
    "edgesam_export.runtime",
    "edgesam_export.runtime.onnxruntime",
    "edgesam_export.runtime.coreml",
    "edgesam_export.runtime.mil",
    "edgesam_export.fp16_report",
    "edgesam_export.predictor",
    "edgesam_export.parity",
    "edgesam_export.artifacts",
    "edgesam_export.manifest",
    "edgesam_export.bench",
    "edgesam_export.bench_everything",
    "edgesam_export.cli.everything",
    "edgesam_export.trt_check",
    "edgesam_export.fp16",
    "edgesam_export.runtime.tensorrt",
    "edgesam_export.golden",
    "edgesam_export.backends",
    "edgesam_export.report",
    "edgesam_export.png",
    "edgesam_export.pipeline",  # importable; exporting and the torch reference import on use
    "edgesam_export.cli.export",
    "edgesam_export.cli.bench",
    "edgesam_export.cli.options",
    # torch-free too: a web page is built from existing artifacts without torch
    "edgesam_export.web.build",
    "edgesam_export.web.server",
    "edgesam_export.web.browser",
    "edgesam_export.web.selftest",
    "edgesam_export.official_contract",
)
TESTS = Path(__file__).parent

BLOCKER = textwrap.dedent(
    """
    import importlib, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "cv2", "PIL"}:
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    """
)


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_module_imports_without_torch(module: str) -> None:
    code = BLOCKER + f"importlib.import_module({module!r})\nprint('torch' in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_blocker_really_blocks() -> None:
    """The guard itself must fail on a host module, or the tests above prove nothing."""
    code = BLOCKER + "importlib.import_module('edgesam_export.graphs')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "blocked: torch" in proc.stderr


def test_device_path_end_to_end_with_torch_blocked(default_artifacts: Path) -> None:
    """Predictor, edgesam-bench --backend onnx and parity on exported ONNX files, in processes
    where importing torch, cv2 or PIL raises (the blocker is a sitecustomize on PYTHONPATH, so
    the CLI subprocesses inherit it)."""
    root = TESTS.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "torch_blocker"), str(root)]),
    }
    proc = subprocess.run(
        [sys.executable, str(TESTS / "device_check.py"), str(default_artifacts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "device check: all OK" in proc.stdout


def test_torch_blocker_blocks_subprocesses() -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS / "torch_blocker")}
    proc = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0 and "blocked for the device-side test" in proc.stderr

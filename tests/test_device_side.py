"""The device/host rule: device-side modules import with torch, cv2 and PIL blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgesam_export.device


def _device_modules() -> list[str]:
    """Every module under `edgesam_export.device`, found by walking the package."""
    import pkgutil

    found = ["edgesam_export.device"]
    for info in pkgutil.walk_packages(edgesam_export.device.__path__, "edgesam_export.device."):
        found.append(info.name)
    return sorted(found)


# Outside the device package but torch-free at import: the CLI entry points (a device runs
# `edgesam-bench` and `parity`), the recipe schema (`recipe check`), the publish path and the
# web page builder (a page is built from existing artifacts without torch).
TORCH_FREE_ENTRY_POINTS = (
    "edgesam_export.cli.export",
    "edgesam_export.cli.bench",
    "edgesam_export.cli.everything",
    "edgesam_export.cli.options",
    "edgesam_export.host.benchmark",
    "edgesam_export.host.pipeline",
    "edgesam_export.host.recipes",
    "edgesam_export.web.build",
    "edgesam_export.web.server",
    "edgesam_export.web.browser",
    "edgesam_export.web.selftest",
)
DEVICE_MODULES = (*_device_modules(), *TORCH_FREE_ENTRY_POINTS)


def test_the_walk_finds_the_device_side() -> None:
    assert {"edgesam_export.device.predictor", "edgesam_export.device.runtime.onnxruntime"} <= set(
        DEVICE_MODULES
    )
    assert len(DEVICE_MODULES) > 30


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
    code = BLOCKER + "importlib.import_module('edgesam_export.host.graphs')\n"
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

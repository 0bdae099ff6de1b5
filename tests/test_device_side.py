"""The device/host rule: device-side modules import with torch, cv2 and PIL blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

DEVICE_MODULES = (
    "edgesam_export.contract",
    "edgesam_export.processing",
    "edgesam_export.runtime",
    "edgesam_export.runtime.onnxruntime",
    "edgesam_export.predictor",
    "edgesam_export.parity",
    "edgesam_export.artifacts",
    "edgesam_export.bench",
    "edgesam_export.official_contract",
)

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

"""Sessions that run an artifact from numpy inputs: one module per runtime (device side).

`open_session(path)` picks the runtime from the artifact's suffix. A new backend adds its session
module here and one entry in `_OPENERS`. The PyTorch reference sessions are host side
(`edgesam_export.host.reference`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from edgesam_export.device.errors import InputError
from edgesam_export.device.runtime.base import Session, metadata_floats

# artifact suffix -> (module under edgesam_export.device.runtime, session class)
_OPENERS: dict[str, tuple[str, str]] = {
    ".onnx": ("onnxruntime", "OnnxRuntimeSession"),
    ".engine": ("tensorrt", "TensorRTSession"),
    ".mlpackage": ("coreml", "CoreMLSession"),
}


def open_session(path: Path | str, **kwargs: Any) -> Session:
    """Open an artifact with the runtime its suffix calls for."""
    path = Path(path)
    opener = _OPENERS.get(path.suffix)
    if opener is None:
        raise InputError(
            f"{path}: no runtime for '{path.suffix}' artifacts"
            f" (supported: {', '.join(sorted(_OPENERS))})"
        )
    module = importlib.import_module(f"{__name__}.{opener[0]}")
    session: Session = getattr(module, opener[1])(path, **kwargs)
    return session


def artifact_suffixes() -> tuple[str, ...]:
    return tuple(sorted(_OPENERS))


__all__ = ["Session", "artifact_suffixes", "metadata_floats", "open_session"]

"""Backends behind one small interface: `Target.export(loaded, graph, options) -> Artifact`.

A new backend is one module here plus one runtime session in `device.runtime`; the CLI,
recipes and the parity checker find it through `get_target`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgesam_export.device.artifacts import Artifact
from edgesam_export.device.errors import InputError
from edgesam_export.host.config import ExportOptions, GraphKind

if TYPE_CHECKING:  # keeps targets.tensorrt (ONNX -> engine) importable without torch
    from edgesam_export.host.models import LoadedModel


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str  # file or bundle suffix of the artifacts, e.g. ".onnx"
    export: Callable[[LoadedModel, GraphKind, ExportOptions], Artifact]


def artifact_path(
    loaded: LoadedModel, graph: GraphKind, options: ExportOptions, suffix: str
) -> Path:
    """`<stem>_<graph>[_stability]<suffix>`; the stem is the checkpoint's, or the model name."""
    stem = Path(loaded.source).stem if not loaded.synthetic else loaded.spec.name
    tag = "_stability" if graph == "decoder" and options.use_stability_score else ""
    return options.output / f"{stem}_{graph}{tag}{suffix}"


def get_target(name: str) -> Target:
    if name == "onnx":
        from edgesam_export.host.targets.onnx import TARGET

        return TARGET
    if name == "coreml":
        from edgesam_export.host.targets.coreml import TARGET as COREML

        return COREML
    raise InputError(f"unknown target {name!r}; available: onnx, coreml")

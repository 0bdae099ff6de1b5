"""Backends behind one small interface: `Target.export(loaded, graph, options) -> Artifact`.

Each target module defines `TARGET`; the backend registry (`device.backends`) names it in the
backend's entry, and `get_target` reads it from there, so the CLI, recipes and build find a new
backend's exporter with no change here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgesam_export.device import backends
from edgesam_export.device.artifacts import Artifact
from edgesam_export.host.config import ExportOptions, GraphKind

if TYPE_CHECKING:  # keeps targets.tensorrt (ONNX -> engine) importable without torch
    from edgesam_export.host.models import LoadedModel


@dataclass(frozen=True)
class Target:
    name: str  # the backend's canonical name in the registry
    export: Callable[[LoadedModel, GraphKind, ExportOptions], Artifact]


def artifact_path(
    loaded: LoadedModel, graph: GraphKind, options: ExportOptions, suffix: str
) -> Path:
    """`<stem>_<graph>[_stability]<suffix>`; the stem is the checkpoint's, or the model name."""
    stem = Path(loaded.source).stem if not loaded.synthetic else loaded.spec.name
    tag = "_stability" if graph == "decoder" and options.use_stability_score else ""
    return options.output / f"{stem}_{graph}{tag}{suffix}"


def get_target(name: str) -> Target:
    """The exporter of a backend named (or aliased) `name`, as its registry entry says."""
    target = backends.get_target(name)
    if not isinstance(target, Target):
        raise TypeError(f"the registry's exporter for {name!r} is not a Target: {target!r}")
    return target

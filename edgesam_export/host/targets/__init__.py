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
from edgesam_export.device.errors import InputError
from edgesam_export.host.config import AttentionRule, ExportOptions, GraphKind

if TYPE_CHECKING:  # keeps targets.tensorrt (ONNX -> engine) importable without torch
    from edgesam_export.host.models import LoadedModel


@dataclass(frozen=True)
class Target:
    name: str  # the backend's canonical name in the registry
    export: Callable[[LoadedModel, GraphKind, ExportOptions], Artifact]


def artifact_stem(loaded: LoadedModel) -> str:
    """The checkpoint's stem, or the model name for synthetic weights."""
    return Path(loaded.source).stem if not loaded.synthetic else loaded.spec.name


def artifact_path(
    loaded: LoadedModel, graph: GraphKind, options: ExportOptions, backend: str
) -> Path:
    """`<stem>_<graph>[_stability]<suffix>`, the suffix being the backend's in the registry."""
    tag = "_stability" if graph == "decoder" and options.use_stability_score else ""
    suffix = backends.get_backend(backend).suffixes[0]
    return options.output / f"{artifact_stem(loaded)}_{graph}{tag}{suffix}"


def decoder_attention(
    loaded: LoadedModel, graph: GraphKind, options: AttentionRule
) -> dict[str, str]:
    """The `decoder.attention` metadata of a SAM-layout decoder ({} for any other graph), and
    the refusal of `--attention` where the decoder has its own attention (SAM 2's layout)."""
    spec = loaded.spec
    if graph != "decoder":
        return {}
    if spec.io_layout != "sam":
        if getattr(options, "attention", None) is not None:
            raise InputError(
                f"--attention applies to SAM's decoder; {spec.name} has the {spec.io_layout}"
                " layout, whose decoder has its own attention: drop --attention"
            )
        return {}
    return {
        "decoder.attention": "auto" if options.switches_attention() else options.attention_form()
    }


def get_target(name: str) -> Target:
    """The exporter of a backend named (or aliased) `name`, as its registry entry says."""
    target = backends.get_target(name)
    if not isinstance(target, Target):
        raise TypeError(f"the registry's exporter for {name!r} is not a Target: {target!r}")
    return target

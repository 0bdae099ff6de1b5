"""The metadata every exported artifact carries (ONNX metadata_props, CoreML user metadata, the
sidecars of backends without a metadata slot). Host side, torch-free at import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edgesam_export import __version__

if TYPE_CHECKING:
    from edgesam_export.host.models.checkpoint import LoadedModel


def base_metadata(loaded: LoadedModel, graph: str, use_stability_score: bool) -> dict[str, str]:
    """Everything a runtime or the parity checker needs to know, as strings (ONNX metadata_props).

    No timestamps or absolute paths: re-exporting the same checkpoint must give identical bytes.
    """
    spec = loaded.spec
    return {
        "edgesam_export.version": __version__,
        "model": spec.name,
        "family": spec.family,
        "graph": graph,
        **spec.preprocessing.to_metadata(),  # img_size, prompt_frame, pixel_*, normalize, pad
        **spec.tokens.to_metadata(),  # num_mask_tokens, mask_tokens_single/multi
        "use_stability_score": str(use_stability_score).lower(),
        "upsample_mode": loaded.upsample_mode or "none",
        "weights": loaded.weights,
        "weights_source": loaded.source if loaded.synthetic else Path(loaded.source).name,
        "checkpoint_sha256": loaded.sha256 or "",
    } | (
        # Extra checkpoint keys left unused (EdgeSAM's official strict=False loading).
        {"ignored_checkpoint_keys": json.dumps(list(loaded.ignored_keys))}
        if getattr(loaded, "ignored_keys", ())
        else {}
    )

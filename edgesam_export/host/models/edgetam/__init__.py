"""EdgeTAM (SAM 2 with a RepViT-M1 trunk): our own export-friendly model code.

`trunk` (RepViT-M1 without timm), `neck` (FPN + sine position encoding), `heads` (SAM 2 prompt
encoder and mask decoder), `model` (the checkpoint's top-level module); `memory` (video side)
is owned by the video mode.
"""

from __future__ import annotations

from edgesam_export.host.models.edgetam.model import (
    EdgeTAM,
    build_edgetam,
    is_memory_key,
    load_state_dict_checked,
)

__all__ = ["EdgeTAM", "build_edgetam", "is_memory_key", "load_state_dict_checked"]

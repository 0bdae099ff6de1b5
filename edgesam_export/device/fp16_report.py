"""The fp16 safety report: which ops of a CoreML program leave fp16's range on real inputs.

Runs the MIL executor over a package with per-op recording on the calibration inputs (the parity
test image and a few prompt sets) and lists every op whose float values overflow fp16
(|v| > 65504: inf on a device) or underflow it (values significant for that op that fall below
fp16's smallest normal number, where it keeps few bits; see `runtime.mil.OpRange`). Values are
recorded before the op's own rounding, so an fp32 package shows what an fp16 conversion would
meet, and an fp16 package shows where it already saturates. Device side: numpy and the
executor only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.parity import make_test_image, prompt_cases
from edgesam_export.device.runtime.mil import FP16_MAX, OpRange

# An op is listed as underflowing when at least this share of its values are significant (at
# least 1e-3 of the op's peak) yet below fp16's smallest normal number (see OpRange).
UNDERFLOW_SHARE = 1e-3
# Prompt sets used for the decoder (the report is about ranges, not about every prompt kind).
REPORT_CASES = ("1 positive point", "point + box", "16 random points")


def _rows(record: dict[str, OpRange]) -> dict[str, list[dict[str, Any]]]:
    overflow: list[dict[str, Any]] = []
    underflow: list[dict[str, Any]] = []
    for var, r in record.items():
        row: dict[str, Any] = {
            "op": r.name,
            "var": var,
            "op_type": r.op_type,
            "max_abs": r.max_abs,
            "min_nonzero_abs": r.min_nonzero_abs if np.isfinite(r.min_nonzero_abs) else None,
            "lost_share": r.lost / r.count if r.count else 0.0,
            "flushed_share": r.flushed / r.count if r.count else 0.0,
        }
        if r.max_abs > FP16_MAX:
            overflow.append(row)
        if r.count and r.lost / r.count >= UNDERFLOW_SHARE:
            underflow.append(row)
    overflow.sort(key=lambda row: -row["max_abs"])
    underflow.sort(key=lambda row: -row["lost_share"])
    return {"overflow": overflow, "underflow": underflow}


def fp16_report(encoder: Any | None, decoders: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Report for an encoder session and decoder sessions (CoreMLSession, `run_recorded`)."""
    sessions = [s for s in [encoder, *(d for _, d in decoders)] if s is not None]
    if not sessions:
        return {"artifacts": {}}
    meta = sessions[0].metadata
    # The model's recorded preprocessing and prompt frame (EfficientViT-SAM-L: 512 input, /255
    # normalisation, prompts in the 1024 frame), as fp16.calibration_feeds reads them.
    params = P.Preprocessing.from_metadata({"img_size": "1024", **meta})
    tensor, info = P.preprocess(make_test_image(), params=params)
    result: dict[str, Any] = {
        "weights": f"{meta.get('weights', '?')} ({meta.get('weights_source', '?')})",
        "inputs": {"image": "parity test image", "prompt_cases": list(REPORT_CASES)},
        "fp16_max": FP16_MAX,
        "underflow_share": UNDERFLOW_SHARE,
        "artifacts": {},
    }
    embeddings = None
    if encoder is not None:
        record: dict[str, OpRange] = {}
        embeddings = encoder.run_recorded({"image": tensor}, record)["image_embeddings"]
        result["artifacts"][encoder.path.name] = _summary(record)
    if embeddings is None:
        embeddings = np.zeros((1, *_embed_shape(decoders[0][1])), np.float32)
        result["inputs"]["image"] = "zero embeddings (no encoder given)"
    cases = [c for c in prompt_cases(params.frame, info.input_size) if c.name in REPORT_CASES]
    for name, dec in decoders:
        record = {}
        for case in cases:
            feeds = {
                "image_embeddings": embeddings,
                "point_coords": case.point_coords,
                "point_labels": case.point_labels,
            }
            if dec.accepts(feeds) is None:
                dec.run_recorded(feeds, record)
        result["artifacts"][name] = _summary(record)
    return result


def _embed_shape(session: Any) -> tuple[int, ...]:
    spec = next(t for t in session.inputs if t.name == "image_embeddings")
    return tuple(int(d) for d in spec.shape[1:])


def _summary(record: dict[str, OpRange]) -> dict[str, Any]:
    rows = _rows(record)
    peak = max((r.max_abs for r in record.values()), default=0.0)
    return {
        "ops_recorded": len(record),
        "peak_abs": peak,
        "fp16_headroom": FP16_MAX / peak if peak else None,
        "safe": not rows["overflow"] and not rows["underflow"],
        **rows,
    }

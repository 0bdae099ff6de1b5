"""The fp16 analysis of CoreML packages: the MIL executor's per-op values, judged by `classify`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgesam_export.device.fp16.criterion import (
    FP16_MAX,
    TensorRange,
    calibration_inputs,
    classify,
    criterion,
)


def coreml_fp16_report(encoder: Any | None, decoders: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The same analysis on CoreML sessions (`run_recorded`: the MIL executor's per-op values).

    Per package: the ops that overflow, come near overflow, or underflow (`classify`), over the
    parity test image and the CALIBRATION_CASES a decoder accepts.
    """
    sessions = [s for s in [encoder, *(d for _, d in decoders)] if s is not None]
    if not sessions:
        return {"artifacts": {}}
    meta = sessions[0].metadata
    tensor, cases = calibration_inputs(meta)
    result: dict[str, Any] = {
        "weights": f"{meta.get('weights', '?')} ({meta.get('weights_source', '?')})",
        "inputs": {"image": "parity test image", "prompt_cases": [c.name for c in cases]},
        **criterion(),
        "artifacts": {},
    }
    embeddings = None
    if encoder is not None:
        record: dict[str, TensorRange] = {}
        embeddings = encoder.run_recorded({"image": tensor}, record)["image_embeddings"]
        result["artifacts"][encoder.path.name] = op_summary(record)
    if embeddings is None:
        spec = next(t for t in decoders[0][1].inputs if t.name == "image_embeddings")
        embeddings = np.zeros((1, *(int(d) for d in spec.shape[1:])), np.float32)
        result["inputs"]["image"] = "zero embeddings (no encoder given)"
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
        result["artifacts"][name] = op_summary(record)
    return result


def op_summary(record: Mapping[str, TensorRange]) -> dict[str, Any]:
    """One package's rows: ops per `classify` flag, the peak and the headroom left."""
    rows: dict[str, list[dict[str, Any]]] = {"overflow": [], "near_overflow": [], "underflow": []}
    for var, r in record.items():
        verdict = classify(r)
        row = {
            "op": r.name,
            "var": var,
            "op_type": r.op_type,
            "max_abs": r.max_abs,
            "min_nonzero_abs": r.min_nonzero_abs if np.isfinite(r.min_nonzero_abs) else None,
            "lost_share": r.lost_share,
            "flushed_share": r.flushed_share,
        }
        if verdict.overflow:
            rows["overflow"].append(row)
        elif verdict.near_overflow:
            rows["near_overflow"].append(row)
        if verdict.underflow:
            rows["underflow"].append(row)
    for key in ("overflow", "near_overflow"):
        rows[key].sort(key=lambda row: -row["max_abs"])
    rows["underflow"].sort(key=lambda row: -row["lost_share"])
    peak = max((r.max_abs for r in record.values()), default=0.0)
    return {
        "ops_recorded": len(record),
        "peak_abs": peak,
        "fp16_headroom": FP16_MAX / peak if peak else None,
        "safe": not any(classify(r).unsafe for r in record.values()),
        **rows,
    }

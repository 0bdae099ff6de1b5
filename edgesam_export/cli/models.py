"""`edgesam-export models`: every registered family and variant, with what is verified for it."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from edgesam_export.cli import DebugOpt, JsonOpt, emit_json, guarded, human_console


def model_rows() -> list[dict[str, Any]]:
    """One row per registered variant; parameter counts from the shipped layouts (no torch)."""
    from edgesam_export.device.models import list_specs, parameter_count

    rows = []
    for spec in list_specs():
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "encoder_input": spec.img_size,
                "prompt_frame": spec.frame,
                "normalize": spec.normalize,
                "mask_tokens": {
                    "count": spec.tokens.count,
                    "single": list(spec.tokens.single),
                    "multi": list(spec.tokens.multi),
                },
                "parameters": parameter_count(spec),
                "checkpoint_format": spec.checkpoint_format,
                "upsample_modes": list(spec.upsample_modes),
                "targets_verified": list(spec.verified_targets),
                "graphs": {
                    graph: {
                        "inputs": [t.name for t in spec.graph_io(graph)[0]],
                        "outputs": [t.name for t in spec.graph_io(graph)[1]],
                    }
                    for graph in spec.graphs
                },
                "description": spec.description,
            }
        )
    return rows


def models_cmd(json_path: JsonOpt = None, debug: DebugOpt = False) -> None:
    """List every registered family and variant: input size, prompt frame, parameter count and
    the targets verified for it (an export + parity test exists for each listed target)."""
    with guarded(debug):
        rows = model_rows()
        table = Table(title="Registered models")
        for col in ("name", "family", "input", "frame", "params", "targets verified", "notes"):
            table.add_column(col)
        for r in rows:
            notes = f"upsample: {', '.join(r['upsample_modes'])}" if r["upsample_modes"] else ""
            if len(r["graphs"]) > 2 or any(len(g["outputs"]) > 2 for g in r["graphs"].values()):
                notes = "graphs: " + ", ".join(
                    f"{name} -> {'+'.join(g['outputs'])}" for name, g in r["graphs"].items()
                )
            table.add_row(
                r["name"],
                r["family"],
                f"{r['encoder_input']}",
                f"{r['prompt_frame']}",
                f"{r['parameters'] / 1e6:.2f}M",
                ", ".join(r["targets_verified"]) or "-",
                notes,
            )
        human_console(json_path).print(table)
        emit_json(json_path, {"models": rows})

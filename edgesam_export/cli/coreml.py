"""What `edgesam-export coreml` adds to its generated command: the fp16 safety report.

The command itself (options from `CoreMLOptions`, export, parity, JSON) is generated from the
backend registry by `cli/backend_command.py`; this module holds only the CoreML-specific part.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer
from rich.table import Table

from edgesam_export.cli import progress
from edgesam_export.cli.backend_command import CommandExtras


def _render_fp16(report: dict[str, Any], out: Any) -> None:
    table = Table(title=f"fp16 safety ({report.get('weights', '?')})")
    for col in (
        "artifact",
        "ops",
        "peak |v|",
        "headroom",
        "(near) overflow",
        "underflow",
        "verdict",
    ):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for name, row in report["artifacts"].items():
        headroom = row["fp16_headroom"]
        table.add_row(
            name,
            str(row["ops_recorded"]),
            f"{row['peak_abs']:.3g}",
            "-" if headroom is None else f"{headroom:.3g}x",
            ", ".join(r["op"] for r in (row["overflow"] + row["near_overflow"])[:3]) or "none",
            ", ".join(r["op"] for r in row["underflow"][:3]) or "none",
            "[green]safe[/]" if row["safe"] else "[yellow]check[/]",
        )
    out.print(table)


def _check(options: Any, values: dict[str, Any]) -> None:
    """An impossible deployment target for the other options fails before any work."""
    from edgesam_export.host.targets.coreml import deployment_target

    deployment_target(options)


def _fp16_report(run: Any, values: dict[str, Any], payload: dict[str, Any], out: Any) -> None:
    """`--fp16-report`: per-op fp16 overflow and underflow on the published packages."""
    if not values["fp16_report"] or not run.published:  # an unpublished run's packages are gone
        return
    from edgesam_export.device.backends import open_session
    from edgesam_export.device.fp16 import coreml_fp16_report as make_report

    progress("fp16 safety report: running the MIL executor with per-op recording")
    sessions = {a.graph: (a.path.name, open_session(a.path, runtime="mil")) for a in run.artifacts}
    enc = sessions["encoder"][1] if "encoder" in sessions else None
    decs = [sessions["decoder"]] if "decoder" in sessions else []
    payload["fp16_report"] = make_report(enc, decs)
    _render_fp16(payload["fp16_report"], out)


FP16ReportOpt = Annotated[
    bool,
    typer.Option(
        "--fp16-report",
        help="List the ops whose activations overflow or underflow fp16 on the calibration"
        " inputs (MIL executor).",
    ),
]

EXTRAS = CommandExtras(
    parameters=(
        inspect.Parameter(
            "fp16_report", inspect.Parameter.KEYWORD_ONLY, annotation=FP16ReportOpt, default=False
        ),
    ),
    check=_check,
    columns=(("target", "coreml.minimum_deployment_target"),),
    after=_fp16_report,
)

"""Thin Typer apps: parse, call the library, render with Rich, map errors to exit codes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesam_export.device.errors import EdgeSamExportError, ExitCode

console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def guarded(debug: bool = False) -> Iterator[None]:
    """Turn library errors into one clear line and their exit code; bugs into exit 1."""
    try:
        yield
    except typer.Exit:
        raise
    except EdgeSamExportError as exc:
        if debug or os.environ.get("EDGESAM_EXPORT_DEBUG"):
            err_console.print_exception()
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: nothing half-written was left in place[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug or os.environ.get("EDGESAM_EXPORT_DEBUG"):
            err_console.print_exception()
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "Re-run with --debug for the traceback and please report it."
        )
        raise typer.Exit(int(ExitCode.INTERNAL)) from None


def human_console(json_path: Path | None) -> Console:
    """Human output goes to stderr when the JSON report takes stdout (`--json -`)."""
    return err_console if json_path is not None and str(json_path) == "-" else console


def emit_json(json_path: Path | None, payload: dict[str, Any]) -> None:
    """Write the `--json` report: to stdout for '-', else atomically to the file."""
    if json_path is None:
        return
    if str(json_path) == "-":
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    from edgesam_export.device.artifacts import write_json_atomic

    write_json_atomic(json_path, payload)


def progress(step: str) -> None:
    """Progress lines go to stderr so that `--json -` output on stdout stays machine-readable."""
    err_console.print(f"[dim]•[/] {step}")


class Upsample(str, Enum):
    bicubic = "bicubic"
    bilinear = "bilinear"


# Arguments and options shared by the commands of both CLIs (Typer needs Optional on 3.10).
CkptArg = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(
        help="Checkpoint (.pth state dict). Omit for synthetic untrained weights.",
        show_default=False,
    ),
]
SeedOpt = Annotated[int, typer.Option(min=0, help="Synthetic-weight seed (only without CKPT).")]


class Synthetic(str, Enum):
    random = "random"
    calibrated = "calibrated"


SyntheticOpt = Annotated[
    Synthetic,
    typer.Option(
        case_sensitive=False,
        help="Synthetic weights (only without CKPT): calibrated (BatchNorm statistics fitted so"
        " activations stay fp16-safe, like trained weights) or random (the fixture rule as drawn).",
    ),
]
UpsampleOpt = Annotated[
    Optional[Upsample],  # noqa: UP045
    typer.Option(
        case_sensitive=False,
        help="Neck upsampling: bicubic (trained, the default) or bilinear (what the official"
        " exports compute).",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--json", help="Write a machine-readable report here ('-' for stdout).", show_default=False
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registered model name.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Output directory.")]


def render_parity(report: Any, out: Console) -> None:
    """The parity table every command that checks artifacts prints (onnx, coreml, parity)."""
    reference = report.inputs.get("reference", "PyTorch")
    table = Table(title=f"Parity against {reference} (worst case per check)")
    for col in (
        "artifact",
        "check",
        "max abs",
        "tolerance",
        "mean abs",
        "rel",
        "cosine",
        "mask IoU",
        "verdict",
    ):
        table.add_column(col, justify="left" if col in ("artifact", "check") else "right")
    for row in report.summary():
        iou = f"{row['min_mask_iou']:.4f}" if "min_mask_iou" in row else "-"
        verdict = "[green]pass[/]" if row["passed"] else "[bold red]FAIL[/]"
        table.add_row(
            row["artifact"],
            row["check"],
            f"{row['max_abs']:.2e}",
            f"{row['tolerance']:.0e}",
            f"{row['mean_abs']:.2e}",
            f"{row['rel']:.2e}",
            f"{row['cosine']:.6f}",
            iou,
            verdict,
        )
    out.print(table)
    for err in report.errors:
        err_console.print(
            f"[bold red]unreadable:[/] {escape(err['artifact'])}: {escape(err['error'])}"
        )


def parity_exit(report: Any) -> None:
    """Exit 5 when an artifact could not be run, 4 when an output is outside tolerance."""
    if report.errors:
        raise typer.Exit(int(ExitCode.ARTIFACT_UNREADABLE))
    if not report.passed:
        raise typer.Exit(int(ExitCode.PARITY_FAILED))

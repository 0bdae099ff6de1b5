"""Thin Typer apps: parse, call the library, render with Rich, map errors to exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesam_export.cli.options import input_error
from edgesam_export.device.errors import EdgeSamExportError, ExitCode, InputError

console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _json_path() -> Path | None:
    """The running command's `--json` value (every command names its parameter json_path)."""
    try:  # Typer >= 0.20 vendors Click as typer._click (its own context stack)
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context  # type: ignore[no-redef]

    ctx = get_current_context(silent=True)
    value = ctx.params.get("json_path") if ctx is not None else None
    return value if isinstance(value, Path) else None


@contextmanager
def guarded(debug: bool = False) -> Iterator[None]:
    """Turn library errors into one clear line and their exit code; bugs into exit 1.

    A `--json` file is checked before any work (a folder there is refused, never replaced) and
    written on every exit that has something to say: an error too, as
    {"ok": false, "error": ..., "exit_code": ...}, so CI reads why a run stopped early.
    """
    json_path = _json_path()
    try:
        if json_path is not None and str(json_path) != "-" and json_path.is_dir():
            raise InputError(f"--json {json_path} is a folder: give a file path")
        yield
    except typer.Exit:
        raise
    except (EdgeSamExportError, ValidationError) as exc:
        if debug or os.environ.get("EDGESAM_EXPORT_DEBUG"):
            err_console.print_exception()
        # an option object that refused a value is bad input, said in one line
        error = input_error(exc) if isinstance(exc, ValidationError) else exc
        err_console.print(f"[bold red]error:[/] {escape(str(error))}")
        _json_error(json_path, str(error), error.exit_code)
        raise typer.Exit(int(error.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: nothing half-written was left in place[/]")
        _json_error(json_path, "interrupted", 130)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug or os.environ.get("EDGESAM_EXPORT_DEBUG"):
            err_console.print_exception()
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "Re-run with --debug for the traceback and please report it."
        )
        _json_error(json_path, f"internal error: {type(exc).__name__}: {exc}", ExitCode.INTERNAL)
        raise typer.Exit(int(ExitCode.INTERNAL)) from None


def _json_error(json_path: Path | None, message: str, code: int) -> None:
    """The `--json` report of a run that stopped on an error (never raises: the error is
    already on stderr, and a second one would hide it)."""
    if json_path is None or (str(json_path) != "-" and json_path.is_dir()):
        return
    try:
        emit_json(json_path, {"ok": False, "error": message, "exit_code": int(code)})
    except (EdgeSamExportError, OSError) as exc:
        err_console.print(f"[bold red]error:[/] --json not written: {escape(str(exc))}")


def human_console(json_path: Path | None) -> Console:
    """Human output goes to stderr when the JSON report takes stdout (`--json -`)."""
    return err_console if json_path is not None and str(json_path) == "-" else console


def emit_json(json_path: Path | None, payload: dict[str, Any]) -> None:
    """Write the `--json` report: to stdout for '-', else atomically to the file."""
    if json_path is None:
        return
    from edgesam_export.device.artifacts import json_text, write_json_atomic

    if str(json_path) == "-":
        typer.echo(json_text(payload))
        return

    write_json_atomic(json_path, payload)


def progress(step: str) -> None:
    """Progress lines go to stderr so that `--json -` output on stdout stays machine-readable."""
    err_console.print(f"[dim]•[/] {step}")


def count_bar(label: str, unit: str) -> Any:
    """The bar of a long loop over a known count (`track`'s frames, `everything`'s decoder
    calls): `• label [bar] done/total unit elapsed` on stderr, gone when it ends."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn(f"[dim]•[/] {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


class Upsample(str, Enum):
    bicubic = "bicubic"
    bilinear = "bilinear"


# Arguments and options shared by the commands of both CLIs (Typer needs Optional on 3.10).
CkptArg = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Argument(
        help="Checkpoint (.pth state dict). Omit for synthetic weights (--synthetic).",
        show_default=False,
    ),
]
SeedOpt = Annotated[
    Optional[int],  # noqa: UP045  (None: not given; a seed with CKPT would be ignored)
    typer.Option(
        min=0, help="Synthetic-weight seed (only without CKPT) [default: 0].", show_default=False
    ),
]


class Synthetic(str, Enum):
    untrained = "untrained"
    calibrated = "calibrated"


SyntheticOpt = Annotated[
    Optional[Synthetic],  # noqa: UP045
    typer.Option(
        case_sensitive=False,
        help="Synthetic weights (only without CKPT): calibrated (BatchNorm statistics fitted so"
        " activations stay fp16-safe, like trained weights; the default) or untrained (the"
        " fixture rule as drawn).",
        show_default=False,
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


def model_options(
    checkpoint: Path | None,
    model: str,
    *,
    seed: int | None = None,
    synthetic: Synthetic | None = None,
    upsample: Upsample | None = None,
    strict: bool = False,
) -> Any:
    """The `ModelOptions` of an export command, refused before anything prints or loads.

    `--seed` and `--synthetic` choose synthetic weights: with CKPT they would be silently
    ignored, so they are an error; an unknown `--model` fails here, before the synthetic-weights
    banner and the load message (the model table is torch-free data).
    """
    given = [n for n, v in (("--seed", seed), ("--synthetic", synthetic)) if v is not None]
    if checkpoint is not None and given:
        raise InputError(
            f"{' and '.join(given)} only {'apply' if len(given) > 1 else 'applies'} to synthetic"
            " weights and would be ignored with"
            f" CKPT {checkpoint}; drop {'them' if len(given) > 1 else 'it'}"
        )
    from edgesam_export.device.models import get_spec
    from edgesam_export.host.config import DEFAULT_SYNTHETIC, ModelOptions

    options = ModelOptions(
        model=model,
        checkpoint=checkpoint,
        seed=0 if seed is None else seed,
        upsample=None if upsample is None else upsample.value,
        synthetic=DEFAULT_SYNTHETIC if synthetic is None else synthetic.value,
        strict=strict,
    )
    get_spec(options.model)
    return options


def warn_synthetic(
    subject: str, weights: str = "", consequence: str = "masks will not follow the image"
) -> None:
    """The one banner for synthetic weights (export, everything, bench): what carries them,
    which ones, and what that means for the output."""
    which = f" ({weights})" if weights else ""
    err_console.print(
        f"[yellow]{subject} SYNTHETIC weights{escape(which)}, not trained ones: {consequence}.[/]"
    )


def announce_synthetic(options: Any) -> None:
    """Say loudly, before exporting, that weights without a checkpoint are synthetic."""
    if options.checkpoint is None:
        warn_synthetic(
            "No checkpoint given: exporting deterministic",
            f"{options.synthetic}, seed {options.seed}",
        )


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
            f"{row['tolerance']:.0e}"
            + (" of rel" if row.get("relative") else "")  # bounds the rel column (SAM 2)
            + (" estimate" if row.get("estimate") else ""),
            f"{row['mean_abs']:.2e}",
            f"{row['rel']:.2e}",
            f"{row['cosine']:.6f}",
            iou,
            verdict,
        )
    out.print(table)
    for note in report.notes():  # NaN/inf and where it started; cases an artifact refused
        err_console.print(f"[yellow]note:[/] {escape(note)}")
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


def say_published(run: Any, what: str, out: Console) -> None:
    """Where the artifacts are, or that the failed run left the previous build in place."""
    verdict = ""
    if run.report is not None:
        verdict = f"; parity {'[green]PASSED[/]' if run.report.passed else '[red]FAILED[/]'}"
    if run.published:
        out.print(f"Artifacts in [bold]{run.output.resolve()}[/] ({what}){verdict}")
    else:
        err_console.print(
            f"[bold red]not published:[/] parity failed; the previous build in"
            f" {escape(str(run.output))} stands ({what})"
        )

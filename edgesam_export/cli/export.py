"""`edgesam-export`: the app (export commands generated from the backend registry, then the
hand-written command table) and the `parity` command."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from edgesam_export.cli import (
    DebugOpt,
    JsonOpt,
    coreml,
    emit_json,
    err_console,
    guarded,
    human_console,
    parity_exit,
    progress,
    render_parity,
)
from edgesam_export.cli.backend_command import CommandExtras, backend_command
from edgesam_export.cli.everything import everything_cmd
from edgesam_export.cli.models import models_cmd
from edgesam_export.cli.options import ExitCodeGroup, ReportOpt
from edgesam_export.cli.recipes import build_cmd, recipe_app, verify_cmd
from edgesam_export.cli.tensorrt import trt_check_cmd, trt_cmd
from edgesam_export.cli.track import track_cmd
from edgesam_export.cli.web import web_cmd
from edgesam_export.device.backends import Backend, all_backends
from edgesam_export.device.errors import InputError


class Reference(str, Enum):
    auto = "auto"
    torch = "torch"
    outputs = "outputs"
    golden = "golden"  # the old name of `outputs` (golden now means the official fixtures)


def parity_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="[CKPT] ARTIFACT_DIR: the checkpoint the artifacts came from (omit"
            " for artifacts exported from synthetic weights, or to use the reference"
            " outputs shipped with them) and their directory.",
            show_default=False,
        ),
    ],
    reference: Annotated[
        Reference,
        typer.Option(
            case_sensitive=False,
            help="Compare with the PyTorch graphs (torch), with the reference outputs"
            " shipped in ARTIFACT_DIR (outputs; 'golden' is its old name), or torch where"
            " installed and the weights can be rebuilt, else the reference outputs (auto).",
        ),
    ] = Reference.auto,
    report_dir: ReportOpt = None,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Compare every artifact in ARTIFACT_DIR with the reference; non-zero exit on failure.

    Options (model, upsample mode, stability flag) are read from the artifacts' metadata.
    Without torch (or without CKPT for artifacts exported from one), the reference is the
    reference outputs the export wrote (<stem>_reference.npz). Exit 3 when CKPT or the
    reference outputs do not belong to the artifacts, 4 when an output is outside tolerance or
    not finite, 5 when an artifact cannot be read or run.
    """
    from edgesam_export.host.pipeline import ReferenceKind, verify_artifacts

    with guarded(debug):
        if len(paths) not in (1, 2):
            raise InputError("expected [CKPT] ARTIFACT_DIR")
        checkpoint, artifact_dir = (None, paths[0]) if len(paths) == 1 else (paths[0], paths[1])
        if reference is Reference.golden:
            err_console.print(
                "[yellow]warning:[/] --reference golden is now --reference outputs (golden"
                " names the official code's fixtures)"
            )
        kind = cast(
            "ReferenceKind", "outputs" if reference is Reference.golden else reference.value
        )
        record: dict[str, Any] | None = {} if report_dir is not None else None
        report = verify_artifacts(checkpoint, artifact_dir, progress, reference=kind, record=record)
        render_parity(report, human_console(json_path))
        emit_json(json_path, report.to_json())
        if report_dir is not None and record is not None:
            from edgesam_export.device.report import write_parity_report

            page = write_parity_report(report_dir, report, record)
            human_console(json_path).print(f"report: [bold]{page}[/]")
        human_console(json_path).print(
            "parity " + ("[green]PASSED[/]" if report.passed else "[bold red]FAILED[/]")
        )
        parity_exit(report)


# The hand-written `edgesam-export` commands, in the order `--help` lists them after the
# export commands generated from the backend registry. A command module defines plain
# functions; only `build_app` registers them (no import side effects).
COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("parity", parity_cmd),
    ("build", build_cmd),
    ("verify", verify_cmd),
    ("trt", trt_cmd),
    ("trt-check", trt_check_cmd),
    ("everything", everything_cmd),
    ("web", web_cmd),
    ("models", models_cmd),
    ("track", track_cmd),
)
GROUPS: tuple[typer.Typer, ...] = (recipe_app,)  # `recipe check|schema`
# What a generated export command adds on top of its options class, by backend (optional).
EXTRAS: dict[str, CommandExtras] = {"coreml": coreml.EXTRAS}


def export_backends() -> tuple[Backend, ...]:
    """The backends whose command is generated: an exporter and an options class in the
    registry, and no hand-written command under one of their names (TensorRT's `trt` builds
    engines from ONNX graphs too)."""
    written = {name for name, _ in COMMANDS}
    return tuple(
        b
        for b in all_backends()
        if b.exporter and b.recipe_options and not written.intersection(b.names)
    )


def build_app() -> typer.Typer:
    """The `edgesam-export` app as the backend registry stands now: one generated export
    command per backend, then the hand-written commands and groups."""
    app = typer.Typer(
        name="edgesam-export",
        help=(
            "Export Segment Anything family checkpoints (EdgeSAM first) to every registered"
            f" target ({', '.join(b.name for b in all_backends() if b.exporter)}) and verify"
            " them against PyTorch. Without CKPT, deterministic synthetic weights are used"
            " (--synthetic)."
            "\n\nExit codes: 0 ok, 1 internal error, 2 usage, 3 bad input (checkpoint, options),"
            " 4 parity failed, 5 artifact unreadable, 6 backend not installed, 7 export failed."
        ),
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # Click's plain help: readable at 80 columns
        cls=ExitCodeGroup,  # a bad option value exits 3, like the values our code rejects
    )
    for entry in export_backends():
        app.command(entry.name)(backend_command(entry, EXTRAS.get(entry.name)))
    for name, command in COMMANDS:
        app.command(name)(command)
    for group in GROUPS:
        app.add_typer(group)
    return app


app = build_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`edgesam-export build`, `verify` and `recipe schema|check`: declarative, verifiable builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from edgesam_export.cli import DebugOpt, JsonOpt, emit_json, err_console, guarded, human_console
from edgesam_export.cli.options import WaitOpt
from edgesam_export.device.errors import ExitCode, InputError

recipe_app = typer.Typer(name="recipe", help="Recipe schema and validation.", no_args_is_help=True)

STATUS_STYLE = {
    "passed": "[green]passed[/]",
    "unchecked": "[yellow]unchecked[/]",
    "parity_failed": "[bold red]parity failed[/]",
    "failed": "[bold red]FAILED[/]",
    "unavailable": "[bold red]unavailable[/]",
}


def build_cmd(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files (YAML).", show_default=False)],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Build root: one folder per recipe.")
    ] = Path("artifacts/build"),
    only: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--only", help="Build only this target (repeatable).", show_default=False),
    ] = None,
    checkpoint: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--checkpoint",
            help="Checkpoint for every recipe (overrides weights.checkpoint).",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Targets built at once.")] = 1,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Build every target of each recipe, check parity, write manifest.json, publish atomically.

    Exit 0 when every target passed (or parity is off), else the exit code of the first target
    that did not: 3 bad input, 4 parity failed, 5 unreadable, 6 backend not installed, 7 export
    failed. Nothing half-built is ever published, and a failed build never replaces a good one.
    """
    from edgesam_export.host.build import build

    with guarded(debug):
        out = human_console(json_path)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("building targets", total=None)

            def step(text: str) -> None:
                bar.console.print(f"[dim]•[/] {escape(text)}")
                bar.update(task, description=escape(text))

            def target_done(result: Any) -> None:
                bar.console.print(
                    f"  {result.recipe}/{result.target}: {STATUS_STYLE[result.status]}"
                    f" ({result.seconds.get('total', 0):.1f} s)"
                )
                bar.advance(task)

            result = build(
                recipes,
                output,
                only=only,
                checkpoint=checkpoint,
                jobs=jobs,
                progress=step,
                on_target=target_done,
                on_plan=lambda total: bar.update(task, total=total),
                wait=wait,
            )
        table = Table(title="Build")
        for col in (
            "recipe",
            "target",
            "status",
            "artifacts",
            "MB",
            "load s",
            "export s",
            "parity s",
        ):
            table.add_column(col, justify="right" if col.endswith(("s", "MB")) else "left")
        for r in result.recipes:
            for t in r.targets:
                size = sum(a["size"] or 0 for a in t.artifacts) / 1e6
                table.add_row(
                    r.recipe.recipe.name,
                    t.target,
                    STATUS_STYLE[t.status],
                    ", ".join(a["path"] for a in t.artifacts) or "-",
                    f"{size:.1f}",
                    f"{t.seconds.get('load', 0):.1f}",
                    f"{t.seconds.get('export', 0):.1f}",
                    f"{t.seconds['parity']:.1f}" if "parity" in t.seconds else "-",
                )
        out.print(table)
        for r in result.recipes:
            for t in r.targets:
                if t.error:
                    err_console.print(
                        f"[bold red]{escape(t.recipe)}/{escape(t.target)}:[/] {escape(t.error)}"
                    )
            status = r.manifest["status"]
            if not r.published:
                err_console.print(
                    f"[bold red]{escape(r.recipe.recipe.name)}: not published:[/] this build"
                    f" failed; the previous build in {escape(str(r.folder))} stands"
                )
                continue
            out.print(
                f"{r.recipe.recipe.name}: [bold]{r.folder}[/]"
                f" {STATUS_STYLE.get(status, status)}"
                f" (manifest {r.manifest['content_sha256'][:16]})"
            )
        emit_json(json_path, result.to_json())
        if result.exit_code:
            raise typer.Exit(result.exit_code)


def _manifest_folders(folder: Path) -> list[Path]:
    """DIR itself when it holds a manifest, else each sub-folder that does (a build root)."""
    from edgesam_export.device.manifest import MANIFEST_NAME

    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    if (folder / MANIFEST_NAME).exists():
        return [folder]
    found = sorted(p.parent for p in folder.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise InputError(f"{folder}: no {MANIFEST_NAME} in it or in its sub-folders")
    return found


def verify_cmd(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="A build folder (with manifest.json) or a build root holding several.",
            show_default=False,
        ),
    ],
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Re-hash every file against its manifest; exit 5 naming each file that does not match.

    Catches flipped bytes, missing or extra files (hidden ones too), a manifest edited by hand,
    and leftovers of interrupted runs (in a build root too).
    """
    from edgesam_export.device import manifest as mf
    from edgesam_export.device.manifest import LEFTOVER_PROBLEM, Verification, leftover, verify

    with guarded(debug):
        out = human_console(json_path)
        reports = []
        for root in folders:
            own = Verification(root)  # a build root's own leftovers (staging folders)
            if root.is_dir() and not (root / mf.MANIFEST_NAME).exists():
                names = sorted(p.name for p in root.iterdir() if leftover(p.name))
                own.problems = [(name, LEFTOVER_PROBLEM) for name in names]
            try:
                folders_here = _manifest_folders(root)
            except InputError:
                if not own.problems:
                    raise
                folders_here = []
            if own.problems:
                reports.append(own)
                for name, problem in own.problems:
                    err_console.print(
                        f"[bold red]mismatch:[/] {escape(str(root / name))}: {escape(problem)}"
                    )
            for folder in folders_here:
                result = verify(folder)
                reports.append(result)
                if result.ok:
                    status = result.status or "unknown"
                    out.print(
                        f"[green]ok[/] {folder} ({result.checked} files match the manifest;"
                        f" status {STATUS_STYLE.get(status, status)})"
                    )
                for name, problem in result.problems:
                    err_console.print(
                        f"[bold red]mismatch:[/] {escape(str(folder / name))}: {escape(problem)}"
                    )
        emit_json(
            json_path, {"ok": all(r.ok for r in reports), "folders": [r.to_json() for r in reports]}
        )
        if not all(r.ok for r in reports):
            raise typer.Exit(int(ExitCode.ARTIFACT_UNREADABLE))


@recipe_app.command("schema")
def schema_cmd(
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Print the recipe JSON schema (point your editor's YAML plugin at it)."""
    from edgesam_export.host.recipes import json_schema

    with guarded(debug):  # a folder or an unwritable path: one line, exit 3
        text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
        if output is None:
            typer.echo(text, nl=False)
        else:
            from edgesam_export.device.artifacts import write_json_atomic

            write_json_atomic(output, json_schema())


@recipe_app.command("check")
def check_cmd(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files.", show_default=False)],
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Validate recipes without building (exit 3 with file:line: field: message)."""
    from edgesam_export.host.recipes import load_recipe, resolved

    with guarded(debug):
        checked = []
        for path in recipes:
            loaded = load_recipe(path)
            checked.append(
                {"file": str(path), "sha256": loaded.sha256, "recipe": resolved(loaded.recipe)}
            )
            human_console(json_path).print(
                f"[green]ok[/] {path}: {len(loaded.recipe.targets)} target(s):"
                f" {', '.join(loaded.recipe.target_names())}"
            )
        emit_json(json_path, {"recipes": checked})

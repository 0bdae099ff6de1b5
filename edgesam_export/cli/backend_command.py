"""Export commands generated from the backend registry: one builder, no hand-written copies.

Each backend with an exporter and an options class (`recipe_options` in its registry entry, a
pydantic model in `host/config.py`) gets `edgesam-export <name>`: the options every export shares
(CKPT, `--encoder`/`--decoder`, `--model`, `--output`, weights, `--json`, ...) come from
`shared_parameters()`, and each field of its options class becomes one option, named
`--field-name`, typed, with the field's default, its description as help and the values it
allows. The command calls the one export path (`host.pipeline.export_and_check`) and renders the
same table, parity and JSON for every backend. A new backend is its registry entry and its
options class: nothing here changes. `CommandExtras` is the optional, per-backend part a command
may add on top (CoreML's `--fp16-report`), kept beside that backend's CLI module.

Values are validated once, by the options class, so a refused value reads the same on the
command line and in a recipe (one line naming the values the field allows, exit 3).
"""

from __future__ import annotations

import inspect
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesam_export.cli import (
    CkptArg,
    DebugOpt,
    JsonOpt,
    ModelOpt,
    OutputOpt,
    SeedOpt,
    SyntheticOpt,
    UpsampleOpt,
    announce_synthetic,
    emit_json,
    err_console,
    guarded,
    human_console,
    model_options,
    parity_exit,
    progress,
    render_parity,
    say_published,
)
from edgesam_export.cli.options import WaitOpt, flag, input_error
from edgesam_export.device.backends import Backend, recipe_options
from edgesam_export.host.config import ExportOptions

#: Option-class fields the shared options stand for (`--encoder`/`--decoder`, `--output`).
SHARED_FIELDS = ("graphs", "output")

_Opt = inspect.Parameter.KEYWORD_ONLY
_Pos = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _param(name: str, annotation: Any, default: Any, kind: Any = _Opt) -> inspect.Parameter:
    return inspect.Parameter(name, kind, annotation=annotation, default=default)


def shared_parameters() -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """The options every generated export command has: (before, after) its backend's fields."""
    encoder = Annotated[bool, typer.Option("--encoder", help="Export only the encoder.")]
    decoder = Annotated[bool, typer.Option("--decoder", help="Export only the decoder.")]
    verify = Annotated[bool, typer.Option(help="Run the parity check after export.")]
    strict = Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse checkpoint keys the official loader ignores (EdgeSAM's fpn.*/rpn_head.*).",
        ),
    ]
    before = [
        _param("checkpoint", CkptArg, None, _Pos),
        _param("encoder", encoder, False),
        _param("decoder", decoder, False),
        _param("upsample", UpsampleOpt, None),
    ]
    after = [
        _param("verify", verify, True),
        _param("output", OutputOpt, Path("artifacts")),
        _param("model", ModelOpt, "edge_sam"),
        _param("seed", SeedOpt, None),
        _param("synthetic", SyntheticOpt, None),
        _param("strict", strict, False),
        _param("json_path", JsonOpt, None),
        _param("debug", DebugOpt, False),
        _param("wait", WaitOpt, 0.0),
    ]
    return before, after


@dataclass(frozen=True)
class CommandExtras:
    """What one backend's command adds to the generated one (all optional).

    `parameters`: extra options (their values reach `check` and `after` by name);
    `check(options, values)`: refuse an impossible combination before any work;
    `columns`: (title, metadata key) added to the artifact table;
    `after(run, values, payload, out)`: a post-export step that may add to the JSON payload.
    """

    parameters: tuple[inspect.Parameter, ...] = ()
    check: Callable[[Any, dict[str, Any]], None] | None = None
    columns: tuple[tuple[str, str], ...] = ()
    after: Callable[[Any, dict[str, Any], dict[str, Any], Console], None] | None = None


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None was allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        rest = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
        return rest, len(args) < len(get_args(annotation))
    return annotation, False


def _choices(annotation: Any) -> tuple[Any, ...]:
    return tuple(a for a in get_args(annotation) if a is not None)


def field_parameter(options_cls: type[ExportOptions], name: str) -> inspect.Parameter:
    """One field of an options class as a Typer option: type, default, help, allowed values."""
    from edgesam_export.host.config import allowed_values

    info = options_cls.model_fields[name]
    base, optional = _without_none(info.annotation)
    default = info.get_default(call_default_factory=True)
    optional = optional or default is None
    # Field(description=...) is the help text; a field without one still gets its option (a
    # test requires the description, so the gap is caught without breaking the command line).
    help_text = (info.description or "").strip() or name.replace("_", " ")
    if not help_text.endswith("."):
        help_text += "."
    choices = _choices(base) if get_origin(base) is Literal else ()
    allowed = allowed_values(options_cls, name)
    kwargs: dict[str, Any] = {}
    if base is bool:
        names = (flag(name),) if default is False else (f"{flag(name)}/--no-{flag(name)[2:]}",)
        py_type: Any = bool
    elif choices:
        names = (flag(name),)
        py_type = str
        kwargs["metavar"] = "<" + "|".join(map(str, choices)) + ">"
    else:
        names = (flag(name),)
        py_type = base if base in (int, float, str, Path) else str
        if allowed:
            help_text += f" Allowed: {allowed}."
    if optional:
        py_type = Optional[py_type]  # noqa: UP045  (Typer needs Optional on 3.10)
        kwargs["show_default"] = default is not None
    option = typer.Option(*names, help=help_text, **kwargs)
    return _param(name, Annotated[py_type, option], default)


def _normalise(options_cls: type[ExportOptions], name: str, value: Any) -> Any:
    """A choice given in another case (`--precision FP16`) as the field spells it."""
    if isinstance(value, str):
        base, _ = _without_none(options_cls.model_fields[name].annotation)
        for choice in _choices(base) if get_origin(base) is Literal else ():
            if isinstance(choice, str) and choice.lower() == value.lower():
                return choice
    return value


def option_fields(options_cls: type[ExportOptions]) -> list[str]:
    """The fields of an options class that become options of its command, in class order."""
    return [n for n in options_cls.model_fields if n not in SHARED_FIELDS]


def backend_command(entry: Backend, extras: CommandExtras | None = None) -> Callable[..., None]:
    """The `edgesam-export <backend>` command of a registry entry, built from its options."""
    extras = extras or CommandExtras()
    options_cls = recipe_options(entry)
    fields = option_fields(options_cls)
    before, after = shared_parameters()
    own = [field_parameter(options_cls, name) for name in fields]
    params = [*before, *own, *extras.parameters, *after]

    def command(**values: Any) -> None:
        run_export(entry, options_cls, fields, extras, values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = command.__qualname__ = f"{entry.name}_cmd"
    command.__doc__ = command_help(entry, options_cls)
    return command


def command_help(entry: Backend, options_cls: type[ExportOptions]) -> str:
    """The command's --help text: its options class's docstring, which says what is written."""
    doc = inspect.cleandoc(options_cls.__doc__ or "")
    return doc or f"Export the encoder and/or decoder to {entry.bench_label or entry.name}."


def run_export(
    entry: Backend,
    options_cls: type[ExportOptions],
    fields: list[str],
    extras: CommandExtras,
    values: dict[str, Any],
) -> None:
    """Parse into the typed options, export and check on the one path, render, exit."""
    from edgesam_export.host.pipeline import export_and_check

    json_path = values["json_path"]
    with guarded(values["debug"]):
        graphs = tuple(g for g in ("encoder", "decoder") if values[g])
        mopts = model_options(
            values["checkpoint"],
            values["model"],
            seed=values["seed"],
            synthetic=values["synthetic"],
            upsample=values["upsample"],
            strict=values["strict"],
        )
        try:
            chosen = {"graphs": graphs} if graphs else {}  # none: all of the model's graphs
            eopts = options_cls(
                **chosen,
                output=values["output"],
                **{name: _normalise(options_cls, name, values[name]) for name in fields},
            )
        except ValidationError as exc:  # named by its own class, wherever that is defined
            raise input_error(exc, options_cls) from None
        if extras.check is not None:
            extras.check(eopts, values)  # an impossible combination fails before any work
        announce_synthetic(mopts)
        t0 = time.perf_counter()
        run = export_and_check(
            mopts, entry.name, eopts, progress, verify=values["verify"], wait=values["wait"]
        )
        export_s = time.perf_counter() - t0
        out = human_console(json_path)
        warn_ignored_keys(run.loaded)
        render_artifacts(run, entry, extras.columns, out)
        payload: dict[str, Any] = {
            "artifacts": run.described,
            "export_seconds": round(export_s, 2),
            "published": run.published,
        }
        if run.report is not None:
            render_parity(run.report, out)
            payload["parity"] = run.report.to_json()
        if extras.after is not None:
            extras.after(run, values, payload, out)
        emit_json(json_path, payload)
        say_published(run, f"export {export_s:.1f} s", out)
        if run.report is not None:
            parity_exit(run.report)


def warn_ignored_keys(loaded: Any) -> None:
    """Checkpoint keys the family's official loader ignores are listed, never dropped silently."""
    if loaded.ignored_keys:
        err_console.print(
            f"[yellow]{len(loaded.ignored_keys)} extra checkpoint keys ignored, as the"
            f" official {loaded.spec.family} loader does (strict=False):"
            f" {escape(', '.join(loaded.ignored_keys[:6]))}"
            + (" ..." if len(loaded.ignored_keys) > 6 else "")
            + " (recorded in the metadata; --strict refuses them)[/]"
        )


def render_artifacts(
    run: Any, entry: Backend, columns: tuple[tuple[str, str], ...], out: Console
) -> None:
    """One row per artifact written: graph, file, size, precision, sha256, the extra columns."""
    label = entry.bench_label or entry.name
    table = Table(title=f"{label} artifacts ({run.loaded.spec.family}, {run.loaded.source})")
    for col in ("graph", "file", "size", "precision", *(c for c, _ in columns), "sha256"):
        table.add_column(col)
    for a in run.described:
        meta = a.get("metadata", {})
        table.add_row(
            a["graph"],
            a["path"],
            f"{a['size'] / 1e6:.1f} MB",
            str(meta.get("precision", "fp32")),
            *(str(meta.get(key, "-")) for _, key in columns),
            a["sha256"][:16],
        )
    out.print(table)

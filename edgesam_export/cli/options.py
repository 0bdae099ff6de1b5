"""One error style for bad option values, and the Click classes that apply it to both CLIs.

A bad value is rejected in one of two places: Click (an unknown `--upsample` choice, `--iters 0`,
a non-integer) or the pydantic option objects of `host/config.py` (`--opset 5`, `--precision
fp8`, a decoder option with `--encoder`). Both end the same way: one line on stderr that names
the option and the values it allows, exit 3 (`errors.ExitCode.BAD_INPUT`), no usage block, no
pydantic text or documentation URL. Click exits 2 for every parameter error; our table keeps 2
for usage (unknown option, missing argument). `ExitCodeGroup` applies this to every subcommand
of a Typer app (`typer.Typer(cls=...)`), `ExitCodeCommand` to a single-command app
(`@app.command(cls=...)`); `input_error` turns a pydantic `ValidationError` into our
`InputError`, and `guarded()` calls it for every command.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from pydantic import BaseModel, ValidationError
from typer import BadParameter
from typer.core import TyperCommand, TyperGroup

from edgesam_export.device.errors import ExitCode, InputError

try:  # Typer >= 0.20 vendors Click as typer._click; older versions depend on click
    from typer._click.exceptions import MissingParameter
except ImportError:  # pragma: no cover
    from click.exceptions import MissingParameter  # type: ignore[no-redef,assignment]


def flag(field: str) -> str:
    """How the command line spells an option field (`return_single_mask`: --return-single-mask)."""
    return "--" + field.replace("_", "-")


def input_error(exc: ValidationError, model: Any = None) -> InputError:
    """One line for a rejected option object: each bad field as its flag, with what it allows.

    `model`: the options class that refused (default: the `host/config.py` class of that name).
    """
    from edgesam_export.host import config

    model = model or getattr(config, exc.title, None)
    fields = (
        list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
    )
    parts = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][-1]) if err["loc"] else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown option {flag(field)}")
        elif field and err["type"] != "value_error":
            allowed = None if model is None else config.allowed_values(model, field)
            value = err.get("input")
            parts.append(
                f"invalid value for {flag(field)}: {value!r}"
                + (f"; allowed: {allowed}" if allowed else f" ({msg[:1].lower()}{msg[1:]})")
            )
        else:
            parts.append(msg)
    text = "; ".join(parts)
    for name in fields:  # the CLI speaks flags: field names in validator messages become flags
        text = re.sub(rf"(?<![-\w]){name}(?!\w)", flag(name), text)
    return InputError(text)


def _click_allowed(param: Any) -> str | None:
    """What a Typer/Click parameter accepts: its enum choices or its numeric range."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    choices = getattr(getattr(param, "type", None), "choices", None)  # Click's own Choice
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        choices = [member.value for member in annotation]
    if choices:
        return ", ".join(map(str, choices))
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    return f"{'' if low is None else low}..{'' if high is None else high}"


def _bad_value(exc: BadParameter) -> NoReturn:
    """A value Typer/Click rejects: the same one line as the values our option objects reject."""
    cause = exc.__cause__
    errors = cause.errors(include_url=False) if isinstance(cause, ValidationError) else []
    name = max(getattr(exc.param, "opts", None) or [exc.param_hint or "?"], key=len)
    allowed = _click_allowed(exc.param)
    detail = f"; allowed: {allowed}" if allowed else f" ({exc.message})"
    value = f": {errors[0]['input']!r}" if errors and "input" in errors[0] else ""
    typer.echo(f"error: invalid value for {name}{value}{detail}", err=True)
    raise typer.Exit(int(ExitCode.BAD_INPUT))


class ExitCodeCommand(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except BadParameter as exc:
            if isinstance(exc, MissingParameter):  # a missing argument stays usage (2)
                raise
            _bad_value(exc)


class ExitCodeGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BadParameter as exc:
            if isinstance(exc, MissingParameter):
                raise
            _bad_value(exc)


ReportOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--report",
        help="Write a static HTML report (masks over the test image beside the reference,"
        " error heat-maps, tables, charts) into this directory.",
        show_default=False,
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait when another run is writing the same --output (default: refuse"
        " at once; two runs never write one folder together).",
    ),
]

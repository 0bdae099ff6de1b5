"""Options and Click classes shared by both CLIs: the report folder, and one exit-code table.

Click exits 2 for every parameter error. Our table (`errors.ExitCode`) says 2 is usage (unknown
option, missing argument) and 3 a bad value, so a value Click rejects (an unknown `--upsample`
choice, `--iters 0`, a non-integer) exits 3 like the values our own code rejects (`--opset 5`).
`ExitCodeGroup` applies this to every subcommand of a Typer app (`typer.Typer(cls=...)`),
`ExitCodeCommand` to a single-command app (`@app.command(cls=...)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer import BadParameter
from typer.core import TyperCommand, TyperGroup

from edgesam_export.device.errors import ExitCode

try:  # Typer >= 0.20 vendors Click as typer._click; older versions depend on click
    from typer._click.exceptions import MissingParameter
except ImportError:  # pragma: no cover
    from click.exceptions import MissingParameter  # type: ignore[no-redef,assignment]


def _bad_value_exits_3(exc: BadParameter) -> None:
    if not isinstance(exc, MissingParameter):  # a missing argument stays usage (2)
        exc.exit_code = int(ExitCode.BAD_INPUT)


class ExitCodeCommand(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except BadParameter as exc:
            _bad_value_exits_3(exc)
            raise


class ExitCodeGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BadParameter as exc:
            _bad_value_exits_3(exc)
            raise


ReportOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--report",
        help="Write a static HTML report (masks over the test image beside the reference,"
        " error heat-maps, tables, charts) into this directory.",
        show_default=False,
    ),
]

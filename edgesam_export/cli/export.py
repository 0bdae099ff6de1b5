"""`edgesam-export`: the app, its one command table, and the `onnx` and `parity` commands."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer
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
from edgesam_export.cli.coreml import coreml_cmd
from edgesam_export.cli.everything import everything_cmd
from edgesam_export.cli.executorch import executorch_cmd
from edgesam_export.cli.models import models_cmd
from edgesam_export.cli.options import ExitCodeGroup, ReportOpt, WaitOpt
from edgesam_export.cli.recipes import build_cmd, recipe_app, verify_cmd
from edgesam_export.cli.tensorrt import trt_check_cmd, trt_cmd
from edgesam_export.cli.web import web_cmd
from edgesam_export.device.backends import all_backends
from edgesam_export.device.errors import InputError

app = typer.Typer(
    name="edgesam-export",
    help=(
        "Export Segment Anything family checkpoints (EdgeSAM first) to every registered target"
        f" ({', '.join(b.name for b in all_backends() if b.exporter)}) and verify them against"
        " PyTorch. Without CKPT, deterministic synthetic weights are used (--synthetic)."
        "\n\nExit codes: 0 ok, 1 internal error, 2 usage, 3 bad input (checkpoint, options),"
        " 4 parity failed, 5 artifact unreadable, 6 backend not installed, 7 export failed."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's plain help: readable at 80 columns
    cls=ExitCodeGroup,  # a bad option value exits 3, like the values our code rejects
)


class Simplifier(str, Enum):
    onnxslim = "onnxslim"
    onnxsim = "onnxsim"
    none = "none"


def onnx_cmd(
    checkpoint: CkptArg = None,
    encoder: Annotated[bool, typer.Option("--encoder", help="Export only the encoder.")] = False,
    decoder: Annotated[bool, typer.Option("--decoder", help="Export only the decoder.")] = False,
    use_stability_score: Annotated[
        bool,
        typer.Option(
            "--use-stability-score", help="Decoder `scores` output holds stability scores, not IoU."
        ),
    ] = False,
    upsample: UpsampleOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    simplifier: Annotated[
        Optional[Simplifier],  # noqa: UP045
        typer.Option(help="onnxslim (default), onnxsim or none.", show_default=False),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, or fp16 (fp16-unsafe layers kept fp32; float32 I/O).")
    ] = "fp32",
    quantize: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="int8: dynamic int8 quantization (onnxruntime).", show_default=False),
    ] = None,
    gelu_approximate: Annotated[
        bool, typer.Option("--gelu-approximate", help="tanh GELU (EdgeSAM's export option).")
    ] = False,
    verify: Annotated[bool, typer.Option(help="Run the parity check after export.")] = True,
    output: OutputOpt = Path("artifacts"),
    model: ModelOpt = "edge_sam",
    seed: SeedOpt = None,
    synthetic: SyntheticOpt = None,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
    wait: WaitOpt = 0.0,
    decoder_contract: Annotated[
        str,
        typer.Option(
            "--decoder-contract",
            help="Decoder I/O: edgesam (ours), official (segment-anything's SamOnnxModel:"
            " mask_input, has_mask_input, orig_im_size; SAM, SlimSAM and MobileSAM) or"
            " efficientvit (EfficientViT-SAM's DecoderOnnxModel: masks, iou_predictions).",
        ),
    ] = "edgesam",
    return_single_mask: Annotated[
        bool,
        typer.Option(
            "--return-single-mask",
            help="official / efficientvit contract: return the one best mask only.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse checkpoint keys the official loader ignores (EdgeSAM's fpn.*/rpn_head.*).",
        ),
    ] = False,
) -> None:
    """Export the encoder and/or decoder to ONNX (I/O identical to EdgeSAM's own exports)."""
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_and_check

    with guarded(debug):
        graphs = tuple(g for g, on in (("encoder", encoder), ("decoder", decoder)) if on)
        mopts = model_options(
            checkpoint, model, seed=seed, synthetic=synthetic, upsample=upsample, strict=strict
        )
        eopts = OnnxOptions(
            graphs=graphs or ("encoder", "decoder"),
            use_stability_score=use_stability_score,
            opset=opset,
            **({} if simplifier is None else {"simplifier": simplifier.value}),
            gelu_approximate=gelu_approximate,
            output=output,
            precision=precision,  # type: ignore[arg-type]
            quantize=quantize,  # type: ignore[arg-type]
            decoder_contract=decoder_contract,  # type: ignore[arg-type]
            return_single_mask=return_single_mask,
        )
        announce_synthetic(mopts)
        t0 = time.perf_counter()
        run = export_and_check(mopts, "onnx", eopts, progress, verify=verify, wait=wait)
        export_s = time.perf_counter() - t0
        loaded = run.loaded
        if loaded.ignored_keys:
            err_console.print(
                f"[yellow]{len(loaded.ignored_keys)} extra checkpoint keys ignored, as the"
                f" official {loaded.spec.family} loader does (strict=False):"
                f" {escape(', '.join(loaded.ignored_keys[:6]))}"
                + (" ..." if len(loaded.ignored_keys) > 6 else "")
                + " (recorded in the metadata; --strict refuses them)[/]"
            )
        table = Table(title=f"ONNX artifacts ({loaded.spec.family}, {loaded.source})")
        for col in ("graph", "file", "size", "sha256"):
            table.add_column(col)
        for a in run.described:
            table.add_row(a["graph"], a["path"], f"{a['size'] / 1e6:.1f} MB", a["sha256"][:16])
        human_console(json_path).print(table)
        payload: dict[str, Any] = {
            "artifacts": run.described,
            "export_seconds": round(export_s, 2),
            "published": run.published,
        }
        if run.report is not None:
            render_parity(run.report, human_console(json_path))
            payload["parity"] = run.report.to_json()
        emit_json(json_path, payload)
        say_published(run, f"export {export_s:.1f} s", human_console(json_path))
        if run.report is not None:
            parity_exit(run.report)


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


# The one table of `edgesam-export` commands, in the order `--help` lists them. A command
# module defines plain functions; only this table registers them (no import side effects).
COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("onnx", onnx_cmd),
    ("parity", parity_cmd),
    ("build", build_cmd),
    ("verify", verify_cmd),
    ("trt", trt_cmd),
    ("trt-check", trt_check_cmd),
    ("coreml", coreml_cmd),
    ("executorch", executorch_cmd),
    ("everything", everything_cmd),
    ("web", web_cmd),
    ("models", models_cmd),
)
GROUPS: tuple[typer.Typer, ...] = (recipe_app,)  # `recipe check|schema`
for _name, _command in COMMANDS:
    app.command(_name)(_command)
for _group in GROUPS:
    app.add_typer(_group)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`edgesam-export coreml`: ML Program packages, parity on them, and the fp16 safety report."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
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
    guarded,
    human_console,
    model_options,
    parity_exit,
    progress,
    render_parity,
    say_published,
)
from edgesam_export.cli.options import WaitOpt


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class Quantize(str, Enum):
    int8 = "int8"


class PointShapes(str, Enum):
    enumerated = "enumerated"
    range = "range"


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


def coreml_cmd(
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
    precision: Annotated[
        Precision, typer.Option(case_sensitive=False, help="Compute precision of the program.")
    ] = Precision.fp32,
    quantize: Annotated[
        Optional[Quantize],  # noqa: UP045
        typer.Option(
            case_sensitive=False, help="Weight-only linear quantization (int8).", show_default=False
        ),
    ] = None,
    max_points: Annotated[
        int, typer.Option(min=1, max=64, help="Largest prompt point count N.")
    ] = 16,
    max_batch: Annotated[
        int, typer.Option(min=1, max=16, help="Largest number of prompt sets B per call.")
    ] = 1,
    point_shapes: Annotated[
        PointShapes,
        typer.Option(
            case_sensitive=False,
            help="enumerated: one shape per (B, N), keeps the Neural Engine, needs iOS18/macOS15;"
            " range: RangeDim (official export), CPU/GPU only, any target.",
        ),
    ] = PointShapes.enumerated,
    gelu_approximate: Annotated[
        bool, typer.Option("--gelu-approximate", help="tanh GELU (EdgeSAM's export option).")
    ] = False,
    minimum_deployment_target: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="iOS15..iOS18 or macOS12..macOS15; default: iOS18 for enumerated shapes,"
            " iOS16 for range.",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[bool, typer.Option(help="Run the parity check after export.")] = True,
    fp16_report: Annotated[
        bool,
        typer.Option(
            "--fp16-report",
            help="List the ops whose activations overflow or underflow fp16 on the calibration"
            " inputs (MIL executor).",
        ),
    ] = False,
    output: OutputOpt = Path("artifacts"),
    model: ModelOpt = "edge_sam",
    seed: SeedOpt = None,
    synthetic: SyntheticOpt = None,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Export the encoder and/or decoder to CoreML ML Program packages (.mlpackage).

    Same input/output names and semantics as the ONNX graphs. Parity runs on the saved
    packages: with the CoreML runtime on macOS, with the numpy MIL executor elsewhere.
    """
    from edgesam_export.host.config import CoreMLOptions
    from edgesam_export.host.pipeline import export_and_check

    with guarded(debug):
        graphs = tuple(g for g, on in (("encoder", encoder), ("decoder", decoder)) if on)
        mopts = model_options(checkpoint, model, seed=seed, synthetic=synthetic, upsample=upsample)
        eopts = CoreMLOptions(
            graphs=graphs or ("encoder", "decoder"),
            use_stability_score=use_stability_score,
            precision=precision.value,
            quantize=None if quantize is None else quantize.value,
            max_points=max_points,
            max_batch=max_batch,
            point_shapes=point_shapes.value,
            gelu_approximate=gelu_approximate,
            minimum_deployment_target=minimum_deployment_target,
            output=output,
        )
        from edgesam_export.host.targets.coreml import deployment_target

        deployment_target(eopts)  # an impossible combination fails before any work
        announce_synthetic(mopts)
        t0 = time.perf_counter()
        run = export_and_check(mopts, "coreml", eopts, progress, verify=verify, wait=wait)
        loaded, artifacts = run.loaded, run.artifacts
        export_s = time.perf_counter() - t0
        out = human_console(json_path)
        table = Table(title=f"CoreML packages ({loaded.spec.family}, {loaded.source})")
        for col in ("graph", "package", "size", "precision", "target"):
            table.add_column(col)
        for a in run.described:
            table.add_row(
                a["graph"],
                a["path"],
                f"{a['size'] / 1e6:.1f} MB",
                a["metadata"]["precision"],
                a["metadata"]["coreml.minimum_deployment_target"],
            )
        out.print(table)
        payload: dict[str, Any] = {
            "artifacts": run.described,
            "export_seconds": round(export_s, 2),
            "published": run.published,
        }
        report = run.report
        if report is not None:
            render_parity(report, out)
            payload["parity"] = report.to_json()
        if fp16_report and run.published:  # an unpublished run's packages are gone
            from edgesam_export.device.backends import open_session
            from edgesam_export.device.fp16 import coreml_fp16_report as make_report

            progress("fp16 safety report: running the MIL executor with per-op recording")
            sessions = {
                a.graph: (a.path.name, open_session(a.path, runtime="mil")) for a in artifacts
            }
            enc = sessions["encoder"][1] if "encoder" in sessions else None
            decs = [sessions["decoder"]] if "decoder" in sessions else []
            payload["fp16_report"] = make_report(enc, decs)
            _render_fp16(payload["fp16_report"], out)
        emit_json(json_path, payload)
        say_published(run, f"export {export_s:.1f} s", out)
        if report is not None:
            parity_exit(report)

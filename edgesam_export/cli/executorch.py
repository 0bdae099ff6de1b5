"""`edgesam-export executorch`: `.pte` programs (XNNPACK) for Android and iOS, and parity on them.

A thin copy of the `coreml` command: parse, `export_and_check` with the registry's `executorch`
target (export, parity, publish), render. Everything backend-specific is in the registry entry, the
target (`host/targets/executorch.py`) and the session (`host/executorch_session.py`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

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


def executorch_cmd(
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
    precision: Annotated[str, typer.Option(help="fp32 (int8 is not offered yet).")] = "fp32",
    max_points: Annotated[
        int, typer.Option(min=1, max=64, help="Largest prompt point count N (dynamic 1..N).")
    ] = 16,
    verify: Annotated[bool, typer.Option(help="Run the parity check after export.")] = True,
    output: OutputOpt = Path("artifacts"),
    model: ModelOpt = "edge_sam",
    seed: SeedOpt = None,
    synthetic: SyntheticOpt = None,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Export the encoder and/or decoder to ExecuTorch programs (.pte, XNNPACK delegate).

    Same input/output names and semantics as the ONNX graphs (the decoder takes one prompt set
    of 1..N points); each program has a <file>.pte.json sidecar with its metadata. Parity runs
    the saved programs on ExecuTorch's Python runtime.
    """
    from edgesam_export.host.config import ExecuTorchOptions
    from edgesam_export.host.pipeline import export_and_check

    with guarded(debug):
        graphs = tuple(g for g, on in (("encoder", encoder), ("decoder", decoder)) if on)
        mopts = model_options(checkpoint, model, seed=seed, synthetic=synthetic, upsample=upsample)
        eopts = ExecuTorchOptions(
            graphs=graphs or ("encoder", "decoder"),
            use_stability_score=use_stability_score,
            precision=precision,  # type: ignore[arg-type]
            max_points=max_points,
            output=output,
        )
        announce_synthetic(mopts)
        t0 = time.perf_counter()
        run = export_and_check(mopts, "executorch", eopts, progress, verify=verify, wait=wait)
        export_s = time.perf_counter() - t0
        out = human_console(json_path)
        table = Table(title=f"ExecuTorch programs ({run.loaded.spec.family}, {run.loaded.source})")
        for col in ("graph", "program", "size", "precision", "sha256"):
            table.add_column(col)
        for a in run.described:
            table.add_row(
                a["graph"],
                a["path"],
                f"{a['size'] / 1e6:.1f} MB",
                a["metadata"]["precision"],
                a["sha256"][:16],
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
        emit_json(json_path, payload)
        say_published(run, f"export {export_s:.1f} s", out)
        if report is not None:
            parity_exit(report)

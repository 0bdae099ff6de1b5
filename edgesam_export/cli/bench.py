"""`edgesam-bench`: parse the options, call `host.benchmark.bench`, render its result.

The run itself (columns, interleaved timings, verdicts, like-for-like ratios, the JSON) is the
library's: `device.benchmark` (torch-free) and `host.benchmark` (the PyTorch columns and
reference, a fresh export). Torch is imported only where it is installed and needed: on a
device, `edgesam-bench --backend onnx ARTIFACT_DIR` runs without it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesam_export.cli import (
    DebugOpt,
    SeedOpt,
    UpsampleOpt,
    emit_json,
    err_console,
    guarded,
    human_console,
    model_options,
    progress,
    warn_synthetic,
)
from edgesam_export.cli.options import ExitCodeCommand, ReportOpt
from edgesam_export.device.backends import all_backends, backend_names, get_backend
from edgesam_export.device.bench import CLICK_STAGE
from edgesam_export.device.benchmark import PRECISIONS, BenchResult, BenchSettings
from edgesam_export.device.errors import InputError

app = typer.Typer(
    name="edgesam-bench",
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
)


ALL = "all"
_ARTIFACT_BACKENDS = ", ".join(n for b in all_backends() if b.suffixes for n in b.names)


def _wanted(backend: str) -> list[str]:
    """The registry's backends a --backend value names: one (by name or alias), or "all"."""
    if backend.lower() == ALL:
        return [b.name for b in all_backends()]
    allowed = ", ".join((*backend_names(aliases=True), ALL))
    try:
        return [get_backend(backend.lower()).name]
    except InputError:
        raise InputError(f"--backend {backend!r} is not a backend; allowed: {allowed}") from None


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _parse_precisions(text: str) -> tuple[str, ...]:
    """--precision: one or more of PRECISIONS, comma-separated, in column order."""
    wanted = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not wanted or any(p not in PRECISIONS for p in wanted):
        raise InputError(
            f"--precision takes {', '.join(PRECISIONS)} (comma-separated, e.g. fp32,fp16,int8),"
            f" not {text!r}"
        )
    return wanted


def _parse_points(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise InputError(
            f"--points must be comma-separated integers like 1,5,16, not {text!r}"
        ) from None
    if not counts or any(n < 1 for n in counts):
        raise InputError(f"--points needs at least one prompt count, each >= 1; got {text!r}")
    return tuple(dict.fromkeys(counts))


def _parse_batches(text: str) -> tuple[int, ...]:
    """--everything-batches: comma-separated points-per-batch values, each >= 1."""
    try:
        batches = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        batches = ()
    if not batches or any(b < 1 for b in batches):
        raise InputError(
            f"--everything-batches must be comma-separated integers >= 1 like 16,64, not {text!r}"
        )
    return tuple(dict.fromkeys(batches))


def _split_paths(paths: list[Path], artifacts: Path | None) -> tuple[Path | None, Path | None]:
    """[CKPT] [ARTIFACT_DIR] in either order: a directory is the artifacts, a file the CKPT."""
    checkpoint = None
    directory = artifacts
    for path in paths:
        if path.is_dir():
            if directory is not None:
                raise InputError("give one ARTIFACT_DIR")
            directory = path
        elif checkpoint is None:
            checkpoint = path
        else:
            raise InputError("expected [CKPT] [ARTIFACT_DIR]")
    if artifacts is not None and not artifacts.is_dir():
        raise InputError(f"artifact directory not found: {artifacts}")
    return checkpoint, directory


def _render(result: BenchResult, out: Console) -> None:
    settings = result.settings
    backends = Table(title=f"Backends (parity reference: {result.reference_note})")
    heads = ("backend", "status", "device", "precision", "RSS +MB", "peak MB", "parity", "notes")
    for head in heads:
        backends.add_column(head, justify="right" if "MB" in head else "left", overflow="fold")
    for col in result.columns:
        if not col.available:
            backends.add_row(
                col.name, "[yellow]unavailable[/]", "-", "-", "-", "-", "-", escape(col.reason)
            )
            continue
        rep = result.parity.get(col.name)
        if rep is None:
            verdict = "reference" if result.reference is not None else "[yellow]no reference[/]"
        else:
            verdict = "[green]pass[/]" if rep[0].passed else "[bold red]FAIL[/]"
        backends.add_row(
            col.name,
            "[green]ok[/]",
            result.devices.get(col.name, "-"),
            col.precision,
            "-" if col.rss_added_mb is None else f"{col.rss_added_mb:.0f}",
            "-" if col.peak_rss_mb is None else f"{col.peak_rss_mb:.0f}",
            verdict,
            escape(", ".join(col.artifacts)),
        )
    out.print(backends)
    table = Table(
        title=f"Latency (ms per call; warm-up excluded: {settings.warmup} call(s) per decoder"
        f" stage, {settings.encoder_warmup} per encoder stage)",
        caption="x torch: torch p50 / this p50, only between columns on the same device",
    )
    for name in ("stage", "backend", "p50", "p90", "p99", "mean", "calls/s", "n", "x torch"):
        table.add_column(name, justify="left" if name in ("stage", "backend") else "right")
    ratios = result.x_torch()
    for t in result.timings:
        ratio = ratios.get((t.name, t.backend))
        table.add_row(
            t.name,
            t.backend,
            f"{t.p50:.1f}",
            f"{t.p90:.1f}",
            f"{t.p99:.1f}",
            f"{t.mean:.1f}",
            f"{t.throughput:.1f}",
            str(len(t.samples_ms)),
            "-" if ratio is None else f"{ratio:.2f}x",
        )
    out.print(table)
    if result.accuracy:
        _render_accuracy(result, out)
    for name, ratio in result.box_ratios().items():
        verdict = "[green]batching pays[/]" if ratio <= 1.0 else "[yellow]batching is slower[/]"
        out.print(
            f"{name}: {settings.box_batch} boxes in one call vs one box per call: per-set ratio"
            f" [bold]{ratio:.2f}[/] ({verdict})"
        )


def _render_accuracy(result: BenchResult, out: Console) -> None:
    """Speed and accuracy side by side, one row per judged column (fp32, fp16, int8 ...)."""
    table = Table(
        title=f"Accuracy beside speed (mask IoU end to end against {result.reference_note})",
        caption="mask IoU: the reference's top-scoring mask per prompt set (256x256, logits > 0)",
    )
    heads = ("column", "precision", "MB", "encoder p50", "click p50", "IoU mean", "IoU worst")
    for head in (*heads, "parity"):
        table.add_column(head, justify="left" if head in ("column", "precision") else "right")
    p50 = {(t.name, t.backend): t.p50 for t in result.timings}
    for col in result.live:
        if col.name not in result.accuracy:
            continue
        acc = result.accuracy[col.name]
        size = result.sizes.get(col.name)
        rep = result.parity.get(col.name)
        enc, click = p50.get(("encoder", col.name)), p50.get((CLICK_STAGE, col.name))
        table.add_row(
            col.name,
            col.precision,
            "-" if size is None else f"{size / 1e6:.1f}",
            "-" if enc is None else f"{enc:.1f}",
            "-" if click is None else f"{click:.1f}",
            "-" if acc is None else f"{acc.mean_iou:.4f}",
            "-" if acc is None else f"{acc.worst_iou:.4f}",
            "-" if rep is None else ("[green]pass[/]" if rep[0].passed else "[bold red]FAIL[/]"),
        )
    out.print(table)


def _render_everything(runs: list[Any], points_per_side: int, out: Console) -> None:
    table = Table(
        title=f"Segment everything ({points_per_side}x{points_per_side} points on the test"
        " image; ms)"
    )
    for name in ("backend", "B", "per image p50", "per decoder call", "per prompt", "calls"):
        table.add_column(name, justify="left" if name == "backend" else "right")
    table.add_column("masks", justify="right")
    table.add_column("notes", overflow="fold")
    for r in runs:
        j = r.to_json()
        if r.status != "ok":
            colour = "yellow" if r.status == "skipped" else "bold red"
            table.add_row(
                r.backend, str(r.points_per_batch), "-", "-", "-", "-", "-",
                f"[{colour}]{r.status}[/]: {escape(r.reason)}",
            )  # fmt: skip
            continue
        table.add_row(
            r.backend,
            str(r.points_per_batch),
            f"{j['image_ms']['p50_ms']:.0f}",
            f"{j['decoder_call_ms']:.1f}",
            f"{j['decoder_ms_per_prompt']:.2f}",
            str(j["decoder_calls"]),
            str(j["masks"]),
            "fallback: the largest batch this decoder accepts" if r.fallback else "",
        )
    out.print(table)


@app.command(cls=ExitCodeCommand)
def bench(
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help="torch (PyTorch as loaded, plus torch-opt: the export's graph rewrites),"
            f" {_ARTIFACT_BACKENDS}, or all (every one available here, interleaved).",
            show_default=False,
        ),
    ],
    paths: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Argument(
            metavar="CKPT|ARTIFACT_DIR",
            help="[CKPT] [ARTIFACT_DIR]: a checkpoint (omit for synthetic weights) and/or a"
            " folder of exported artifacts (without one, ONNX artifacts are exported to a"
            " temporary folder).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045  (None: not given; artifacts record their own model)
        typer.Option(
            "--model", "-m", help="Registered model name [default: edge_sam].", show_default=False
        ),
    ] = None,
    device: Annotated[
        Device,
        typer.Option(case_sensitive=False, help="Device of the PyTorch columns."),
    ] = Device.cpu,
    cuda_graphs: Annotated[
        bool,
        typer.Option("--cuda-graphs", help="Replay the PyTorch columns as CUDA graphs (cuda)."),
    ] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, fp16, bf16, int8, or several comma-separated (fp32,fp16,int8): one"
            " artifact column per backend and precision (the artifacts recorded at it), each"
            " with its mask IoU beside its speed. PyTorch columns run in the first float one.",
        ),
    ] = "fp32",
    points: Annotated[
        str, typer.Option(help="Decoder prompt counts to time, comma-separated.")
    ] = "1,5,16",
    box_batch: Annotated[
        int,
        typer.Option(
            min=1, help="Boxes decoded in one call, compared with one box per call (1: skip)."
        ),
    ] = 8,
    iterations: Annotated[
        int,
        typer.Option(
            "--iterations",
            "--iters",
            min=1,
            help="Timed calls per decoder stage; encoder stages run half as many (at least 1).",
        ),
    ] = 10,
    warmup: Annotated[
        int,
        typer.Option(
            min=0, help="Untimed calls per decoder stage before timing (encoder stages: at most 1)."
        ),
    ] = 2,
    threads: Annotated[
        int, typer.Option(min=1, help="Intra-op threads (torch and onnxruntime).")
    ] = 2,
    artifacts: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Same as giving ARTIFACT_DIR.", show_default=False),
    ] = None,
    upsample: UpsampleOpt = None,
    seed: SeedOpt = None,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--json",
            help="Write the results as JSON here ('-' for stdout; tables then go to stderr).",
            show_default=False,
        ),
    ] = None,
    report_dir: ReportOpt = None,
    everything_points: Annotated[
        int,
        typer.Option(
            min=0,
            help="Everything stage: grid points per image side (0: skip the stage; the issue's"
            " and segment-anything's grid: 32).",
        ),
    ] = 8,
    everything_batches: Annotated[
        str,
        typer.Option(help="Everything stage: points per decoder call to time, comma-separated."),
    ] = "16,64",
    everything_iou_thresh: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Everything stage: keep masks scoring above this."),
    ] = 0.88,
    everything_stability_thresh: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Everything stage: keep masks this stable or more."),
    ] = 0.95,
    debug: DebugOpt = False,
) -> None:
    """Time EdgeSAM on one or every backend, each with its parity verdict.

    Stages: the encoder; the decoder per prompt count (--points); BOX_BATCH boxes in one call
    vs one box alone; a click (decoder + numpy post-processing to the original size, on cached
    embeddings); an image (numpy pre-processing + encoder + one click); and segment everything
    (an EVERYTHING_POINTS x EVERYTHING_POINTS grid, per image and per decoder call, at each
    EVERYTHING_BATCHES size a backend's decoder accepts; half the iterations). Statistics: p50,
    p90, p99, mean, calls/s and the number of timed calls; warm-up calls are excluded. Every
    backend is judged on the same inputs against PyTorch, or, without torch, against the reference
    outputs shipped in ARTIFACT_DIR.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input (checkpoint, option values),
    4 a backend failed parity, 5 artifact unreadable, 6 backend not installed / not available.
    """
    with guarded(debug):
        checkpoint, directory = _split_paths(list(paths or []), artifacts)
        given = [
            f for f, v in (("--model", model), ("--seed", seed), ("--upsample", upsample)) if v
        ]
        if directory is not None and given:
            raise InputError(
                f"{', '.join(given)} only {'apply' if len(given) > 1 else 'applies'} to a fresh"
                " export and would be ignored with"
                " ARTIFACT_DIR: the artifacts record their own model, weights and upsampling"
            )
        if cuda_graphs and device is not Device.cuda:
            raise InputError("--cuda-graphs needs --device cuda")
        wanted = _wanted(backend)
        settings = BenchSettings(
            backends=tuple(wanted),
            single=len(wanted) == 1,
            label=backend.lower(),
            checkpoint=checkpoint,
            directory=directory,
            points=_parse_points(points),
            box_batch=box_batch,
            iterations=iterations,
            warmup=warmup,
            threads=threads,
            device=device.value,
            precisions=_parse_precisions(precision),
            cuda_graphs=cuda_graphs,
            everything_points=everything_points,
            everything_batches=_parse_batches(everything_batches),
            everything_iou_thresh=everything_iou_thresh,
            everything_stability_thresh=everything_stability_thresh,
        )
        from edgesam_export.host.benchmark import bench as run

        options = None
        if directory is None:  # a fresh export: its model and weights, checked before any work
            options = model_options(checkpoint, model or "edge_sam", seed=seed, upsample=upsample)
        result = run(settings, options, progress)
        if not result.live:
            for c in result.columns:
                err_console.print(f"[bold red]unavailable:[/] {c.name}: {escape(c.reason)}")
            raise typer.Exit(result.exit_code)
        if result.synthetic:
            warn_synthetic(
                "These timings come from",
                consequence="they are valid (the graphs are the real ones), but masks would"
                " not follow the image",
            )
        out = human_console(json_path)
        _render(result, out)
        if result.everything:
            _render_everything(result.everything, everything_points, out)
        payload = result.to_json()
        emit_json(json_path, payload)
        if report_dir is not None:
            from edgesam_export.device.bench_everything import overlays
            from edgesam_export.device.report import write_bench_report

            assert result.image is not None
            page = write_bench_report(
                report_dir,
                payload,
                result.parity,
                everything_overlays=overlays(result.everything, result.image),
            )
            out.print(f"report: [bold]{page}[/]")
        if result.failed:
            err_console.print(f"[bold red]parity FAILED:[/] {', '.join(result.failed)}")
        raise typer.Exit(result.exit_code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

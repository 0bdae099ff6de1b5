"""`edgesam-bench`: latency of every backend on the same inputs, with its parity verdict.

This module owns the command line: parsing, choosing and opening the backends (the PyTorch
reference as loaded and with the export's graph rewrites, and every artifact backend of the
registry, `device.backends`), timing them interleaved, judging each against the reference
(PyTorch, or the golden sidecar where torch is absent), rendering. Timing and statistics live in
`device.bench`, shared with `benchmarks/`. Torch is imported only where it is installed
and needed: on a device, `edgesam-bench --backend onnx ARTIFACT_DIR` runs without it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
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
)
from edgesam_export.cli.options import ExitCodeCommand, ReportOpt
from edgesam_export.device.backends import (
    OpenedBackend,
    all_backends,
    backend_names,
    get_backend,
    open_artifact_backend,
    require,
    unavailable,
)
from edgesam_export.device.errors import BackendUnavailableError, ExitCode, InputError
from edgesam_export.device.runtime import Session

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


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


SYNTHETIC_NOTE = (
    "[yellow]Synthetic weights, not trained: the timings are valid (the graphs are the"
    " real ones), but masks would not follow the image.[/]"
)
#: Column name of the PyTorch graphs with the export's rewrites.
TORCH_OPT = "torch-opt"


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


@dataclass
class Run:
    """What one invocation opened: backend columns, the parity reference, where artifacts are."""

    columns: list[OpenedBackend] = field(default_factory=list)
    loaded: Any = None  # LoadedModel where torch is used
    reference: Any = None  # ("torch", enc, decoders) or ("golden", Golden) or None
    reference_note: str = ""
    synthetic: bool = False


def _measured(open_fn: Any) -> OpenedBackend:
    """Open a backend and warm it once; record the resident memory that took."""
    from edgesam_export.device.bench import peak_rss_mb, reset_peak_rss, rss_mb

    reset_peak_rss()
    before = rss_mb()
    opened: OpenedBackend = open_fn()
    if opened.available:
        from edgesam_export.device.bench import decoder_feeds, encoder_input

        assert opened.encoder is not None and opened.decoder is not None
        emb = opened.encoder.run({"image": encoder_input(opened.encoder)})["image_embeddings"]
        opened.decoder.run(decoder_feeds(emb, 1, img_size=int(opened.encoder.metadata["img_size"])))
        opened.peak_rss_mb = peak_rss_mb()
        if before is not None:
            opened.rss_added_mb = max(0.0, opened.peak_rss_mb - before)
    return opened


def _load_torch(
    run: Run,
    checkpoint: Path | None,
    directory: Path | None,
    model: str,
    upsample: Any,
    seed: int | None,
) -> str:
    """Load the PyTorch model into `run.loaded`; returns why not ("" when loaded)."""
    from edgesam_export.host.pipeline import torch_available

    if not torch_available():
        return f"torch is not installed here: needs {get_backend('torch').install_hint}"
    from edgesam_export.host.models import load_model

    if directory is not None and checkpoint is None:
        metas = _recorded_metadata(directory)
        if not metas:
            return f"no artifact metadata in {directory} to rebuild the PyTorch model from"
        if not all(m.get("weights", "").startswith("synthetic") for m in metas):
            return "the artifacts came from a checkpoint: pass it as CKPT to time PyTorch"
    if directory is not None:
        from edgesam_export.host.pipeline import model_options_from_metadata

        opts = model_options_from_metadata(checkpoint, _recorded_metadata(directory))
    else:
        opts = model_options(checkpoint, model, seed=seed, upsample=upsample)
    progress(
        f"loading {opts.model} from {opts.checkpoint or f'synthetic weights (seed {opts.seed})'}"
    )
    run.loaded = load_model(
        opts.checkpoint,
        model=opts.model,
        upsample_mode=opts.upsample,
        seed=opts.seed,
        synthetic=opts.synthetic,
    )
    run.synthetic = run.synthetic or run.loaded.synthetic
    return ""


def _recorded_metadata(directory: Path) -> list[dict[str, str]]:
    """Artifact metadata as the manifest records it (no runtime needed)."""
    import json

    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return []
    try:
        entries = json.loads(manifest.read_text()).get("artifacts", [])
    except (json.JSONDecodeError, OSError):
        return []
    return [e.get("metadata", {}) for e in entries if e.get("metadata")]


def _require_cuda() -> None:
    from edgesam_export.host.pipeline import torch_available

    if not torch_available():
        raise BackendUnavailableError(
            f"--device cuda runs the PyTorch columns: needs {get_backend('torch').install_hint}"
        )
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device cuda needs a CUDA build of torch and an NVIDIA GPU; this torch"
            f" ({torch.__version__}) sees none. Use --device cpu."
        )


def _torch_columns(run: Run, device: Device, precision: Precision, cuda_graphs: bool) -> None:
    from edgesam_export.host.reference import torch_sessions

    if device is Device.cuda:
        _require_cuda()
    for name, optimized in (("torch", False), (TORCH_OPT, True)):

        def open_one(optimized: bool = optimized, name: str = name) -> OpenedBackend:
            enc: Session
            dec: Session
            enc, dec = torch_sessions(
                run.loaded, optimized=optimized, device=device.value, precision=precision.value
            )
            if cuda_graphs:
                from edgesam_export.host.reference import CudaGraphSession

                enc, dec = CudaGraphSession(enc), CudaGraphSession(dec)  # type: ignore[arg-type]
            return OpenedBackend(
                name, enc, dec, precision=precision.value, runtime=enc.runtime_label
            )

        progress(f"building {name} ({device.value}, {precision.value})")
        run.columns.append(_measured(open_one))


@contextlib.contextmanager
def _artifact_dir(
    run: Run,
    directory: Path | None,
    wanted: list[str],
    checkpoint: Path | None,
    args: dict[str, Any],
) -> Iterator[Path | None]:
    """The artifact directory given, or ONNX artifacts exported into a temporary one."""
    runnable = [b for b in wanted if get_backend(b).suffixes]
    if directory is not None or not runnable:
        yield directory
        return
    from edgesam_export.host.pipeline import torch_available

    if not torch_available():
        yield None
        return
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts

    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as tmp:
        mopts = model_options(
            checkpoint, args["model"], seed=args["seed"], upsample=args["upsample"]
        )
        eopts = OnnxOptions(output=Path(tmp))
        loaded, _ = export_artifacts(mopts, "onnx", eopts, progress)
        run.synthetic = run.synthetic or loaded.synthetic
        yield Path(tmp)
        for col in run.columns:  # release the files before the directory goes
            col.encoder = col.decoder = None


def _open_reference(run: Run, directory: Path | None) -> None:
    """PyTorch as loaded (float32, CPU) where available, else the golden sidecar."""
    if run.loaded is not None:
        from edgesam_export.host.reference import reference_sessions

        enc, decs = reference_sessions(run.loaded)
        run.reference = ("torch", enc, decs)
        run.reference_note = "torch (as loaded, fp32, cpu)"
        return
    if directory is None:
        run.reference_note = "none (no torch and no artifact folder)"
        return
    metas = _recorded_metadata(directory) or [
        c.encoder.metadata for c in run.columns if c.encoder is not None
    ]
    if not metas:
        run.reference_note = "none (no artifact metadata)"
        return
    from edgesam_export.device.golden import find_golden

    try:
        golden = find_golden(directory, metas[0])
    except InputError as exc:
        run.reference_note = f"none ({exc})"
        return
    run.reference = ("golden", golden)
    run.reference_note = f"golden {golden.path.name}"


def _is_reference(run: Run, col: OpenedBackend) -> bool:
    """Whether this column computes exactly the reference (torch as loaded, fp32, CPU)."""
    return (
        run.reference is not None
        and run.reference[0] == "torch"
        and col.name == "torch"
        and col.precision == "fp32"
        and getattr(col.encoder, "device", "cpu") == "cpu"
    )


def _parity(run: Run, col: OpenedBackend) -> tuple[Any, dict[str, Any]] | None:
    """Judge one column against the run's reference; None for the reference itself."""
    from edgesam_export.device.parity import ParityReport, check

    if run.reference is None or col.encoder is None or col.decoder is None:
        return None
    kind = run.reference[0]
    if _is_reference(run, col):
        return None
    record: dict[str, Any] = {}
    report = ParityReport()
    pairs = ([(col.name, col.encoder)], [(col.name, col.decoder)])
    try:
        if kind == "torch":
            _, enc, decs = run.reference
            check(enc, decs, *pairs, report=report, record=record)
        else:
            from edgesam_export.device.golden import check_golden

            check_golden(run.reference[1], *pairs, report=report, record=record)
            record["golden"] = run.reference[1]
    except InputError as exc:  # e.g. no tolerances for this precision
        report.errors.append({"artifact": col.name, "error": str(exc)})
    return report, record


def _render(
    run: Run,
    timings: list[Any],
    parity: dict[str, Any],
    box_batch: int,
    out: Console,
    warm: tuple[int, int],
) -> None:
    from edgesam_export.device.bench import box_set_ratio

    backends = Table(title=f"Backends (parity reference: {run.reference_note})")
    for head in ("backend", "status", "precision", "RSS +MB", "peak MB", "parity", "notes"):
        backends.add_column(head, justify="right" if "MB" in head else "left", overflow="fold")
    for col in run.columns:
        if not col.available:
            backends.add_row(
                col.name, "[yellow]unavailable[/]", "-", "-", "-", "-", escape(col.reason)
            )
            continue
        rep = parity.get(col.name)
        if rep is None:
            verdict = "reference" if run.reference is not None else "[yellow]no reference[/]"
        else:
            verdict = "[green]pass[/]" if rep[0].passed else "[bold red]FAIL[/]"
        backends.add_row(
            col.name,
            "[green]ok[/]",
            col.precision,
            "-" if col.rss_added_mb is None else f"{col.rss_added_mb:.0f}",
            "-" if col.peak_rss_mb is None else f"{col.peak_rss_mb:.0f}",
            verdict,
            escape(", ".join(col.artifacts)),
        )
    out.print(backends)
    table = Table(
        title=f"Latency (ms per call; warm-up excluded: {warm[0]} call(s) per decoder stage,"
        f" {warm[1]} per encoder stage)"
    )
    for name in ("stage", "backend", "p50", "p90", "p99", "mean", "calls/s", "n", "x torch"):
        table.add_column(name, justify="left" if name in ("stage", "backend") else "right")
    torch_p50 = {t.name: t.p50 for t in timings if t.backend == "torch"}
    for t in timings:
        ratio = torch_p50.get(t.name)
        table.add_row(
            t.name,
            t.backend,
            f"{t.p50:.1f}",
            f"{t.p90:.1f}",
            f"{t.p99:.1f}",
            f"{t.mean:.1f}",
            f"{t.throughput:.1f}",
            str(len(t.samples_ms)),
            "-" if ratio is None or t.backend == "torch" else f"{ratio / t.p50:.2f}x",
        )
    out.print(table)
    for col in run.columns:
        ratio = box_set_ratio(timings, box_batch, backend=col.name)
        if ratio is not None:
            verdict = "[green]batching pays[/]" if ratio <= 1.0 else "[yellow]batching is slower[/]"
            out.print(
                f"{col.name}: {box_batch} boxes in one call vs one box per call: per-set ratio"
                f" [bold]{ratio:.2f}[/] ({verdict})"
            )


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
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name.")] = (
        "edge_sam"
    ),
    device: Annotated[
        Device,
        typer.Option(case_sensitive=False, help="Device of the PyTorch columns."),
    ] = Device.cpu,
    cuda_graphs: Annotated[
        bool,
        typer.Option("--cuda-graphs", help="Replay the PyTorch columns as CUDA graphs (cuda)."),
    ] = False,
    precision: Annotated[
        Precision,
        typer.Option(
            case_sensitive=False,
            help="PyTorch columns run in this dtype; artifact backends use the artifacts"
            " recorded at this precision.",
        ),
    ] = Precision.fp32,
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
    backend is judged on the same inputs against PyTorch, or, without torch, against the golden
    outputs shipped in ARTIFACT_DIR.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input (checkpoint, option values),
    4 a backend failed parity, 5 artifact unreadable, 6 backend not installed / not available.
    """
    with guarded(debug):
        counts = _parse_points(points)
        amg_batches = _parse_batches(everything_batches)
        checkpoint, directory = _split_paths(list(paths or []), artifacts)
        if directory is not None and upsample is not None:
            raise InputError(
                "--upsample applies to a fresh export: artifacts record their own upsampling"
            )
        if cuda_graphs and device is not Device.cuda:
            raise InputError("--cuda-graphs needs --device cuda")
        wanted = _wanted(backend)
        if device is Device.cuda and "torch" in wanted:
            _require_cuda()  # before loading anything
        if len(wanted) == 1 and get_backend(wanted[0]).suffixes:  # say so before any work
            require(wanted[0])
        from edgesam_export.device.bench import (
            ENCODER_STAGES,
            Timing,
            machine_info,
            session_stages,
            set_threads,
            time_interleaved,
        )
        from edgesam_export.device.parity import make_test_image

        run = Run()
        torch_reason = _load_torch(run, checkpoint, directory, model, upsample, seed)
        if run.loaded is not None:
            set_threads(threads)
        with _artifact_dir(
            run, directory, wanted, checkpoint, {"model": model, "seed": seed, "upsample": upsample}
        ) as folder:
            for name in wanted:
                if name == "torch":
                    if torch_reason:
                        run.columns.append(
                            unavailable(name, torch_reason, ExitCode.BACKEND_UNAVAILABLE)
                        )
                    else:
                        _torch_columns(run, device, precision, cuda_graphs)
                elif folder is None:
                    run.columns.append(
                        unavailable(
                            name,
                            "no ARTIFACT_DIR given, and no torch here to export one",
                            ExitCode.BAD_INPUT,
                        )
                    )
                else:
                    progress(f"opening {name} artifacts")
                    run.columns.append(
                        _measured(
                            lambda name=name: open_artifact_backend(
                                name, folder, precision.value, threads
                            )
                        )
                    )
            live = [c for c in run.columns if c.available]
            if not live:
                worst = next((c for c in run.columns if not c.available), None)
                for c in run.columns:
                    err_console.print(f"[bold red]unavailable:[/] {c.name}: {escape(c.reason)}")
                code = ExitCode.BACKEND_UNAVAILABLE if worst is None else worst.exit_code
                raise typer.Exit(int(code) if len(wanted) == 1 else 6)
            if run.synthetic or any(
                c.encoder is not None and c.encoder.metadata.get("weights", "").startswith("synth")
                for c in live
            ):
                err_console.print(SYNTHETIC_NOTE)

            stages = {
                c.name: session_stages(
                    c.encoder,  # type: ignore[arg-type]
                    c.decoder,  # type: ignore[arg-type]
                    points=counts,
                    box_batch=box_batch,
                    end_to_end=True,
                )
                for c in live
            }
            enc_iters, enc_warm = max(1, iterations // 2), min(warmup, 1)
            timings: list[Timing] = []
            names = [s.name for s in next(iter(stages.values()))]
            for i, stage_name in enumerate(names):
                is_enc = stage_name in ENCODER_STAGES
                w, n = (enc_warm, enc_iters) if is_enc else (warmup, iterations)
                progress(f"timing {stage_name} ({', '.join(stages)})")
                samples = time_interleaved(
                    {b: s[i].call for b, s in stages.items()},
                    warmup=w,
                    iters=n,
                    gap_s=0.02 if len(stages) > 1 else 0.0,
                )
                timings += [Timing(stage_name, b, samples[b], w) for b in stages]

            amg_iters = max(1, iterations // 2)
            amg_image = make_test_image()  # the image the other stages use
            amg_runs = []
            if everything_points > 0:
                from edgesam_export.device.bench_everything import everything_stage

                amg_runs = everything_stage(
                    {c.name: (c.encoder, c.decoder) for c in live},  # type: ignore[misc]
                    amg_image,
                    points_per_side=everything_points,
                    batches=amg_batches,
                    iters=amg_iters,
                    warmup=enc_warm,
                    pred_iou_thresh=everything_iou_thresh,
                    stability_score_thresh=everything_stability_thresh,
                    progress=progress,
                )

            _open_reference(run, folder)
            parity: dict[str, Any] = {}
            for col in live:
                if run.reference is None or _is_reference(run, col):
                    continue
                progress(f"parity of {col.name} against {run.reference_note}")
                result = _parity(run, col)
                if result is not None:
                    parity[col.name] = result

            out = human_console(json_path)
            _render(run, timings, parity, box_batch, out, (warmup, enc_warm))
            if amg_runs:
                _render_everything(amg_runs, everything_points, out)
            from edgesam_export.device.bench import box_set_ratio

            backends_json = []
            for col in run.columns:
                entry = col.to_json()
                rep = parity.get(col.name)
                if rep is not None:
                    entry["parity"] = {
                        "passed": rep[0].passed,
                        "reference": run.reference_note,
                        "summary": rep[0].summary(),
                        "errors": rep[0].errors,
                    }
                elif col.available and run.reference is not None:
                    entry["parity"] = {"passed": True, "reference": "is the reference"}
                backends_json.append(entry)
            payload: dict[str, Any] = {
                "machine": machine_info(),
                "backend": backend.lower(),
                "settings": {
                    "points": list(counts),
                    "box_batch": box_batch,
                    "iterations": iterations,
                    "warmup": warmup,
                    "encoder_iterations": enc_iters,
                    "encoder_warmup": enc_warm,
                    "threads": threads,
                    "device": device.value,
                    "precision": precision.value,
                    "interleaved": len(stages) > 1,
                    "artifacts": None if directory is None else str(directory),
                    "checkpoint": None if checkpoint is None else str(checkpoint),
                    "everything_points": everything_points,
                    "everything_batches": list(amg_batches),
                },
                "reference": run.reference_note,
                "backends": backends_json,
                "timings": [t.to_json() for t in timings],
                "ratios": {
                    c.name: {"box_batch_per_set": r}
                    for c in live
                    if (r := box_set_ratio(timings, box_batch, backend=c.name)) is not None
                },
            }
            if everything_points > 0:
                payload["everything"] = {
                    "image": f"parity test image {amg_image.shape[1]}x{amg_image.shape[0]}",
                    "points_per_side": everything_points,
                    "points": everything_points**2,
                    "batches": list(amg_batches),
                    "iterations": amg_iters,
                    "warmup": enc_warm,
                    "pred_iou_thresh": everything_iou_thresh,
                    "stability_score_thresh": everything_stability_thresh,
                    "runs": [r.to_json() for r in amg_runs],
                }
            emit_json(json_path, payload)
            if report_dir is not None:
                from edgesam_export.device.bench_everything import overlays
                from edgesam_export.device.report import write_bench_report

                page = write_bench_report(
                    report_dir,
                    payload,
                    parity,
                    everything_overlays=overlays(amg_runs, amg_image),
                )
                out.print(f"report: [bold]{page}[/]")
            failed = [name for name, (rep, _) in parity.items() if not rep.passed]
            if len(wanted) == 1 and not run.columns[0].available:
                raise typer.Exit(run.columns[0].exit_code)
            if failed:
                err_console.print(f"[bold red]parity FAILED:[/] {', '.join(failed)}")
                raise typer.Exit(int(ExitCode.PARITY_FAILED))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`edgesam-bench`: latency of the encoder and decoder on one backend, as a table and JSON.

This module owns the command line only: parsing, choosing and opening the sessions (PyTorch
reference, or ONNX artifacts given or freshly exported), rendering. The timing itself lives in
`edgesam_export.bench`, shared with the scripts in `benchmarks/`.
"""

from __future__ import annotations

import functools
import importlib
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import BackendUnavailableError, InputError
from . import (
    CkptArg,
    DebugOpt,
    SeedOpt,
    Upsample,
    UpsampleOpt,
    emit_json,
    err_console,
    guarded,
    human_console,
    progress,
)

app = typer.Typer(
    name="edgesam-bench",
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Backend(str, Enum):
    torch = "torch"
    onnx = "onnx"
    coreml = "coreml"
    trt = "trt"


#: What an unimplemented backend needs: (python module, what to install / have).
_NEEDS = {
    Backend.coreml: (
        "coremltools",
        "coremltools on macOS (the package's coreml extra, or"
        " pip install coremltools, on a Mac: CoreML models only run"
        " on Apple platforms)",
    ),
    Backend.trt: (
        "tensorrt",
        "tensorrt and an NVIDIA GPU (the package's tensorrt extra, or"
        " pip install tensorrt, on a machine with CUDA)",
    ),
}

SYNTHETIC_NOTE = (
    "[yellow]Synthetic, untrained weights: the timings are valid (the graphs are the"
    " real ones), but masks would not follow the image.[/]"
)


def _check_backend(backend: Backend) -> None:
    """Raise BackendUnavailableError for the backends this version cannot time."""
    if backend not in _NEEDS:
        return
    if backend is Backend.coreml:  # macOS: the CoreML runtime; elsewhere: our MIL executor
        try:
            importlib.import_module("coremltools")
            return
        except Exception:
            raise BackendUnavailableError(
                "the coreml backend needs coremltools (the package's coreml extra, or pip install"
                " coremltools): on macOS it runs the CoreML runtime, elsewhere the MIL executor"
            ) from None
    module, needs = _NEEDS[backend]
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a native library that fails to load
        where = (
            ""
            if backend is not Backend.coreml or platform.system() == "Darwin"
            else (f" (this is {platform.system()}, not macOS)")
        )
        raise BackendUnavailableError(
            f"the {backend.value} backend needs {needs}; {module} is not importable here{where}."
            " Use --backend onnx or --backend torch."
        ) from None
    raise BackendUnavailableError(
        f"{module} is installed, but the {backend.value} backend is not implemented in"
        " edgesam-bench in this version. Use --backend onnx or --backend torch."
    )


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


def _find_one(directory: Path, pattern: str) -> Path:
    found = sorted(p for p in directory.glob(pattern) if not p.name.startswith("."))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise InputError(f"expected exactly one {pattern} in {directory}, found {what}")
    return found[0]


@contextmanager
def _onnx_sessions(
    checkpoint: Path | None,
    artifacts: Path | None,
    upsample: Upsample | None,
    seed: int,
    threads: int,
) -> Iterator[tuple[Any, Any, bool]]:
    """ONNX encoder and (IoU) decoder sessions, and whether their weights are synthetic."""
    from ..runtime import open_session

    if artifacts is not None:
        if not artifacts.is_dir():
            raise InputError(f"artifact directory not found: {artifacts}")
        enc_path = _find_one(artifacts, "*_encoder.onnx")
        dec_path = _find_one(artifacts, "*_decoder.onnx")
        progress(f"opening {enc_path.name} and {dec_path.name}")
        enc = open_session(enc_path, threads=threads)
        dec = open_session(dec_path, threads=threads)
        yield enc, dec, enc.metadata.get("weights") == "synthetic-untrained"
        return

    from ..config import ModelOptions, OnnxOptions
    from ..pipeline import export_artifacts

    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as tmp:
        try:
            mopts = ModelOptions(
                checkpoint=checkpoint,
                seed=seed,
                upsample=None if upsample is None else upsample.value,
            )
            eopts = OnnxOptions.model_validate({"output": Path(tmp)})
        except ValueError as exc:
            raise InputError(str(exc)) from None
        loaded, arts = export_artifacts(mopts, "onnx", eopts, progress)
        paths = {a.graph: a.path for a in arts}
        enc = open_session(paths["encoder"], threads=threads)
        dec = open_session(paths["decoder"], threads=threads)
        try:
            yield enc, dec, loaded.synthetic
        finally:
            del enc, dec  # release the files before the directory goes


def _render(timings: list[Any], box_batch: int, ratio: float | None, out: Console) -> None:
    from ..bench import BOX_SINGLE_STAGE, box_batch_stage

    table = Table(title="Latency (ms per call)")
    for col in ("stage", "backend", "p50 ms", "p90 ms", "n"):
        table.add_column(col, justify="left" if col in ("stage", "backend") else "right")
    for t in timings:
        table.add_row(t.name, t.backend, f"{t.p50:.1f}", f"{t.p90:.1f}", str(len(t.samples_ms)))
    out.print(table)
    if ratio is not None:
        by_name = {t.name: t for t in timings}
        single, batched = by_name[BOX_SINGLE_STAGE], by_name[box_batch_stage(box_batch)]
        verdict = "[green]batching pays[/]" if ratio <= 1.0 else "[yellow]batching is slower[/]"
        out.print(
            f"{box_batch} boxes in one call: {batched.p50 / box_batch:.1f} ms per box vs"
            f" {single.p50:.1f} ms for one box alone: per-set ratio [bold]{ratio:.2f}[/]"
            f" ({verdict})"
        )


@app.command()
def bench(
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend",
            "-b",
            case_sensitive=False,
            help="What to time: the PyTorch reference (torch) or ONNX artifacts"
            " on onnxruntime (onnx), CoreML packages (coreml: the CoreML runtime on macOS,"
            " the numpy MIL executor elsewhere). trt is not available in this version (exit 6).",
            show_default=False,
        ),
    ],
    checkpoint: CkptArg = None,
    points: Annotated[
        str, typer.Option(help="Decoder prompt counts to time, comma-separated.")
    ] = "1,5,16",
    box_batch: Annotated[
        int,
        typer.Option(
            min=1, help="Boxes decoded in one call, compared with one box per call (1: skip)."
        ),
    ] = 8,
    iters: Annotated[
        int,
        typer.Option(
            min=1, help="Timed decoder calls per stage; the encoder runs half as many (at least 1)."
        ),
    ] = 10,
    warmup: Annotated[
        int,
        typer.Option(
            min=0, help="Untimed calls per decoder stage before timing (the encoder: at most 1)."
        ),
    ] = 2,
    threads: Annotated[
        int, typer.Option(min=1, help="Intra-op threads (torch and onnxruntime).")
    ] = 2,
    artifacts: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="ONNX / CoreML: time the *_encoder.onnx and *_decoder.onnx (or .mlpackage)"
            " in this directory instead of exporting CKPT first.",
            show_default=False,
        ),
    ] = None,
    upsample: UpsampleOpt = None,
    seed: SeedOpt = 0,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--json",
            help="Write the timings as JSON here ('-' for stdout; the table then goes to stderr).",
            show_default=False,
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Time the EdgeSAM encoder and decoder on one backend (p50/p90 over repeated calls).

    Stages: the encoder, the decoder per prompt count (--points), and BOX_BATCH boxes in one
    decoder call vs one box alone (the per-set ratio below 1.0 means batching pays). Without
    CKPT, deterministic synthetic (untrained) weights are used; the timings are still valid.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input (checkpoint, options),
    5 artifact unreadable, 6 backend not installed / not available, 7 export failed.
    """
    with guarded(debug):
        _check_backend(backend)
        counts = _parse_points(points)
        if artifacts is not None and backend not in (Backend.onnx, Backend.coreml):
            raise InputError("--artifacts only applies to --backend onnx or coreml")
        if artifacts is not None and (checkpoint is not None or upsample is not None):
            raise InputError(
                "--artifacts times existing artifacts: CKPT and --upsample would be"
                " ignored, drop them (the artifacts record their own weights)"
            )

        from ..bench import bench_sessions, box_set_ratio, machine_info, set_threads

        set_threads(threads)
        run = functools.partial(
            bench_sessions,
            points=counts,
            box_batch=box_batch,
            warmup=warmup,
            iters=iters,
            encoder_iters=max(1, iters // 2),
            encoder_warmup=min(warmup, 1),
            progress=progress,
        )
        if backend is Backend.torch:
            from ..models import load_model
            from ..reference import reference_sessions

            progress(f"loading edge_sam from {checkpoint or f'synthetic weights (seed {seed})'}")
            loaded = load_model(
                checkpoint, upsample_mode=None if upsample is None else upsample.value, seed=seed
            )
            if loaded.synthetic:
                err_console.print(SYNTHETIC_NOTE)
            enc, decoders = reference_sessions(loaded)
            timings = run(enc, decoders[False])
        elif backend is Backend.coreml:
            from ._bench_coreml import coreml_sessions, label_timings

            with coreml_sessions(checkpoint, artifacts, upsample, seed, counts, box_batch) as (
                enc,
                dec,
                synthetic,
            ):
                if synthetic:
                    err_console.print(SYNTHETIC_NOTE)
                timings = label_timings(run(enc, dec), enc)
        else:
            with _onnx_sessions(checkpoint, artifacts, upsample, seed, threads) as (
                enc,
                dec,
                synthetic,
            ):
                if synthetic:
                    err_console.print(SYNTHETIC_NOTE)
                timings = run(enc, dec)

        ratio = box_set_ratio(timings, box_batch)
        _render(timings, box_batch, ratio, human_console(json_path))
        if json_path is not None:
            payload: dict[str, Any] = {
                "machine": machine_info(),
                "backend": backend.value,
                "settings": {
                    "points": list(counts),
                    "box_batch": box_batch,
                    "iters": iters,
                    "warmup": warmup,
                    "threads": threads,
                    "artifacts": None if artifacts is None else str(artifacts),
                },
                "timings": [t.to_json() for t in timings],
                "ratios": {} if ratio is None else {"box_batch_per_set": ratio},
            }
            emit_json(json_path, payload)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`edgesam-export web`: build (and optionally serve) the static browser page."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from edgesam_export.cli import (
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
    progress,
)
from edgesam_export.device.errors import InputError

SourceArg = Annotated[
    Optional[Path],  # noqa: UP045 - Typer needs Optional on 3.10
    typer.Argument(
        help="A checkpoint (.pth) to export, or a directory of ONNX artifacts to copy. Omit for"
        " deterministic synthetic weights (--synthetic).",
        show_default=False,
    ),
]


def web_cmd(
    source: SourceArg = None,
    model: ModelOpt = "edge_sam",
    output: OutputOpt = Path("artifacts/web"),
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the folder on 127.0.0.1 (COOP/COEP headers).")
    ] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port for --serve.")] = 8000,
    webgpu: Annotated[
        bool,
        typer.Option(
            help="Ship onnxruntime-web's WebGPU build too (+27 MB); without it the page runs"
            " on wasm only."
        ),
    ] = True,
    quantize: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="int8 | int8-weights: export the graphs quantized as `onnx --quantize` does"
            " (smaller download; the page reports its agreement with Python). int8-weights:"
            " int8 storage, float compute: the small page that keeps the masks, clicks about"
            " as fast as fp32 and agrees with Python as fp32 does. int8 with"
            " --encoder-quantize int8-weights: the small page with the fastest click (its"
            " static decoder's weight products in int8; docs/web.md). Only when exporting.",
            show_default=False,
        ),
    ] = None,
    encoder_quantize: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="The encoder's own mode where it differs from --quantize, as for `onnx`:"
            " --quantize int8 --encoder-quantize int8-weights ships a static int8 decoder (int8"
            " kernels per click) beside a weight-only encoder (float compute). Only when"
            " exporting.",
            show_default=False,
        ),
    ] = None,
    accuracy_target: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="With --quantize int8 | int8-weights: the mask IoU bar the search must meet, as"
            " for `onnx` (default miou=0.97,worst=0.9). miou=0,worst=0 quantizes every block"
            " (weight) without a search (the smallest build); the IoU reached is in the card.",
            show_default=False,
        ),
    ] = None,
    search_budget: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="With --quantize int8 | int8-weights: graphs the search may evaluate, as for"
            " `onnx` (default: the complete search).",
            show_default=False,
        ),
    ] = None,
    upsample: UpsampleOpt = None,
    seed: SeedOpt = None,
    synthetic: SyntheticOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace --output even if it holds files no web build wrote (they are deleted).",
        ),
    ] = False,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Build a static page that runs the encoder and decoder in the browser (click to segment).

    With a checkpoint (or nothing: synthetic weights) the ONNX graphs are exported first; with
    an artifact directory its encoder and decoder .onnx files are copied. onnxruntime-web
    comes from npm at a pinned version (fetched once, cached). --serve then serves the folder.
    """
    from edgesam_export.web.build import CARD_NAME, build_web

    with guarded(debug):
        if source is not None and (source / CARD_NAME).is_file():
            # Already a web build: serve it as it is.
            if not serve:
                raise InputError(f"{source} is a web build already: add --serve to serve it")
            _serve(source, port, json_path, {"output": str(source)})
            return
        export = None
        artifact_dir = None
        int8 = {
            "quantize": quantize,
            "encoder_quantize": encoder_quantize,
            "accuracy_target": accuracy_target,
            "search_budget": search_budget,
        }
        if source is not None and source.is_dir():
            if any(v is not None for v in int8.values()):
                given = " ".join(f"--{k.replace('_', '-')}" for k, v in int8.items() if v)
                raise InputError(
                    f"--quantize applies when exporting ({given} given), and {source} is a"
                    " folder of ONNX graphs (copied as they are): export them with `onnx"
                    f" {given} ...` first, or give a checkpoint"
                )
            artifact_dir = source
        else:
            if source is not None and not source.exists():
                raise InputError(f"{source} does not exist (give a checkpoint or an artifact dir)")
            export = _exporter(source, model, upsample, seed, synthetic, int8)
        built = build_web(
            output,
            artifact_dir=artifact_dir,
            export=export,
            webgpu=webgpu,
            progress=progress,
            force=force,
        )
        table = Table(title=f"Web folder {output}")
        table.add_column("part")
        table.add_column("size", justify="right")
        parts: dict[str, int] = {}
        for name, size in built.files.items():
            key = name.split("/")[0] if "/" in name else "page"
            parts[key] = parts.get(key, 0) + size
        for key, size in sorted(parts.items()):
            table.add_row(key, f"{size / 1e6:.1f} MB")
        table.add_row("total", f"{built.total_bytes / 1e6:.1f} MB")
        card = built.card
        table.add_row(
            f"download: the two {card['precision']} graphs",
            f"{card['download_bytes'] / 1e6:.1f} MB",
        )
        out = human_console(json_path)
        out.print(table)
        if card["synthetic"]:
            err_console.print(
                f"[yellow]The page runs {card['weights']} weights: masks do not follow the"
                " image.[/]"
            )
        payload: dict[str, Any] = built.to_json()
        if serve:
            _serve(output, port, json_path, payload)
            return
        emit_json(json_path, payload)
        out.print(
            f"Built [bold]{output.resolve()}[/]; try it with: edgesam-export web {output} --serve"
        )


def _serve(folder: Path, port: int, json_path: Path | None, payload: dict[str, Any]) -> None:
    from edgesam_export.web.server import WebServer

    try:
        server = WebServer(folder, port=port)
    except OSError as exc:
        raise InputError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}; try --port") from None
    emit_json(json_path, payload | {"url": server.url})
    out = human_console(json_path)
    out.print(f"Serving [bold]{folder.resolve()}[/] at [bold]{server.url}[/] (Ctrl-C stops)")

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # `kill` (SIGTERM) stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out.print("stopped")
    finally:
        server.stop()


def _exporter(
    checkpoint: Path | None,
    model: str,
    upsample: Any,
    seed: int | None,
    synthetic: Any,
    int8: dict[str, Any],
) -> Any:
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts

    mopts = model_options(checkpoint, model, seed=seed, synthetic=synthetic, upsample=upsample)
    # The same typed options as `onnx`, validated before any work (a bad --quantize: exit 3).
    given = {k: v for k, v in int8.items() if v is not None}
    options = OnnxOptions(**given)
    announce_synthetic(mopts)

    def export(models_dir: Path) -> None:
        export_artifacts(mopts, "onnx", options.model_copy(update={"output": models_dir}), progress)

    return export

"""`edgesam-export trt` and `trt-check`: TensorRT engines, readiness and fp16 safety reports."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgesam_export.cli import (
    DebugOpt,
    JsonOpt,
    SeedOpt,
    Synthetic,
    SyntheticOpt,
    UpsampleOpt,
    emit_json,
    err_console,
    guarded,
    human_console,
    model_options,
    parity_exit,
    progress,
    render_parity,
)
from edgesam_export.cli.backend_command import field_parameter
from edgesam_export.cli.options import WaitOpt
from edgesam_export.device import publish
from edgesam_export.device.errors import (
    BackendUnavailableError,
    EdgeSamExportError,
    ExitCode,
    ExportFailedError,
    InputError,
)
from edgesam_export.host.config import TensorRTOptions

# Options that are the TensorRT recipe target's fields (host/config.py): one definition of
# `--points`, `--batch` and `--use-stability-score` and their help for `trt`, `trt-check` and
# recipes. (Built at run time, so the type checker sees their plain type.)
if TYPE_CHECKING:
    PointsOpt = Optional[str]  # noqa: UP045
    BatchOpt = Optional[str]  # noqa: UP045
    StabilityOpt = bool
else:
    PointsOpt = field_parameter(TensorRTOptions, "points").annotation
    BatchOpt = field_parameter(TensorRTOptions, "batch").annotation
    StabilityOpt = field_parameter(TensorRTOptions, "use_stability_score").annotation


ModelNameOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Registered model name, for a checkpoint or synthetic weights (a directory of ONNX"
        " graphs says its own model in their metadata).",
    ),
]


class NotReadyError(ExportFailedError):
    """The graph would not parse (or not cover its shapes) in TensorRT: exit 7."""


def _dims(points: str | None, batch: str | None) -> dict[str, Any]:
    from edgesam_export.device.trt_check import parse_range

    return {
        "num_points": parse_range(points, "points") if points else None,
        "batch": parse_range(batch, "batch") if batch else None,
    }


def _onnx_files(paths: list[Path]) -> list[Path]:
    """The ONNX graphs named, or found in the folders named (the suffix is the registry's)."""
    from edgesam_export.device.backends import get_backend

    suffix = get_backend("onnx").suffixes[0]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob(f"*{suffix}") if not f.name.startswith("."))
            if not found:
                raise InputError(f"no {suffix} files in {p}")
            files += found
        elif p.suffix == suffix:
            files.append(p)
        else:
            raise InputError(f"{p}: expected an {suffix} file or a directory of them")
    return files


def _graph_of(model: Any) -> str:
    return {p.key: p.value for p in model.metadata_props}.get("graph", "unknown")


def _render_readiness(report: Any, out: Any) -> None:
    verdict = "[green]ready[/]" if report.passed else "[bold red]NOT READY[/]"
    out.print(
        f"{escape(report.path)}: {verdict} for the TensorRT {report.tensorrt_version} ONNX parser"
        f" ({report.nodes} nodes, {len(report.operators)} operator types,"
        f" {len(report.errors)} errors, {len(report.warnings)} warnings)"
    )
    for f in report.findings:
        colour = "red" if f.severity == "error" else "yellow"
        out.print(f"  [{colour}]{f.severity}[/] [{f.rule}] {escape(f.where)}: {escape(f.message)}")


def _render_fp16(report: Any, out: Any) -> None:
    table = Table(title=f"fp16 safety: {report.graph} ({report.weights} weights)")
    for col in ("output", "scale", "error fp16", "error with pins", "finite with pins"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, err in report.error_unpinned.items():
        table.add_row(
            name,
            f"{report.output_scale[name]:.3g}",
            f"{err:.3g}",
            f"{report.error_pinned[name]:.3g}",
            "no" if report.nonfinite_pinned[name] else "yes",
        )
    out.print(table)
    out.print(
        f"  {len(report.layers)} layers: {len(report.overflowing)} overflow 65504,"
        f" {len(report.near_overflowing)} near it, {len(report.underflowing)} underflow,"
        f" {len(report.precision_losing)} lose precision; {len(report.pins)} pinned to fp32"
        " (--fp32-layers auto)"
    )
    for name in report.overflowing[:10]:
        out.print(f"  [red]overflow[/] {escape(name)}")
    if len(report.overflowing) > 10:
        out.print(f"  ... and {len(report.overflowing) - 10} more (see --json)")
    out.print(f"  calibration: {'; '.join(report.inputs)}")


def _fp16_reports(models: dict[Path, Any]) -> dict[Path, Any]:
    """fp16 reports; decoders use the fp32 embeddings of an encoder among `models` if any."""
    from edgesam_export.device.fp16 import calibration_feeds, fp16_report

    reports: dict[Path, Any] = {}
    embeddings = None
    order = sorted(models, key=lambda p: _graph_of(models[p]) != "encoder")
    for path in order:
        model = models[path]
        progress(f"fp16 emulation of {path.name}")
        feeds, names = calibration_feeds(model, embeddings)
        reports[path] = fp16_report(model, feeds, names)
        if _graph_of(model) == "encoder" and embeddings is None:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            embeddings = sess.run(None, feeds[0])[0]
    return reports


def trt_check_cmd(
    onnx_paths: Annotated[
        list[Path], typer.Argument(help="ONNX files or directories.", show_default=False)
    ],
    points: PointsOpt = None,
    batch: BatchOpt = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also run the fp16 safety report (emulated fp16).")
    ] = False,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Will TensorRT parse these graphs and cover their shapes? (No GPU, no TensorRT needed.)

    Exit 0 when every graph is ready, 7 when one is not, 4 when --fp16 finds an output that is
    NaN/inf in fp32, or in fp16 despite the pins.
    """
    from edgesam_export.device.trt_check import check_model, load_onnx
    from edgesam_export.host.targets.tensorrt import dims_for

    with guarded(debug):
        requested = _dims(points, batch)
        files = _onnx_files(onnx_paths)
        models = {f: load_onnx(f) for f in files}
        out = human_console(json_path)
        payload: dict[str, Any] = {"graphs": []}
        ready = True
        for f, model in models.items():
            dims = dims_for(model, requested)
            report = check_model(model, dims, str(f))
            _render_readiness(report, out)
            entry = {
                "readiness": report.to_json(),
                "profiles": {k: list(v) for k, v in dims.items()},
            }
            payload["graphs"].append(entry)
            ready = ready and report.passed
        nonfinite: list[str] = []
        if fp16:
            reports = _fp16_reports(models)
            for entry, f in zip(payload["graphs"], models, strict=True):
                _render_fp16(reports[f], out)
                entry["fp16"] = reports[f].to_json()
                nonfinite += reports[f].nonfinite_problems()
        payload["passed"] = ready and not nonfinite
        emit_json(json_path, payload)
        for line in nonfinite:
            err_console.print(f"[bold red]non-finite:[/] {escape(line)}")
        if nonfinite:
            raise typer.Exit(int(ExitCode.PARITY_FAILED))
        if not ready:
            raise typer.Exit(int(NotReadyError.exit_code))


def trt_cmd(
    source: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(
            help="Checkpoint (.pth) to export first, or a directory of our ONNX graphs."
            " Omit for synthetic weights.",
            show_default=False,
        ),
    ] = None,
    encoder: Annotated[bool, typer.Option("--encoder", help="Only the encoder.")] = False,
    decoder: Annotated[bool, typer.Option("--decoder", help="Only the decoder.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Build fp16 engines.")] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Build int8 engines from a folder's static int8 QDQ graphs (onnx --quantize int8"
            " --activation-symmetric): explicit quantization, no calibrator.",
        ),
    ] = False,
    points: PointsOpt = None,
    batch: BatchOpt = None,
    workspace: Annotated[int, typer.Option("--workspace", min=64, help="Workspace, MB.")] = 1024,
    timing_cache: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--timing-cache", help="Timing cache to reuse and update.", show_default=False
        ),
    ] = None,
    fp32_layers: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--fp32-layers",
            help="With --fp16: 'auto' (the fp16 safety report's pins) or comma-separated ONNX"
            " node names to keep in fp32.",
            show_default=False,
        ),
    ] = None,
    print_trtexec: Annotated[
        bool,
        typer.Option("--print-trtexec", help="Print the equivalent trtexec lines; build nothing."),
    ] = False,
    use_stability_score: StabilityOpt = False,
    upsample: UpsampleOpt = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="Directory for the engines (and for the ONNX export of a checkpoint); default:"
            " the source directory of ONNX graphs, else ./artifacts.",
            show_default=False,
        ),
    ] = None,
    model_name: ModelNameOpt = "edge_sam",
    seed: SeedOpt = None,
    synthetic: SyntheticOpt = None,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Build TensorRT engines (TensorRT 10 or 11) with dynamic prompt shapes, fp16 with fp32
    pins or int8 from static QDQ graphs, and check them.

    Each graph is checked for readiness first; fp16 engines are built strongly typed from the
    fp16 graph (written beside them); engines get a JSON sidecar, and parity runs on every
    engine built (against PyTorch after an export, against the folder's reference outputs for
    a directory of graphs): exit 4 when one is out of tolerance. Without TensorRT this exits 6,
    builds and checks nothing, unless --print-trtexec (which works anywhere and builds
    nothing).
    """
    from edgesam_export.device.trt_check import load_onnx
    from edgesam_export.host.targets.tensorrt import build_engine, require_tensorrt, trtexec_line

    with guarded(debug):
        requested = _dims(points, batch)
        if fp32_layers and not fp16:
            raise InputError("--fp32-layers needs --fp16")
        if int8 and fp16:
            raise InputError("choose --int8 or --fp16, not both")
        if int8 and (source is None or not source.is_dir()):
            raise InputError(
                "--int8 builds from static int8 QDQ graphs: export them with `edgesam-export onnx"
                " --quantize int8 --activation-symmetric -o DIR`, then run `trt DIR --int8`"
            )
        trt = None
        if not print_trtexec:  # before anything is written
            try:
                trt = require_tensorrt()
            except BackendUnavailableError as exc:
                raise BackendUnavailableError(f"no engine was built or checked: {exc}") from None
        from_dir = source is not None and source.is_dir()
        engine_dir = output or (source if source is not None and from_dir else Path("artifacts"))
        loaded = None
        if source is not None and from_dir:
            files = _onnx_files([source])
        else:
            loaded, files = _export_onnx(
                source,
                model_name,
                encoder,
                decoder,
                use_stability_score,
                upsample,
                engine_dir,
                seed,
                synthetic,
            )
        models = _source_graphs({f: load_onnx(f) for f in files}, int8)
        wanted = {g for g, on in (("encoder", encoder), ("decoder", decoder)) if on}
        if wanted:
            models = {f: m for f, m in models.items() if _graph_of(m) in wanted}
        if not models:
            raise InputError(
                "no graph to build (check --encoder/--decoder and the directory"
                + (": --int8 needs `onnx --quantize int8` graphs there)" if int8 else ")")
            )
        out = human_console(json_path)
        # Engines (and fp16 graphs) are written, checked and recorded under engine_dir's lock:
        # one run at a time (device/publish.py); --print-trtexec builds nothing.
        lock = (
            publish.locked(engine_dir, wait=wait, progress=progress)
            if trt is not None
            else contextlib.nullcontext(engine_dir)
        )
        with lock:
            pins, fp16_json = _pins(models, fp16, fp32_layers, out)
            payload: dict[str, Any] = {"engines": []}
            built: list[Path] = []
            for f, model in models.items():
                plan, entry = _plan(f, model, requested, engine_dir, fp16, pins[f], out)
                plan = replace(plan, int8=int8, workspace_mb=workspace, timing_cache=timing_cache)
                entry["precision"] = plan.precision
                entry["trtexec"] = trtexec_line(plan)
                if f in fp16_json:
                    entry["fp16"] = fp16_json[f]
                if trt is None:
                    out.print(entry["trtexec"], soft_wrap=True, markup=False, highlight=False)
                else:
                    progress(f"building {plan.engine.name} (TensorRT {trt.__version__})")
                    built.append(build_engine(plan, trt))
                entry["built"] = trt is not None
                payload["engines"].append(entry)
            if trt is None:
                if source is not None and from_dir and source.resolve() != engine_dir.resolve():
                    meta = {p.key: p.value for p in next(iter(models.values())).metadata_props}
                    try:  # nothing to copy is no error here: nothing is checked yet
                        _copy_reference_outputs(meta, source, engine_dir)
                    except InputError as exc:
                        out.print(f"no reference outputs copied to {engine_dir}: {exc}")
                out.print(
                    f"--print-trtexec: no engine was built or checked; after building them in"
                    f" {engine_dir}, check them with: edgesam-export parity {engine_dir}"
                    " --reference outputs"
                )
                emit_json(json_path, payload)
                return
            report = _check_engines(built, engine_dir, loaded, source if from_dir else None)
            render_parity(report, out)
            payload["parity"] = report.to_json()
        emit_json(json_path, payload)
        parity_exit(report)


def _source_graphs(models: dict[Path, Any], int8: bool) -> dict[Path, Any]:
    """The graphs engines are built from: float32 graphs (an fp16 engine from the fp16 graph
    made from one), or with --int8 the static int8 QDQ graphs; the others in a folder (fp16,
    dynamic int8, or float32 with --int8) are skipped."""
    kept = {}
    for f, model in models.items():
        meta = {p.key: p.value for p in model.metadata_props}
        precision = meta.get("precision", "fp32")
        if int8 and precision == "int8" and meta.get("int8.method") == "static-qdq":
            kept[f] = model
        elif not int8 and precision == "fp32":
            kept[f] = model
        else:
            wanted = "static int8 QDQ graphs (--int8)" if int8 else "float32"
            progress(f"skipping {f.name}: a {precision} graph (engines start from {wanted})")
    return kept


def _pins(
    models: dict[Path, Any], fp16: bool, fp32_layers: str | None, out: Any
) -> tuple[dict[Path, list[str] | None], dict[Path, Any]]:
    """Per graph, the nodes its fp16 graph keeps in fp32 (None: an fp16 graph already there
    keeps its own pins), and the fp16 safety reports behind `--fp32-layers auto`."""
    pins: dict[Path, list[str] | None] = {f: None for f in models}
    fp16_json: dict[Path, Any] = {}
    if fp16 and fp32_layers == "auto":
        for f, rep in _fp16_reports(models).items():
            _render_fp16(rep, out)
            pins[f] = rep.pins
            fp16_json[f] = rep.to_json()
    elif fp16 and fp32_layers:
        from edgesam_export.device.fp16 import node_name

        names = [n.strip() for n in fp32_layers.split(",") if n.strip()]
        for f, model in models.items():
            present = {node_name(n) for n in model.graph.node}
            pins[f] = [n for n in names if n in present]
        unknown = set(names) - {n for p in pins.values() for n in p or ()}
        if unknown:
            raise InputError(f"--fp32-layers: no node named {sorted(unknown)[:5]}")
    return pins, fp16_json


def _plan(
    f: Path,
    model: Any,
    requested: dict[str, Any],
    engine_dir: Path,
    fp16: bool,
    pins: list[str] | None,
    out: Any,
) -> tuple[Any, dict[str, Any]]:
    """The engine plan of one graph (readiness checked; the fp16 graph written) and its JSON."""
    from edgesam_export.device.trt_check import check_model
    from edgesam_export.host.targets.tensorrt import (
        EnginePlan,
        dims_for,
        engine_path,
        fp16_graph_path,
        profile_shapes,
        write_fp16_graph,
    )

    dims = dims_for(model, requested)
    readiness = check_model(model, dims, str(f))
    _render_readiness(readiness, out)
    if not readiness.passed:
        raise NotReadyError(
            f"{f.name} is not ready for TensorRT ({len(readiness.errors)} errors above)"
        )
    fp16_onnx, kept = None, tuple(pins or ())
    if fp16:
        progress(f"writing the fp16 graph of {f.name} (strongly typed engines take its types)")
        fp16_onnx, kept = write_fp16_graph(f, pins, fp16_graph_path(f, engine_dir))
    plan = EnginePlan(
        onnx=f,
        engine=engine_path(f, engine_dir, fp16),
        graph=_graph_of(model),
        profiles=profile_shapes(model, dims),
        fp16=fp16,
        fp32_layers=kept,
        fp16_onnx=fp16_onnx,
        onnx_metadata={p.key: p.value for p in model.metadata_props},
    )
    entry: dict[str, Any] = {
        "onnx": str(f),
        "fp16_onnx": None if fp16_onnx is None else str(fp16_onnx),
        "engine": str(plan.engine),
        "precision": plan.precision,
        "profiles": {k: [list(s) for s in v] for k, v in plan.profiles.items()},
        "fp32_layers": list(plan.fp32_layers),
        "readiness": readiness.to_json(),
    }
    return plan, entry


def _check_engines(
    engines: list[Path], engine_dir: Path, loaded: Any, source_dir: Path | None
) -> Any:
    """Parity of the engines just built: against the PyTorch model an export loaded, or, for
    a directory of graphs, against the reference outputs its export shipped (copied beside
    the engines when they go elsewhere, so their folder stays checkable on its own)."""
    from edgesam_export.device.runtime.tensorrt import read_sidecar
    from edgesam_export.host.pipeline import verify_artifacts

    try:
        if loaded is not None:
            return verify_artifacts(None, engine_dir, progress, loaded=loaded, only=engines)
        assert source_dir is not None
        if source_dir.resolve() != engine_dir.resolve():
            meta = read_sidecar(engines[0]).get("metadata", {})
            _copy_reference_outputs(meta, source_dir, engine_dir)
        return verify_artifacts(None, engine_dir, progress, only=engines, reference="outputs")
    except EdgeSamExportError as exc:
        raise type(exc)(f"engines built in {engine_dir} but not checked: {exc}") from None


def _copy_reference_outputs(meta: dict[str, str], source_dir: Path, engine_dir: Path) -> None:
    """The source folder's reference outputs for these weights, beside the engines: their
    folder is then checkable on its own (`parity DIR --reference outputs`, no torch)."""
    from edgesam_export.device.artifacts import atomic_path
    from edgesam_export.device.reference_outputs import find_reference_outputs

    outputs = find_reference_outputs(source_dir, meta)
    engine_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(engine_dir / outputs.path.name) as tmp:
        tmp.write_bytes(outputs.path.read_bytes())


def _export_onnx(
    checkpoint: Path | None,
    model: str,
    encoder: bool,
    decoder: bool,
    stability: bool,
    upsample: Any,
    output: Path,
    seed: int | None,
    synthetic: Synthetic | None,
) -> tuple[Any, list[Path]]:
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts

    graphs = tuple(g for g, on in (("encoder", encoder), ("decoder", decoder)) if on)
    mopts = model_options(checkpoint, model, seed=seed, synthetic=synthetic, upsample=upsample)
    eopts = OnnxOptions(
        graphs=graphs or ("encoder", "decoder"), use_stability_score=stability, output=output
    )
    loaded, artifacts = export_artifacts(mopts, "onnx", eopts, progress)
    return loaded, [a.path for a in artifacts]

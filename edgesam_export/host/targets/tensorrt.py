"""TensorRT engines from our ONNX graphs: profiles, strongly typed fp16, timing cache, sidecar.

Engines carry no metadata, so every `.engine` gets a JSON sidecar (`<engine>.json`): TensorRT
version, GPU, optimisation profiles, precision, how the network was typed, the source ONNX's
sha256 and the metadata that ONNX carries. The runtime session (`device/runtime/tensorrt.py`)
reads it back.

Precision lives in the graph, not in builder flags: TensorRT 10 deprecates `BuilderFlag.FP16`,
`OBEY_PRECISION_CONSTRAINTS` and per-layer precisions, and TensorRT 11 removes them. An fp16
engine is built from a strongly typed network parsed from the fp16 ONNX graph (the same
converter and fp32 pins as `onnx --precision fp16`, `targets/onnx_precision.py`). Only a
TensorRT without strongly typed networks (before 9.1: JetPack 5's 8.5, JetPack 6.0's 8.6)
gets the weakly typed flag path, decided by what the module offers, never by its version
string. docs/tensorrt.md lists which call exists in which version.

An int8 engine is TensorRT's explicit quantization of the static int8 QDQ graph
(`onnx --quantize int8 --activation-symmetric`): the Q/DQ nodes carry the scales, so there is
no calibrator. A strongly typed network takes int8 from the Q/DQ nodes like any other type (no
precision flag: strongly typed builds refuse them); only the weakly typed path (TensorRT before
9.1) sets `BuilderFlag.INT8`, which its explicit quantization requires.

Everything except `build_engine` runs without TensorRT: profile shapes, the fp16 graph, the
equivalent `trtexec` command lines, the sidecar's content.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesam_export.device import backends
from edgesam_export.device.artifacts import (
    Artifact,
    atomic_path,
    file_sha256,
    write_json_atomic,
)
from edgesam_export.device.contract import MaskTokens, Preprocessing
from edgesam_export.device.errors import BackendUnavailableError, ExportFailedError, InputError
from edgesam_export.device.trt_check import DimRange
from edgesam_export.host.config import ExportOptions, GraphKind
from edgesam_export.host.targets import Target

if TYPE_CHECKING:
    from edgesam_export.host.models import LoadedModel

ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min, opt, max

# Default ranges of the decoder's dynamic axes. num_points = clicks + 1 padding point (no box)
# or clicks + 2 box corners: one click or one box (2) is the common interactive call; 32 covers
# 30 clicks with a box. batch = prompt sets per call: 1 interactively, up to 64 boxes or grid
# points per call for segment-everything.
DEFAULT_DIMS: dict[str, DimRange] = {"num_points": (1, 2, 32), "batch": (1, 1, 64)}
SIDECAR_SUFFIX = ".json"
# How a network gets its types (the sidecar's "typing"): from the graph, or from builder flags.
STRONG = "strongly typed (types from the ONNX graph)"
WEAK = "weakly typed (BuilderFlag.FP16, per-layer fp32 pins)"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def input_dims(model: Any) -> dict[str, list[int | str]]:
    """Each network input's dims: an int, or the dim_param name of a dynamic axis."""
    inits = {i.name for i in model.graph.initializer}
    return {
        vi.name: [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim
        ]
        for vi in model.graph.input
        if vi.name not in inits
    }


def dims_for(
    model: Any, requested: Mapping[str, DimRange | None] | None = None
) -> dict[str, DimRange]:
    """The (min, opt, max) of every dynamic axis name this graph has: requested, else default."""
    given: dict[str, DimRange] = {k: v for k, v in (requested or {}).items() if v is not None}
    names = {d for dims in input_dims(model).values() for d in dims if isinstance(d, str)}
    out: dict[str, DimRange] = {}
    for name in sorted(names):
        if name in given:
            out[name] = given[name]
        elif name in DEFAULT_DIMS:
            out[name] = DEFAULT_DIMS[name]
    return out


def profile_shapes(model: Any, dims: Mapping[str, DimRange]) -> dict[str, ShapeRange]:
    """min/opt/max shape of every dynamic network input; InputError on an uncovered axis."""
    shapes: dict[str, ShapeRange] = {}
    for name, input_dims_ in input_dims(model).items():
        if all(isinstance(d, int) for d in input_dims_):
            continue
        three: list[list[int]] = [[], [], []]
        for d in input_dims_:
            if isinstance(d, int):
                for s in three:
                    s.append(d)
            elif d in dims:
                for s, v in zip(three, dims[d], strict=True):
                    s.append(v)
            else:
                raise InputError(
                    f"input '{name}' has a dynamic axis '{d}' without a profile:"
                    " give its range as MIN:OPT:MAX"
                )
        shapes[name] = (tuple(three[0]), tuple(three[1]), tuple(three[2]))
    return shapes


@dataclass(frozen=True)
class EnginePlan:
    """Everything a build needs, decided before TensorRT is touched."""

    onnx: Path  # the float32 source graph (an int8 engine: the QDQ graph)
    engine: Path
    graph: str
    profiles: dict[str, ShapeRange]
    fp16: bool = False
    int8: bool = False  # explicit quantization: `onnx` is a static int8 QDQ graph
    fp32_layers: tuple[str, ...] = ()
    # fp16 only: the fp16 graph with `fp32_layers` kept float32 that a strongly typed build
    # parses (`write_fp16_graph`); the weakly typed fallback parses `onnx` instead.
    fp16_onnx: Path | None = None
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    onnx_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def typed_onnx(self) -> Path:
        """The graph whose types a strongly typed network takes."""
        if not self.fp16:
            return self.onnx
        if self.fp16_onnx is None:
            raise InputError(f"{self.engine.name}: an fp16 build needs its fp16 graph")
        return self.fp16_onnx


def engine_path(onnx_path: Path, output: Path, fp16: bool) -> Path:
    return output / f"{onnx_path.stem}{'_fp16' if fp16 else ''}.engine"


def fp16_graph_path(onnx_path: Path, output: Path) -> Path:
    """Where the fp16 graph goes: the name `onnx --precision fp16` gives the same graph."""
    return output / f"{onnx_path.stem}_fp16.onnx"


def write_fp16_graph(
    onnx_path: Path, pins: Sequence[str] | None, dest: Path
) -> tuple[Path, tuple[str, ...]]:
    """The fp16 graph a strongly typed fp16 engine is parsed from, and the nodes it keeps fp32.

    Weights and activations float16, `pins` (ONNX node names) float32 with casts around them,
    inputs and outputs float32: the conversion `onnx --precision fp16` applies, so the engine
    and the fp16 ONNX artifact compute the same typed graph. An fp16 graph already at `dest`
    (the ONNX fp16 export, or an earlier build) is used as it is when `pins` is None (it keeps
    its own pins, recorded in its metadata) or equals its pins; otherwise it is rewritten.
    """
    import onnx

    from edgesam_export.host.targets.onnx_precision import to_fp16

    if dest.is_file():
        meta = {
            p.key: p.value for p in onnx.load(str(dest), load_external_data=False).metadata_props
        }
        kept = tuple(n for n in meta.get("fp16.fp32_nodes", "").split(",") if n)
        if meta.get("precision") == "fp16" and (pins is None or tuple(pins) == kept):
            return dest, kept
    kept = tuple(pins or ())
    converted = to_fp16(onnx.load(str(onnx_path)), list(kept))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        onnx.save(converted, str(tmp))
    return dest, kept


def _shape_arg(shapes: Mapping[str, ShapeRange], which: int) -> str:
    return ",".join(
        f"{name}:{'x'.join(str(v) for v in rng[which])}" for name, rng in shapes.items()
    )


def trtexec_command(plan: EnginePlan) -> list[str]:
    """The `trtexec` arguments that build the same engine (TensorRT 10 and 11 spelling).

    `--stronglyTyped` takes every type from the graph (the fp16 graph for an fp16 engine); it
    replaces `--fp16`, `--layerPrecisions` and `--precisionConstraints`, which TensorRT 10
    deprecates and 11 removes. On TensorRT 11 strong typing is the only mode and the flag is
    accepted as a no-op.
    """
    args = ["trtexec", f"--onnx={plan.typed_onnx}", "--stronglyTyped"]
    args.append(f"--saveEngine={plan.engine}")
    if plan.profiles:
        for flag, which in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            args.append(f"{flag}={_shape_arg(plan.profiles, which)}")
    args.append(f"--memPoolSize=workspace:{plan.workspace_mb}M")
    if plan.timing_cache is not None:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    return args


def trtexec_line(plan: EnginePlan) -> str:
    return shlex.join(trtexec_command(plan))


def gpu_info() -> dict[str, str]:
    """Name and compute capability of GPU 0 (cuda-python, or a torch already loaded)."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            cc = f"{props.major}.{props.minor}"
            return {"name": name.rstrip("\x00"), "compute_capability": cc}
    except Exception:
        pass
    torch = sys.modules.get("torch")  # only a torch the process already loaded
    if torch is not None:
        try:
            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability(0)
                cc = f"{major}.{minor}"
                return {"name": torch.cuda.get_device_name(0), "compute_capability": cc}
        except Exception:
            pass
    return {"name": "unknown", "compute_capability": "unknown"}


def model_conventions(meta: Mapping[str, str]) -> dict[str, Any]:
    """What a caller of the engine needs beyond its tensors, from the ONNX metadata: the
    preprocessing (encoder input side, prompt/mask frame, normalisation, padding) and the
    mask-token convention. Graphs older than these keys get the values every reader assumes
    for them (EdgeSAM's recipe, frame = img_size, tokens 0 | 1..3); a graph without img_size
    (not ours) gets only the tokens."""
    out: dict[str, Any] = {}
    if "img_size" in meta:
        pre = Preprocessing.from_metadata(meta)
        out["preprocessing"] = {
            "encoder_size": pre.encoder_size,
            "prompt_frame": pre.frame,
            "pixel_mean": list(pre.pixel_mean),
            "pixel_std": list(pre.pixel_std),
            "normalize": pre.normalize,
            "pad": pre.pad,
        }
        out["metadata"] = pre.to_metadata()
    tokens = MaskTokens.from_metadata(meta)
    out["mask_tokens"] = {
        "count": tokens.count,
        "single": list(tokens.single),
        "multi": list(tokens.multi),
    }
    out["metadata"] = out.get("metadata", {}) | tokens.to_metadata()
    return out


def sidecar(
    plan: EnginePlan,
    tensorrt_version: str,
    gpu: Mapping[str, str],
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    typing: str = STRONG,
) -> dict[str, Any]:
    """The JSON written beside an engine: how it was built and what it computes.

    `typing` says where the engine's types came from: `STRONG` (the graph parsed,
    `network_onnx`) or `WEAK` (builder flags over the float32 graph, `fp32_layers` pinned).

    `metadata` is the source ONNX's metadata with the preprocessing and mask-token keys made
    explicit (what `Predictor` reads from a TensorRT session); `preprocessing` and
    `mask_tokens` repeat them as numbers for callers in other languages.
    """
    conventions = model_conventions(plan.onnx_metadata)
    network = plan.typed_onnx if typing == STRONG else plan.onnx
    return {
        "format": "edgesam-export tensorrt sidecar v1",
        "engine": plan.engine.name,
        "tensorrt_version": tensorrt_version,
        "gpu": dict(gpu),
        "graph": plan.graph,
        "precision": plan.precision,
        "typing": typing,
        "fp32_layers": list(plan.fp32_layers),
        "profiles": {
            name: {"min": list(r[0]), "opt": list(r[1]), "max": list(r[2])}
            for name, r in plan.profiles.items()
        },
        "workspace_mb": plan.workspace_mb,
        "timing_cache": plan.timing_cache.name if plan.timing_cache else None,
        "source_onnx": {"file": plan.onnx.name, "sha256": file_sha256(plan.onnx)},
        "network_onnx": {"file": network.name, "sha256": file_sha256(network)},
        "inputs": list(inputs),
        "outputs": list(outputs),
        "preprocessing": conventions.get("preprocessing"),
        "mask_tokens": conventions["mask_tokens"],
        "metadata": conventions["metadata"]
        | dict(plan.onnx_metadata)
        | {"precision": plan.precision},
        "trtexec": trtexec_command(plan),
    }


def require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        reason = backends.unavailable_reason("tensorrt", "tensorrt", export=True)
        raise BackendUnavailableError(
            f"{reason}; or build on the device from the lines of --print-trtexec"
        ) from None
    return trt


def _tensor_specs(network: Any, inputs: bool) -> list[dict[str, Any]]:
    count = network.num_inputs if inputs else network.num_outputs
    get = network.get_input if inputs else network.get_output
    specs = []
    for i in range(count):
        t = get(i)
        specs.append(
            {"name": t.name, "dtype": str(t.dtype).split(".")[-1].lower(), "shape": list(t.shape)}
        )
    return specs


def _node_names(onnx_path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {n.name or n.output[0] for n in model.graph.node}


def strongly_typed_flags(trt: Any) -> int | None:
    """`create_network` flags for a strongly typed network; None where TensorRT has none.

    TensorRT 9.1 and 10 offer `NetworkDefinitionCreationFlag.STRONGLY_TYPED`; TensorRT 11 keeps
    it as an ignored no-op (every network is strongly typed) and drops `BuilderFlag.FP16`, so a
    module without that builder flag is strongly typed even without the creation flag.
    """
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    return None if hasattr(trt.BuilderFlag, "FP16") else 0


def build_engine(plan: EnginePlan, trt: Any | None = None) -> Path:
    """Parse, configure and build with the TensorRT Python API; write engine + sidecar.

    Strongly typed wherever TensorRT offers it (the parsed graph fixes every type: the fp16
    graph for an fp16 engine); the weakly typed flag path only where it does not. Nothing is
    left at the destination unless both files were written.
    """
    trt = trt or require_tensorrt()
    unmatched: list[str] = []
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = strongly_typed_flags(trt)
    typing = WEAK if flags is None else STRONG
    network = builder.create_network(flags or 0)  # explicit batch: the only mode since 10
    parser = trt.OnnxParser(network, logger)
    source = plan.typed_onnx if typing == STRONG else plan.onnx
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportFailedError(f"TensorRT's ONNX parser rejected {source.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in plan.profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if plan.int8 and typing == WEAK:  # explicit quantization: no calibrator
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.fp16 and typing == WEAK:
        if not builder.platform_has_fast_fp16:
            raise BackendUnavailableError("this GPU has no fast fp16: build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
        unmatched = _pin_layers(trt, network, config, plan.fp32_layers, _node_names(plan.onnx))
    cache_bytes = (
        plan.timing_cache.read_bytes() if plan.timing_cache and plan.timing_cache.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportFailedError(f"TensorRT could not build an engine from {source.name}")
    meta = sidecar(
        plan,
        trt.__version__,
        gpu_info(),
        _tensor_specs(network, True),
        _tensor_specs(network, False),
        typing,
    )
    meta["fp32_layers_without_a_layer"] = unmatched
    side = sidecar_path(plan.engine)
    with atomic_path(plan.engine) as tmp:
        tmp.write_bytes(bytes(serialized))
    try:
        write_json_atomic(side, meta)
    except BaseException:
        plan.engine.unlink(missing_ok=True)
        raise
    if plan.timing_cache is not None:
        with atomic_path(plan.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan.engine


def layer_owner(layer_name: str, pinned: set[str], node_names: set[str]) -> str | None:
    """The pinned ONNX node a TensorRT layer came from, if any.

    The parser names a node's first layer after the node and further layers of the same node
    `<node>_<counter>`; a name that is itself another node's name belongs to that node.
    """
    if layer_name in pinned:
        return layer_name
    if layer_name in node_names:
        return None
    base, _, suffix = layer_name.rpartition("_")
    return base if suffix.isdigit() and base in pinned else None


def _pin_layers(
    trt: Any, network: Any, config: Any, names: Sequence[str], node_names: set[str]
) -> list[str]:
    """Weakly typed networks only (a TensorRT without strong typing): run the layers the ONNX
    parser made from the named nodes in fp32 (outputs too); returns the names no layer came
    from (e.g. Constant nodes, folded by the parser)."""
    if not names:
        return []
    wanted = set(names)
    found: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        owner = layer_owner(layer.name, wanted, node_names)
        if owner is None:
            continue
        found.add(owner)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float16, trt.float32):
                layer.set_output_type(j, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return sorted(wanted - found)


# --- the registry's TensorRT target: a recipe or pipeline export of one graph --------------------


def export(loaded: LoadedModel, graph: GraphKind, options: ExportOptions) -> Artifact:
    """Our ONNX graph of `graph`, checked for readiness, built into an engine (+ sidecar) in
    `options.output` on this machine's GPU.

    TensorRT is required before anything is exported. The ONNX source goes to a temporary
    folder: the engine is what ships, and its sidecar records the source's name and sha256.
    An fp16 engine is parsed from the ONNX fp16 export of the graph (its safety pins kept
    float32), as `trt --fp16` parses the fp16 graph it writes.
    """
    import tempfile

    from edgesam_export.device.trt_check import check_model, load_onnx, parse_range
    from edgesam_export.host.config import OnnxOptions, TensorRTOptions
    from edgesam_export.host.targets.onnx import export as export_onnx

    if not isinstance(options, TensorRTOptions):
        options = TensorRTOptions(**options.model_dump())
    trt = require_tensorrt()
    requested = {
        "num_points": parse_range(options.points, "points") if options.points else None,
        "batch": parse_range(options.batch, "batch") if options.batch else None,
    }
    fp16 = options.precision == "fp16"
    with tempfile.TemporaryDirectory(prefix="edgesam-trt-") as tmp:
        onnx_options = OnnxOptions(
            output=Path(tmp),
            graphs=(graph,),
            use_stability_score=options.use_stability_score,
            opset=options.opset,
        )
        source = export_onnx(loaded, graph, onnx_options)
        fp16_onnx: Path | None = None
        pins: tuple[str, ...] = ()
        if fp16:
            typed = export_onnx(
                loaded, graph, onnx_options.model_copy(update={"precision": "fp16"})
            )
            fp16_onnx = typed.path
            pins = tuple(n for n in typed.metadata.get("fp16.fp32_nodes", "").split(",") if n)
        model = load_onnx(source.path)
        dims = dims_for(model, requested)
        readiness = check_model(model, dims, source.path.name)
        if not readiness.passed:
            first = "; ".join(f.message for f in readiness.errors[:3])
            raise ExportFailedError(f"{source.path.name} is not ready for TensorRT: {first}")
        options.output.mkdir(parents=True, exist_ok=True)
        plan = EnginePlan(
            onnx=source.path,
            engine=engine_path(source.path, options.output, fp16),
            graph=graph,
            profiles=profile_shapes(model, dims),
            fp16=fp16,
            fp32_layers=pins,
            fp16_onnx=fp16_onnx,
            workspace_mb=options.workspace_mb,
            onnx_metadata={p.key: p.value for p in model.metadata_props},
        )
        build_engine(plan, trt)
    return Artifact(
        path=plan.engine,
        backend="tensorrt",
        graph=graph,
        inputs=source.inputs,
        outputs=source.outputs,
        metadata={**source.metadata, "precision": plan.precision},
        data_files=[sidecar_path(plan.engine)],
    )


TARGET = Target(name="tensorrt", export=export)

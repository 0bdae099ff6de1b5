"""ExecuTorch export: our export graphs through `torch.export`, lowered to XNNPACK `.pte` programs.

The same graphs as ONNX and CoreML (`EncoderGraph` / `DecoderGraph`, optimized=True, built by
`targets.onnx.build_graph`; EdgeTAM's SAM 2 graphs from `graphs.sam2_graph`), with the I/O the
registry gives each graph (`spec.graph_io`), so one `.pte` runs on Android and iOS with the I/O
of every other backend. The contract's point axis is a `torch.export` dynamic dim
(1..max_points); its prompt-set / object batch is fixed at 1 (`executorch.max_batch = 1`),
because XNNPACK delegates reshapes with at most one dynamic dimension and the decoder's attention
reshapes (B, 5 + N, heads, c) would carry two. The sidecar lists the inputs and outputs whose
first axis is that batch (`executorch.batched`, `executorch.batch = calls`: `batched_io`), and
the session runs a batch of B as B calls of the program, as an app on the phone does.

int8 is PyTorch's own PT2E flow for XNNPACK: the exported graph is prepared with the XNNPACK
quantizer (per-channel symmetric int8 weights, int8 activations), run on calibration inputs
(`host/quantize/data.py`: a `--calibration` folder or the built-in synthetic set, never the
held-out images int8 is judged on), converted, exported again and lowered like fp32. Each
graph's program keeps float the fewest blocks that meet `--accuracy-target` on those images
(`quantize.pt2e.search_program`), then meets it on the held-out images or is not written.

A `.pte` has no metadata slot, so `<file>.pte.json` beside it carries what ONNX metadata carries
(family, frames, preprocessing, mask tokens, precision, versions, checkpoint sha256) and the I/O
names and shapes the program takes positionally. Both are written atomically, the sidecar first:
a finished-looking `.pte` always has its sidecar. Same checkpoint and options give the same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from edgesam_export.device import backends
from edgesam_export.device.artifacts import Artifact, atomic_path
from edgesam_export.device.contract import BATCH_AXES, POINT_AXES, TensorSpec, axis_bounds
from edgesam_export.device.errors import ExportFailedError, InputError
from edgesam_export.host.config import ExecuTorchOptions, ExportOptions, GraphKind
from edgesam_export.host.executorch_session import ExecuTorchSession
from edgesam_export.host.metadata import base_metadata
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.models.sam_heads import AttentionForm
from edgesam_export.host.quantize.heldout import HELDOUT_IMAGES
from edgesam_export.host.quantize.pt2e import (
    Calibration,
    Int8Plan,
    Plans,
    ProgramEvaluator,
    ProgramSearch,
    encoder_blocks,
    node_blocks,
    quantize,
    search_program,
)
from edgesam_export.host.targets import Target, artifact_path, decoder_attention
from edgesam_export.host.targets.executorch_rewrites import gemm_forms, rewrite_for_xnnpack
from edgesam_export.host.targets.onnx import build_graph

if TYPE_CHECKING:
    from edgesam_export.device.models import ModelSpec
    from edgesam_export.device.runtime.base import Session
    from edgesam_export.host.quantize.data import Inputs

SIDECAR_SUFFIX = ".json"  # `<stem>_<graph>.pte.json`


def sidecar_path(pte: Path) -> Path:
    return pte.with_name(pte.name + SIDECAR_SUFFIX)


def _require_executorch() -> tuple[Any, Any]:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise backends.unavailable_error("executorch", "executorch", export=True) from None
    return to_edge_transform_and_lower, XnnpackPartitioner


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _io(spec: ModelSpec, graph: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The registry's I/O of the graph (`spec.graph_io`, every layout) with the batch axes fixed
    at 1: what the program accepts."""
    inputs, outputs = spec.graph_io(graph)

    def one(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, tuple(1 if d in BATCH_AXES else d for d in t.shape))

    return [one(t) for t in inputs], [one(t) for t in outputs]


def _dynamic_shapes(
    inputs: list[TensorSpec], max_points: int
) -> tuple[dict[int, Any] | None, ...] | None:
    """`torch.export` dynamic dims per positional input: the points and memory axes that are
    symbolic in the contract (one `Dim` per symbol, shared by every input that has it): the
    prompt-set / object batch is fixed at 1 (module docstring), the point count is dynamic
    1..max_points, the video tracker's memory frames and object pointers up to SAM 2's bounds
    (`contract.axis_bounds`)."""
    bounds = axis_bounds(max_points)
    dims: dict[str, Any] = {}
    shapes: list[dict[int, Any] | None] = []
    for t in inputs:
        axes = {
            i: dims.setdefault(d, torch.export.Dim(d, min=1, max=bounds[d]))
            for i, d in enumerate(t.shape)
            if isinstance(d, str) and d in bounds
        }
        shapes.append(axes or None)
    return tuple(shapes) if dims else None


def batched_io(io: tuple[list[TensorSpec], list[TensorSpec]]) -> dict[str, list[str]] | None:
    """The inputs and outputs whose first axis is the contract's batch (prompt sets, objects):
    the program takes B = 1 (XNNPACK lowers reshapes with one dynamic dimension, which is the
    point count), so a session runs a batch of B as B calls and concatenates the outputs, as an
    app on the phone would. None where a batch axis is not the first or an output has none."""
    inputs, outputs = io
    if any(d in BATCH_AXES for t in (*inputs, *outputs) for d in t.shape[1:]):
        return None
    names = {
        "inputs": [t.name for t in inputs if t.shape and t.shape[0] in BATCH_AXES],
        "outputs": [t.name for t in outputs if t.shape and t.shape[0] in BATCH_AXES],
    }
    if not names["inputs"] or len(names["outputs"]) != len(outputs):
        return None
    return names


def _batch_one(
    inputs: list[TensorSpec], args: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """The trace inputs cut to one prompt set / object on every batch axis."""
    return tuple(
        a[:1] if t.shape and t.shape[0] in BATCH_AXES else a
        for t, a in zip(inputs, args, strict=True)
    )


#: GELU's tanh form as x * (0.5 + 0.5 tanh(x (K + C x^2))), K = sqrt(2 / pi), C = 0.044715 K
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715 * _GELU_K


def _tanh_gelu(x: torch.Tensor, approximate: str = "none") -> Any:
    """GELU's tanh approximation spelled out in ops XNNPACK runs as written (mul, add, tanh),
    as `x * (0.5 + 0.5 * tanh(x * (K + C * x * x)))`.

    XNNPACK's GELU node has no `approximate` field: the partitioner takes
    `aten.gelu(approximate="tanh")` and the delegate computes the exact (erf) GELU, up to 4.7e-4
    apart per activation. EfficientViT-SAM's encoder uses the tanh form in every block, and the
    difference grew to 5.3e-2 in its embeddings. Exact GELU is left to XNNPACK (NotImplemented:
    this decomposition does not apply).

    The product's first operand is `x` itself: a convolution with per-call int8 input after
    the spelled-out GELU ran only in this form. In the `0.5 * x * (1 + tanh(...))` form
    ExecuTorch 1.5.1's XNNPACK layout pass, which follows first operands back from a dynamic
    quantize, put its channels-last copy in the wrong place: the program failed at run time
    ("Propagating input shapes failed"; EfficientViT-SAM's int8 encoder failed on its first
    block; `test_a_per_call_int8_convolution_after_tanh_gelu_runs`). The sigmoid form
    `x * sigmoid(2 z)`, the same function, moved EfficientViT-SAM-L0's fp32 end-to-end scores
    past the parity tolerance; this one keeps XNNPACK's tanh.

    Its constants have `x`'s rank (1 x 1 x 1 x 1 for a feature map). ExecuTorch's XNNPACK
    layout pass gives both operands of a binary op one memory format, and a 0-d constant cannot
    be channels-last: against a channels-last activation the pass converted the activation to
    channels-first for the op and back for the next convolution. EfficientViT-SAM-L0's encoder
    ran 144 such transposes, 29 % of its time."""
    if approximate != "tanh":
        return NotImplemented

    def const(value: float) -> torch.Tensor:  # stored with the program: `lift_scalar_fulls`
        return x.new_full((1,) * x.dim(), value)

    inner = x * (const(_GELU_K) + const(_GELU_C) * (x * x))
    return x * (const(0.5) + const(0.5) * torch.tanh(inner))


def _contiguous_constants(exported: Any) -> None:
    """Make every lifted constant contiguous, with its placeholder's metadata. ExecuTorch's
    constant dim-order pass does this for constant tensors but fails ("Missing input spec for
    lifted tensor ...") on a non-contiguous non-persistent buffer, which it also finds among
    the constants (EdgeTAM's perceiver position table)."""
    names = {s.target: s.arg.name for s in exported.graph_signature.input_specs if s.target}
    nodes = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    for key, value in list(exported.constants.items()):
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            exported.constants[key] = value.contiguous()
            node = nodes.get(names.get(key, ""))
            if node is not None:
                node.meta["val"] = node.meta["val"].contiguous()


def traced_program(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic: tuple[dict[int, Any] | None, ...] | None,
) -> Any:
    """The float program as exported, its GEMMs in the forms XNNPACK takes (`gemm_forms`):
    what PT2E quantizes (`exported.module()` gives each plan its own copy)."""
    with torch.no_grad():
        exported = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        exported, _ = gemm_forms(exported, dynamic is not None)
    return exported


def exported_program(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic: tuple[dict[int, Any] | None, ...] | None,
    calibration: Calibration | None = None,
    plan: Int8Plan | None = None,
    traced: Any = None,
) -> Any:
    """The program ready to lower: exported (or `traced`, from `traced_program`), int8 by PT2E
    when `calibration` is given (`plan`: how; default calibrated activations), decomposed and
    rewritten for XNNPACK (`executorch_rewrites`)."""
    exported = traced if traced is not None else traced_program(module, args, dynamic)
    with torch.no_grad():
        if calibration is not None:
            quantized = quantize(exported, calibration, plan or Int8Plan())
            exported = torch.export.export(quantized, args, dynamic_shapes=dynamic, strict=False)
        table: dict[Any, Any] = {torch.ops.aten.gelu.default: _tanh_gelu}
        exported, _ = rewrite_for_xnnpack(exported, dynamic is not None, table)
    _contiguous_constants(exported)
    return exported


def lower(exported: Any) -> bytes:
    """An exported program lowered to XNNPACK: the `.pte` bytes."""
    to_edge_transform_and_lower, partitioner = _require_executorch()
    lowered = to_edge_transform_and_lower(exported, partitioner=[partitioner()])
    return bytes(lowered.to_executorch().buffer)


def _program(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic: tuple[dict[int, Any] | None, ...] | None,
) -> bytes:
    """The float program's bytes (int8 programs come from the search: `_search`)."""
    return lower(exported_program(module, args, dynamic))


def int8_evaluator(
    loaded: LoadedModel,
    graph: GraphKind,
    options: ExecuTorchOptions,
    selection: Inputs,
    encoder: Session | None = None,
) -> tuple[ProgramEvaluator, Plans, list[str]]:
    """The int8 search's judge of `graph`'s plans on the `selection` images (which also
    calibrate each plan), with the plans and the blocks it searches: the encoder's activations
    per call over the stages' children, the decoder's calibrated with every node in one block
    (behind `encoder`, the int8 program exported beside it). Each plan it judges is a lowered
    program; the benchmarks judge their own plans with it."""
    from edgesam_export.device.mask_bar import MaskBar

    module, args, dynamic = _program_inputs(loaded, graph, options)
    inputs, outputs = _io(loaded.spec, graph)
    metadata = _metadata(loaded, graph, options, inputs)
    sidecar = {"metadata": metadata, "inputs": inputs, "outputs": outputs}
    traced = traced_program(module, args, dynamic)

    def lower_plan(plan: Int8Plan, calibration: Calibration) -> bytes:
        return lower(exported_program(module, args, dynamic, calibration, plan, traced))

    bar = MaskBar.parse(options.accuracy_target)
    evaluator = ProgramEvaluator(
        graph, loaded, selection, bar, traced, lower_plan, sidecar, encoder
    )
    if graph == "encoder":  # per-call scales, the stages' children
        return evaluator, Plans(dynamic=True), encoder_blocks(module)
    return evaluator, Plans(dynamic=False, by_node=True), node_blocks(traced)


def _search(
    loaded: LoadedModel, graph: GraphKind, options: ExecuTorchOptions, encoder: Session | None
) -> ProgramSearch:
    """The int8 program with the fewest float blocks that meet `--accuracy-target`
    (`quantize.pt2e.search_program`) on the calibration images, prepared once: they calibrate
    every probe and select among them (`int8_evaluator`)."""
    from edgesam_export.host.quantize.data import calibration_inputs, heldout_images
    from edgesam_export.host.quantize.search import stderr_progress

    selection = calibration_inputs(
        options.calibration,
        options.calibration_images,
        loaded.spec.preprocessing,
        heldout_images(HELDOUT_IMAGES),
    )
    evaluator, plans, blocks = int8_evaluator(loaded, graph, options, selection, encoder)
    return search_program(
        evaluator,
        plans,
        blocks,
        source=options.calibration_source(),
        budget=options.search_budget,
        progress=stderr_progress,
    )


def _program_inputs(
    loaded: LoadedModel, graph: GraphKind, options: ExecuTorchOptions
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], Any]:
    """The module, its example inputs and `torch.export`'s dynamic dims."""
    module, args = program_graph(
        loaded, graph, options.use_stability_score, options.attention_form()
    )
    return module, args, _dynamic_shapes(_io(loaded.spec, graph)[0], options.max_points)


def program_graph(
    loaded: LoadedModel,
    graph: GraphKind,
    use_stability_score: bool,
    attention: Literal["folded", "projected"] = "folded",
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The module a program is exported from and its example inputs (batch axes at 1).

    The decoder's cross-attentions (`Attention`, `--attention`): folded (fp32's default), whose
    4096-token operands are each the left operand of their product (XNNPACK packs only the
    right one per call); or projected as the plain layout (int8's form: the image-side
    projections are linears PT2E quantizes), each 4096-token operand transposed once, after
    `merge_permutes` joins the head split and the key transpose. The transposed form, which
    onnxruntime folds into its GEMMs, costs XNNPACK a copy per transpose.
    """
    form: AttentionForm = "folded" if attention == "folded" else "plain"
    module, args = build_graph(loaded, graph, use_stability_score, attention=form)
    # N, S, K > 1 keep them unspecialised
    return module, _batch_one(loaded.spec.graph_io(graph)[0], args)


def _metadata(
    loaded: LoadedModel, graph: GraphKind, options: ExecuTorchOptions, inputs: list[TensorSpec]
) -> dict[str, str]:
    """What the sidecar says of every program (the int8 fields are added after the search)."""
    spec = loaded.spec
    metadata = base_metadata(
        loaded, graph, use_stability_score=options.use_stability_score and graph == "decoder"
    )
    metadata |= {
        "precision": options.precision,
        "executorch.version": _version("executorch"),
        "executorch.delegate": "XnnpackBackend",
        "torch.version": torch.__version__,
    }
    if any(d in POINT_AXES for t in inputs for d in t.shape):
        metadata |= {"executorch.max_points": str(options.max_points)}
    metadata |= decoder_attention(loaded, graph, options)
    if any(d in BATCH_AXES for t in spec.graph_io(graph)[0] for d in t.shape):
        metadata |= {"executorch.max_batch": "1"}
        batched = batched_io(spec.graph_io(graph))
        if batched is not None:  # the session runs a batch of B as B calls of the program
            metadata |= {"executorch.batch": "calls", "executorch.batched": json.dumps(batched)}
    return metadata


def _int8_metadata(searched: ProgramSearch, options: ExecuTorchOptions) -> dict[str, str]:
    """What the sidecar says of an int8 program: its quantizer, the images that selected its
    float blocks (and calibrated its ranges, for calibrated activations), the search's report
    and the held-out result (every int8 program meets the bar there before it is written)."""
    source = options.calibration_source()
    result = searched.heldout
    metadata = {
        "executorch.quantizer": searched.plan.describe(),
        "int8.selection": f"{source} ({options.calibration_images} images)",
        "int8.float_blocks": ",".join(searched.plan.float_blocks),
        "int8.report": json.dumps(searched.report.to_json()),
        "int8.mask_iou": f"mean {result.mean_iou:.4f} worst {result.worst_iou:.4f}",
        "int8.bar": f"{result.bar} met",
    }
    if not searched.plan.dynamic:  # calibrated ranges; per-call scales calibrate nothing
        metadata |= {
            "executorch.calibration": source,
            "executorch.calibration_inputs": str(searched.calibration_inputs),
        }
    return metadata


def export(loaded: LoadedModel, graph: GraphKind, options: ExportOptions) -> Artifact:
    if not isinstance(options, ExecuTorchOptions):
        options = ExecuTorchOptions(**options.model_dump())
    _require_executorch()
    spec = loaded.spec
    inputs, outputs = _io(spec, graph)
    dest = artifact_path(loaded, graph, options, "executorch")
    decoder_attention(loaded, graph, options)  # refuses --attention where it does not apply
    if options.precision == "int8" and spec.io_layout != "sam":
        raise InputError(
            f"--precision int8 calibrates SAM's decoder contract; {spec.name} has the"
            f" {spec.io_layout} layout: export it with --precision fp32"
        )
    metadata = _metadata(loaded, graph, options, inputs)
    paired = _paired_encoder(loaded, graph, options)
    encoder = None if paired is None else ExecuTorchSession(paired)
    try:
        if options.precision == "int8":  # each probe of the search is a lowering
            searched = _search(loaded, graph, options, encoder)
            metadata |= _int8_metadata(searched, options)
            buffer = searched.program
        else:
            buffer = _program(*_program_inputs(loaded, graph, options))
    except (ExportFailedError, InputError):  # the search's own verdict, or bad calibration input
        raise
    except Exception as exc:  # torch.export and the lowering raise many untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        raise ExportFailedError(
            f"ExecuTorch export of the {spec.name} {graph} failed: {first}"
        ) from exc
    if paired is not None:  # what the decoder was calibrated and judged end to end with
        from edgesam_export.device.manifest import file_sha256

        metadata["int8.judged_with"] = f"{paired.name} sha256:{file_sha256(paired)}"
    sidecar = sidecar_path(dest)
    payload = {
        "metadata": metadata,
        "inputs": [asdict(t) for t in inputs],
        "outputs": [asdict(t) for t in outputs],
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(sidecar) as tmp:  # the sidecar first, the program last
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buffer)
    return Artifact(
        path=dest,
        backend="executorch",
        graph=graph,
        inputs=inputs,
        outputs=outputs,
        metadata=metadata,
        data_files=[sidecar],
    )


def _paired_encoder(
    loaded: LoadedModel, graph: GraphKind, options: ExecuTorchOptions
) -> Path | None:
    """The int8 encoder program this run exported before an int8 decoder (graphs export in
    order, encoder first), which the decoder is calibrated and judged beside: the pair a user
    runs. None otherwise (the decoder then sees PyTorch's embeddings)."""
    if graph != "decoder" or options.precision != "int8" or "encoder" not in options.graphs:
        return None
    path = artifact_path(loaded, "encoder", options, "executorch")
    return path if path.is_file() else None


TARGET = Target(name="executorch", export=export)

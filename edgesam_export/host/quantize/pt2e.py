"""PT2E int8 of the ExecuTorch programs (the XNNPACK quantizer), and its search.

- The decoder: int8 activations with ranges calibrated on the calibration set (`Int8Plan()`),
  per-channel int8 weights.
- The encoder: int8 activations quantized per call (`Int8Plan(dynamic=True)`: XNNPACK picks
  each scale at run time), per-channel int8 weights. Calibrated ranges broke EdgeSAM's encoder
  masks (held-out IoU 0.66 / 0.44); per-call scales alone reach 0.937 / 0.846.

For both graphs the blocks whose quantization harms the masks most stay float, found by
`search.search` (the ONNX search): every block int8 first; if that misses the bar, sensitivity
from PT2E's simulated int8 (the converted module run by PyTorch, one block quantized at a time,
SQNR of the embeddings or of the masks), then a bisection on the number of float blocks whose
probes are lowered programs run on ExecuTorch's runtime and judged by the mask bar on the
calibration images (the selection set; a decoder behind the int8 encoder exported beside it).
The chosen program is then judged once on the held-out images, which the search never saw; a
miss there fails the export. The encoder's blocks are its stages' children (`encoder_blocks`:
module subtrees), the decoder's the ONNX search's (`node_blocks`: every node in one block).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgesam_export.device.mask_bar import MaskBar, MaskBarResult
from edgesam_export.host.quantize.data import Inputs, heldout_labels
from edgesam_export.host.quantize.heldout import HELDOUT_IMAGES, MaskReference, heldout_mask_bar
from edgesam_export.host.quantize.search import Report, sqnr_db
from edgesam_export.host.quantize.static import block_of

if TYPE_CHECKING:
    from edgesam_export.device.runtime.base import Session
    from edgesam_export.host.config import GraphKind
    from edgesam_export.host.models import LoadedModel

Progress = Callable[[str], None]


def _path(entry: tuple[str, Any]) -> str:
    """A node's module path from its `nn_module_stack` entry (older traces prefix L['self'])."""
    path = entry[0]
    return path[len("L['self'].") :] if path.startswith("L['self'].") else path


def in_block(node: torch.fx.Node, block: str) -> bool:
    """Whether `node` was traced inside the module at path `block`."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(p == block or p.startswith(block + ".") for p in map(_path, stack.values()))


_CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)


def _rank(node: Any) -> int | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


_aten = torch.ops.aten
#: ops whose output carries no channels-last tag (a reshape of a channels-last tensor is not the
#: reshape of its NCHW values): a conv fed through one makes XNNPACK's layout pass walk
_RELAYOUTS = (
    _aten.view.default,
    _aten.reshape.default,
    _aten._unsafe_view.default,
    _aten.permute.default,
    _aten.transpose.int,
    _aten.flatten.using_ints,
    _aten.unflatten.int,
    _aten.matmul.default,
    _aten.bmm.default,
)


def _chain_end(node: torch.fx.Node) -> torch.fx.Node:
    """The node reached from `node` along first arguments whose own first argument is not a
    node (a graph input, a parameter, or a `cat` of a list)."""
    while node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def reshaped_conv(node: torch.fx.Node) -> bool:
    """A convolution that per-call int8 cannot take through ExecuTorch's XNNPACK lowering (1.5).

    `ChannelsLastTaggedReshapePass.input_to_nhwc`, given a dynamic dq whose source is not
    tagged NHWC (its chain back to the previous convolution passes a reshape, permute or matrix
    product), walks `args[0]` past the quantize to the end of the chain and puts a
    channels-last copy there (upstream pytorch/executorch#21637 bounds that walk). Two ends
    break the program:
    - a tensor that is not 4-D on the way to the previous convolution (or a graph input): a
      ViT's tokens reshaped to a map (TinyViT's PatchMerging, SAM's neck), a LayerNorm2d's
      `weight * x`; the lowering fails ("required rank 4 tensor to use channels_last format");
    - an operator with a list first argument (a `cat`: EfficientViT's multi-scale q, k, v
      before `LiteMLA.proj`): its channels-last copy then feeds reshapes, and the program
      fails at run time ("Propagating input shapes failed").
    Such convs stay float. A chain of layout-free 4-D ops is the pass's own case, and a walk
    that ends at the graph's image is harmless (the stem takes it channels-last)."""
    if node.op != "call_function" or node.target not in _CONVOLUTIONS:
        return False
    x, relayout = node.args[0], False
    while isinstance(x, torch.fx.Node) and x.op == "call_function":
        if x.target in _CONVOLUTIONS:
            break
        if _rank(x) not in (None, 4):
            return True
        relayout = relayout or x.target in _RELAYOUTS
        if not (x.args and isinstance(x.args[0], torch.fx.Node)):
            break
        x = x.args[0]
    if _rank(x) not in (None, 4):
        return True
    return relayout and isinstance(x, torch.fx.Node) and _chain_end(x).op == "call_function"


@dataclass(frozen=True)
class Int8Plan:
    """How PT2E quantizes one program: calibrated (static) or per-call (dynamic) activation
    scales; the blocks left float, or the one block quantized alone (`only`: sensitivity)."""

    dynamic: bool = False
    float_blocks: tuple[str, ...] = ()
    only: str | None = None
    by_node: bool = False  # blocks: `node_block`'s (each node in one); else module subtrees

    def _blocks_of(self, node: torch.fx.Node, among: Sequence[str]) -> bool:
        """Whether `node` belongs to one of the blocks `among`."""
        if self.by_node:  # weights follow the operator they feed
            return node.op == "call_function" and node_block(node) in among
        return any(in_block(node, b) for b in among)

    def quantizer(self) -> Any:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=self.dynamic)
        quantizer = XNNPACKQuantizer().set_global(config)
        # the filter sees every node of a pattern, weights (no module stack) included
        only, floats, dynamic = self.only, self.float_blocks, self.dynamic

        def keep(n: torch.fx.Node) -> bool:
            if dynamic and reshaped_conv(n):  # XNNPACK's lowering fails them (`reshaped_conv`)
                return False
            if only is not None:
                return n.op != "call_function" or self._blocks_of(n, (only,))
            return not self._blocks_of(n, floats)

        quantizer.set_filter_function(keep)
        return quantizer

    def describe(self) -> str:
        scales = "per-call (dynamic)" if self.dynamic else "calibrated (static)"
        return f"XNNPACKQuantizer(symmetric, per-channel int8 weights, {scales} int8 activations)"


def quantize(exported: Any, calibration: Sequence[tuple[torch.Tensor, ...]], plan: Int8Plan) -> Any:
    """PT2E: prepare with the plan's quantizer, calibrate, convert (a quantized GraphModule).
    Per-call scales calibrate nothing: one call traces the observers of the weights."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(exported.module(), plan.quantizer())
    with torch.no_grad():
        for args in calibration[:1] if plan.dynamic else calibration:
            prepared(*args)
    return convert_pt2e(prepared)


_QUANTIZABLE = (nn.Conv2d, nn.Linear)


def _quantizable(module: nn.Module) -> bool:
    return any(isinstance(m, _QUANTIZABLE) for m in module.modules())


def _stage_list(module: nn.Module) -> bool:
    """A ModuleList of two or more modules with a layer to quantize."""
    return isinstance(module, nn.ModuleList) and sum(map(_quantizable, module)) >= 2


def encoder_blocks(module: nn.Module) -> list[str]:
    """The blocks of the encoder search, in graph order: below the wrappers that hold a single
    module, each child of the encoder, a stage list (ModuleList / Sequential) counting as its
    children, and a child that holds a stage list (a ModuleList of two or more such blocks:
    EfficientViT's `backbone.stages`, `neck.input_ops`) as its children with each ModuleList
    counting as its items; only blocks with a convolution or a linear layer (what the quantizer
    takes)."""
    prefix, current = "", module
    while len(children := list(current.named_children())) == 1:
        name, current = children[0]
        prefix += name + "."
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in current.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            blocks += [(f"{prefix}{name}.{n}", c) for n, c in child.named_children()]
        elif any(map(_stage_list, child.children())):
            for sub, grand in child.named_children():
                path = f"{prefix}{name}.{sub}"
                if isinstance(grand, nn.ModuleList):
                    blocks += [(f"{path}.{n}", c) for n, c in grand.named_children()]
                else:
                    blocks.append((path, grand))
        else:
            blocks.append((f"{prefix}{name}", child))
    return [n for n, b in blocks if _quantizable(b)]


#: What the XNNPACK quantizer annotates: a block of the decoder's search holds one of these.
_QUANTIZED_OPS = (
    *_CONVOLUTIONS,
    torch.ops.aten.conv_transpose2d.input,
    torch.ops.aten.linear.default,
    torch.ops.aten.add.Tensor,
    torch.ops.aten.mul.Tensor,
    torch.ops.aten.cat.default,
)
GRAPH_START = "(graph start)"


def _module_path(node: torch.fx.Node) -> str:
    """The innermost module a node was traced in ("" at the top level)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    path = _path(stack[-1]) if stack else ""
    return "" if path.startswith("_empty_nn_module_stack") else path


def node_block(node: torch.fx.Node) -> str:
    """A node's block by the ONNX search's rule (`static.block_of`: the module path up to the
    first indexed module and one part below it, at most 4 parts); a node traced outside every
    module joins the block of the node before it in graph order (`static.blocks`)."""
    n: Any = node
    while n is not None and n.op != "root":
        path = _module_path(n) if n.op == "call_function" else ""
        if path:
            parts: list[str] = []
            for part in path.split("."):  # `layers.0` is one part of an exported node's name
                if part.isdigit() and parts:
                    parts[-1] += "." + part
                else:
                    parts.append(part)
            return (block_of("/" + "/".join(parts) + "/op") or path).replace("/", ".")
        n = n.prev
    return GRAPH_START


def node_blocks(traced: Any) -> list[str]:
    """The blocks of the decoder's search, in graph order: every node of the float program
    (`traced`, before quantization) in exactly one block (`node_block`), the blocks that hold
    an operator the quantizer takes."""
    graph = traced.module().graph
    ops = [n for n in graph.nodes if n.op == "call_function" and n.target in _QUANTIZED_OPS]
    return list(dict.fromkeys(node_block(n) for n in ops))


@dataclass(frozen=True)
class Plans:
    """The search's quantizer (`search.Quantizer`): a candidate is a plan with the named blocks
    float (or one block quantized alone), its activations per call (`dynamic`) or calibrated."""

    dynamic: bool
    by_node: bool = False

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Int8Plan:
        return Int8Plan(self.dynamic, tuple(exclude), only[0] if only else None, self.by_node)


def calibration_args(
    graph: GraphKind, inputs: Inputs, embeddings: Sequence[np.ndarray], max_points: int | None
) -> list[tuple[torch.Tensor, ...]]:
    """PT2E's calibration inputs for one graph, in its argument order, batch 1: the images
    (encoder), or `embeddings` (one per image) with each prompt set cut to `max_points` points
    (decoder: the program takes one set of at most max_points points)."""
    if graph == "encoder":
        return [(torch.from_numpy(t),) for t in inputs.tensors]
    args: list[tuple[torch.Tensor, ...]] = []
    for feeds in inputs.decoder_feeds(embeddings, one_set_per_call=True):
        coords, labels = (
            feeds["point_coords"][:, :max_points],
            feeds["point_labels"][:, :max_points],
        )
        args.append(
            (
                torch.from_numpy(feeds["image_embeddings"]),
                torch.from_numpy(np.ascontiguousarray(coords)),
                torch.from_numpy(np.ascontiguousarray(labels)),
            )
        )
    return args


Calibration = Sequence[tuple[torch.Tensor, ...]]


@dataclass
class ProgramEvaluator:
    """The search's judge of one graph's plans (`search.CandidateJudge`). PyTorch's reference
    on the inputs is computed once (`MaskReference`, one prompt set per call); `lower` turns a
    plan and its calibration (`calibration`) into program bytes, kept in `programs` so that no
    plan is lowered twice. An encoder plan's embeddings go through PyTorch's decoder; a decoder
    plan gets the embeddings of `encoder` (the int8 program exported beside it; None:
    PyTorch's). The inputs are both the selection set and the calibration set: their images
    (encoder) or those embeddings with their prompt sets (decoder) calibrate every plan."""

    graph: GraphKind
    loaded: LoadedModel
    inputs: Inputs
    bar: MaskBar
    traced: Any  # the float program before quantization (`exported.module()` per plan)
    lower: Callable[[Int8Plan, Calibration], bytes]
    sidecar: Mapping[str, Any]  # the program's: metadata (max_points), inputs and outputs
    encoder: Session | None = None
    programs: dict[Int8Plan, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reference = MaskReference(self.loaded, self.inputs, one_set_per_call=True)
        self.embeddings = self.reference.embeddings
        if self.graph == "decoder" and self.encoder is not None:
            run = self.encoder.run
            self.embeddings = [run({"image": t})["image_embeddings"] for t in self.inputs.tensors]
        most = int(self.sidecar["metadata"].get("executorch.max_points", "0"))
        self.max_points = most or None
        self.calibration = calibration_args(
            self.graph, self.inputs, self.embeddings, self.max_points
        )

    def quick(self, plan: Int8Plan) -> float:
        """SQNR (dB) of PT2E's simulated int8 (the converted module run by PyTorch) on the
        first image: of the embeddings (encoder), of the masks of its prompt sets (decoder)."""
        module = quantize(self.traced, self.calibration, plan)
        with torch.no_grad():
            if self.graph == "encoder":
                got = module(torch.from_numpy(self.inputs.tensors[0]))
                return sqnr_db(got.numpy(), self.reference.embeddings[0])
            names = [t.name for t in self.sidecar["inputs"]]
            masks = [t.name for t in self.sidecar["outputs"]].index("masks")
            sets = sum(c.point_coords.shape[0] for c in self.inputs.prompts[0])
            most, got, ref = self.max_points, [], []
            for feeds, reference in zip(
                self.reference.feeds(self.embeddings)[:sets], self.reference.reference, strict=False
            ):
                if most is None or feeds["point_coords"].shape[1] <= most:
                    out = module(*(torch.from_numpy(feeds[n]) for n in names))
                    got.append(out[masks].numpy().ravel())
                    ref.append(reference["masks"].ravel())
        return sqnr_db(np.concatenate(got), np.concatenate(ref))

    def program(self, plan: Int8Plan) -> bytes:
        if plan not in self.programs:
            self.programs[plan] = self.lower(plan, self.calibration)
        return self.programs[plan]

    def session(self, plan: Int8Plan) -> Session:
        """The plan's lowered program on ExecuTorch's runtime, from memory."""
        from edgesam_export.host.executorch_session import ExecuTorchSession

        return ExecuTorchSession(self.program(plan), sidecar=self.sidecar)

    def judge(self, plan: Int8Plan) -> tuple[MaskBarResult, float, float, float | None]:
        """(mask bar result, SQNR dB of the graph's primary output, ms per call, no speed
        hint): the lowered program end to end on every image and prompt set, against
        PyTorch's masks."""
        session = self.session(plan)
        t0 = time.perf_counter()
        if self.graph == "encoder":
            emb = [session.run({"image": t})["image_embeddings"] for t in self.inputs.tensors]
            latency = 1000 * (time.perf_counter() - t0) / len(emb)
            sqnr = sqnr_db(np.stack(emb), np.stack(self.reference.embeddings))
            return self.reference.judge(self.bar, embeddings=emb), sqnr, latency, None
        pairs = self.reference.pairs(decoder=session, embeddings=self.embeddings)
        latency = 1000 * (time.perf_counter() - t0) / max(len(pairs), 1)
        sqnr = sqnr_db(
            np.concatenate([p.candidate["masks"].ravel() for p in pairs]),
            np.concatenate([p.reference["masks"].ravel() for p in pairs]),
        )
        return self.reference.bar(pairs, self.bar), sqnr, latency, None


@dataclass
class ProgramSearch:
    """What `search_program` chose: the plan, its program, the report, the held-out result
    and how many inputs calibrated it."""

    plan: Int8Plan
    program: bytes
    report: Report
    heldout: MaskBarResult
    calibration_inputs: int


def search_program(
    evaluator: ProgramEvaluator,
    plans: Plans,
    blocks: Sequence[str],
    *,
    source: str,
    budget: int | None = None,
    heldout_images: int = HELDOUT_IMAGES,
    progress: Progress = lambda _: None,
) -> ProgramSearch:
    """The graph's int8 program with the fewest float blocks that meet the evaluator's bar on
    its selection inputs, then judged on the held-out images, behind the evaluator's encoder
    for a decoder (module doc). Raises ExportFailedError when no probe meets the bar or the
    chosen program misses it on the held-out images."""
    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.host.quantize.search import search

    graph, bar, selection = evaluator.graph, evaluator.bar, evaluator.inputs
    report = Report(
        graph,
        str(bar),
        {"source": source, "images": len(selection.tensors), "method": "selection"},
        {"images": heldout_images},
        kind="int8",
    )
    beside = ""
    if graph == "decoder":
        beside = (
            " behind PyTorch's encoder"
            if evaluator.encoder is None
            else " behind the int8 encoder exported beside it"
        )
    keep = (
        " (or keep the int8 encoder: export it alone with --encoder, the decoder fp32 with"
        " --decoder)"
        if graph == "decoder" and evaluator.encoder is not None
        else ""
    )
    try:
        plan = search(plans, evaluator, {b: [b] for b in blocks}, report, progress, budget)
    except ExportFailedError as exc:
        raise ExportFailedError(f"{exc}{keep}") from exc
    progress(f"int8 {graph}: judging the chosen program on {heldout_images} held-out images")
    session = evaluator.session(plan)
    encoder, decoder = (session, None) if graph == "encoder" else (evaluator.encoder, session)
    result = heldout_mask_bar(evaluator.loaded, encoder, decoder, heldout_images, bar)
    report.heldout |= {"masks": result.count, "mean_iou": result.mean_iou}
    report.heldout["worst_iou"] = result.worst_iou
    report.heldout["images"] = result.to_json().get("images", [])
    by_image = result.by_image(heldout_labels(heldout_images))
    progress(
        f"int8 {graph}: held-out mean IoU {result.mean_iou:.4f}, worst {result.worst_iou:.4f}"
        f" ({'meets' if result.passed else 'misses'} {bar}); {by_image}"
    )
    if not result.passed:
        raise ExportFailedError(
            f"int8 {graph}: {len(report.float_blocks)} float block(s) met {bar} on the"
            f" {len(selection.tensors)} selection image(s), but{beside} the held-out images give"
            f" mean IoU {result.mean_iou:.4f} / worst {result.worst_iou:.4f} over"
            f" {result.count} masks ({by_image}); select on more images (--calibration-images,"
            f" --calibration), loosen --accuracy-target, or export fp32{keep}"
        )
    program = evaluator.program(plan)
    return ProgramSearch(plan, program, report, result, len(evaluator.calibration))

"""PT2E int8 of the ExecuTorch programs (the XNNPACK quantizer), and the encoder's search.

- The decoder: int8 activations with ranges calibrated on the calibration set (`Int8Plan()`),
  per-channel int8 weights.
- The encoder: int8 activations quantized per call (`Int8Plan(dynamic=True)`: XNNPACK picks
  each scale at run time), per-channel int8 weights. Calibrated ranges broke EdgeSAM's encoder
  masks (held-out IoU 0.66 / 0.44); per-call scales alone reach 0.937 / 0.846. So the blocks
  whose quantization harms the masks most stay float, found by `search.search` (the ONNX
  search): sensitivity from PT2E's simulated int8 (the converted module run by PyTorch, one
  block quantized at a time, SQNR of the embeddings), then a bisection on the number of float
  blocks whose probes are lowered programs run on ExecuTorch's runtime and judged by the mask
  bar on the calibration images (the selection set). The chosen program is then judged once on
  the held-out images, which the search never saw; a miss there fails the export.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgesam_export.device.mask_bar import MaskBar, MaskBarResult
from edgesam_export.host.quantize.data import Inputs
from edgesam_export.host.quantize.heldout import HELDOUT_IMAGES, MaskReference, heldout_mask_bar
from edgesam_export.host.quantize.search import Report, sqnr_db

if TYPE_CHECKING:
    from edgesam_export.device.runtime.base import Session
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


def off_4d_conv(node: torch.fx.Node) -> bool:
    """A convolution whose input, followed back along first arguments to the previous
    convolution (or a graph input), passes through a tensor that is not 4-D: a ViT's tokens
    reshaped to a map (TinyViT's PatchMerging, SAM's neck), or a LayerNorm2d's `weight * x`.

    Per-call int8 cannot take such a conv through ExecuTorch's XNNPACK lowering (1.5):
    `ChannelsLastTaggedReshapePass.input_to_nhwc`, given a dynamic dq whose source is not
    tagged NHWC, walks `args[0]` past the quantize to the end of the chain (a partition input
    or a parameter) and puts a channels-last copy there; a rank-3 or rank-1 tensor fails with
    "required rank 4 tensor to use channels_last format" (upstream pytorch/executorch#21637
    bounds that walk). Such convs stay float; a chain that stays 4-D is the pass's own case."""
    if node.op != "call_function" or node.target not in _CONVOLUTIONS:
        return False
    x = node.args[0]
    while isinstance(x, torch.fx.Node) and x.op == "call_function":
        if x.target in _CONVOLUTIONS:
            break
        if _rank(x) not in (None, 4):
            return True
        if not (x.args and isinstance(x.args[0], torch.fx.Node)):
            break
        x = x.args[0]
    return _rank(x) not in (None, 4)


@dataclass(frozen=True)
class Int8Plan:
    """How PT2E quantizes one program: calibrated (static) or per-call (dynamic) activation
    scales; the blocks left float, or the one block quantized alone (`only`: sensitivity)."""

    dynamic: bool = False
    float_blocks: tuple[str, ...] = ()
    only: str | None = None

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
            if dynamic and off_4d_conv(n):  # XNNPACK's lowering refuses them (`off_4d_conv`)
                return False
            if only is not None:
                return n.op != "call_function" or in_block(n, only)
            return not any(in_block(n, b) for b in floats)

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


def encoder_blocks(module: nn.Module) -> list[str]:
    """The blocks of the encoder search, in graph order: below the wrappers that hold a single
    module, each child of the encoder, a stage list (ModuleList / Sequential) counting as its
    children; only blocks with a convolution or a linear layer (what the quantizer takes)."""
    prefix, current = "", module
    while len(children := list(current.named_children())) == 1:
        name, current = children[0]
        prefix += name + "."
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in current.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            blocks += [(f"{prefix}{name}.{n}", c) for n, c in child.named_children()]
        else:
            blocks.append((f"{prefix}{name}", child))
    quantizable = (nn.Conv2d, nn.Linear)
    return [n for n, b in blocks if any(isinstance(m, quantizable) for m in b.modules())]


class Plans:
    """The search's quantizer (`search.Quantizer`): a candidate is a plan of per-call int8
    activations with the named blocks float (or one block quantized alone)."""

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Int8Plan:
        return Int8Plan(dynamic=True, float_blocks=tuple(exclude), only=only[0] if only else None)


@dataclass
class EncoderEvaluator:
    """The search's judge of encoder plans (`search.CandidateJudge`): PyTorch's reference on
    the inputs is computed once (`MaskReference`, one prompt set per call); `lower` turns a plan
    into program bytes, kept in `programs` so that no plan is lowered twice."""

    loaded: LoadedModel
    inputs: Inputs
    bar: MaskBar
    traced: Any  # the float program before quantization (`exported.module()` per plan)
    calibration: Sequence[tuple[torch.Tensor, ...]]
    lower: Callable[[Int8Plan], bytes]
    programs: dict[Int8Plan, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reference = MaskReference(self.loaded, self.inputs, one_set_per_call=True)

    def quick(self, plan: Int8Plan) -> float:
        """SQNR (dB) of the simulated int8 embeddings (PT2E's converted module run by PyTorch)
        on the first image."""
        module = quantize(self.traced, self.calibration, plan)
        with torch.no_grad():
            got = module(torch.from_numpy(self.inputs.tensors[0]))
        return sqnr_db(got.numpy(), self.reference.embeddings[0])

    def program(self, plan: Int8Plan) -> bytes:
        if plan not in self.programs:
            self.programs[plan] = self.lower(plan)
        return self.programs[plan]

    def session(self, plan: Int8Plan) -> Session:
        """The plan's lowered program on ExecuTorch's runtime, from memory."""
        from edgesam_export.host.executorch_session import ExecuTorchSession

        inputs, outputs = self.loaded.spec.graph_io("encoder")
        sidecar = {"metadata": {"graph": "encoder"}, "inputs": inputs, "outputs": outputs}
        return ExecuTorchSession(self.program(plan), sidecar=sidecar)

    def judge(self, plan: Int8Plan) -> tuple[MaskBarResult, float, float, float | None]:
        """(mask bar result, SQNR dB of the embeddings, ms per image, no speed hint): the
        lowered program's embeddings through PyTorch's decoder, every image and prompt set,
        against PyTorch's masks."""
        session = self.session(plan)
        t0 = time.perf_counter()
        emb = [session.run({"image": t})["image_embeddings"] for t in self.inputs.tensors]
        latency = 1000 * (time.perf_counter() - t0) / len(emb)
        sqnr = sqnr_db(np.stack(emb), np.stack(self.reference.embeddings))
        return self.reference.judge(self.bar, embeddings=emb), sqnr, latency, None


@dataclass
class EncoderSearch:
    """What `search_encoder` chose: the plan, its program, the report and the held-out result."""

    plan: Int8Plan
    program: bytes
    report: Report
    heldout: MaskBarResult


def search_encoder(
    loaded: LoadedModel,
    traced: Any,
    calibration: Sequence[tuple[torch.Tensor, ...]],
    lower: Callable[[Int8Plan], bytes],
    blocks: Sequence[str],
    selection: Inputs,
    bar: MaskBar,
    *,
    source: str,
    budget: int | None = None,
    heldout_images: int = HELDOUT_IMAGES,
    progress: Progress = lambda _: None,
) -> EncoderSearch:
    """The encoder's program with per-call int8 activations and the fewest float blocks that
    meet `bar` on the selection inputs, then judged on the held-out images (module doc)."""
    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.host.quantize.search import search

    report = Report(
        "encoder",
        str(bar),
        {"source": source, "images": len(selection.tensors), "method": "selection"},
        {"images": heldout_images},
        kind="int8",
    )
    progress(f"int8 encoder: PyTorch reference on {len(selection.tensors)} selection image(s)")
    evaluator = EncoderEvaluator(loaded, selection, bar, traced, calibration, lower)
    plan = search(Plans(), evaluator, {b: [b] for b in blocks}, report, progress, budget)
    progress(f"int8 encoder: judging the chosen program on {heldout_images} held-out images")
    result = heldout_mask_bar(loaded, evaluator.session(plan), images=heldout_images, bar=bar)
    report.heldout |= {"masks": result.count, "mean_iou": result.mean_iou}
    report.heldout["worst_iou"] = result.worst_iou
    progress(
        f"int8 encoder: held-out mean IoU {result.mean_iou:.4f}, worst {result.worst_iou:.4f}"
        f" ({'meets' if result.passed else 'misses'} {bar})"
    )
    if not result.passed:
        raise ExportFailedError(
            f"int8 encoder: {len(report.float_blocks)} float block(s) met {bar} on the"
            f" {len(selection.tensors)} selection image(s), but the held-out images give mean IoU"
            f" {result.mean_iou:.4f} / worst {result.worst_iou:.4f}; select on more images"
            " (--calibration-images, --calibration), loosen --accuracy-target, or export fp32"
        )
    return EncoderSearch(plan, evaluator.program(plan), report, result)

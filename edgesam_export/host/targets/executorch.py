"""ExecuTorch export: our export graphs through `torch.export`, lowered to XNNPACK `.pte` programs.

The same graphs as ONNX and CoreML (`EncoderGraph` / `DecoderGraph`, optimized=True, built by
`targets.onnx.build_graph`), so one `.pte` runs on Android and iOS with the I/O of every other
backend. The decoder's point count is a `torch.export` dynamic dim (1..max_points); its prompt-set
batch is fixed at 1, because XNNPACK delegates reshapes with at most one dynamic dimension and the
decoder's attention reshapes (B, 5 + N, heads, c) would carry two.

A `.pte` has no metadata slot, so `<file>.pte.json` beside it carries what ONNX metadata carries
(family, frames, preprocessing, mask tokens, precision, versions, checkpoint sha256) and the I/O
names and shapes the program takes positionally. Both are written atomically, the sidecar first:
a finished-looking `.pte` always has its sidecar. Same checkpoint and options give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from edgesam_export.device import backends
from edgesam_export.device.artifacts import Artifact, atomic_path
from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import ExportFailedError
from edgesam_export.host.config import ExecuTorchOptions, ExportOptions, GraphKind
from edgesam_export.host.graphs import decoder_io, encoder_io
from edgesam_export.host.metadata import base_metadata
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.targets import Target, artifact_path
from edgesam_export.host.targets.onnx import build_graph

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


def _io(loaded: LoadedModel, graph: GraphKind) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The contract's specs with the decoder's batch fixed at 1 (what the program accepts)."""
    spec = loaded.spec
    if graph == "encoder":
        return encoder_io(spec.img_size, spec.embed_shape)
    inputs, outputs = decoder_io(spec.embed_shape, spec.num_mask_tokens)

    def one(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, tuple(1 if d == "batch" else d for d in t.shape))

    return [one(t) for t in inputs], [one(t) for t in outputs]


def _program(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], graph: GraphKind, max_points: int
) -> bytes:
    to_edge_transform_and_lower, partitioner = _require_executorch()
    dynamic: dict[str, Any] | None = None
    if graph == "decoder":
        points = torch.export.Dim("num_points", min=1, max=max_points)
        dynamic = {
            "image_embeddings": None,
            "point_coords": {1: points},
            "point_labels": {1: points},
        }
    with torch.no_grad():
        exported = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    lowered = to_edge_transform_and_lower(exported, partitioner=[partitioner()])
    return bytes(lowered.to_executorch().buffer)


def export(loaded: LoadedModel, graph: GraphKind, options: ExportOptions) -> Artifact:
    if not isinstance(options, ExecuTorchOptions):
        options = ExecuTorchOptions(**options.model_dump())
    _require_executorch()
    spec = loaded.spec
    module, args = build_graph(loaded, graph, options.use_stability_score)
    if graph == "decoder":  # batch 1 (see the module docstring); N = 3 keeps N unspecialised
        args = (args[0], args[1][:1], args[2][:1])
    inputs, outputs = _io(loaded, graph)
    dest = artifact_path(loaded, graph, options, "executorch")
    try:
        buffer = _program(module, args, graph, options.max_points)
    except Exception as exc:  # torch.export and the lowering raise many untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        raise ExportFailedError(
            f"ExecuTorch export of the {spec.name} {graph} failed: {first}"
        ) from exc
    metadata = base_metadata(
        loaded, graph, use_stability_score=options.use_stability_score and graph == "decoder"
    )
    metadata |= {
        "precision": options.precision,
        "executorch.version": _version("executorch"),
        "executorch.delegate": "XnnpackBackend",
        "torch.version": torch.__version__,
    }
    if graph == "decoder":
        metadata |= {"executorch.max_points": str(options.max_points), "executorch.max_batch": "1"}
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


TARGET = Target(name="executorch", export=export)

"""ONNX export: TorchScript-traced graphs, simplified (onnxslim, onnxsim or not at all), metadata
and atomic writes.

The simplified file is the one written and tested. Same checkpoint and options give the same
bytes: no timestamps, deterministic tracing inputs, sorted metadata.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..artifacts import Artifact, atomic_path, base_metadata
from ..config import ExportOptions, GraphKind, OnnxOptions
from ..errors import BackendUnavailableError, ExportFailedError
from ..graphs import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    DecoderGraph,
    EncoderGraph,
    decoder_io,
    encoder_io,
)
from ..models import LoadedModel
from . import Target, artifact_path


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxslim
    except ImportError as exc:
        raise BackendUnavailableError(
            f"ONNX export needs onnx and onnxslim ({exc.name} is missing):"
            " pip install 'edgesam-export[onnx]'"
        ) from None
    return onnx, onnxslim


def _simplifier(name: str) -> Callable[[Any], Any]:
    """The chosen simplifier, checked before any tracing: a missing onnxsim is exit 6, never a
    silent fallback to another simplifier."""
    if name == "onnxslim":
        import onnxslim

        return onnxslim.slim  # type: ignore[no-any-return]
    if name == "onnxsim":
        try:
            import onnxsim
        except ImportError:
            raise BackendUnavailableError(
                "simplifier onnxsim is not installed: pip install onnxsim"
                " (or choose --simplifier onnxslim|none)"
            ) from None

        def run_onnxsim(proto: Any) -> Any:
            simplified, ok = onnxsim.simplify(proto)
            if not ok:
                raise RuntimeError("onnxsim could not validate its simplified graph")
            return simplified

        return run_onnxsim
    return lambda proto: proto


def build_graph(
    loaded: LoadedModel,
    graph: GraphKind,
    use_stability_score: bool,
    gelu_approximate: bool = False,
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The module to trace and deterministic example inputs for it."""
    spec = loaded.spec
    gen = torch.Generator().manual_seed(0)
    if graph == "encoder":
        module: torch.nn.Module = EncoderGraph(
            loaded.model.image_encoder, optimized=True, gelu_approximate=gelu_approximate
        )
        args: tuple[torch.Tensor, ...] = (
            torch.randn(1, 3, spec.img_size, spec.img_size, generator=gen),
        )
    else:
        module = DecoderGraph(
            loaded.model,
            spec.frame,
            use_stability_score,
            optimized=True,
            gelu_approximate=gelu_approximate,
        )
        # B=2, N=3 while tracing so neither axis is specialised to 1.
        args = (
            torch.randn(1, *spec.embed_shape, generator=gen),
            torch.rand(2, 3, 2, generator=gen) * spec.frame,
            torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
        )
    return module.eval(), args


def dedupe_initializers(proto: Any) -> int:
    """Merge byte-identical initializers; returns how many were dropped.

    The TorchScript exporter folds a constant separately at every use (the decoder's 4 MB
    positional encoding became three copies), and simplifiers keep distinct names apart.
    """
    from onnx import numpy_helper

    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in proto.graph.initializer:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(rename)


def export(loaded: LoadedModel, graph: GraphKind, options: ExportOptions) -> Artifact:
    if not isinstance(options, OnnxOptions):
        options = OnnxOptions(**options.model_dump())
    onnx, _ = _require_onnx()
    spec = loaded.spec
    module, args = build_graph(loaded, graph, options.use_stability_score, options.gelu_approximate)
    if graph == "encoder":
        inputs, outputs = encoder_io(spec.img_size, spec.embed_shape)
        names_in: tuple[str, ...] = ENCODER_INPUTS
        names_out: tuple[str, ...] = ENCODER_OUTPUTS
        dynamic = None
    else:
        inputs, outputs = decoder_io(spec.embed_shape, spec.num_mask_tokens)
        names_in, names_out = DECODER_INPUTS, DECODER_OUTPUTS
        dynamic = {
            "point_coords": {0: "batch", 1: "num_points"},
            "point_labels": {0: "batch", 1: "num_points"},
            "scores": {0: "batch"},
            "masks": {0: "batch"},
        }
    simplify = _simplifier(options.simplifier)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=options.opset,
                input_names=list(names_in),
                output_names=list(names_out),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buffer.getvalue())
        proto = simplify(proto)
        dedupe_initializers(proto)
        metadata = base_metadata(
            loaded, graph, use_stability_score=options.use_stability_score and graph == "decoder"
        )
        metadata["onnx.opset"] = str(options.opset)
        metadata["onnx.simplified"] = str(options.simplifier != "none").lower()
        metadata["onnx.simplifier"] = options.simplifier
        if options.gelu_approximate:
            metadata["gelu_approximate"] = "true"
        del proto.metadata_props[:]
        for key in sorted(metadata):
            proto.metadata_props.add(key=key, value=metadata[key])
        proto.producer_name = "edgesam-export"
        proto.producer_version = metadata["edgesam_export.version"]
        proto.doc_string = f"{spec.family} {graph} ({metadata['weights']})"
        if options.precision != "fp32" or options.quantize:
            from .onnx_precision import reduce_precision

            proto = reduce_precision(proto, loaded, options)
            metadata = {p.key: p.value for p in proto.metadata_props}
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
    except Exception as exc:  # the exporter's own errors are many and untyped
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        raise ExportFailedError(f"ONNX export of the {spec.name} {graph} failed: {first}") from exc
    dest = artifact_path(loaded, graph, options, ".onnx")
    if metadata.get("precision", "fp32") != "fp32":  # beside, never over, the fp32 graph
        dest = dest.with_name(f"{dest.stem}_{metadata['precision']}.onnx")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Artifact(
        path=dest, backend="onnx", graph=graph, inputs=inputs, outputs=outputs, metadata=metadata
    )


TARGET = Target(name="onnx", suffix=".onnx", export=export)

"""ONNX export: TorchScript-traced graphs, simplified (onnxslim, onnxsim or not at all), metadata
and atomic writes.

The simplified file is the one written and tested. Same checkpoint and options give the same
bytes: no timestamps, deterministic tracing inputs, sorted metadata.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from edgesam_export.device import backends
from edgesam_export.device.artifacts import Artifact, atomic_path
from edgesam_export.device.contract import dynamic_axes
from edgesam_export.device.errors import BackendUnavailableError, ExportFailedError, InputError
from edgesam_export.device.official_contract import FOREIGN
from edgesam_export.host.config import ExportOptions, GraphKind, OnnxOptions
from edgesam_export.host.graphs import (
    DecoderGraph,
    EncoderGraph,
)
from edgesam_export.host.metadata import base_metadata
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.models.edgetam.model import EdgeTAM
from edgesam_export.host.models.sam_heads import AttentionForm
from edgesam_export.host.targets import Target, artifact_path, decoder_attention, onnx_switch
from edgesam_export.host.targets.onnx_weights import initializer_key, set_meta

# ONNX protobufs cannot exceed 2 GiB; past this many bytes of weights, use external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxslim
    except ImportError as exc:
        raise backends.unavailable_error("onnx", exc.name, export=True) from None
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
    contract: str = "edgesam",
    return_single_mask: bool = False,
    onnxruntime_layout: bool = False,
    attention: AttentionForm = "folded",
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The module to trace and deterministic example inputs for it.

    `onnxruntime_layout`: the encoder forms onnxruntime's blocked conv layout keeps (the ONNX
    target sets it; other targets that reuse these graphs do not). `attention`: the export form
    of the decoder's cross-attentions (`Attention`): "folded" by default (the fewest
    multiply-adds at the point counts clicks give; static int8 quantizes its weight products);
    projected, static int8 takes "plain" (each projection's weight on the right of its MatMul,
    where onnxruntime quantizes it per output channel and runs it on its integer kernels).
    """
    spec = loaded.spec
    gen = torch.Generator().manual_seed(0)
    if spec.io_layout == "sam2":
        from edgesam_export.host.graphs import sam2_graph

        if use_stability_score or gelu_approximate:
            raise InputError(
                f"{spec.name} exports its own decoder contract (IoU scores, exact GELU):"
                " drop --use-stability-score / --gelu-approximate"
            )
        return sam2_graph(cast(EdgeTAM, loaded.model), graph, spec.frame, onnxruntime_layout)
    if graph == "decoder" and contract == "official":
        from edgesam_export.host.graphs_official import OfficialDecoderGraph

        official = OfficialDecoderGraph(
            loaded.model,
            spec.img_size,
            return_single_mask,
            use_stability_score,
            optimized=True,
            attention=attention,
        )
        h, w = spec.embed_shape[1:]
        return official.eval(), (
            torch.randn(1, *spec.embed_shape, generator=gen),
            torch.rand(1, 3, 2, generator=gen) * spec.img_size,
            torch.tensor([[1.0, 0.0, -1.0]]),
            torch.randn(1, 1, 4 * h, 4 * w, generator=gen),
            torch.tensor([1.0]),
            torch.tensor([480.0, 640.0]),
        )
    if graph == "decoder" and contract == "efficientvit":
        from edgesam_export.host.graphs_official import EfficientViTDecoderGraph

        evit = EfficientViTDecoderGraph(
            loaded.model,
            spec.frame,
            return_single_mask,
            use_stability_score,
            optimized=True,
            gelu_approximate=gelu_approximate,
            attention=attention,
        )
        # B=2, N=3 while tracing so neither axis is specialised to 1.
        return evit.eval(), (
            torch.randn(1, *spec.embed_shape, generator=gen),
            torch.rand(2, 3, 2, generator=gen) * spec.frame,
            torch.tensor([[1.0, 0.0, 1.0], [2.0, 3.0, 1.0]]),
        )
    if graph == "encoder":
        module: torch.nn.Module = EncoderGraph(
            loaded.model.image_encoder,
            optimized=True,
            gelu_approximate=gelu_approximate,
            onnxruntime_layout=onnxruntime_layout,
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
            attention=attention,
        )
        # B=2, N=3 while tracing so neither axis is specialised to 1.
        args = (
            torch.randn(1, *spec.embed_shape, generator=gen),
            torch.rand(2, 3, 2, generator=gen) * spec.frame,
            torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
        )
    return module.eval(), args


def _attention(options: OnnxOptions) -> AttentionForm:
    """`--attention` as the decoder's form for onnxruntime: folded (also static int8's
    default), or projected as the transposed image side (onnxruntime folds its transposes into
    the GEMMs), or, for static int8, as the plain layout its integer kernels take."""
    if options.attention_form() == "folded":
        return "folded"
    return "plain" if options.int8_decoder() else "transposed"


def _constants_to_initializers(proto: Any, min_values: int = 1024) -> None:
    """Move large Constant nodes into initializers, so `dedupe_initializers` can merge them."""
    keep = []
    for node in proto.graph.node:
        attr = (
            node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        )
        if attr is not None and attr.name == "value" and math.prod(attr.t.dims) >= min_values:
            attr.t.name = node.output[0]
            proto.graph.initializer.append(attr.t)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def dedupe_initializers(proto: Any) -> int:
    """Merge byte-identical initializers; returns how many were dropped.

    The TorchScript exporter folds a constant separately at every use (the decoder's 4 MB
    positional encoding became three copies), and simplifiers keep distinct names apart.
    """
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in proto.graph.initializer:
        key = initializer_key(init)
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


def onnx_path(loaded: LoadedModel, graph: GraphKind, options: OnnxOptions) -> Path:
    """Where `export` writes a graph: the registry's path, `_<precision>` for a reduced graph
    (beside, never over, the fp32 one), a foreign contract's tag."""
    dest = artifact_path(loaded, graph, options, "onnx")
    reduced = options.precision if options.precision != "fp32" else options.quantize
    if reduced:
        dest = dest.with_name(f"{dest.stem}_{reduced}.onnx")
    foreign = FOREIGN.get(options.decoder_contract) if graph == "decoder" else None
    if foreign is not None:
        tag = foreign.file_tag(options.return_single_mask)
        dest = dest.with_name(dest.stem + tag + dest.suffix)
    return dest


def export(loaded: LoadedModel, graph: GraphKind, options: ExportOptions) -> Artifact:
    if not isinstance(options, OnnxOptions):
        options = OnnxOptions(**options.model_dump())
    whole, options = options, options.for_graph(graph)  # --encoder-quantize: its own mode
    onnx, _ = _require_onnx()
    spec = loaded.spec
    contract = options.decoder_contract
    foreign = FOREIGN.get(contract) if graph == "decoder" else None
    if foreign is not None and contract not in spec.decoder_contracts:
        choices = ", ".join(spec.decoder_contracts)
        raise InputError(
            f"{spec.name} has no {contract} ONNX decoder contract (that is {foreign.family});"
            f" --decoder-contract takes {choices} for this model"
        )
    if options.return_single_mask and contract not in FOREIGN:  # (the encoder ignores it)
        raise InputError("--return-single-mask needs --decoder-contract " + " or ".join(FOREIGN))
    decoder_attention(loaded, graph, options)  # refuses --attention where it does not apply
    # `--attention auto`: both forms traced, then joined under one If (targets/onnx_switch.py)
    variants = [options]
    if graph == "decoder" and options.switches_attention():
        variants = [options.model_copy(update={"attention": f}) for f in ("folded", "projected")]
    modules = [
        build_graph(
            loaded,
            graph,
            options.use_stability_score,
            gelu_approximate=options.gelu_approximate,
            contract=options.decoder_contract,
            return_single_mask=options.return_single_mask,
            onnxruntime_layout=True,
            attention=_attention(variant),
        )
        for variant in variants
    ]
    module = modules[0][0]
    if foreign is not None:
        inputs, outputs = foreign.io(
            spec.embed_shape, spec.num_mask_tokens, options.return_single_mask
        )
        names_in: tuple[str, ...] = foreign.inputs
        names_out: tuple[str, ...] = foreign.outputs
        dynamic: dict[str, dict[int, str]] | None = {
            k: dict(v) for k, v in foreign.dynamic_axes.items()
        }
    else:  # the model's own contract: names and symbolic axes from the registry
        inputs, outputs = spec.graph_io(graph)
        names_in = tuple(t.name for t in inputs)
        names_out = tuple(t.name for t in outputs)
        dynamic = dynamic_axes(inputs + outputs) or None
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )
    external = (
        options.external_data
        if options.external_data is not None
        else weight_bytes > EXTERNAL_DATA_THRESHOLD
    )
    simplify = _simplifier(options.simplifier)
    dest = onnx_path(loaded, graph, options)
    reduced = options.precision if options.precision != "fp32" else options.quantize
    paired: Path | None = None  # a reduced encoder exported this run: judge end to end
    if graph == "decoder" and "encoder" in whole.graphs and whole.graph_quantize("encoder"):
        paired = onnx_path(loaded, "encoder", whole.for_graph("encoder"))
        paired = paired if paired.is_file() else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        try:
            simplified = options.simplifier != "none" and not external
            protos = []
            for variant, (variant_module, args) in zip(variants, modules, strict=True):
                proto = _trace(
                    onnx, variant_module, args, options, names_in, names_out, dynamic, workdir
                )
                if simplified:  # the simplifiers need a protobuf under 2 GB
                    proto = simplify(proto)
                _constants_to_initializers(proto)
                dedupe_initializers(proto)  # (the tracer folds EdgeTAM's RoPE tables once per use)
                metadata = base_metadata(
                    loaded,
                    graph,
                    use_stability_score=options.use_stability_score and graph == "decoder",
                )
                metadata["onnx.opset"] = str(options.opset)
                metadata["onnx.simplified"] = str(simplified).lower()
                metadata["onnx.simplifier"] = options.simplifier if simplified else "none"
                if options.gelu_approximate:
                    metadata["gelu_approximate"] = "true"
                if graph == "decoder":
                    metadata["decoder_contract"] = options.decoder_contract
                    metadata |= decoder_attention(loaded, graph, variant)
                    if foreign is not None:
                        metadata["return_single_mask"] = str(options.return_single_mask).lower()
                if external:
                    metadata["onnx.external_data"] = f"{dest.name}.data"
                del proto.metadata_props[:]
                set_meta(proto, metadata)
                proto.producer_name = "edgesam-export"
                proto.producer_version = metadata["edgesam_export.version"]
                proto.doc_string = f"{spec.family} {graph} ({metadata['weights']})"
                if reduced:
                    from edgesam_export.host.targets.onnx_precision import reduce_precision

                    proto = reduce_precision(proto, loaded, variant, encoder=paired)
                protos.append(proto)
            if len(protos) > 1:
                few, many = protos
                projected_from = onnx_switch.projected_from(options.int8_decoder())
                proto = onnx_switch.switch_on_points(few, many, projected_from)
                set_meta(
                    proto,
                    onnx_switch.switched_metadata(_metadata(few), _metadata(many), projected_from),
                )
            metadata = _metadata(proto)
            staged = workdir / dest.name
            if external:
                onnx.save_model(
                    proto,
                    str(staged),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=f"{dest.name}.data",
                    size_threshold=1024,
                )
                onnx.checker.check_model(str(staged))
            else:
                onnx.checker.check_model(proto)
                staged.write_bytes(proto.SerializeToString())
        except InputError:
            raise
        except Exception as exc:  # the exporter's own errors are many and untyped
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
            raise ExportFailedError(
                f"ONNX export of the {spec.name} {graph} failed: {first}"
            ) from exc
        data_files: list[Path] = []
        if external:  # the sidecar first, the graph last: a finished-looking .onnx is complete
            sidecar = dest.with_name(f"{dest.name}.data")
            os.replace(workdir / sidecar.name, sidecar)
            data_files.append(sidecar)
        elif dest.with_name(f"{dest.name}.data").exists():
            dest.with_name(f"{dest.name}.data").unlink()  # a stale sidecar of an earlier export
        with atomic_path(dest) as tmp:
            os.replace(staged, tmp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Artifact(
        path=dest,
        backend="onnx",
        graph=graph,
        inputs=inputs,
        outputs=outputs,
        metadata=metadata,
        data_files=data_files,
    )


def _metadata(proto: Any) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _trace(
    onnx: Any,
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    options: OnnxOptions,
    names_in: tuple[str, ...],
    names_out: tuple[str, ...],
    dynamic: dict[str, dict[int, str]] | None,
    workdir: Path,
) -> Any:
    """TorchScript-export `module`; via a file (external data kept) past ONNX's 2 GB limit."""
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    target: Any = io.BytesIO() if weight_bytes < EXTERNAL_DATA_THRESHOLD else workdir / "trace.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            target if isinstance(target, io.BytesIO) else str(target),  # type: ignore[arg-type]
            dynamo=False,
            opset_version=options.opset,
            input_names=list(names_in),
            output_names=list(names_out),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    if isinstance(target, io.BytesIO):
        return onnx.load_from_string(target.getvalue())
    return onnx.load(str(target), load_external_data=True)


TARGET = Target(name="onnx", export=export)

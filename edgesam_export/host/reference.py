"""The PyTorch reference: sessions over our torch graphs, what every artifact is compared with.

Host side (imports torch); the device side never needs it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.runtime.base import Session


class TorchSession(Session):
    """A traced-graph wrapper (`graphs.EncoderGraph` / `DecoderGraph`) run eagerly."""

    backend = "torch"

    def __init__(
        self,
        module: Any,
        graph: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        metadata: Mapping[str, str],
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        import torch

        super().__init__(graph, inputs, outputs, metadata)
        self.device = device
        self.compute_device = device
        self.dtype = getattr(torch, dtype)
        self.module = module.eval().to(device=device, dtype=self.dtype)

    def tensors(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        """The feeds as the module's arguments: on its device, floats in its dtype (integer
        inputs, the memory attention's temporal indices, keep their type)."""
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
        return [a.to(self.device, self.dtype if a.is_floating_point() else a.dtype) for a in args]

    def math(self) -> contextlib.AbstractContextManager[None]:
        """The arithmetic this session's precision names (`ieee_float32` on CUDA for fp32)."""
        import torch

        exact = self.dtype == torch.float32 and str(self.device).startswith("cuda")
        return ieee_float32() if exact else contextlib.nullcontext()

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = self.tensors(feeds)
        with torch.inference_mode(), self.math():
            out = self.module(*args)
        if not isinstance(out, tuple):
            out = (out,)
        # contiguous, as every runtime's session returns them: a torch output can be a strided
        # view (channels-last embeddings), which each later consumer would copy again
        return {
            t.name: np.ascontiguousarray(o.detach().to(torch.float32).cpu().numpy())
            for t, o in zip(self.outputs, out, strict=True)
        }


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 computed as float32 on CUDA: no TF32 in cuDNN's convolutions (PyTorch's default)
    nor in cuBLAS's matrix products. With TF32 (10-bit mantissa) an H200's fp32 columns missed
    the float32 parity row: embeddings 5.2e-2 from the CPU reference (docs/device.md). The flags
    are restored on exit."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


#: --precision name -> torch dtype name
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_sessions(
    loaded: Any, *, optimized: bool, device: str = "cpu", precision: str = "fp32"
) -> tuple[TorchSession, TorchSession]:
    """Encoder and IoU decoder sessions for benchmarks: as loaded (`optimized=False`, the
    reference maths) or the graph rewrites the ONNX export traces (`optimized=True`)."""
    from edgesam_export.host.graphs import DecoderGraph, EncoderGraph, sam2_graph
    from edgesam_export.host.metadata import base_metadata

    spec = loaded.spec
    meta = base_metadata(loaded, graph="", use_stability_score=False)
    meta["precision"] = precision
    ein, eout = spec.graph_io("encoder")
    din, dout = spec.graph_io("decoder")
    dtype = TORCH_DTYPES[precision]
    # .to(device, dtype) converts in place: give other precisions/devices their own copy, so
    # the float32 CPU reference built from the same loaded model stays untouched.
    own = copy.deepcopy if (dtype != "float32" or device != "cpu") else (lambda m: m)
    if spec.io_layout == "sam2":
        enc_module = own(sam2_graph(loaded.model, "encoder", spec.frame)[0])
        dec_module = own(sam2_graph(loaded.model, "decoder", spec.frame)[0])
    else:
        enc_module = own(EncoderGraph(loaded.model.image_encoder, optimized=optimized))
        dec_module = own(DecoderGraph(loaded.model, spec.frame, False, optimized=optimized))
    enc_meta = {**meta, "graph": "encoder"}
    dec_meta = {**meta, "graph": "decoder"}
    enc = TorchSession(enc_module, "encoder", ein, eout, enc_meta, device, dtype)
    dec = TorchSession(dec_module, "decoder", din, dout, dec_meta, device, dtype)
    return enc, dec


def reference_sessions(
    loaded: Any, device: str = "cpu", gelu_approximate: bool = False
) -> tuple[TorchSession, dict[bool, TorchSession]]:
    """PyTorch encoder and decoder sessions of a loaded model: the parity reference.

    Returns the encoder and the decoders keyed by use_stability_score. The encoder keeps the
    official single spatial mean, so the reference is the official maths. `gelu_approximate`
    gives the reference of artifacts exported with tanh GELUs (the same maths, tanh GELU).
    """
    from edgesam_export.host.graphs import DecoderGraph, EncoderGraph, sam2_graph
    from edgesam_export.host.metadata import base_metadata

    spec = loaded.spec
    meta = base_metadata(loaded, graph="", use_stability_score=False)
    if gelu_approximate:
        meta["gelu_approximate"] = "true"
    ein, eout = spec.graph_io("encoder")
    din, dout = spec.graph_io("decoder")
    if spec.io_layout == "sam2":  # one IoU decoder: its exports have no stability flavour
        enc_meta, dec_meta = {**meta, "graph": "encoder"}, {**meta, "graph": "decoder"}
        return TorchSession(
            sam2_graph(loaded.model, "encoder", spec.frame)[0], "encoder", ein, eout, enc_meta
        ), {
            False: TorchSession(
                sam2_graph(loaded.model, "decoder", spec.frame)[0], "decoder", din, dout, dec_meta
            )
        }
    enc = TorchSession(
        EncoderGraph(loaded.model.image_encoder, gelu_approximate=gelu_approximate),
        "encoder",
        ein,
        eout,
        {**meta, "graph": "encoder"},
        device,
    )
    decoders = {
        stab: TorchSession(
            DecoderGraph(loaded.model, spec.frame, stab, gelu_approximate=gelu_approximate),
            "decoder",
            din,
            dout,
            {**meta, "graph": "decoder", "use_stability_score": str(stab).lower()},
            device,
        )
        for stab in (False, True)
    }
    return enc, decoders


def video_sessions(loaded: Any) -> dict[str, TorchSession]:
    """PyTorch sessions of the model's video graphs (EdgeTAM's tracker graphs; none for other
    families): the reference `judge_video` chains."""
    from edgesam_export.device.contract import VIDEO_GRAPHS
    from edgesam_export.host.graphs import sam2_graph
    from edgesam_export.host.metadata import base_metadata

    spec = loaded.spec
    meta = base_metadata(loaded, graph="", use_stability_score=False)
    sessions = {}
    for graph in (g for g in spec.graphs if g in VIDEO_GRAPHS):
        ins, outs = spec.graph_io(graph)
        module = sam2_graph(loaded.model, graph, spec.frame)[0]
        sessions[graph] = TorchSession(module, graph, ins, outs, {**meta, "graph": graph})
    return sessions


class CudaGraphSession(Session):
    """A `TorchSession` on CUDA replayed as CUDA graphs, one graph per input-shape signature.

    Captured on the first call with a new signature (after three warm-up calls on a side
    stream, as CUDA graph capture requires); later calls copy the feeds into the captured
    input tensors and replay. For `edgesam-bench --device cuda --cuda-graphs`.
    """

    def __init__(self, inner: TorchSession) -> None:
        super().__init__(inner.graph, inner.inputs, inner.outputs, inner.metadata)
        self.backend = inner.backend
        self.inner = inner
        self.device = inner.device
        self.compute_device = inner.compute_device
        self._graphs: dict[tuple[Any, ...], tuple[Any, list[Any], tuple[Any, ...]]] = {}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        key = tuple((t.name, feeds[t.name].shape) for t in self.inputs)
        if key not in self._graphs:
            static_in = self.inner.tensors(feeds)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            # the replays run the kernels chosen here: capture under the session's arithmetic
            with torch.cuda.stream(stream), torch.inference_mode(), self.inner.math():
                for _ in range(3):
                    self.inner.module(*static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), self.inner.math(), torch.cuda.graph(graph):
                out = self.inner.module(*static_in)
            self._graphs[key] = (graph, static_in, out if isinstance(out, tuple) else (out,))
        graph, static_in, static_out = self._graphs[key]
        for t, dst in zip(self.inputs, static_in, strict=True):
            dst.copy_(torch.from_numpy(np.ascontiguousarray(feeds[t.name])))
        graph.replay()
        return {
            t.name: np.ascontiguousarray(o.to(torch.float32).cpu().numpy())
            for t, o in zip(self.outputs, static_out, strict=True)
        }

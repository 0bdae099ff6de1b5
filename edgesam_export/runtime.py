"""Sessions: run one graph (an artifact, or the PyTorch reference) from numpy inputs.

Every session checks the feed's names, dtypes and static dims against its own input specs before
calling the backend, so a wrong feed fails with a message instead of a backend stack trace.
Backends are imported lazily; a missing one is an error that names the install command.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, BackendUnavailableError, InputError
from .graphs import TensorSpec


class Session(ABC):
    """One graph behind a uniform numpy interface."""

    backend: str = ""

    def __init__(
        self,
        graph: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        metadata: Mapping[str, str],
    ) -> None:
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs
        self.metadata = dict(metadata)

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = {t.name: t for t in self.inputs}
        if set(feeds) != set(expected):
            raise InputError(
                f"{self.backend} {self.graph}: feeds {sorted(feeds)} do not match the inputs"
                f" {sorted(expected)}"
            )
        for name, spec in expected.items():
            arr = feeds[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise InputError(f"{name}: expected a {spec.dtype} array, got {got}")
            if arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(spec.shape, arr.shape, strict=True)
            ):
                raise InputError(f"{name}: expected shape {spec.shape}, got {arr.shape}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


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
    ) -> None:
        super().__init__(graph, inputs, outputs, metadata)
        self.device = device
        self.module = module.eval().to(device)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [
            torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.device)
            for t in self.inputs
        ]
        with torch.inference_mode():
            out = self.module(*args)
        if not isinstance(out, tuple):
            out = (out,)
        return {t.name: o.detach().cpu().numpy() for t, o in zip(self.outputs, out, strict=True)}


def _ort_dtype(type_str: str) -> str:
    return {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
    }.get(type_str, type_str)


class OnnxRuntimeSession(Session):
    backend = "onnx"

    def __init__(
        self, path: Path, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(
                "running ONNX artifacts needs onnxruntime: pip install 'edgesam-export[onnx]'"
            ) from None
        if not path.is_file():
            raise ArtifactError(f"ONNX artifact not found: {path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(
                str(path), opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            first = str(exc).splitlines()[0][:300]
            raise ArtifactError(f"onnxruntime cannot load {path}: {first}") from None
        self.session = sess
        self.path = path
        meta = sess.get_modelmeta().custom_metadata_map
        inputs = [TensorSpec(i.name, _ort_dtype(i.type), tuple(i.shape)) for i in sess.get_inputs()]
        outputs = [
            TensorSpec(o.name, _ort_dtype(o.type), tuple(o.shape)) for o in sess.get_outputs()
        ]
        super().__init__(meta.get("graph", "unknown"), inputs, outputs, meta)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.output_names, dict(feeds))
        except Exception as exc:
            raise ArtifactError(f"onnxruntime failed running {self.path.name}: {exc}") from None
        return dict(zip(self.output_names, values, strict=True))


def open_session(path: Path | str, **kwargs: Any) -> Session:
    """Open an artifact with the runtime its suffix calls for."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxRuntimeSession(path, **kwargs)
    raise InputError(f"{path}: no runtime for '{path.suffix}' artifacts here (supported: .onnx)")


def reference_sessions(
    loaded: Any, device: str = "cpu"
) -> tuple[TorchSession, dict[bool, TorchSession]]:
    """PyTorch encoder and decoder sessions of a loaded model: the parity reference.

    Returns the encoder and the decoders keyed by use_stability_score. The encoder keeps the
    official single spatial mean, so the reference is the official maths.
    """
    from .artifacts import base_metadata
    from .graphs import DecoderGraph, EncoderGraph, decoder_io, encoder_io

    spec = loaded.spec
    meta = base_metadata(loaded, graph="", use_stability_score=False)
    ein, eout = encoder_io(spec.img_size, spec.embed_shape)
    din, dout = decoder_io(spec.embed_shape, spec.num_mask_tokens)
    enc = TorchSession(
        EncoderGraph(loaded.model.image_encoder),
        "encoder",
        ein,
        eout,
        {**meta, "graph": "encoder"},
        device,
    )
    decoders = {
        stab: TorchSession(
            DecoderGraph(loaded.model, spec.img_size, stab),
            "decoder",
            din,
            dout,
            {**meta, "graph": "decoder", "use_stability_score": str(stab).lower()},
            device,
        )
        for stab in (False, True)
    }
    return enc, decoders


def metadata_floats(meta: Mapping[str, str], key: str) -> tuple[float, ...]:
    return tuple(float(v) for v in json.loads(meta[key]))

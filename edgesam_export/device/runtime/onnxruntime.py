"""onnxruntime sessions over `.onnx` artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgesam_export.device.backends import require
from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import ArtifactError
from edgesam_export.device.runtime.base import Session


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
        self,
        path: Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimize: bool = True,
    ) -> None:
        """`optimize=False` turns onnxruntime's graph optimisation off: a QDQ graph then runs its
        Q/DQ pairs in float (the format's reference semantics) instead of fused integer kernels;
        the int8 agreement rule measures the one against the other (web/selftest.py)."""
        require("onnx")  # the registry's check: says which extra to install
        import onnxruntime as ort

        if not path.is_file():
            raise ArtifactError(f"ONNX artifact not found: {path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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

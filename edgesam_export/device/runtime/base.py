"""Sessions: run one graph (an artifact, or the PyTorch reference) from numpy inputs.

Device side: this package never imports torch. Every session checks the feed's names, dtypes
and static dims against its own input specs before calling the backend, so a wrong feed fails
with a message instead of a backend stack trace. Backends are imported lazily; a missing one is
an error that names the install command.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import InputError


class Session(ABC):
    """One graph behind a uniform numpy interface."""

    backend: str = ""
    # Which runtime produced the numbers: parity reports and bench results record it, so a
    # result says whether, e.g., CoreML itself or our MIL executor ran a package. A session
    # that knows more than its backend's name (version, executor) sets it.
    runtime_label: str = ""
    #: Where the graph computes ("cpu", "cuda", ...): `edgesam-bench` compares latencies only
    #: between sessions on the same device.
    compute_device: str = "cpu"

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
        self.runtime_label = self.runtime_label or self.backend

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

    def accepts(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        """Why these feeds' shapes are outside what the artifact declares (None: accepted).

        Artifacts with a fixed set of prompt shapes (CoreML enumerated shapes, TensorRT
        profiles) override this so callers can skip a case instead of failing on it.
        """
        return None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def metadata_floats(meta: Mapping[str, str], key: str) -> tuple[float, ...]:
    return tuple(float(v) for v in json.loads(meta[key]))

"""ExecuTorch sessions over `.pte` programs, run by `executorch.runtime` (XNNPACK on CPU).

Host side, although it is a runtime session: ExecuTorch's Python bindings load torch and take
and return torch tensors, so this module cannot live under `device/` (which never imports
torch). The registry names it by string, so parity, `edgesam-bench` and builds open `.pte` files
like any artifact. On a phone the same `.pte` is loaded by ExecuTorch's Android (Kotlin/Java) or
iOS (Objective-C/Swift) runtime, which need no Python and no torch (docs/executorch.md).

A program has no metadata slot and takes its inputs positionally: the names, shapes and metadata
come from the `<file>.pte.json` sidecar the export writes. A program takes one prompt set (B =
1); where the sidecar lists the batched inputs and outputs (`executorch.batched`), `run` takes a
batch of B as B calls and concatenates the outputs, as an app would. `accepts()` reports the
shapes it refuses (1..max_points points, the video graphs' memory bounds, a batch without that
list), so callers skip those cases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesam_export.device.contract import POINT_AXES, TensorSpec, axis_bounds
from edgesam_export.device.errors import ArtifactError, InputError
from edgesam_export.device.runtime.base import Session

#: The largest prompt-set batch a session runs (as that many program calls).
MAX_BATCH_CALLS = 64


def _sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_name(path.name + ".json")
    try:
        payload = json.loads(sidecar.read_text())
        meta = {str(k): str(v) for k, v in payload["metadata"].items()}
        inputs = [TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in payload["inputs"]]
        outputs = [TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in payload["outputs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(
            f"{path.name}: its sidecar {sidecar.name} is missing or unreadable ({exc});"
            " re-export the program with edgesam-export executorch"
        ) from None
    return {"metadata": meta, "inputs": inputs, "outputs": outputs}


def _batched_io(
    path: Path, meta: Mapping[str, str], inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, list[str]] | None:
    """The sidecar's `executorch.batched` (the inputs and outputs whose first axis is the
    contract's batch, 1 in the program), checked against the program's I/O; None where the
    sidecar predates it (a batch is then refused, as before)."""
    raw = meta.get("executorch.batched")
    if not raw:
        return None
    try:
        value = json.loads(raw)
        names = {key: [str(n) for n in value[key]] for key in ("inputs", "outputs")}
    except (ValueError, KeyError, TypeError):
        names = None
    first = {t.name: t.shape[0] if t.shape else None for t in (*inputs, *outputs)}
    if names is None or any(first.get(n) != 1 for n in (*names["inputs"], *names["outputs"])):
        raise ArtifactError(
            f"{path.name}: its sidecar's executorch.batched {raw[:200]!r} does not name inputs"
            " and outputs of the program with a first axis of 1; re-export the program with"
            " edgesam-export executorch"
        )
    return names


class ExecuTorchSession(Session):
    """A `.pte` program behind the numpy `Session` interface."""

    backend = "executorch"

    def __init__(
        self,
        path: Path | bytes,
        threads: int | None = None,
        sidecar: Mapping[str, Any] | None = None,
    ) -> None:
        """`path`: a `.pte` file and its sidecar; or the program's bytes with `sidecar` given
        (the int8 search runs each candidate from memory, before anything is written)."""
        try:
            from executorch.runtime import Runtime
        except ImportError:
            from edgesam_export.device.backends import unavailable_error

            raise unavailable_error("executorch", "executorch.runtime") from None
        if isinstance(path, bytes):
            if sidecar is None:
                raise TypeError("a program given as bytes needs its sidecar")
            program: Path | bytes = path
            path, side = Path("<in-memory program>.pte"), dict(sidecar)
        else:
            if not path.is_file():
                raise ArtifactError(f"ExecuTorch program not found: {path}")
            program, side = path, _sidecar(path)
        super().__init__(
            side["metadata"].get("graph", "unknown"),
            side["inputs"],
            side["outputs"],
            side["metadata"],
        )
        if threads:  # the XNNPACK delegate's pool is ExecuTorch's own, one per process
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        self.path = path
        try:
            # the loaded program (which holds the bytes given; the runtime reads them in place)
            # lives as long as its method: a method alone ran on freed memory
            self._program = Runtime.get().load_program(program)
            self._method = self._program.load_method("forward")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ArtifactError(f"ExecuTorch cannot load {path}: {first}") from None
        if self._method is None:
            raise ArtifactError(f"{path.name} has no forward method")
        self.max_points = int(self.metadata.get("executorch.max_points", "0"))
        self.max_batch = int(self.metadata.get("executorch.max_batch", "0"))
        # the inputs and outputs a batch runs through, one call per prompt set / object (older
        # sidecars: none, and a batch over max_batch is refused)
        self.batched = _batched_io(path, self.metadata, self.inputs, self.outputs)

    def _batch(self, feeds: Mapping[str, np.ndarray]) -> int | str:
        """B of the feeds' batched inputs (1 when the program has none), or why it is refused."""
        if self.batched is None:
            return 1
        sizes = {
            name: int(np.shape(feeds[name])[0])
            for name in self.batched["inputs"]
            if name in feeds and np.ndim(feeds[name]) > 0
        }
        if len(set(sizes.values())) > 1:
            return f"the batched inputs disagree on the batch: {sizes}"
        b = next(iter(sizes.values()), 1)
        if not 1 <= b <= MAX_BATCH_CALLS:
            return f"batch {b} is outside 1..{MAX_BATCH_CALLS} (one program call per prompt set)"
        unbatched = [t.name for t in self.outputs if t.name not in self.batched["outputs"]]
        if b > 1 and unbatched:
            return f"outputs {unbatched} have no batch axis: a batch of {b} cannot run as {b} calls"
        return b

    def accepts(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        """Why the program refuses these shapes (None: it runs them): a batch the session
        cannot run as calls (batched inputs that disagree on B, B outside 1..MAX_BATCH_CALLS,
        a sidecar without `executorch.batched`: B over max_batch, fixed at export at 1), a point
        count outside 1..max_points, or memory frames / object pointers over the video graphs'
        bounds (each call's shapes are checked)."""
        bounds = axis_bounds(self.max_points)
        b = self._batch(feeds)
        if isinstance(b, str):
            return b
        batched = set(self.batched["inputs"]) if self.batched else set()
        for spec in self.inputs:
            arr = feeds.get(spec.name)
            if arr is None or np.ndim(arr) != len(spec.shape):
                continue
            shape = np.shape(arr)
            if spec.name in batched:  # B calls of the program: each call's shape is checked
                shape = (1, *shape[1:])
            if self.max_batch and shape[0] != spec.shape[0] and spec.shape[0] == 1:
                return (
                    f"{spec.name} batch {shape[0]} is outside 1..{self.max_batch} (fixed at export)"
                )
            for axis, n in zip(spec.shape, shape, strict=True):
                if not isinstance(axis, str) or axis not in bounds or 1 <= n <= bounds[axis]:
                    continue
                if axis in POINT_AXES:
                    return (
                        f"{spec.name} has {n} points, outside 1..{bounds[axis]}"
                        " (re-export with a larger --max-points)"
                    )
                return f"{spec.name} axis {axis} = {n} is outside 1..{bounds[axis]}"
        return None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call, or B calls for a batch of B prompt sets / objects (the program takes one:
        `batched_io`), with the outputs concatenated along the batch axis in order."""
        b = self._batch(feeds)
        if isinstance(b, str):
            raise InputError(f"{self.path.name}: {b}")
        if b == 1 or self.batched is None:
            return super().run(feeds)
        names = set(self.batched["inputs"])
        parts = [
            super(ExecuTorchSession, self).run(
                {k: v[i : i + 1] if k in names else v for k, v in feeds.items()}
            )
            for i in range(b)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        reason = self.accepts(feeds)
        if reason is not None:
            raise InputError(f"{self.path.name}: {reason}")
        super().check_feeds(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
        try:
            values = self._method.execute(args)
        except Exception as exc:
            raise ArtifactError(f"ExecuTorch failed running {self.path.name}: {exc}") from None
        return {
            t.name: np.asarray(v.detach().numpy(), dtype=np.float32).copy()
            for t, v in zip(self.outputs, values, strict=True)
        }

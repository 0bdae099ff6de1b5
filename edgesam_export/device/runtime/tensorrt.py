"""TensorRT sessions over `.engine` artifacts and their JSON sidecars (device side).

The sidecar (written by `host/targets/tensorrt.py`) supplies what an engine cannot: the graph,
the model metadata, the precision, the profiles. Device memory goes through cuda-python; when it
is missing and the host process has already loaded torch (a workstation running parity), torch's
CUDA tensors are used instead. This module never imports torch itself.

Copies in, the engine run and copies out are all queued on the session's one CUDA stream, so
stream order alone makes each step see the previous one's data (a copy on another stream could
still be in flight when the engine reads its input).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import ArtifactError, BackendUnavailableError, InputError
from edgesam_export.device.runtime.base import Session


def _missing(module: str) -> BackendUnavailableError:
    from edgesam_export.device.backends import unavailable_error  # the registry's hint

    return unavailable_error("tensorrt", module)


def read_sidecar(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + ".json")
    if not side.is_file():
        raise ArtifactError(
            f"{path.name}: its sidecar {side.name} is missing (engines carry no"
            " metadata; rebuild with edgesam-export trt)"
        )
    try:
        data: dict[str, Any] = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{side}: unreadable sidecar ({exc})") from None
    return data


def outside_profile(
    profiles: Mapping[str, Mapping[str, list[int]]], feeds: Mapping[str, np.ndarray]
) -> str | None:
    """Why these feeds' shapes fall outside the engine's optimisation profiles (None: inside).

    `profiles` is the sidecar's {input: {"min": [...], "max": [...]}}; inputs without a
    profile are static and checked against the engine's own shapes elsewhere.
    """
    for name, arr in feeds.items():
        rng = profiles.get(name)
        if not rng:
            continue
        shape = tuple(np.shape(arr))
        if len(shape) != len(rng["min"]) or not all(
            lo <= s <= hi for lo, s, hi in zip(rng["min"], shape, rng["max"], strict=True)
        ):
            return (
                f"{name}: shape {shape} is outside the engine's profile"
                f" {rng['min']}..{rng['max']}; rebuild with wider ranges (--points/--batch)"
            )
    return None


class _CudaPython:
    """Device buffers and one stream through cuda-python's runtime API."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ArtifactError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))
        self.sync()  # `host` is read as soon as this returns

    def handle(self) -> int:
        return int(self.stream)

    def sync(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))


class _TorchCuda:
    """Fallback over a torch the host process already imported (never imported from here).

    torch queues a copy on its *current* stream, and the streams it creates do not wait for
    the default one: every copy runs inside `torch.cuda.stream(self.stream)`, the stream the
    engine runs on.
    """

    def __init__(self) -> None:
        self.torch = sys.modules["torch"]
        if not self.torch.cuda.is_available():
            raise BackendUnavailableError("torch is loaded but sees no CUDA device")
        self.stream = self.torch.cuda.Stream()
        self.buffers: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self.buffers[t.data_ptr()] = t
        return int(t.data_ptr())

    def free(self, ptr: int) -> None:
        self.buffers.pop(ptr, None)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        src = self.torch.from_numpy(np.ascontiguousarray(host).view(np.uint8).reshape(-1))
        with self.torch.cuda.stream(self.stream):
            self.buffers[ptr][: host.nbytes].copy_(src)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        with self.torch.cuda.stream(self.stream):
            data = self.buffers[ptr][: host.nbytes].cpu()  # waits for the stream's work
        host.reshape(-1).view(np.uint8)[:] = data.numpy()

    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def sync(self) -> None:
        self.stream.synchronize()


def _device() -> Any:
    try:
        return _CudaPython()
    except ImportError:
        if "torch" in sys.modules:
            return _TorchCuda()
        raise _missing("cuda-python") from None


class TensorRTSession(Session):
    backend = "tensorrt"
    compute_device = "cuda"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ArtifactError(f"TensorRT engine not found: {path}")
        side = read_sidecar(path)
        try:
            import tensorrt as trt
        except ImportError:
            raise _missing("tensorrt") from None
        self.trt = trt
        self.path = path
        self.runtime_label = f"TensorRT {getattr(trt, '__version__', '?')}"
        self.profiles = side.get("profiles", {})
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(
                f"TensorRT cannot deserialize {path.name} (built by TensorRT"
                f" {side.get('tensorrt_version')} on {side.get('gpu')})"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self.device = _device()
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}

        def spec(n: str) -> TensorSpec:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n))).name
            dims = tuple(int(d) if d >= 0 else "dynamic" for d in engine.get_tensor_shape(n))
            return TensorSpec(n, dtype, dims)

        metadata = dict(side.get("metadata", {}))
        metadata["precision"] = side.get("precision", metadata.get("precision", "fp32"))
        super().__init__(
            str(side.get("graph", metadata.get("graph", "unknown"))),
            [spec(n) for n in names if is_input[n]],
            [spec(n) for n in names if not is_input[n]],
            metadata,
        )

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.device.free(ptr)
            ptr, size = self.device.alloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    def accepts(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        """Parity skips (and lists) prompt shapes outside the profiles instead of failing."""
        return outside_profile(self.profiles, feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        reason = outside_profile(self.profiles, feeds)
        if reason is not None:
            raise InputError(reason)
        for name, arr in feeds.items():
            host = np.ascontiguousarray(arr)
            ptr = self._buffer(name, host.nbytes)
            self.device.to_device(ptr, host)
            if not self.context.set_input_shape(name, host.shape):
                raise InputError(
                    f"{self.path.name}: TensorRT refused shape {host.shape} for input '{name}'"
                    " (outside the profile the engine was built with; its sidecar may not"
                    " belong to it): rebuild with edgesam-export trt and wider --points/--batch"
                )
            self.context.set_tensor_address(name, ptr)
        outs: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            outs[spec.name] = np.empty(shape, dtype=spec.dtype)
            ptr = self._buffer(spec.name, outs[spec.name].nbytes)
            self.context.set_tensor_address(spec.name, ptr)
        if not self.context.execute_async_v3(self.device.handle()):
            raise ArtifactError(f"TensorRT failed running {self.path.name}")
        self.device.sync()
        for name, host in outs.items():
            self.device.to_host(host, self.buffers[name][0])
        return outs

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            try:
                self.device.free(ptr)
            except Exception:
                pass

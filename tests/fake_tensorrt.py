"""A stand-in `tensorrt` module for tests where TensorRT cannot be installed (no GPU here).

It follows the documented Python API of each flavour closely enough for our builder and
session, and records what was called, so tests can assert *how* an engine was built:

- "10": TensorRT 10.x: `NetworkDefinitionCreationFlag.STRONGLY_TYPED`, and the weakly typed
  `BuilderFlag.FP16` / `INT8` / `OBEY_PRECISION_CONSTRAINTS`, `ILayer.precision` (deprecated in 10).
- "11": TensorRT 11.x: the weakly typed builder flags and `Builder.platform_has_fast_fp16`
  are gone (using them raises AttributeError, as the real module would); every network is
  strongly typed and the creation flag is kept as an ignored no-op.
- "8.6": TensorRT 8.6 (JetPack 6.0's system package): no strongly typed networks at all.

"Building" serialises the path of the ONNX graph the parser read; the runtime deserialises
it and runs that graph with onnxruntime on host memory (`FakeDevice`), so parity over a
"built" engine really runs the typed graph the builder was fed. `corrupt` adds an offset to
every float output, to show that a bad engine is caught.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx

_ONNX_TO_NP = {1: np.float32, 10: np.float16, 6: np.int32, 7: np.int64, 9: np.bool_}


class DataType:
    def __init__(self, name: str, np_type: Any) -> None:
        self.name, self.np_type = name, np_type

    def __repr__(self) -> str:
        return f"DataType.{self.name}"

    __str__ = __repr__


FLOAT = DataType("FLOAT", np.float32)
HALF = DataType("HALF", np.float16)
_DTYPES = {np.float32: FLOAT, np.float16: HALF}


class Calls:
    """Everything the code under test asked of the module."""

    def __init__(self) -> None:
        self.network_flags: list[int] = []
        self.parsed: list[Path] = []
        self.builder_flags: list[str] = []
        self.layer_precisions: list[str] = []
        self.input_shapes: list[tuple[str, tuple[int, ...]]] = []


class FakeTensor:
    def __init__(self, name: str, dtype: DataType, shape: list[int]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape


class FakeLayer:
    def __init__(self, name: str, module: Any) -> None:
        self.name, self._module = name, module
        self.num_outputs = 1
        self._output = FakeTensor(name + ":0", FLOAT, [])

    def get_output(self, index: int) -> FakeTensor:
        return self._output

    @property
    def precision(self) -> Any:
        return None

    @precision.setter
    def precision(self, value: Any) -> None:
        if self._module.calls.network_flags[-1] & self._module.STRONG_BIT:
            raise RuntimeError("setting a layer precision in a strongly typed network")
        self._module.calls.layer_precisions.append(self.name)

    def set_output_type(self, index: int, dtype: Any) -> None:
        self.precision = dtype


class FakeNetwork:
    def __init__(self, module: Any) -> None:
        self.module = module
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.layers: list[FakeLayer] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i: int) -> FakeTensor:
        return self.inputs[i]

    def get_output(self, i: int) -> FakeTensor:
        return self.outputs[i]

    def get_layer(self, i: int) -> FakeLayer:
        return self.layers[i]


def _tensors(values: Any) -> list[FakeTensor]:
    out = []
    for vi in values:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append(FakeTensor(vi.name, _DTYPES[_ONNX_TO_NP[t.elem_type]], dims))
    return out


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path, load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        self.network.inputs = _tensors(v for v in model.graph.input if v.name not in inits)
        self.network.outputs = _tensors(model.graph.output)
        self.network.layers = [
            FakeLayer(n.name or n.output[0], self.network.module) for n in model.graph.node
        ]
        self.network.module.calls.parsed.append(Path(path))
        return True

    def get_error(self, i: int) -> str:
        return ""


class FakeConfig:
    def __init__(self, module: Any) -> None:
        self.module = module

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        pass

    def add_optimization_profile(self, profile: Any) -> None:
        pass

    def set_flag(self, flag: str) -> None:
        self.module.calls.builder_flags.append(flag)

    def create_timing_cache(self, data: bytes) -> Any:
        return types.SimpleNamespace(serialize=lambda: b"cache")

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> None:
        self.cache = cache

    def get_timing_cache(self) -> Any:
        return self.cache


class FakeBuilder:
    def __init__(self, logger: Any, module: Any) -> None:
        self.module = module

    def create_network(self, flags: int) -> FakeNetwork:
        self.module.calls.network_flags.append(flags)
        return FakeNetwork(self.module)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self.module)

    def create_optimization_profile(self) -> Any:
        return types.SimpleNamespace(set_shape=lambda *a: None)

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
        return str(self.module.calls.parsed[-1]).encode()


class FakeDevice:
    """Host memory standing in for device memory (what `runtime.tensorrt._device` returns)."""

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.allocated = 0

    def alloc(self, nbytes: int) -> int:
        self.allocated += 1
        ptr = 4096 * self.allocated
        self.memory[ptr] = bytearray(max(nbytes, 1))
        return ptr

    def free(self, ptr: int) -> None:
        self.memory.pop(ptr, None)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.memory[ptr][: host.nbytes] = np.ascontiguousarray(host).tobytes()

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(
            bytes(self.memory[ptr][: host.nbytes]), np.uint8
        )

    def handle(self) -> int:
        return 0

    def sync(self) -> None:
        pass


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.results: dict[str, np.ndarray] | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.engine.module.calls.input_shapes.append((name, tuple(shape)))
        declared = self.engine.tensors[name].shape
        if len(shape) != len(declared) or any(
            d not in (-1, s) for d, s in zip(declared, shape, strict=True)
        ):
            return False
        self.shapes[name], self.results = tuple(shape), None
        return bool(self.engine.module.accept_shapes)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def _run(self) -> dict[str, np.ndarray]:
        if self.results is None:
            device, feeds = self.engine.module.device, {}
            for name in self.engine.input_names:
                t = self.engine.tensors[name]
                n = int(np.prod(self.shapes[name])) * np.dtype(t.dtype.np_type).itemsize
                raw = bytes(device.memory[self.addresses[name]][:n])
                feeds[name] = np.frombuffer(raw, t.dtype.np_type).reshape(self.shapes[name])
            values = self.engine.session.run(None, feeds)
            names = [o.name for o in self.engine.session.get_outputs()]
            self.results = dict(zip(names, values, strict=True))
            for value in self.results.values():
                if value.dtype.kind == "f":
                    value += self.engine.module.corrupt
        return self.results

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.input_names:
            return self.shapes[name]
        return tuple(self._run()[name].shape)

    def execute_async_v3(self, stream: int) -> bool:
        device = self.engine.module.device
        for name, value in self._run().items():
            device.memory[self.addresses[name]][: value.nbytes] = value.tobytes()
        return True


class FakeEngine:
    def __init__(self, onnx_path: str, module: Any) -> None:
        import onnxruntime as ort

        self.module = module
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        model = onnx.load(onnx_path, load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        ins = _tensors(v for v in model.graph.input if v.name not in inits)
        outs = _tensors(model.graph.output)
        self.tensors = {t.name: t for t in ins + outs}
        self.input_names = [t.name for t in ins]
        self.names = [t.name for t in ins + outs]

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.input_names else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name].dtype

    def get_tensor_shape(self, name: str) -> list[int]:
        return self.tensors[name].shape

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


def make(flavour: str = "10") -> Any:
    """A fresh fake module of the given flavour ("10", "11" or "8.6")."""
    m = types.ModuleType("tensorrt")
    m.__version__ = {"10": "10.13.0 (fake)", "11": "11.4.0 (fake)", "8.6": "8.6.1 (fake)"}[flavour]
    m.calls = Calls()
    m.device = FakeDevice()
    m.corrupt = 0.0
    m.accept_shapes = True
    m.STRONG_BIT = 1 << 0 if flavour != "8.6" else 0
    builder_flags = ["TF32"]
    if flavour != "11":
        builder_flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    m.BuilderFlag = types.SimpleNamespace(**{f: f for f in builder_flags})
    creation = {"STRONGLY_TYPED": 0} if flavour != "8.6" else {"EXPLICIT_BATCH": 0}
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(**creation)
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    m.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    m.float32, m.float16 = FLOAT, HALF
    m.nptype = lambda dtype: dtype.np_type
    m.Logger = type("Logger", (), {"WARNING": 2, "ERROR": 1, "__init__": lambda self, s=0: None})

    def builder(logger: Any) -> FakeBuilder:
        b = FakeBuilder(logger, m)
        if flavour != "11":  # removed in TensorRT 11
            b.platform_has_fast_fp16 = True  # type: ignore[attr-defined]
        return b

    m.Builder = builder
    m.OnnxParser = FakeParser

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            return FakeEngine(data.decode(), m)

    m.Runtime = Runtime
    return m

"""A numpy executor for the MIL programs inside our `.mlpackage` bundles (device side).

coremltools can write an ML Program anywhere but run one only on macOS. This module reads the
saved package back (coremltools' protobuf classes and milproto loader: the program exactly as
written, weights from `weights/weight.bin` included) and executes it op by op in numpy, so CoreML
parity runs on Linux CI too and judges the bytes that ship, not the in-memory model.

Precision follows the program: every op computes in float32 from its inputs as stored and rounds
its outputs to the dtype the program declares for them, so an fp16 program is rounded to fp16
after each op, exactly where the program's types say (CoreML's own kernels may keep wider
accumulators inside an op; the tolerances allow for that). The ops themselves live in
`runtime.mil_ops`; only the ops our graphs produce are implemented, and loading a program with
any other op is an `UnsupportedOpError` naming it.

Needs numpy and coremltools (the `coreml` extra); never torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device.errors import ArtifactError
from edgesam_export.device.fp16.criterion import TensorRange
from edgesam_export.device.runtime.mil_ops import OPS, UnsupportedOpError

# ---------------------------------------------------------------------------------------------
# Reading a package


def require_coremltools_proto() -> Any:
    try:
        from coremltools.proto import Model_pb2
    except ImportError:
        from edgesam_export.device.backends import unavailable_error  # the registry's hint

        raise unavailable_error("coreml", "coremltools") from None
    return Model_pb2


def package_files(package: Path) -> tuple[Path, Path]:
    """(model.mlmodel, weights directory) of a package, as its Manifest.json names them."""
    manifest_path = package / "Manifest.json"
    if not package.is_dir() or not manifest_path.is_file():
        raise ArtifactError(f"{package} is not an .mlpackage (no Manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["itemInfoEntries"]
        root = entries[manifest["rootModelIdentifier"]]["path"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{package}: unreadable Manifest.json ({exc})") from None
    model = package / "Data" / root
    weights = model.parent / "weights"
    for entry in entries.values():
        if entry.get("name") == "weights":
            weights = package / "Data" / entry["path"]
    if not model.is_file():
        raise ArtifactError(f"{package}: the model specification {model} is missing")
    return model, weights


def read_spec(package: Path) -> Any:
    """The package's Model protobuf (description, metadata and the MIL program)."""
    model_pb2 = require_coremltools_proto()
    model_path, _ = package_files(package)
    spec = model_pb2.Model()
    try:
        spec.ParseFromString(model_path.read_bytes())
    except Exception as exc:
        raise ArtifactError(f"{package}: cannot parse {model_path.name}: {exc}") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(f"{package} is not an ML Program (type {spec.WhichOneof('Type')})")
    return spec


# ---------------------------------------------------------------------------------------------
# The program


@dataclass
class Step:
    op_type: str
    name: str
    fn: Callable[..., Any]
    params: dict[str, Any]  # MIL input name -> var name, list of var names, or a literal
    outputs: list[tuple[str, Any]]  # (var name, numpy dtype the program declares)


def _last_reads(
    steps: list[Step], constants: Mapping[str, Any], outputs: list[str]
) -> dict[int, list[str]]:
    """For each step, the computed variables (not constants, not outputs) it reads last."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for value in step.params.values():
            for name in value if isinstance(value, list) else [value]:
                last[name] = index
    for index, step in enumerate(steps):  # computed but never read: free at once
        for name, _ in step.outputs:
            last.setdefault(name, index)
    keep = set(constants) | set(outputs)
    out: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            out.setdefault(index, []).append(name)
    return out


@dataclass
class MilProgram:
    """The main function of a package's ML Program, ready to execute."""

    inputs: list[str]
    outputs: list[str]
    steps: list[Step]
    constants: dict[str, Any]
    op_types: dict[str, int] = field(default_factory=dict)
    # step index -> variables computed by earlier steps that are read for the last time there
    # (freed right after it, so a run holds only live values: ViT global attention makes
    # ~0.8 GB tensors per op, and keeping every intermediate took 16 GB on SlimSAM-77).
    last_reads: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.last_reads:
            self.last_reads = _last_reads(self.steps, self.constants, self.outputs)

    @classmethod
    def load(cls, package: Path, spec: Any | None = None) -> MilProgram:
        spec = read_spec(package) if spec is None else spec
        _, weights = package_files(package)
        try:
            from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
            from coremltools.converters.mil.mil import types
        except ImportError:
            require_coremltools_proto()
            raise
        try:
            program = milproto_load(spec, spec.specificationVersion, str(weights))
        except Exception as exc:
            raise ArtifactError(f"{package}: cannot load its MIL program: {exc}") from None
        if "main" not in program.functions:
            raise ArtifactError(f"{package}: the MIL program has no main function")
        func = program.functions["main"]
        constants: dict[str, Any] = {}
        steps: list[Step] = []
        op_types: dict[str, int] = {}

        def np_dtype(var: Any) -> Any:
            dt = var.dtype
            if types.is_tensor(var.sym_type):
                dt = var.sym_type.get_primitive()
            try:
                return types.nptype_from_builtin(dt)
            except Exception:
                return None

        for op in func.operations:
            op_types[op.op_type] = op_types.get(op.op_type, 0) + 1
            if op.op_type == "const":
                val = op.outputs[0].val
                constants[op.outputs[0].name] = np.asarray(val) if not isinstance(val, str) else val
                continue
            if op.op_type not in OPS:
                raise UnsupportedOpError(
                    f"{package.name}: op {op.op_type!r} ({op.name}) is not implemented by the MIL"
                    f" executor (implemented: {', '.join(sorted(OPS))})"
                )
            params: dict[str, Any] = {}
            for key, var in op.inputs.items():
                if isinstance(var, (list, tuple)):
                    params[key] = [v.name for v in var]
                else:
                    params[key] = var.name
            outputs = [(v.name, np_dtype(v)) for v in op.outputs]
            steps.append(Step(op.op_type, op.name, OPS[op.op_type], params, outputs))
        return cls(
            inputs=list(func.inputs),
            outputs=[v.name for v in func.outputs],
            steps=steps,
            constants=constants,
            op_types=op_types,
        )

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        record: dict[str, TensorRange] | None = None,
    ) -> dict[str, np.ndarray]:
        """Execute; with `record`, also collect each op's float value range (pre-rounding)."""
        env: dict[str, Any] = dict(self.constants)
        for name in self.inputs:
            env[name] = np.asarray(feeds[name])
        for index, step in enumerate(self.steps):
            kwargs = {
                k: [env[n] for n in v] if isinstance(v, list) else env[v]
                for k, v in step.params.items()
            }
            result = step.fn(**kwargs)
            results = result if isinstance(result, tuple) else (result,)
            for (name, dtype), value in zip(step.outputs, results, strict=True):
                value = np.asarray(value)
                if record is not None and value.dtype.kind == "f":
                    rng = record.setdefault(name, TensorRange(step.op_type, step.name))
                    rng.update(value)
                if dtype is not None and value.dtype != dtype:
                    with np.errstate(over="ignore"):  # fp16 overflow is inf, as on a device
                        value = value.astype(dtype)
                env[name] = value
            del kwargs, result, results
            for name in self.last_reads.get(index, ()):
                del env[name]
        return {name: env[name] for name in self.outputs}

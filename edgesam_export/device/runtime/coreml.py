"""CoreML sessions over `.mlpackage` artifacts: the CoreML runtime on macOS, our MIL executor
elsewhere (device side; never imports torch).

Both read the same package; `runtime_label` says which one produced the numbers, and parity
reports and bench results record it. The executor stands in only where CoreML cannot run at
all (not macOS): on macOS a package CoreML cannot load is an error, never a silent switch to
the executor, so a macOS check has always run CoreML itself. Feeds are checked against the
shapes the package declares (enumerated shapes or ranges), so the executor refuses what a
device would refuse.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import ArtifactError, BackendUnavailableError, InputError
from edgesam_export.device.fp16.criterion import TensorRange
from edgesam_export.device.runtime.base import Session
from edgesam_export.device.runtime.mil import MilProgram, read_spec

COREML_RUNTIME = "CoreML runtime (macOS)"
MIL_EXECUTOR = "MIL executor (numpy, Linux)"
_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}
_AXIS_NAMES = ("batch", "num_points")


def _shape_info(feature: Any) -> tuple[tuple[int | str, ...], list[tuple[int, ...]] | None, Any]:
    """(shape with symbolic flexible axes, enumerated shapes or None, ranges or None)."""
    arr = feature.type.multiArrayType
    default = tuple(int(d) for d in arr.shape)
    flex = arr.WhichOneof("ShapeFlexibility")
    if flex == "enumeratedShapes":
        shapes = [tuple(int(d) for d in s.shape) for s in arr.enumeratedShapes.shapes]
        varying = {i for i in range(len(default)) if len({s[i] for s in shapes}) > 1}
        sym = tuple(
            (_AXIS_NAMES[i] if i < len(_AXIS_NAMES) else f"dim{i}") if i in varying else d
            for i, d in enumerate(default)
        )
        return sym, shapes, None
    if flex == "shapeRange":
        ranges = [(int(r.lowerBound), int(r.upperBound)) for r in arr.shapeRange.sizeRanges]
        sym = tuple(
            (_AXIS_NAMES[i] if i < len(_AXIS_NAMES) else f"dim{i}") if lo != hi else lo
            for i, (lo, hi) in enumerate(ranges)
        )
        return sym, None, ranges
    return default, None, None


class CoreMLSession(Session):
    """An `.mlpackage` run by CoreML (macOS) or by the numpy MIL executor (anywhere).

    `runtime`: "auto" (CoreML on macOS, the executor elsewhere), "coreml" (macOS only) or
    "mil" (the executor anywhere, e.g. for its per-op value ranges).
    """

    backend = "coreml"

    def __init__(self, path: Path, runtime: str = "auto") -> None:
        if not path.exists():
            raise ArtifactError(f"CoreML artifact not found: {path}")
        self.path = path
        spec = read_spec(path)
        meta = dict(spec.description.metadata.userDefined)
        self._accepts: dict[str, tuple[list[tuple[int, ...]] | None, Any]] = {}
        inputs, outputs = [], []
        for feature in spec.description.input:
            shape, shapes, ranges = _shape_info(feature)
            dtype = _DTYPES.get(feature.type.multiArrayType.dataType, "float32")
            inputs.append(TensorSpec(feature.name, dtype, shape))
            self._accepts[feature.name] = (shapes, ranges)
        for feature in spec.description.output:
            dtype = _DTYPES.get(feature.type.multiArrayType.dataType, "float32")
            shape = tuple(int(d) for d in feature.type.multiArrayType.shape) or ("?",)
            outputs.append(TensorSpec(feature.name, dtype, shape))
        super().__init__(meta.get("graph", "unknown"), inputs, outputs, meta)
        if runtime not in ("auto", "coreml", "mil"):
            raise InputError(f"unknown CoreML runtime {runtime!r} (auto, coreml, mil)")
        self._model: Any = None
        self._program: MilProgram | None = None
        on_macos = sys.platform == "darwin"
        if runtime == "coreml" and not on_macos:
            raise BackendUnavailableError(
                f"the CoreML runtime only runs on macOS (this is {sys.platform});"
                " use the MIL executor (runtime='mil')"
            )
        if runtime == "coreml" or (runtime == "auto" and on_macos):
            self._model = self._load_coreml()
            self.runtime_label = COREML_RUNTIME
            self.compute_device = "coreml (cpu/gpu/ane)"  # CoreML picks per layer
        else:
            self._program = MilProgram.load(path, spec)
            self.runtime_label = MIL_EXECUTOR

    def _load_coreml(self) -> Any:
        try:
            import coremltools as ct

            return ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit.ALL)
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ArtifactError(
                f"CoreML cannot load {self.path.name}: {first} (on macOS the package must run"
                " on CoreML itself; the MIL executor stands in only off macOS)"
            ) from None

    def accepts(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        """Why these feed shapes are outside what the package declares, or None."""
        for name, (shapes, ranges) in self._accepts.items():
            if name not in feeds:
                continue
            shape = tuple(np.shape(feeds[name]))
            if shapes is not None and shape not in shapes:
                sizes = sorted({s[1] for s in shapes if len(s) > 1})
                batches = sorted({s[0] for s in shapes})
                return (
                    f"{name} shape {shape} is not one of the {len(shapes)} enumerated shapes"
                    f" (B in {batches[0]}..{batches[-1]}, N in {sizes[0]}..{sizes[-1]})"
                )
            if ranges is not None and any(
                not lo <= d <= (hi if hi > 0 else d)
                for d, (lo, hi) in zip(shape, ranges, strict=False)
            ):
                return f"{name} shape {shape} is outside the declared ranges {ranges}"
        return None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CoreML has no int64 inputs: an int64 index feed (the contract's dtype, e.g. EdgeTAM's
        `memory_tpos`) goes to an int32 input as int32 when its values fit."""
        int32 = {t.name for t in self.inputs if t.dtype == "int32"}
        fed = dict(feeds)
        for name in int32 & set(fed):
            arr = fed[name]
            if isinstance(arr, np.ndarray) and arr.dtype == np.int64:
                if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                    raise InputError(f"{name}: values outside int32, which CoreML inputs take")
                fed[name] = arr.astype(np.int32)
        return super().run(fed)

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        super().check_feeds(feeds)
        reason = self.accepts(feeds)
        if reason is not None:
            raise InputError(f"{self.path.name}: {reason}")

    def run_recorded(
        self, feeds: Mapping[str, np.ndarray], record: dict[str, TensorRange]
    ) -> dict[str, np.ndarray]:
        """Run with the executor, collecting each op's value range (the fp16 safety report)."""
        self.check_feeds(feeds)
        program = self._program or MilProgram.load(self.path)
        return self._outputs(program.run(feeds, record=record))

    def _outputs(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {t.name: np.asarray(values[t.name], dtype=np.float32) for t in self.outputs}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is not None:
            try:
                values = self._model.predict({k: np.asarray(v) for k, v in feeds.items()})
            except Exception as exc:
                raise ArtifactError(f"CoreML failed running {self.path.name}: {exc}") from None
            return self._outputs(values)
        assert self._program is not None
        return self._outputs(self._program.run(feeds))

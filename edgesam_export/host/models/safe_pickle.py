"""Read whole-module PyTorch checkpoints (SlimSAM's releases) without executing pickle content.

SlimSAM's released files are `torch.save(model)` of a module tree from SlimSAM's fork of
segment-anything: loading them with `torch.load(weights_only=False)` imports that fork and runs
whatever callables the pickle names. Here a restricted unpickler rebuilds only:

- tensors and parameters (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`) from the
  archive's raw storage records (`torch.FloatStorage` & co., any `map_location` tag: read on CPU);
- plain containers (`collections.OrderedDict`, `set`) and `torch.device` (as its string);
- module classes of known namespaces (`segment_anything_kd.*`, `segment_anything.*`,
  `torch.nn.modules.*`, `torch.nn.parallel.*`) as inert `ModuleRecord`s that only store the
  state handed to them; nothing of those classes is imported or run;
- `getattr` (a pickled bound method, e.g. SlimSAM's saved `forward`) as an inert placeholder:
  the real builtin is never called.

Every other global (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) is refused before it
is resolved, with an error naming it. The state dict is then read off the record tree.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgesam_export.device.errors import CheckpointError


class UnsafePickleError(CheckpointError):
    """The pickle references something outside the allow-list; nothing of it was executed."""


_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# Namespaces whose classes become inert records (module trees of the SAM family and torch.nn).
_MODULE_NAMESPACES = (
    "segment_anything_kd.",
    "segment_anything.",
    "mobile_sam.",
    "torch.nn.modules.",
    "torch.nn.parallel.",
)


class ModuleRecord:
    """An inert stand-in for a pickled module: keeps its class path and pickled state only."""

    class_path = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ModuleRecord:
        obj = object.__new__(cls)
        obj.__dict__["_state"] = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.class_path}: unexpected pickled state {type(state)}")
        self.__dict__["_state"] = state

    @property
    def state(self) -> dict[str, Any]:
        return self.__dict__["_state"]  # type: ignore[no-any-return]

    def children(self) -> Iterator[tuple[str, ModuleRecord]]:
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, ModuleRecord):
                yield name, child

    def attribute(self, name: str) -> Any:
        return self.state.get(name)

    def __repr__(self) -> str:
        return f"<record {self.class_path}>"


_RECORD_CLASSES: dict[str, type[ModuleRecord]] = {}


def _record_class(path: str) -> type[ModuleRecord]:
    if path not in _RECORD_CLASSES:
        name = path.rsplit(".", 1)[-1]
        _RECORD_CLASSES[path] = type(name, (ModuleRecord,), {"class_path": path})
    return _RECORD_CLASSES[path]


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _Placeholder:
    """What an allowed-but-not-run call (getattr) returns: a description, nothing callable."""

    what: str


@dataclass
class _Storage:
    flat: torch.Tensor
    location: str


def _checked_ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise CheckpointError(f"malformed tensor record: {what} is {value!r}")
    return tuple(value)


def _rebuild_tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, _Storage) or not isinstance(offset, int):
        raise CheckpointError("malformed tensor record: storage or offset of the wrong type")
    shape = _checked_ints(size, "size")
    strides = _checked_ints(stride, "stride")
    if len(shape) != len(strides) or offset < 0 or any(s < 0 for s in (*shape, *strides)):
        raise CheckpointError(f"malformed tensor record: size {shape}, stride {strides}")
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if all(shape) and last >= storage.flat.numel():
        raise CheckpointError(
            f"malformed tensor record: a {shape} view reaches past its storage"
            f" ({storage.flat.numel()} elements)"
        )
    return storage.flat.as_strided(shape, strides, offset).clone()


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *_: Any) -> Any:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("malformed parameter record: no tensor inside")
    return data


def _device(*args: Any) -> str:
    if not all(isinstance(a, str | int) for a in args):
        raise CheckpointError(f"malformed torch.device record {args!r}")
    return ":".join(str(a) for a in args)


def _getattr_placeholder(obj: Any, name: Any, *default: Any) -> _Placeholder:
    return _Placeholder(f"getattr({type(obj).__name__}, {name!r})")


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "device"): _device,
    ("__builtin__", "getattr"): _getattr_placeholder,
    ("builtins", "getattr"): _getattr_placeholder,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, read_record: Callable[[str], bytes]) -> None:
        super().__init__(file)
        self._read_record = read_record
        self._storages: dict[str, _Storage] = {}
        self.globals_seen: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        path = f"{module}.{name}"
        if path not in self.globals_seen:
            self.globals_seen.append(path)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if (
            module.startswith(_MODULE_NAMESPACES)
            and name.isidentifier()
            and name[:1].isupper()
            and all(part.isidentifier() for part in module.split("."))
        ):
            return _record_class(path)
        raise UnsafePickleError(
            f"refused to load: the pickle references the global {path!r}, which is not a"
            " tensor, a plain container or a known module class. Nothing was executed."
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"refused to load: unknown persistent id {pid!r}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise UnsafePickleError(f"refused to load: malformed storage id {pid!r}")
        if not isinstance(numel, int) or numel < 0 or not isinstance(location, str):
            raise CheckpointError(f"malformed storage id {pid!r}")
        if key in self._storages:
            return self._storages[key]
        raw = self._read_record(key)
        itemsize = torch.empty((), dtype=stype.dtype).element_size()
        if len(raw) != numel * itemsize:
            raise CheckpointError(
                f"storage {key}: {len(raw)} bytes, expected {numel} x {itemsize} ({stype.name})"
            )
        flat = (
            torch.frombuffer(bytearray(raw), dtype=stype.dtype)
            if numel
            else torch.empty(0, dtype=stype.dtype)
        )
        storage = _Storage(flat, location)
        self._storages[key] = storage
        return storage


@dataclass
class ModuleCheckpoint:
    """What a whole-module checkpoint holds, read without running it."""

    root: ModuleRecord
    state_dict: dict[str, torch.Tensor]
    globals_seen: list[str]
    storage_locations: list[str]
    unwrapped: list[str] = field(default_factory=list)  # DataParallel wrappers removed

    @property
    def root_class(self) -> str:
        return self.root.class_path

    def records(self) -> Iterator[tuple[str, ModuleRecord]]:
        """Every module record with its dotted name (after unwrapping)."""
        yield from _walk(self.root, "")


def _unwrap(record: ModuleRecord) -> ModuleRecord:
    if record.class_path.startswith("torch.nn.parallel.") and "module" in dict(record.children()):
        return dict(record.children())["module"]
    return record


def _walk(record: ModuleRecord, prefix: str) -> Iterator[tuple[str, ModuleRecord]]:
    yield prefix.rstrip("."), record
    for name, child in record.children():
        yield from _walk(_unwrap(child), f"{prefix}{name}.")


def _state_of(record: ModuleRecord) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, rec in _walk(record, ""):
        prefix = f"{name}." if name else ""
        skip = rec.state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (rec.state.get(group) or {}).items():
                if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                    out[f"{prefix}{name}"] = value
    return out


def _open_archive(path: Path) -> tuple[zipfile.ZipFile, str]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path} is not a torch zip archive (legacy or foreign pickle): whole-module"
            " checkpoints are read from torch's zip format only"
        ) from None
    pkls = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
        archive.close()
        raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pkls)}")
    return archive, pkls[0][: -len("data.pkl")]


def load_pickle_restricted(path: Path) -> tuple[Any, list[str], list[str]]:
    """Unpickle a torch zip archive's data.pkl under the allow-list.

    Returns (object, globals referenced, storage locations). Raises UnsafePickleError for any
    global outside the allow-list (before resolving it) and CheckpointError for malformed data.
    """
    archive, prefix = _open_archive(path)
    with archive:
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian archives are not supported")

        def read_record(key: str) -> bytes:
            name = f"{prefix}data/{key}"
            try:
                return archive.read(name)
            except KeyError:
                raise CheckpointError(f"{path}: storage record {name} is missing") from None

        with archive.open(prefix + "data.pkl") as f:
            unpickler = _RestrictedUnpickler(f, read_record)
            try:
                obj = unpickler.load()
            except CheckpointError:
                raise
            except Exception as exc:  # malformed streams raise many types
                raise CheckpointError(
                    f"{path}: the pickle could not be read safely ({type(exc).__name__}: {exc})"
                ) from None
        locations = sorted({s.location for s in unpickler._storages.values()})
        return obj, unpickler.globals_seen, locations


def read_module_checkpoint(path: Path) -> ModuleCheckpoint:
    """The state dict of a whole pickled module tree, DataParallel wrappers unwrapped."""
    obj, seen, locations = load_pickle_restricted(path)
    if not isinstance(obj, ModuleRecord):
        raise CheckpointError(f"{path} does not pickle a module (it holds a {type(obj).__name__})")
    unwrapped = [
        f"{name}.module"
        for name, rec in _walk_raw(obj, "")
        if rec.class_path.startswith("torch.nn.parallel.")
    ]
    state = _state_of(obj)
    if not state:
        raise CheckpointError(f"{path}: the pickled module holds no tensors")
    return ModuleCheckpoint(obj, state, seen, locations, unwrapped)


def _walk_raw(record: ModuleRecord, prefix: str) -> Iterator[tuple[str, ModuleRecord]]:
    yield prefix.rstrip("."), record
    for name, child in record.children():
        yield from _walk_raw(child, f"{prefix}{name}.")

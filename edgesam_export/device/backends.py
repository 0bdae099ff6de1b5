"""The backend registry: the one place that knows a backend.

Each backend is one frozen `Backend` entry: its name and aliases, the artifact suffixes it
reads, its exporter (host side) and session (device side) as "module:attr" strings imported on
use, the Python module that must import for it to run (with the install hint), its parity
tolerance rows per precision, its bench label and whether it is a recipe target kind. The CLI,
`edgesam-bench`, parity, recipes, the pipeline and build read this table and nothing else, so a
new backend is one entry here, one target module (`host/targets/`) and one session module
(`device/runtime/`).

Device side: the exporter strings name host modules, but they are only imported by
`get_target`, which runs where the host side is installed; nothing here imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesam_export.device.errors import (
    BackendUnavailableError,
    EdgeSamExportError,
    ExitCode,
    InputError,
)
from edgesam_export.device.tolerances import (
    CHECKS as CHECKS,  # the checks a recipe may tighten, read through the registry
)
from edgesam_export.device.tolerances import (
    COREML_FP16,
    COREML_INT8,
    EXECUTORCH_FP32,
    EXECUTORCH_INT8,
    FP16_EMULATED,
    FP32_COREML,
    FP32_ONNX,
    FP32_TENSORRT,
    ONNX_INT8,
    ONNX_INT8_STATIC,
    ONNX_INT8_WEIGHTS,
    PRECISION_ROWS,
    TORCH_BF16,
    TORCH_FP16,
    GroupRows,
    ToleranceRow,
    TolRows,
)

if TYPE_CHECKING:
    from edgesam_export.device.runtime.base import Session


# --- the entries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One backend: everything the rest of the package needs to know about it."""

    name: str  # canonical: recorded in artifacts, manifests, parity reports and bench columns
    aliases: tuple[str, ...] = ()  # also accepted wherever a backend is named
    suffixes: tuple[str, ...] = ()  # artifact suffixes its session opens; () = no artifact
    exporter: str = ""  # "module:attr" of its host-side `Target`; "" = nothing to export
    session: str = ""  # "module:Class" of its device-side `Session`; "" = opened by the caller
    requires: str = ""  # the Python module that must import for the backend to run
    install_hint: str = ""  # what to install when it does not
    export_hint: str = ""  # what to install to export to it, when that differs from install_hint
    tolerances: Mapping[str, TolRows] = field(default_factory=dict)  # precision -> row(s)
    bench_label: str = ""  # how edgesam-bench names its column in the rendered table
    recipe_options: str = ""  # "module:Class" of its recipe target's options; "" = not a kind
    packages: tuple[str, ...] = ()  # libraries whose versions a build records for it
    threads_option: bool = False  # whether its session takes threads=
    # whether its target writes a model's video graphs (`contract.VIDEO_GRAPHS`) by default
    video_graphs: bool = True

    @property
    def recipe_kind(self) -> bool:
        return bool(self.recipe_options)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


_INSTALL = "pip install 'edgesam-export[{}]'"

_ENTRIES = (
    Backend(
        name="torch",
        requires="torch",
        install_hint=_INSTALL.format("export"),
        # the graph rewrites the ONNX export traces: the ONNX float32 rows bound them
        tolerances={"fp32": FP32_ONNX, "fp16": TORCH_FP16, "bf16": TORCH_BF16},
        bench_label="PyTorch",
    ),
    Backend(
        name="onnx",
        suffixes=(".onnx",),
        exporter="edgesam_export.host.targets.onnx:TARGET",
        session="edgesam_export.device.runtime.onnxruntime:OnnxRuntimeSession",
        requires="onnxruntime",
        install_hint=_INSTALL.format("onnxruntime"),
        export_hint=_INSTALL.format("onnx"),
        tolerances={
            "fp32": FP32_ONNX,
            "fp16": FP16_EMULATED,
            "int8": ONNX_INT8_STATIC,
            "int8-dynamic": ONNX_INT8,
            "int8-weights": ONNX_INT8_WEIGHTS,
        },
        bench_label="ONNX Runtime",
        recipe_options="edgesam_export.host.config:OnnxOptions",
        packages=("onnx", "onnxruntime", "onnxslim"),
        threads_option=True,
    ),
    Backend(
        name="coreml",
        suffixes=(".mlpackage",),
        exporter="edgesam_export.host.targets.coreml:TARGET",
        session="edgesam_export.device.runtime.coreml:CoreMLSession",
        requires="coremltools",
        install_hint=_INSTALL.format("coreml")
        + " (coremltools runs packages on macOS, the MIL executor elsewhere)",
        export_hint=_INSTALL.format("export,coreml"),
        tolerances={"fp32": FP32_COREML, "fp16": COREML_FP16, "int8": COREML_INT8},
        bench_label="Core ML",
        recipe_options="edgesam_export.host.config:CoreMLOptions",
        packages=("coremltools",),
    ),
    Backend(
        name="executorch",
        suffixes=(".pte",),
        exporter="edgesam_export.host.targets.executorch:TARGET",
        # host side: ExecuTorch's Python runtime takes torch tensors (docs/executorch.md)
        session="edgesam_export.host.executorch_session:ExecuTorchSession",
        requires="executorch",
        install_hint=_INSTALL.format("executorch"),
        tolerances={"fp32": EXECUTORCH_FP32, "int8": EXECUTORCH_INT8},
        bench_label="ExecuTorch",
        recipe_options="edgesam_export.host.config:ExecuTorchOptions",
        packages=("executorch",),
        threads_option=True,
        # image graphs only: the programs take one object per call (batch 1), so the tracker's
        # batched memory graphs are not judged or claimed here (docs/executorch.md)
        video_graphs=False,
    ),
    Backend(
        name="tensorrt",
        aliases=("trt",),
        suffixes=(".engine",),
        exporter="edgesam_export.host.targets.tensorrt:TARGET",
        session="edgesam_export.device.runtime.tensorrt:TensorRTSession",
        requires="tensorrt",
        install_hint=_INSTALL.format("tensorrt")
        + " (TensorRT 10 or 11: pip install 'tensorrt>=10,<12' cuda-python) on a machine with an"
        " NVIDIA GPU and CUDA (on Jetson: JetPack's python3-libnvinfer)",
        tolerances={"fp32": FP32_TENSORRT, "fp16": FP16_EMULATED},
        bench_label="TensorRT",
        recipe_options="edgesam_export.host.config:TensorRTOptions",
        packages=("onnx", "tensorrt"),
    ),
)

_REGISTRY: dict[str, Backend] = {}


def register(entry: Backend) -> Backend:
    """Add a backend; its name and aliases must be new. Every reader sees it at once."""
    taken = {n for b in _REGISTRY.values() for n in b.names}
    clash = [n for n in entry.names if n in taken]
    if clash:
        raise ValueError(f"backend name already registered: {', '.join(clash)}")
    claimed = {s for b in _REGISTRY.values() for s in b.suffixes}
    if claimed & set(entry.suffixes):
        raise ValueError(
            f"artifact suffix already claimed: {sorted(claimed & set(entry.suffixes))}"
        )
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a backend (tests that register a fake one clean up with this)."""
    del _REGISTRY[get_backend(name).name]


for _entry in _ENTRIES:
    register(_entry)


def all_backends() -> tuple[Backend, ...]:
    return tuple(_REGISTRY.values())


def backend_names(aliases: bool = False) -> tuple[str, ...]:
    """Canonical names in registry order; with `aliases`, every accepted spelling."""
    return tuple(n for b in _REGISTRY.values() for n in (b.names if aliases else (b.name,)))


def get_backend(name: str | Backend) -> Backend:
    """The entry for a name or alias; an unknown name is an InputError listing the allowed."""
    if isinstance(name, Backend):
        return name
    for entry in _REGISTRY.values():
        if name in entry.names:
            return entry
    raise InputError(f"unknown backend {name!r}; allowed: {', '.join(backend_names(True))}")


def artifact_suffixes() -> tuple[str, ...]:
    return tuple(sorted(s for b in _REGISTRY.values() for s in b.suffixes))


def backend_for_path(path: Path | str) -> Backend:
    """The backend whose session opens this artifact, chosen by its suffix."""
    path = Path(path)
    for entry in _REGISTRY.values():
        if path.suffix in entry.suffixes:
            return entry
    raise InputError(
        f"{path}: no runtime for '{path.suffix}' artifacts"
        f" (supported: {', '.join(artifact_suffixes())})"
    )


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def open_session(path: Path | str, **kwargs: Any) -> Session:
    """Open an artifact with the session of the backend its suffix belongs to."""
    entry = backend_for_path(path)
    session: Session = _load(entry.session)(Path(path), **kwargs)
    session.backend = entry.name  # what parity, grouping and reports record: the registry's name
    return session


def get_target(name: str | Backend) -> Any:
    """The host-side exporter (`host.targets.Target`) of a backend; host side only."""
    entry = get_backend(name)
    if not entry.exporter:
        raise InputError(
            f"the {entry.name} backend exports nothing; export targets:"
            f" {', '.join(b.name for b in _REGISTRY.values() if b.exporter)}"
        )
    return _load(entry.exporter)


def recipe_options(name: str | Backend) -> Any:
    """The options class of a backend's recipe target (host side, imported on use)."""
    return _load(get_backend(name).recipe_options)


def unavailable_reason(
    backend: str | Backend, module: str | None = None, *, export: bool = False
) -> str:
    """The one line for a backend piece that does not import: which module, and what to install
    (the entry's `install_hint`, or its `export_hint` for exporting). Every session, target and
    command says it this way, so the hint lives in the registry only."""
    entry = get_backend(backend)
    hint = (entry.export_hint or entry.install_hint) if export else entry.install_hint
    what = f"exporting to {entry.name}" if export else f"the {entry.name} backend"
    return (
        f"{what} is not available here: {module or entry.requires} does not import; it needs {hint}"
    )


def unavailable_error(
    backend: str | Backend, module: str | None = None, *, export: bool = False
) -> BackendUnavailableError:
    """`unavailable_reason` as the error to raise (exit 6)."""
    return BackendUnavailableError(unavailable_reason(backend, module, export=export))


def availability(backend: str | Backend) -> str:
    """Why a backend cannot run here, in one line; "" when it can."""
    entry = get_backend(backend)
    if not entry.requires:
        return ""
    try:
        importlib.import_module(entry.requires)
    except Exception:  # ImportError, or a native library that fails to load
        return unavailable_reason(entry)
    return ""


def require(backend: str | Backend) -> Backend:
    """The entry, or BackendUnavailableError (exit 6) saying what to install."""
    entry = get_backend(backend)
    reason = availability(entry)
    if reason:
        raise BackendUnavailableError(reason)
    return entry


def tolerance_row(backend: str, precision: str, family: str | None = None) -> ToleranceRow:
    """The tolerance row for a candidate: its backend's row for the precision, else the
    precision's own row; where rows differ per family group (fp32), the one of `family`
    (the artifact's recorded `family`). An unknown precision is an error, never a silent fp32
    verdict."""
    entry = get_backend(backend)
    row = entry.tolerances.get(precision) or PRECISION_ROWS.get(precision)
    if row is None:
        known = sorted({*entry.tolerances, *PRECISION_ROWS})
        raise InputError(
            f"no parity tolerances for precision {precision!r} ({entry.name});"
            f" known: {', '.join(known)}"
        )
    return row.row(family) if isinstance(row, GroupRows) else row


def tolerances_for(
    backend: str, precision: str, family: str | None = None
) -> tuple[dict[str, float], float]:
    """(per-check tolerances, minimum mask IoU) for a candidate."""
    row = tolerance_row(backend, precision, family)
    return dict(row.limits), row.min_mask_iou


# --- opening a backend's artifacts for edgesam-bench ------------------------------------------


@dataclass
class OpenedBackend:
    """One column of the benchmark: its sessions, or why it is unavailable."""

    name: str
    encoder: Session | None = None
    decoder: Session | None = None
    reason: str = ""
    exit_code: int = 0
    artifacts: list[str] = field(default_factory=list)
    precision: str = "fp32"
    runtime: str = ""  # the runtime that produced the numbers (Session.runtime_label)
    rss_added_mb: float | None = None
    peak_rss_mb: float | None = None

    @property
    def available(self) -> bool:
        return self.encoder is not None and self.decoder is not None

    @property
    def label(self) -> str:
        """The registry's bench label of the column's backend ("" for a column that is not
        a registry backend, e.g. torch-opt)."""
        try:
            return get_backend(self.name.split(" ")[0]).bench_label  # "onnx int8", "coreml (mil)"
        except InputError:
            return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "available": self.available,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "artifacts": self.artifacts,
            "precision": self.precision,
            "runtime": self.runtime,
            "rss_added_mb": self.rss_added_mb,
            "peak_rss_mb": self.peak_rss_mb,
        }


def unavailable(name: str, reason: str, code: ExitCode) -> OpenedBackend:
    return OpenedBackend(name, reason=reason, exit_code=int(code))


def _artifacts(directory: Path, graph: str, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for suffix in suffixes:
        yield from sorted(
            p
            for p in directory.glob(f"*_{graph}*{suffix}")
            if not p.name.startswith(".") and "stability" not in p.name
        )


def open_artifact_backend(
    backend: str | Backend, directory: Path, precision: str = "fp32", threads: int | None = None
) -> OpenedBackend:
    """The encoder and IoU decoder of a backend in `directory` recorded at `precision`."""
    from edgesam_export.device.parity import candidate_precision

    entry = get_backend(backend)
    reason = availability(entry)
    if reason:
        return unavailable(entry.name, reason, ExitCode.BACKEND_UNAVAILABLE)
    encoders = list(_artifacts(directory, "encoder", entry.suffixes))
    decoders = list(_artifacts(directory, "decoder", entry.suffixes))
    if not encoders or not decoders:
        pattern = "|".join(entry.suffixes)
        return unavailable(
            entry.name,
            f"no *_encoder{pattern} and *_decoder{pattern} artifacts in {directory}"
            f" (export them with edgesam-export first)",
            ExitCode.BAD_INPUT,
        )
    kwargs: dict[str, Any] = {"threads": threads} if entry.threads_option and threads else {}
    chosen: dict[str, tuple[Path, Session]] = {}
    found: list[str] = []
    try:
        for graph, paths in (("encoder", encoders), ("decoder", decoders)):
            for path in paths:
                session = open_session(path, **kwargs)
                found.append(f"{path.name} ({candidate_precision(session)})")
                if candidate_precision(session) == precision:
                    chosen[graph] = (path, session)
                    break
    except EdgeSamExportError as exc:  # unreadable, or its runtime missing a piece
        return unavailable(entry.name, str(exc), exc.exit_code)
    if len(chosen) < 2:
        return unavailable(
            entry.name,
            f"no {precision} encoder and decoder among {', '.join(found)}",
            ExitCode.BAD_INPUT,
        )
    (enc_path, enc), (dec_path, dec) = chosen["encoder"], chosen["decoder"]
    # A backend with more than one runtime (CoreML: the real runtime on macOS, our MIL executor
    # elsewhere) names the one that produced the numbers in its column.
    label = enc.runtime_label
    name = f"{entry.name} ({label})" if label != enc.backend else entry.name
    return OpenedBackend(
        name,
        enc,
        dec,
        artifacts=[enc_path.name, dec_path.name],
        precision=precision,
        runtime=label,
    )

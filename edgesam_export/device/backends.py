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
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edgesam_export.device.errors import (
    BackendUnavailableError,
    EdgeSamExportError,
    ExitCode,
    InputError,
)

if TYPE_CHECKING:
    from edgesam_export.device.runtime.base import Session


@dataclass(frozen=True)
class ToleranceRow:
    """Per-check max |candidate - reference| and the minimum mask IoU for one precision.

    Every row says where its numbers come from: `measured` (the worst values seen and their
    source) or `estimate=True` (derived, never measured: reports label it as such).
    """

    limits: Mapping[str, float]
    min_mask_iou: float
    measured: str = ""
    estimate: bool = False

    def __post_init__(self) -> None:
        if bool(self.measured) == self.estimate:
            raise ValueError("a tolerance row is either measured (say where) or an estimate")
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))


def _row(
    limits: Mapping[str, float], iou: float, measured: str = "", estimate: bool = False
) -> ToleranceRow:
    return ToleranceRow(limits, iou, measured=measured, estimate=estimate)


# --- tolerance rows --------------------------------------------------------------------------
# Rows for a precision that apply to every backend unless its entry refines them. Float32 values
# are about 10x the largest differences measured between float32 and float64 runs of the
# official code (see the EdgeSAM fixture README), with room for onnxruntime's kernels.
FP32 = _row(
    {
        "image_embeddings": 5e-3,
        "decoder.masks": 1e-4,
        "decoder.scores": 5e-5,
        "decoder.stability_scores": 5e-4,
        "end_to_end.masks": 2e-2,
        "end_to_end.scores": 2e-3,
        "end_to_end.stability_scores": 5e-3,
        # official decoder contract: logits upscaled to the original size (a convex combination
        # of low-res logits: at most their error plus the resize's float32 rounding)
        "decoder.upscaled_masks": 5e-4,
        "end_to_end.upscaled_masks": 2e-2,
    },
    0.99,
    measured="about 10x the float32-vs-float64 differences of the official EdgeSAM code"
    " (tests/fixtures README)",
)
FP16 = _row(
    {
        "image_embeddings": 5e-2,
        "decoder.masks": 5e-2,
        "decoder.scores": 1e-2,
        "decoder.stability_scores": 2e-2,
        "end_to_end.masks": 2e-1,
        "end_to_end.scores": 5e-2,
        "end_to_end.stability_scores": 5e-2,
        "decoder.upscaled_masks": 5e-2,
        "end_to_end.upscaled_masks": 2e-1,
    },
    0.95,
    estimate=True,
)
# bfloat16 keeps 8 significant bits where float16 keeps 11: its rounding step is 8x float16's,
# so its row is the fp16 row times 8 (the PyTorch --precision bf16 column of edgesam-bench).
BF16 = _row({k: 8 * v for k, v in FP16.limits.items()}, 0.9, estimate=True)
PRECISION_ROWS: Mapping[str, ToleranceRow] = MappingProxyType(
    {"fp32": FP32, "fp16": FP16, "bf16": BF16}
)
# The checks a tolerance can be set for (a recipe may tighten any of them).
CHECKS: tuple[str, ...] = tuple(FP32.limits)

# fp16 rows for TensorRT engines and fp16 ONNX graphs, derived from the fp16 emulation
# (device.fp16: every intermediate rounded to fp16) of the calibrated synthetic EdgeSAM on the
# parity inputs: measured worst case x3, rounded up to one significant digit. The emulation
# rounds more often than onnxruntime's own fp16 graph (which computes unsupported kernels in
# fp32), so it bounds both from above.
FP16_EMULATED = _row(
    {
        "image_embeddings": 3e-1,
        "decoder.masks": 4e-2,
        "decoder.scores": 5e-3,
        "decoder.stability_scores": 2e-3,
        "end_to_end.masks": 2e-1,
        "end_to_end.scores": 5e-3,
        "end_to_end.stability_scores": 4e-3,
    },
    0.97,
    measured="fp16 emulation, calibrated synthetic EdgeSAM, bicubic and bilinear graphs:"
    " embeddings 0.097, decoder masks 0.010 / scores 1.4e-3 / stability 5.4e-4, end to end"
    " masks 0.064 / scores 1.6e-3 / stability 1.2e-3, mask IoU 0.9926 (docs/tensorrt.md)",
)
# Dynamic int8 (MatMul/Gemm weights int8, activations quantized per call), measured by parity
# of `edgesam-export onnx --quantize int8` on the calibrated synthetic EdgeSAM: worst case x3,
# rounded up to one significant digit.
ONNX_INT8 = _row(
    {
        "image_embeddings": 7e-1,
        "decoder.masks": 9e-1,
        "decoder.scores": 8e-2,
        "decoder.stability_scores": 8e-2,  # not measured: the scores' value
        "end_to_end.masks": 1.0,
        "end_to_end.scores": 9e-2,
        "end_to_end.stability_scores": 9e-2,  # not measured: the scores' value
    },
    0.85,
    measured="onnx --quantize int8, calibrated synthetic EdgeSAM: embeddings 0.223, decoder"
    " masks 0.295 / scores 0.0243, end to end masks 0.320 / scores 0.0295, IoU 0.949"
    " (docs/tensorrt.md); stability rows not measured (the scores' value)",
)
# CoreML fp16 / int8-weight rows: measured with the MIL executor on saved packages of the
# calibrated synthetic weights, on the parity test image and prompt cases, then set to about
# 2-3x the worst value seen. fp16: every op rounded to fp16, as the program declares.
COREML_FP16 = _row(
    {
        "image_embeddings": 2e-1,  # measured 9.2e-2 (relative to max |ref| 1.8e-2)
        "decoder.masks": 2e-2,  # 7.8e-3
        "decoder.scores": 2e-3,  # 9.2e-4
        "decoder.stability_scores": 2e-2,  # the fp16 row's
        "end_to_end.masks": 1.5e-1,  # 5.5e-2
        "end_to_end.scores": 5e-3,  # 1.5e-3
        "end_to_end.stability_scores": 5e-2,  # the fp16 row's
    },
    0.97,
    measured="MIL executor, calibrated synthetic EdgeSAM: embeddings 9.2e-2 (cosine 0.99994),"
    " decoder masks 7.8e-3 / scores 9.2e-4, end to end masks 5.5e-2 / scores 1.5e-3, IoU"
    " 0.9938 (docs/coreml.md); stability rows are the fp16 row's",
)
# int8: weight-only linear symmetric per-channel quantization (coremltools.optimize), fp32 compute.
COREML_INT8 = _row(
    {
        "image_embeddings": 1.5,  # measured 0.66 (relative 0.13, cosine 0.9969)
        "decoder.masks": 3e-1,  # 0.12
        "decoder.scores": 5e-2,  # 1.6e-2
        "decoder.stability_scores": 1e-1,  # not measured: twice the score row
        "end_to_end.masks": 1.5,  # 0.62
        "end_to_end.scores": 7e-2,  # 2.3e-2
        "end_to_end.stability_scores": 2e-1,  # not measured: twice the score row
    },
    0.9,
    measured="MIL executor, calibrated synthetic EdgeSAM: embeddings 0.66 (cosine 0.9969),"
    " decoder masks 0.12 / scores 1.6e-2, end to end masks 0.62 / scores 2.3e-2, IoU 0.935"
    " (docs/coreml.md); stability rows not measured (twice the score row)",
)

# ExecuTorch fp32 (.pte, XNNPACK delegate on executorch.runtime), measured by parity of
# `edgesam-export executorch` on the calibrated synthetic EdgeSAM (tests/test_executorch.py's
# build): worst case x10 (the float32 margin the FP32 row keeps), rounded up to one significant
# digit. The end-to-end score row keeps at least the decoder's. Stability rows: FP32's (the
# stability decoder was not measured).
EXECUTORCH_FP32 = _row(
    {
        "image_embeddings": 8e-4,  # measured 7.2e-5 (relative 1.5e-5, cosine 1 - 4e-11)
        "decoder.masks": 8e-5,  # 7.2e-6
        "decoder.scores": 2e-5,  # 1.0e-6
        "decoder.stability_scores": FP32.limits["decoder.stability_scores"],
        "end_to_end.masks": 5e-4,  # 5.0e-5
        "end_to_end.scores": 2e-5,  # 8.3e-7
        "end_to_end.stability_scores": FP32.limits["end_to_end.stability_scores"],
    },
    0.99,  # the FP32 row's; measured minimum IoU 0.99998
    measured="executorch.runtime, calibrated synthetic EdgeSAM: embeddings 7.2e-5, decoder masks"
    " 7.2e-6 / scores 1.0e-6, end to end masks 5.0e-5 / scores 8.3e-7, IoU 0.99998"
    " (docs/executorch.md); stability rows are FP32's (not measured)",
)

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
    tolerances: Mapping[str, ToleranceRow] = field(default_factory=dict)  # precision -> row
    bench_label: str = ""  # how edgesam-bench names its column in the rendered table
    recipe_options: str = ""  # "module:Class" of its recipe target's options; "" = not a kind
    packages: tuple[str, ...] = ()  # libraries whose versions a build records for it
    threads_option: bool = False  # whether its session takes threads=

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
        tolerances={"fp32": FP32, "fp16": FP16, "bf16": BF16},
        bench_label="PyTorch",
    ),
    Backend(
        name="onnx",
        suffixes=(".onnx",),
        exporter="edgesam_export.host.targets.onnx:TARGET",
        session="edgesam_export.device.runtime.onnxruntime:OnnxRuntimeSession",
        requires="onnxruntime",
        install_hint=_INSTALL.format("onnxruntime"),
        tolerances={"fp32": FP32, "fp16": FP16_EMULATED, "int8": ONNX_INT8},
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
        tolerances={"fp32": FP32, "fp16": COREML_FP16, "int8": COREML_INT8},
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
        tolerances={"fp32": EXECUTORCH_FP32},
        bench_label="ExecuTorch",
        recipe_options="edgesam_export.host.config:ExecuTorchOptions",
        packages=("executorch",),
        threads_option=True,
    ),
    Backend(
        name="tensorrt",
        aliases=("trt",),
        suffixes=(".engine",),
        exporter="edgesam_export.host.targets.tensorrt:TARGET",
        session="edgesam_export.device.runtime.tensorrt:TensorRTSession",
        requires="tensorrt",
        install_hint=_INSTALL.format("tensorrt")
        + " on a machine with an NVIDIA GPU and CUDA (on Jetson: JetPack's python3-libnvinfer)",
        tolerances={"fp32": FP32, "fp16": FP16_EMULATED},
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


def availability(backend: str | Backend) -> str:
    """Why a backend cannot run here, in one line; "" when it can."""
    entry = get_backend(backend)
    if not entry.requires:
        return ""
    try:
        importlib.import_module(entry.requires)
    except Exception:  # ImportError, or a native library that fails to load
        return (
            f"the {entry.name} backend is not available here: {entry.requires} does not import;"
            f" it needs {entry.install_hint}"
        )
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
    precision's own row. `family` is accepted for rows per family group (none differ yet).
    An unknown precision is an error, never a silent fp32 verdict."""
    del family
    entry = get_backend(backend)
    row = entry.tolerances.get(precision) or PRECISION_ROWS.get(precision)
    if row is None:
        known = sorted({*entry.tolerances, *PRECISION_ROWS})
        raise InputError(
            f"no parity tolerances for precision {precision!r} ({entry.name});"
            f" known: {', '.join(known)}"
        )
    return row


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
            return get_backend(self.name.split(" (")[0]).bench_label
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

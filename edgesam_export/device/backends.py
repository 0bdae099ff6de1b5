"""The backends `edgesam-bench` knows, and how each is opened: one small table.

Device side. An artifact backend is a file suffix that `runtime.open_session` dispatches on
(`runtime._OPENERS`): when the CoreML (`.mlpackage`) or TensorRT (`.engine`) session module is
installed it plugs in here with no change; until then the backend is listed as unavailable with
the reason. The PyTorch backends (the reference as loaded, and the same graph rewrites the ONNX
export traces) are host side and opened by the caller only where torch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesam_export.device.errors import (
    ArtifactError,
    BackendUnavailableError,
    EdgeSamExportError,
    ExitCode,
)
from edgesam_export.device.parity import candidate_precision
from edgesam_export.device.runtime import Session, artifact_suffixes, open_session


@dataclass(frozen=True)
class BackendSpec:
    name: str  # the --backend value
    suffix: str  # artifact suffix ("" for torch)
    needs: str  # what to install, for the "unavailable" reason
    threads_option: bool = False  # whether open_session takes threads=
    module: str = ""  # the Python package its runtime needs ("" = none beyond the core)


BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", "", "torch (pip install 'edgesam-export[export]')"),
    "onnx": BackendSpec(
        "onnx", ".onnx", "onnxruntime (pip install 'edgesam-export[onnxruntime]')", True
    ),
    "coreml": BackendSpec(
        "coreml",
        ".mlpackage",
        "the CoreML runtime session (pip install 'edgesam-export[coreml]'; coremltools runs"
        " models on macOS, the MIL executor elsewhere)",
        module="coremltools",
    ),
    "trt": BackendSpec(
        "trt",
        ".engine",
        "the TensorRT runtime session (pip install 'edgesam-export[tensorrt]' on a machine"
        " with an NVIDIA GPU and CUDA)",
        module="tensorrt",
    ),
}


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
    rss_added_mb: float | None = None
    peak_rss_mb: float | None = None

    @property
    def available(self) -> bool:
        return self.encoder is not None and self.decoder is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "artifacts": self.artifacts,
            "precision": self.precision,
            "rss_added_mb": self.rss_added_mb,
            "peak_rss_mb": self.peak_rss_mb,
        }


def unavailable(name: str, reason: str, code: ExitCode) -> OpenedBackend:
    return OpenedBackend(name, reason=reason, exit_code=int(code))


def _artifacts(directory: Path, graph: str, suffix: str) -> list[Path]:
    found = sorted(
        p
        for p in directory.glob(f"*_{graph}*{suffix}")
        if not p.name.startswith(".") and "stability" not in p.name
    )
    return found


def open_artifact_backend(
    spec: BackendSpec, directory: Path, precision: str = "fp32", threads: int | None = None
) -> OpenedBackend:
    """The encoder and IoU decoder of `spec` in `directory` recorded at `precision`."""
    if spec.suffix not in artifact_suffixes():
        return unavailable(
            spec.name,
            f"no runtime for {spec.suffix} artifacts in this installation: needs {spec.needs}",
            ExitCode.BACKEND_UNAVAILABLE,
        )
    encoders = _artifacts(directory, "encoder", spec.suffix)
    decoders = _artifacts(directory, "decoder", spec.suffix)
    if not encoders or not decoders:
        return unavailable(
            spec.name,
            f"no *_encoder{spec.suffix} and *_decoder{spec.suffix} artifacts in {directory}"
            f" (export them with edgesam-export first)",
            ExitCode.BAD_INPUT,
        )
    kwargs: dict[str, Any] = {"threads": threads} if spec.threads_option and threads else {}
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
    except (BackendUnavailableError, ArtifactError) as exc:
        return unavailable(spec.name, str(exc), exc.exit_code)
    except EdgeSamExportError as exc:
        return unavailable(spec.name, str(exc), exc.exit_code)
    if len(chosen) < 2:
        return unavailable(
            spec.name,
            f"no {precision} encoder and decoder among {', '.join(found)}",
            ExitCode.BAD_INPUT,
        )
    (enc_path, enc), (dec_path, dec) = chosen["encoder"], chosen["decoder"]
    # A backend with more than one runtime (CoreML: the real runtime on macOS, our MIL executor
    # elsewhere) names the one that produced the numbers in its column.
    label = getattr(enc, "runtime_label", None)
    name = f"{spec.name} ({label})" if label else spec.name
    return OpenedBackend(
        name, enc, dec, artifacts=[enc_path.name, dec_path.name], precision=precision
    )

"""The host half of `edgesam-bench`: PyTorch columns, the PyTorch reference, a fresh export.

`bench` is the one call the command makes. It checks what can be checked before any work (a
CUDA device for `--device cuda`, the runtime of a single artifact backend), loads the PyTorch
model where torch is installed, exports ONNX artifacts into a temporary folder when no folder
was given, and hands both to `device.benchmark.run_bench`. Torch is imported only inside the
functions that need it, so this module imports on a device without torch, where the run is the
device half alone (artifact columns, judged against the reference outputs in the folder).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgesam_export.device.backends import OpenedBackend, get_backend, require
from edgesam_export.device.benchmark import (
    TORCH,
    BenchResult,
    BenchSettings,
    Progress,
    Reference,
    recorded_metadata,
    run_bench,
)
from edgesam_export.device.errors import BackendUnavailableError
from edgesam_export.host.config import ModelOptions
from edgesam_export.host.pipeline import torch_available

#: Column name of the PyTorch graphs with the export's rewrites.
TORCH_OPT = "torch-opt"


class TorchColumns:
    """`device.benchmark.TorchSide` over a loaded PyTorch model (or the reason there is none)."""

    def __init__(self, loaded: Any = None, reason: str = "") -> None:
        self.loaded = loaded
        self.reason = reason
        self.synthetic = bool(loaded is not None and loaded.synthetic)

    @classmethod
    def load(
        cls, settings: BenchSettings, options: ModelOptions | None, progress: Progress
    ) -> TorchColumns:
        """Load the model the run compares against, from `options` or the folder's metadata."""
        if not torch_available():
            return cls(
                reason=f"torch is not installed here: needs {get_backend(TORCH).install_hint}"
            )
        folder = settings.directory
        if options is None:
            assert folder is not None, "the CLI passes ModelOptions when there is no folder"
            metas = recorded_metadata(folder)
            if not metas:
                return cls(
                    reason=f"no artifact metadata in {folder} to rebuild the PyTorch model from"
                )
            if settings.checkpoint is None and not all(
                m.get("weights", "").startswith("synthetic") for m in metas
            ):
                return cls(
                    reason="the artifacts came from a checkpoint: pass it as CKPT to time PyTorch"
                )
            from edgesam_export.host.pipeline import model_options_from_metadata

            options = model_options_from_metadata(settings.checkpoint, metas)
        from edgesam_export.host.models import load_model

        source = options.checkpoint or f"synthetic weights (seed {options.seed})"
        progress(f"loading {options.model} from {source}")
        return cls(
            load_model(
                options.checkpoint,
                model=options.model,
                upsample_mode=options.upsample,
                seed=options.seed,
                synthetic=options.synthetic,
            )
        )

    def columns(self, settings: BenchSettings) -> list[tuple[str, Callable[[], OpenedBackend]]]:
        """PyTorch as loaded, and with the export's graph rewrites (torch-opt)."""
        from edgesam_export.host.reference import CudaGraphSession, torch_sessions

        def opener(optimized: bool, name: str) -> Callable[[], OpenedBackend]:
            def open_one() -> OpenedBackend:
                enc: Any
                dec: Any
                enc, dec = torch_sessions(
                    self.loaded,
                    optimized=optimized,
                    device=settings.device,
                    precision=settings.precision,
                )
                if settings.cuda_graphs:
                    enc, dec = CudaGraphSession(enc), CudaGraphSession(dec)
                return OpenedBackend(
                    name, enc, dec, precision=settings.precision, runtime=enc.runtime_label
                )

            return open_one

        return [(TORCH, opener(False, TORCH)), (TORCH_OPT, opener(True, TORCH_OPT))]

    def reference(self) -> Reference | None:
        if self.loaded is None:
            return None
        from edgesam_export.device.judge import SessionReference
        from edgesam_export.host.reference import reference_sessions

        source = SessionReference(*reference_sessions(self.loaded))
        return Reference("torch", "torch (as loaded, fp32, cpu)", source)


def require_cuda() -> None:
    """`--device cuda` needs torch with CUDA and a GPU: say so before loading anything."""
    if not torch_available():
        raise BackendUnavailableError(
            f"--device cuda runs the PyTorch columns: needs {get_backend(TORCH).install_hint}"
        )
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device cuda needs a CUDA build of torch and an NVIDIA GPU; this torch"
            f" ({torch.__version__}) sees none. Use --device cpu."
        )


@contextlib.contextmanager
def _artifact_folder(
    settings: BenchSettings, options: ModelOptions | None, progress: Progress
) -> Iterator[Path | None]:
    """The folder given, or ONNX artifacts exported into a temporary one (needs torch)."""
    runnable = [b for b in settings.backends if get_backend(b).suffixes]
    if settings.directory is not None or not runnable or not torch_available():
        yield settings.directory
        return
    assert options is not None, "the CLI passes ModelOptions when there is no folder"
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts

    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as tmp:
        export_artifacts(options, "onnx", OnnxOptions(output=Path(tmp)), progress)
        yield Path(tmp)


def bench(settings: BenchSettings, options: ModelOptions | None, progress: Progress) -> BenchResult:
    """One `edgesam-bench` run: checks first, then the PyTorch side, then the device run.

    `options` says which model and weights to load and export when there is no artifact folder
    (None with a folder: the artifacts' metadata says).
    """
    if settings.device == "cuda" and TORCH in settings.backends:
        require_cuda()
    if settings.single and get_backend(settings.backends[0]).suffixes:
        require(settings.backends[0])
    torch_side = TorchColumns.load(settings, options, progress)  # columns and/or the reference
    if torch_side.loaded is not None:
        from edgesam_export.device.bench import set_threads

        set_threads(settings.threads)
    with _artifact_folder(settings, options, progress) as folder:
        return run_bench(settings, folder, progress, torch_side)

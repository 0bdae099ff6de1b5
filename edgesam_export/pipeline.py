"""The library behind the CLI: export artifacts, then verify them against PyTorch.

Typed options in, artifacts and reports out; no printing here (callers pass a progress callback).
Importable without torch: exporting and the PyTorch reference import the host side on use, and
`verify_artifacts` falls back to the golden sidecar (`golden.py`) where torch is absent.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .artifacts import (
    MANIFEST_NAME,
    Artifact,
    file_sha256,
    write_json_atomic,
    write_manifest,
)
from .config import ExportOptions, ModelOptions
from .errors import ArtifactError, BackendUnavailableError, InputError
from .parity import ParityReport, check
from .runtime import Session, artifact_suffixes, open_session

if TYPE_CHECKING:  # host side, imported on use
    from .models import LoadedModel

ReferenceKind = Literal["auto", "torch", "golden"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def export_artifacts(
    model: ModelOptions, target: str, options: ExportOptions, progress: Progress = _quiet
) -> tuple[LoadedModel, list[Artifact]]:
    """Load the model once, export each requested graph with `target`, write the golden sidecar."""
    from .models import load_model
    from .targets import artifact_path, get_target

    backend = get_target(target)
    if options.output.exists() and not options.output.is_dir():
        raise InputError(f"--output must be a directory, but {options.output} is a file")
    synthetic = f"{model.synthetic} synthetic weights (seed {model.seed})"
    progress(f"loading {model.model} from {model.checkpoint or synthetic}")
    loaded = load_model(
        model.checkpoint,
        model=model.model,
        upsample_mode=model.upsample,
        seed=model.seed,
        synthetic=model.synthetic,
    )
    artifacts = []
    for graph in options.graphs:
        progress(f"exporting the {graph} to {target}")
        artifacts.append(backend.export(loaded, graph, options))
    progress("writing the golden reference outputs (parity without torch)")
    stem = artifact_path(loaded, "encoder", options, "").name.removesuffix("_encoder")
    golden = write_reference_outputs(loaded, options.output, stem)
    write_manifest(
        options.output,
        artifacts,
        model=loaded.spec.name,
        weights=artifacts[0].metadata["weights"] if artifacts else "",
        golden={"path": golden.name, "sha256": file_sha256(golden)},
    )
    return loaded, artifacts


def write_reference_outputs(loaded: LoadedModel, out_dir: Path, stem: str) -> Path:
    """`<stem>_reference.npz`: the PyTorch reference's outputs on the parity inputs."""
    import torch

    from .golden import sidecar_path, write_golden
    from .reference import reference_sessions

    enc, decs = reference_sessions(loaded)
    return write_golden(
        sidecar_path(out_dir, stem),
        enc,
        decs,
        reference=f"torch {torch.__version__} cpu float32",
    )


def torch_available() -> bool:
    """Whether torch can be imported here (checked without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class OpenedArtifacts:
    encoders: list[tuple[str, Session]]
    decoders: list[tuple[str, Session]]
    errors: list[dict[str, str]]


def open_artifacts(artifact_dir: Path) -> OpenedArtifacts:
    """Open every artifact in a directory; unreadable ones become errors, not exceptions."""
    if not artifact_dir.is_dir():
        raise InputError(f"artifact directory not found: {artifact_dir}")
    paths = sorted(
        p
        for p in artifact_dir.iterdir()
        if p.suffix in artifact_suffixes() and not p.name.startswith(".")
    )
    if not paths:
        raise InputError(f"no artifacts ({', '.join(artifact_suffixes())}) in {artifact_dir}")
    opened = OpenedArtifacts([], [], [])
    for path in paths:
        try:
            session = open_session(path)
        except ArtifactError as exc:
            opened.errors.append({"artifact": path.name, "error": str(exc)})
            continue
        graph = session.metadata.get("graph")
        if graph == "encoder":
            opened.encoders.append((path.name, session))
        elif graph == "decoder":
            opened.decoders.append((path.name, session))
        else:
            opened.errors.append(
                {
                    "artifact": path.name,
                    "error": "no edgesam-export metadata (graph=encoder|decoder)",
                }
            )
    return opened


def _model_options(checkpoint: Path | None, sessions: list[Session]) -> ModelOptions:
    """Model, weights and upsample mode as recorded in the artifacts' metadata."""
    return model_options_from_metadata(checkpoint, [s.metadata for s in sessions])


def model_options_from_metadata(
    checkpoint: Path | None, metas: list[dict[str, str]]
) -> ModelOptions:
    """The `ModelOptions` that rebuild the PyTorch model some artifacts were exported from."""
    models = {m.get("model") for m in metas}
    if len(models) != 1 or None in models:
        raise InputError(f"artifacts disagree on, or lack, the model: {sorted(map(str, models))}")
    modes = {m["upsample_mode"] for m in metas if m.get("graph") == "encoder"}
    if len(modes) > 1:
        raise InputError(f"encoder artifacts disagree on the upsample mode: {sorted(modes)}")
    upsample = next(iter(modes), "none")
    seed = 0
    kinds = {m.get("weights", "") for m in metas}
    if checkpoint is None:
        sources = {m.get("weights_source", "") for m in metas}
        if len(kinds) != 1 or not next(iter(kinds)).startswith("synthetic") or len(sources) != 1:
            raise InputError("these artifacts were exported from a checkpoint: pass it as CKPT")
        source = sources.pop()
        seed = int(source.split("seed=")[1].rstrip(")")) if "seed=" in source else 0
    else:
        if all(k.startswith("synthetic") for k in kinds):
            raise InputError(
                f"these artifacts were exported from synthetic weights, not from {checkpoint}:"
                " run parity with ARTIFACT_DIR only"
            )
        digests = {m.get("checkpoint_sha256") for m in metas} - {"", None}
        if checkpoint.is_file() and digests and file_sha256(checkpoint) not in digests:
            raise InputError(
                f"{checkpoint} is not the checkpoint these artifacts were exported from"
                " (sha256 differs from their metadata)"
            )
    return ModelOptions(
        model=models.pop(),
        checkpoint=checkpoint,
        seed=seed,
        upsample=None if upsample == "none" else upsample,
        synthetic="calibrated" if kinds == {"synthetic-calibrated"} else "random",
    )  # type: ignore[arg-type]


def resolve_reference(reference: ReferenceKind) -> Literal["torch", "golden"]:
    """`auto` is torch where it is installed, else the golden sidecar."""
    if reference == "auto":
        return "torch" if torch_available() else "golden"
    if reference == "torch" and not torch_available():
        raise BackendUnavailableError(
            "the PyTorch reference needs torch (pip install 'edgesam-export[export]'); without"
            " it, parity compares with the golden outputs shipped with the artifacts"
            " (--reference golden)"
        )
    return reference


def _check_golden_checkpoint(checkpoint: Path, golden_meta: dict[str, Any]) -> None:
    if not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    recorded = golden_meta.get("checkpoint_sha256", "")
    if not recorded:
        raise InputError(
            f"these artifacts were exported from synthetic weights, not from {checkpoint}:"
            " run parity with ARTIFACT_DIR only"
        )
    if file_sha256(checkpoint) != recorded:
        raise InputError(
            f"{checkpoint} is not the checkpoint these artifacts were exported from"
            " (sha256 differs from their metadata)"
        )


def verify_artifacts(
    checkpoint: Path | None,
    artifact_dir: Path,
    progress: Progress = _quiet,
    loaded: LoadedModel | None = None,
    reference: ReferenceKind = "auto",
    record: dict[str, Any] | None = None,
) -> ParityReport:
    """Parity of every artifact in `artifact_dir` against the PyTorch graphs of the checkpoint,
    or, without torch (or with reference="golden"), against the golden sidecar in the folder.

    `record` (optional) receives the raw outputs (see `parity.check`); with the golden
    reference, `record["golden"]` is the `Golden` read.
    """
    kind = "torch" if loaded is not None else resolve_reference(reference)
    progress(f"opening artifacts in {artifact_dir}")
    opened = open_artifacts(artifact_dir)
    sessions = [s for _, s in opened.encoders + opened.decoders]
    report = ParityReport(errors=list(opened.errors))
    if sessions and kind == "golden":
        from .golden import check_golden, find_golden

        golden = find_golden(artifact_dir, sessions[0].metadata)
        if checkpoint is not None:
            _check_golden_checkpoint(checkpoint, golden.meta)
        progress(f"running {len(sessions)} artifact(s) against {golden.path.name}")
        check_golden(golden, opened.encoders, opened.decoders, report=report, record=record)
        if record is not None:
            record["golden"] = golden
    elif sessions:
        from .models import load_model
        from .reference import reference_sessions

        if loaded is None:
            opts = _model_options(checkpoint, sessions)
            progress(f"loading the PyTorch reference ({opts.checkpoint or 'synthetic weights'})")
            loaded = load_model(
                opts.checkpoint,
                model=opts.model,
                upsample_mode=opts.upsample,
                seed=opts.seed,
                synthetic=opts.synthetic,
            )
        ref_enc, ref_decs = reference_sessions(loaded)
        progress(f"running {len(sessions)} artifact(s) and the reference on the same inputs")
        check(ref_enc, ref_decs, opened.encoders, opened.decoders, report=report, record=record)
    payload = report.to_json()
    manifest = artifact_dir / MANIFEST_NAME
    if manifest.exists():
        try:
            current = json.loads(manifest.read_text())
            current["parity"] = {
                "passed": report.passed,
                "summary": payload["summary"],
                "errors": report.errors,
            }
            write_json_atomic(manifest, current)
        except (json.JSONDecodeError, OSError):
            pass
    return report

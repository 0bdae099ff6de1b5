"""The library behind the CLI: export artifacts, then verify them against PyTorch.

Typed options in, artifacts and reports out; no printing here (callers pass a progress callback).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .artifacts import (
    MANIFEST_NAME,
    Artifact,
    file_sha256,
    write_json_atomic,
    write_manifest,
)
from .config import ExportOptions, ModelOptions
from .errors import ArtifactError, InputError
from .models import LoadedModel, load_model
from .parity import ParityReport, check
from .reference import reference_sessions
from .runtime import Session, artifact_suffixes, open_session
from .targets import get_target

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def export_artifacts(
    model: ModelOptions, target: str, options: ExportOptions, progress: Progress = _quiet
) -> tuple[LoadedModel, list[Artifact]]:
    """Load the model once and export each requested graph with `target`."""
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
        strict=model.strict,
    )
    artifacts = []
    for graph in options.graphs:
        progress(f"exporting the {graph} to {target}")
        artifacts.append(backend.export(loaded, graph, options))
    write_manifest(
        options.output,
        artifacts,
        model=loaded.spec.name,
        weights=artifacts[0].metadata["weights"] if artifacts else "",
    )
    return loaded, artifacts


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
    metas = [s.metadata for s in sessions]
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


def verify_artifacts(
    checkpoint: Path | None,
    artifact_dir: Path,
    progress: Progress = _quiet,
    loaded: LoadedModel | None = None,
) -> ParityReport:
    """Parity of every artifact in `artifact_dir` against the PyTorch graphs of the checkpoint."""
    progress(f"opening artifacts in {artifact_dir}")
    opened = open_artifacts(artifact_dir)
    sessions = [s for _, s in opened.encoders + opened.decoders]
    report = ParityReport(errors=list(opened.errors))
    if sessions:
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
        check(ref_enc, ref_decs, opened.encoders, opened.decoders, report=report)
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

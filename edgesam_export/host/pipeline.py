"""The library behind the CLI: export artifacts, then verify them against PyTorch.

Typed options in, artifacts and reports out; no printing here (callers pass a progress callback).
Importable without torch: exporting and the PyTorch reference import the host side on use, and
`verify_artifacts` falls back to the reference outputs shipped beside the artifacts
(`device/reference_outputs.py`) where torch or the checkpoint is absent.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from edgesam_export.device import publish
from edgesam_export.device.artifacts import (
    Artifact,
    file_sha256,
    record_parity,
    write_manifest,
)
from edgesam_export.device.backends import artifact_suffixes, get_backend, open_session
from edgesam_export.device.contract import VIDEO_GRAPHS
from edgesam_export.device.errors import (
    ArtifactError,
    BackendUnavailableError,
    EdgeSamExportError,
    InputError,
)
from edgesam_export.device.judge import ParityReport, Reference, SessionReference, judge
from edgesam_export.device.models import ModelSpec
from edgesam_export.device.runtime import Session
from edgesam_export.host.config import ExportOptions, GraphKind, ModelOptions
from edgesam_export.host.metadata import base_metadata

if TYPE_CHECKING:  # host side, imported on use
    from edgesam_export.host.models import LoadedModel

ReferenceKind = Literal["auto", "torch", "outputs"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class ExportRun:
    """One export: the model, its artifacts (at their published paths), parity, and whether it
    was published (`False`: it failed over a good publication, which stands)."""

    loaded: LoadedModel
    artifacts: list[Artifact]
    described: list[dict[str, Any]]  # Artifact.to_json() + size, taken before publishing
    report: ParityReport | None
    published: bool
    output: Path


def export_artifacts(
    model: ModelOptions, target: str, options: ExportOptions, progress: Progress = _quiet
) -> tuple[LoadedModel, list[Artifact]]:
    """`export_and_check` without parity: (model, published artifacts)."""
    run = export_and_check(model, target, options, progress)
    return run.loaded, run.artifacts


def export_and_check(
    model: ModelOptions,
    target: str,
    options: ExportOptions,
    progress: Progress = _quiet,
    *,
    verify: bool = False,
    wait: float = 0.0,
) -> ExportRun:
    """The export commands' one path: lock the output, export each requested graph with
    `target` into a staging folder, write the reference outputs and the manifest there, run
    parity (`verify`) on the staged bytes, then publish them together (`device.publish`).

    The output is checked and locked before the model is loaded; a run that fails (an error,
    or parity) never replaces a good publication there, and says so.
    """
    from edgesam_export.device.backends import require
    from edgesam_export.host.targets import artifact_stem, get_target

    backend = get_target(target)
    require(target)  # a backend that cannot run here says what to install, before any load
    output = options.output
    with publish.locked(output, wait=wait, progress=progress), publish.staging(output) as stage:
        try:
            loaded = _load(model, progress)
            staged = options.model_copy(update={"output": stage.path})
            artifacts = []
            for graph in graphs_to_export(loaded.spec, backend.name, options):
                progress(f"exporting the {graph} to {target}")
                artifacts.append(backend.export(loaded, graph, staged))
            progress("writing the reference outputs (parity without torch)")
            outputs = write_reference_outputs(loaded, stage.path, artifact_stem(loaded))
            write_manifest(
                stage.path,
                artifacts,
                model=loaded.spec.name,
                weights=artifacts[0].metadata["weights"] if artifacts else "",
                reference_outputs={"path": outputs.name, "sha256": file_sha256(outputs)},
            )
            report = None
            if verify:
                only = [a.path for a in artifacts]
                report = verify_artifacts(
                    model.checkpoint, stage.path, progress, loaded=loaded, only=only
                )
        except EdgeSamExportError as exc:
            exc.args = (f"{exc}; nothing was published, {output} is as it was",)
            raise
        described = [
            a.to_json() | {"size": _size(a.path), "path": str(output / a.path.name)}
            for a in artifacts
        ]
        names = [p.name for a in artifacts for p in (a.path, *a.data_files)] + [outputs.name]
        failed = report is not None and not report.passed
        published = stage.publish(names, failed=failed)
        if published:
            progress(f"published {len(names)} file(s) and the manifest in {output}")
            artifacts = [_moved(a, output) for a in artifacts]
        else:
            progress(f"not published: parity failed, the previous build in {output} stands")
    return ExportRun(loaded, artifacts, described, report, published, output)


def graphs_to_export(spec: ModelSpec, target: str, options: ExportOptions) -> tuple[GraphKind, ...]:
    """The graphs chosen (`graphs` given); by default all of the model's graphs on the targets
    verified for it (EdgeTAM on ONNX and CoreML: the image and the video graphs; a backend
    whose registry entry says `video_graphs=False` gets the image graphs), else the image
    graphs."""
    if "graphs" in options.model_fields_set or target not in spec.verified_targets:
        return options.graphs
    video = get_backend(target).video_graphs
    return tuple(cast(GraphKind, g) for g in spec.graphs if video or g not in VIDEO_GRAPHS)


def _load(model: ModelOptions, progress: Progress) -> LoadedModel:
    from edgesam_export.host.models import load_model

    synthetic = f"{model.synthetic} synthetic weights (seed {model.seed})"
    progress(f"loading {model.model} from {model.checkpoint or synthetic}")
    return load_model(
        model.checkpoint,
        model=model.model,
        upsample_mode=model.upsample,
        seed=model.seed,
        synthetic=model.synthetic,
        strict=model.strict,
    )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _moved(artifact: Artifact, output: Path) -> Artifact:
    return replace(
        artifact,
        path=output / artifact.path.name,
        data_files=[output / f.name for f in artifact.data_files],
    )


def write_reference_outputs(loaded: LoadedModel, out_dir: Path, stem: str) -> Path:
    """`<stem>_reference.npz`: the PyTorch reference's outputs on the parity inputs."""
    import torch

    from edgesam_export.device.reference_outputs import (
        reference_outputs_path,
        save_reference_outputs,
    )
    from edgesam_export.host.reference import reference_sessions

    enc, decs = reference_sessions(loaded)
    return save_reference_outputs(
        reference_outputs_path(out_dir, stem),
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
    video: list[tuple[str, Session]] = field(default_factory=list)  # EdgeTAM's tracker graphs


def open_artifacts(artifact_dir: Path, only: list[Path] | None = None) -> OpenedArtifacts:
    """Open every artifact in a directory (or just `only`); unreadable ones become errors."""
    if not artifact_dir.is_dir():
        raise InputError(f"artifact directory not found: {artifact_dir}")
    paths = sorted(
        p
        for p in artifact_dir.iterdir()
        if p.suffix in artifact_suffixes() and not p.name.startswith(".")
    )
    if only is not None:
        wanted = {p.name for p in only}
        paths = [p for p in paths if p.name in wanted]
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
        elif graph in VIDEO_GRAPHS:  # the tracker's graphs: judged one by one (judge_video)
            opened.video.append((path.name, session))
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
            raise InputError(
                "these artifacts were exported from a checkpoint: pass it (parity CKPT"
                " ARTIFACT_DIR), or use the reference outputs shipped with them"
                " (--reference outputs)"
            )
        source = sources.pop()
        seed = int(source.split("seed=")[1].rstrip(")")) if "seed=" in source else 0
    else:
        if not checkpoint.is_file():
            raise InputError(
                f"checkpoint not found: {checkpoint}; pass the checkpoint the artifacts were"
                " exported from, or ARTIFACT_DIR alone to use their reference outputs"
            )
        if all(k.startswith("synthetic") for k in kinds):
            raise InputError(
                f"these artifacts were exported from synthetic weights, not from {checkpoint}:"
                " pass ARTIFACT_DIR alone (no CKPT)"
            )
        digests = {m.get("checkpoint_sha256") for m in metas} - {"", None}
        if digests and file_sha256(checkpoint) not in digests:
            raise InputError(
                f"{checkpoint} is not the checkpoint these artifacts were exported from"
                " (sha256 differs from their metadata); pass that checkpoint, or ARTIFACT_DIR"
                " alone to use their reference outputs"
            )
    return ModelOptions(
        model=models.pop(),
        checkpoint=checkpoint,
        seed=seed,
        upsample=None if upsample == "none" else upsample,
        synthetic="calibrated" if kinds == {"synthetic-calibrated"} else "untrained",
    )  # type: ignore[arg-type]


# What makes two artifacts comparable with one reference and pairable end to end.
_GROUP_KEYS = ("model", "weights", "weights_source", "checkpoint_sha256", "upsample_mode")


def _group_key(session: Session) -> tuple[str, ...]:
    """(backend, recorded source): artifacts are only paired and judged within one group."""
    gelu = session.metadata.get("gelu_approximate", "false")
    return (session.backend, *(session.metadata.get(k, "") for k in _GROUP_KEYS), gelu)


def _matches(loaded: LoadedModel, session: Session) -> bool:
    meta = base_metadata(loaded, session.graph, use_stability_score=False)
    return all(session.metadata.get(k, "") == meta[k] for k in _GROUP_KEYS)


def resolve_reference(reference: ReferenceKind) -> Literal["torch", "outputs"]:
    """`auto` is torch where it is installed, else the reference outputs shipped beside the
    artifacts (`verify_artifacts` also falls back to them when no checkpoint is given)."""
    if reference == "auto":
        return "torch" if torch_available() else "outputs"
    if reference == "torch" and not torch_available():
        raise BackendUnavailableError(
            "the PyTorch reference needs torch (pip install 'edgesam-export[export]'); without"
            " it, parity compares with the reference outputs shipped with the artifacts"
            " (--reference outputs)"
        )
    return reference


def _check_outputs_checkpoint(checkpoint: Path, meta: dict[str, Any]) -> None:
    """A CKPT given beside reference outputs must be the one they were computed from."""
    recorded = meta.get("checkpoint_sha256", "")
    if not recorded:
        raise InputError(
            f"these artifacts were exported from synthetic weights, not from {checkpoint}:"
            " pass ARTIFACT_DIR alone (no CKPT)"
        )
    if not checkpoint.is_file():
        raise InputError(
            f"checkpoint not found: {checkpoint}; pass the checkpoint the artifacts were"
            " exported from, or ARTIFACT_DIR alone to use their reference outputs"
        )
    if file_sha256(checkpoint) != recorded:
        raise InputError(
            f"{checkpoint} is not the checkpoint these artifacts were exported from"
            " (sha256 differs from their metadata); pass that checkpoint, or ARTIFACT_DIR"
            " alone to use their reference outputs"
        )


def verify_artifacts(
    checkpoint: Path | None,
    artifact_dir: Path,
    progress: Progress = _quiet,
    loaded: LoadedModel | None = None,
    only: list[Path] | None = None,
    reference: ReferenceKind = "auto",
    record: dict[str, Any] | None = None,
    overrides: dict[str, float] | None = None,
) -> ParityReport:
    """Parity of the artifacts in `artifact_dir` (or just `only`) against a reference.

    Artifacts are grouped by backend and by the weights each records (model, checkpoint hash or
    synthetic seed, upsample mode): each group is judged (`device.judge`) against its own
    reference, and decoders run end to end only on an encoder of their own group. The reference
    is PyTorch where torch is installed and the group's weights can be rebuilt (synthetic
    weights, or CKPT); with reference="auto" and no CKPT, a group exported from a checkpoint is
    judged against the reference outputs shipped in the folder; with reference="outputs", every
    group is. A provenance problem (a CKPT the artifacts did not come from, no CKPT and no
    matching reference outputs) raises InputError (exit 3) saying what to pass. `loaded`
    serves the groups it matches; `overrides` are a recipe's tightened tolerances.

    `record` (optional) receives the raw outputs for the HTML report (see `judge.judge`).
    """
    kind = "torch" if loaded is not None else resolve_reference(reference)
    progress(f"opening artifacts in {artifact_dir}")
    opened = open_artifacts(artifact_dir, only)
    report = ParityReport(errors=list(opened.errors))
    groups: dict[tuple[str, ...], OpenedArtifacts] = {}
    for graph in ("encoders", "decoders", "video"):
        for name, session in getattr(opened, graph):
            group = groups.setdefault(_group_key(session), OpenedArtifacts([], [], []))
            getattr(group, graph).append((name, session))
    models: dict[tuple[str, ...], LoadedModel] = {}
    for key, group in groups.items():
        ref = _reference(key, group, kind, reference, checkpoint, artifact_dir, loaded, models)
        n = len(group.encoders) + len(group.decoders) + len(group.video)
        progress(f"running {n} {key[0]} artifact(s) against {ref.description}")
        part = judge(
            ref,
            group.encoders,
            group.decoders,
            overrides=overrides,
            record=record,
            video=group.video,
        )
        report.comparisons.extend(part.comparisons)
        _merge_inputs(report.inputs, part.inputs)
    # A partial check (`only`) is recorded too: the manifest keeps a verdict per artifact and
    # lists the ones checked, so unrelated files in the folder stay "unchecked".
    record_parity(artifact_dir, report.to_json())
    return report


def _reference(
    key: tuple[str, ...],
    group: OpenedArtifacts,
    kind: str,
    reference: ReferenceKind,
    checkpoint: Path | None,
    artifact_dir: Path,
    loaded: LoadedModel | None,
    models: dict[tuple[str, ...], LoadedModel],
) -> Reference:
    """The reference one group of artifacts is judged against (see `verify_artifacts`)."""
    sessions = [s for _, s in group.encoders + group.decoders + group.video]
    if kind == "torch":
        model = loaded if loaded is not None and _matches(loaded, sessions[0]) else None
        if model is None:
            try:
                opts = _model_options(checkpoint, sessions)
            except InputError:
                if reference != "auto" or checkpoint is not None:
                    raise
                opts = None  # exported from a checkpoint nobody passed: the shipped outputs
            if opts is not None:
                from edgesam_export.host.models import load_model

                model = models.get(key[1:-1])
                if model is None:
                    model = models[key[1:-1]] = load_model(
                        opts.checkpoint,
                        model=opts.model,
                        upsample_mode=opts.upsample,
                        seed=opts.seed,
                        synthetic=opts.synthetic,
                    )
        if model is not None:
            from edgesam_export.host.reference import reference_sessions, video_sessions

            enc, decs = reference_sessions(model, gelu_approximate=key[-1] == "true")
            video = video_sessions(model) if group.video else None
            return SessionReference(enc, decs, video=video)
    from edgesam_export.device.reference_outputs import find_reference_outputs

    outputs = find_reference_outputs(artifact_dir, sessions[0].metadata)
    if checkpoint is not None:
        _check_outputs_checkpoint(checkpoint, outputs.meta)
    return outputs


def _merge_inputs(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Fold one group's report inputs into the whole report's (lists and maps accumulate)."""
    for key, value in part.items():
        if isinstance(value, dict):
            into.setdefault(key, {}).update(value)
        elif key == "skipped":
            into.setdefault(key, []).extend(value)
        elif key == "reference":
            refs = into.setdefault("references", [])
            if value not in refs:
                refs.append(value)
            into.setdefault(key, value)
        else:
            into.setdefault(key, value)

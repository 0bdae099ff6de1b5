"""The build pipeline behind `edgesam-export build`: recipe -> artifacts + parity -> manifest.

The build root is checked and locked first (`device.publish`: a second build into it waits
or is refused, leftovers of killed builds are removed). Each recipe is built in a hidden staging
folder beside its destination (`<output>/.<directory>.staging-<pid>-<n>`): every target exports
into `<target name>/` there, with the reference outputs (`<stem>_reference.npz`, what
`parity --reference outputs` compares with on a device without torch), and is checked against
PyTorch; then the manifest is written from what is on disk, and only then is the staging folder
renamed onto `<output>/<directory>`. A build that is interrupted (Ctrl-C, a killed process, a
crash) therefore never leaves a folder that looks finished, and a published folder always holds
exactly what its manifest describes: no stale files, no stale manifest.

A target that fails is recorded as failed (with its error and exit code) and its partial files
are removed; a target whose backend is not installed is recorded as unavailable. Neither is ever
recorded as good, and the build's exit code is that of the first target that did not pass. A
recipe whose build failed is not published over a good earlier build of it: that one stands.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesam_export.device import manifest as mf
from edgesam_export.device import publish
from edgesam_export.device.errors import (
    BackendUnavailableError,
    EdgeSamExportError,
    ExitCode,
    InputError,
)
from edgesam_export.host.config import ModelOptions
from edgesam_export.host.recipes import (
    LoadedRecipe,
    TargetBase,
    load_recipe,
    resolved,
    select_targets,
)

if TYPE_CHECKING:
    from edgesam_export.host.models import LoadedModel

Progress = Callable[[str], None]

# status -> exit code (statuses that are not "passed"/"unchecked" make the build fail)
PASSED, UNCHECKED, PARITY_FAILED, FAILED, UNAVAILABLE = (
    "passed",
    "unchecked",
    "parity_failed",
    "failed",
    "unavailable",
)


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Weights:
    """The weights every target of a recipe is built from (resolved once, in the main process)."""

    checkpoint: Path | None
    sha256: str | None
    synthetic: str
    seed: int

    def describe(self) -> dict[str, Any]:
        if self.checkpoint is not None:
            return {"kind": "checkpoint", "file": self.checkpoint.name, "sha256": self.sha256}
        return {"kind": f"synthetic-{self.synthetic}", "seed": self.seed}


@dataclass(frozen=True)
class TargetJob:
    """One target of one recipe: everything a worker process needs (picklable)."""

    recipe: LoadedRecipe
    target: TargetBase
    weights: Weights
    folder: Path  # <staging>/<target name>

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """A worker process gets the recipe as data and validates it again: the recipe and
        target classes are generated from the registry, so pickle cannot find them by name."""
        loaded = self.recipe
        data = loaded.recipe.model_dump(mode="json", exclude_unset=True)
        return (
            _job_from_data,
            (data, loaded.path, loaded.sha256, self.target.name, self.weights, self.folder),
        )


def _job_from_data(
    data: dict[str, Any], path: Path, sha256: str, target: str, weights: Weights, folder: Path
) -> TargetJob:
    from edgesam_export.host.recipes import recipe_model

    recipe = recipe_model().model_validate(data)
    (chosen,) = [t for t in recipe.targets if t.name == target]
    return TargetJob(LoadedRecipe(recipe, path, sha256), chosen, weights, folder)


@dataclass
class TargetResult:
    recipe: str
    target: str
    kind: str
    status: str
    exit_code: int
    error: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def manifest_entry(self, options: dict[str, Any], upsample: str | None) -> dict[str, Any]:
        """What the hashed manifest records (no timings: those are not reproducible)."""
        return {
            "name": self.target,
            "kind": self.kind,
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "options": options,
            "upsample": upsample,
            "artifacts": [a["path"] for a in self.artifacts],
            "parity": self.parity,
        }


@dataclass
class RecipeResult:
    recipe: LoadedRecipe
    folder: Path  # the published folder
    manifest: dict[str, Any]  # of this build (published or not)
    targets: list[TargetResult]
    published: bool = True  # False: it failed, and the good build in `folder` stands

    @property
    def exit_code(self) -> int:
        return next((t.exit_code for t in self.targets if t.exit_code), 0)


@dataclass
class BuildResult:
    recipes: list[RecipeResult]
    seconds: float

    @property
    def exit_code(self) -> int:
        return next((r.exit_code for r in self.recipes if r.exit_code), 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 2),
            "recipes": [
                {
                    "recipe": r.recipe.recipe.name,
                    "file": str(r.recipe.path),
                    "folder": str(r.folder),
                    "published": r.published,
                    "status": r.manifest["status"],
                    "content_sha256": r.manifest["content_sha256"],
                    "targets": [asdict(t) for t in r.targets],
                }
                for r in self.recipes
            ],
        }


# --- one target -------------------------------------------------------------------------------

_MODELS: dict[ModelOptions, LoadedModel] = {}


def _load(options: ModelOptions) -> LoadedModel:
    """Load each distinct model once per process (targets of a recipe share it)."""
    if options not in _MODELS:
        from edgesam_export.host.models import load_model

        _MODELS[options] = load_model(
            options.checkpoint,
            model=options.model,
            upsample_mode=options.upsample,
            seed=options.seed,
            synthetic=options.synthetic,
        )
    return _MODELS[options]


def model_options(job: TargetJob) -> ModelOptions:
    recipe = job.recipe.recipe
    return ModelOptions(
        model=recipe.model,
        checkpoint=job.weights.checkpoint,
        seed=job.weights.seed,
        upsample=job.target.upsample or recipe.upsample,
        synthetic=job.weights.synthetic,  # type: ignore[arg-type]
    )


def _artifact_entry(
    job: TargetJob, artifact: Any, verdict: str, checks: list[dict[str, Any]]
) -> dict[str, Any]:
    """Everything about one artifact: bytes, I/O, options, precision, verdict and metrics."""
    entry: dict[str, Any] = artifact.to_json()
    entry.update(
        path=f"{job.target.name}/{artifact.path.name}",
        target=job.target.name,
        size=artifact.path.stat().st_size if artifact.path.is_file() else None,
        precision=artifact.metadata.get("precision", "fp32"),
        options=json_options(job.target),
        parity=verdict,
        parity_checks=[
            {k: v for k, v in row.items() if k != "artifact"}
            for row in checks
            if row["artifact"] == artifact.path.name
        ],
    )
    return entry


def run_target(job: TargetJob, progress: Progress = _quiet) -> TargetResult:
    """Export one target's graphs into job.folder and check them; never raises for the target's
    own failures (they are the result), only for interruptions."""
    from edgesam_export.device.backends import require
    from edgesam_export.host.pipeline import verify_artifacts, write_reference_outputs
    from edgesam_export.host.targets import artifact_stem, get_target

    target, name = job.target, f"{job.recipe.recipe.name}/{job.target.name}"
    result = TargetResult(job.recipe.recipe.name, target.name, target.kind, FAILED, 1)
    t0 = time.perf_counter()
    try:
        backend = get_target(target.kind)
        require(target.kind)  # a backend that cannot run here: "unavailable", before any load
        loaded = _load(model_options(job))
        result.seconds["load"] = round(time.perf_counter() - t0, 2)  # 0 when already loaded
        t_export = time.perf_counter()
        options = target.options.model_copy(update={"output": job.folder})
        artifacts = []
        for graph in options.graphs:
            progress(f"{name}: exporting the {graph} ({target.kind})")
            artifacts.append(backend.export(loaded, graph, options))
        progress(f"{name}: writing the reference outputs")
        with parity_threads():  # the same bytes whatever --jobs is
            write_reference_outputs(loaded, job.folder, artifact_stem(loaded))
        result.seconds["export"] = round(time.perf_counter() - t_export, 2)
        parity = target.parity or job.recipe.recipe.parity
        verdicts: dict[str, str] = {}
        checks: list[dict[str, Any]] = []
        if parity.check:
            progress(f"{name}: parity against PyTorch")
            t1 = time.perf_counter()
            with parity_threads():
                report = verify_artifacts(
                    job.weights.checkpoint, job.folder, loaded=loaded, overrides=parity.tolerances
                )
            result.seconds["parity"] = round(time.perf_counter() - t1, 2)
            payload = report.to_json()
            result.parity = {
                "passed": report.passed,
                "errors": payload["errors"],
                "runtimes": payload["inputs"].get("runtimes", {}),  # e.g. CoreML or MIL executor
            }
            checks = payload["summary"]
            for row in payload["summary"]:
                ok = verdicts.get(row["artifact"], PASSED) == PASSED and row["passed"]
                verdicts[row["artifact"]] = PASSED if ok else "failed"
            for err in report.errors:
                verdicts[err["artifact"]] = "failed"
            if report.errors:
                result.status, result.exit_code = FAILED, int(ExitCode.ARTIFACT_UNREADABLE)
                result.error = "; ".join(f"{e['artifact']}: {e['error']}" for e in report.errors)
            elif report.passed:
                result.status, result.exit_code = PASSED, 0
            else:
                failing = sorted({r["check"] for r in payload["summary"] if not r["passed"]})
                result.status, result.exit_code = PARITY_FAILED, int(ExitCode.PARITY_FAILED)
                result.error = f"parity failed: {', '.join(failing)}"
        else:
            result.status, result.exit_code = UNCHECKED, 0
        result.artifacts = [
            _artifact_entry(job, a, verdicts.get(a.path.name, "unchecked"), checks)
            for a in artifacts
        ]
    except EdgeSamExportError as exc:
        result.status = UNAVAILABLE if isinstance(exc, BackendUnavailableError) else FAILED
        result.exit_code, result.error = int(exc.exit_code), str(exc)
    except Exception as exc:  # a bug in an exporter: recorded, never published as good
        result.status, result.exit_code = FAILED, int(ExitCode.INTERNAL)
        result.error = f"internal error: {type(exc).__name__}: {exc}"
    if result.status in (FAILED, UNAVAILABLE):
        result.artifacts = []
        shutil.rmtree(job.folder, ignore_errors=True)  # nothing of a failed target is published
    result.seconds["total"] = round(time.perf_counter() - t0, 2)
    return result


# The PyTorch reference's float sums depend on its thread count (decoder masks: 4.2e-6 with one
# thread, 5.0e-6 with two, measured): parity always runs with this many threads, so the
# recorded metrics, and with them the manifest hash, do not depend on --jobs or the caller.
PARITY_THREADS = min(4, os.cpu_count() or 1)


@contextlib.contextmanager
def parity_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(PARITY_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(job: TargetJob) -> TargetResult:
    return run_target(job)


# --- one recipe: staging, manifest, publishing ------------------------------------------------


def resolve_weights(loaded: LoadedRecipe, checkpoint: Path | None) -> Weights:
    w = loaded.recipe.weights
    ckpt = checkpoint if checkpoint is not None else loaded.checkpoint_path()
    if ckpt is None:
        if w.require_checkpoint:
            raise InputError(
                f"{loaded.path}: weights.require_checkpoint is true: pass --checkpoint PATH"
                " or set weights.checkpoint"
            )
        return Weights(None, None, w.synthetic, w.seed)
    if not ckpt.is_file():
        raise InputError(f"{loaded.path}: checkpoint not found: {ckpt}")
    digest = mf.file_sha256(ckpt)
    if w.sha256 is not None and digest != w.sha256:
        raise InputError(
            f"{loaded.path}: {ckpt} has sha256 {digest}, but the recipe pins {w.sha256}"
        )
    return Weights(ckpt, digest, w.synthetic, w.seed)


def recipe_status(results: list[TargetResult]) -> str:
    statuses = {r.status for r in results}
    if statuses <= {PASSED}:
        return PASSED
    if statuses <= {PASSED, UNCHECKED}:
        return UNCHECKED
    return "failed"


def manifest_content(
    loaded: LoadedRecipe,
    weights: Weights,
    targets: list[TargetBase],
    results: list[TargetResult],
    staging: Path,
    partial: bool,
) -> dict[str, Any]:
    """The hashed part of a recipe's manifest: everything here is reproducible."""
    recipe = loaded.recipe
    by_name = {t.name: t for t in targets}
    return {
        "recipe": {
            "name": recipe.name,
            "file": loaded.path.name,
            "sha256": loaded.sha256,
            "resolved": resolved(recipe),
        },
        "model": recipe.model,
        "weights": weights.describe(),
        "tools": mf.tool_versions(
            tuple(dict.fromkeys(mf.BASE_PACKAGES + tuple(p for t in targets for p in t.packages())))
        ),
        "status": recipe_status(results),
        "partial": partial,  # --only: not every target of the recipe was built
        "targets": [
            r.manifest_entry(
                json_options(by_name[r.target]),
                by_name[r.target].upsample or recipe.upsample,
            )
            for r in results
        ],
        "artifacts": sorted(
            (a for r in results for a in r.artifacts), key=lambda a: str(a["path"])
        ),
        "files": mf.scan_files(staging),
    }


def json_options(target: TargetBase) -> dict[str, Any]:
    options = json.loads(target.options.model_dump_json(exclude={"output"}))
    return options  # type: ignore[no-any-return]


# --- the whole build --------------------------------------------------------------------------


def build(
    recipe_paths: list[Path],
    output: Path,
    *,
    only: list[str] | None = None,
    checkpoint: Path | None = None,
    jobs: int = 1,
    progress: Progress = _quiet,
    on_target: Callable[[TargetResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    wait: float = 0.0,
) -> BuildResult:
    """Build every recipe's targets (`jobs` at a time) and publish each recipe's folder.

    Recipes and weights are validated first, then the output is checked and locked (`wait`
    seconds for another build's lock), all before any model is loaded.
    """
    if jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {jobs}")
    if output.exists() and not output.is_dir():
        raise InputError(f"--output must be a directory, but {output} is a file")
    t_start = time.perf_counter()
    recipes = [load_recipe(p) for p in recipe_paths]
    directories = [r.recipe.directory for r in recipes]
    dupes = sorted({d for d in directories if directories.count(d) > 1})
    if dupes:
        raise InputError(f"several recipes build into the same folder: {', '.join(dupes)}")
    if only:
        known = {n for r in recipes for n in r.recipe.target_names()}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise InputError(
                f"--only {', '.join(unknown)}: no such target; targets: {', '.join(sorted(known))}"
            )
    plans = []
    for loaded in recipes:
        mine = [n for n in only or [] if n in loaded.recipe.target_names()]
        if only and not mine:
            continue  # --only names targets of other recipes only
        targets = select_targets(loaded.recipe, mine or None)
        plans.append((loaded, targets, resolve_weights(loaded, checkpoint)))

    results: list[RecipeResult] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(publish.locked(output, wait=wait, progress=progress))
        stagings = {}
        jobs_of: dict[str, list[TargetJob]] = {}
        for loaded, targets, weights in plans:
            name = loaded.recipe.directory
            stagings[name] = stack.enter_context(publish.staging(output, name)).path
            jobs_of[name] = [
                TargetJob(loaded, t, weights, stagings[name] / t.name) for t in targets
            ]
        all_jobs = [j for js in jobs_of.values() for j in js]
        if on_plan:
            on_plan(len(all_jobs))
        started = datetime.now(timezone.utc)
        done = _run_jobs(all_jobs, jobs, progress, on_target)
        for loaded, targets, weights in plans:
            name = loaded.recipe.directory
            target_results = [done[id(j)] for j in jobs_of[name]]
            content = manifest_content(
                loaded, weights, targets, target_results, stagings[name], partial=bool(only)
            )
            record = {
                "started_utc": started.isoformat(timespec="seconds"),
                "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": {r.target: r.seconds for r in target_results},
                "jobs": jobs,
                "host": {
                    "machine": platform.machine(),
                    "system": platform.system(),
                    "cpus": os.cpu_count(),
                },
            }
            manifest = mf.seal(content, build=record)
            mf.write(stagings[name], manifest)
            dest = output / name
            good = content["status"] != "failed" or not publish.holds_good_publication(dest)
            if good:
                progress(f"publishing {dest}")
                publish.publish_folder(stagings[name], dest)
            else:
                progress(
                    f"{dest}: this build failed and is not published; the previous build stands"
                )
            results.append(RecipeResult(loaded, dest, manifest, target_results, published=good))
    return BuildResult(results, time.perf_counter() - t_start)


def _run_jobs(
    jobs: list[TargetJob],
    workers: int,
    progress: Progress,
    on_target: Callable[[TargetResult], None] | None,
) -> dict[int, TargetResult]:
    done: dict[int, TargetResult] = {}
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            job.folder.mkdir(parents=True, exist_ok=True)
            done[id(job)] = run_target(job, progress)
            if on_target:
                on_target(done[id(job)])
        return done
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
    )
    try:
        futures: dict[Future[TargetResult], TargetJob] = {}
        for job in jobs:
            job.folder.mkdir(parents=True, exist_ok=True)
            progress(f"{job.recipe.recipe.name}/{job.target.name}: queued ({job.target.kind})")
            futures[pool.submit(_run_in_worker, job)] = job
        for future in as_completed(futures):
            job = futures[future]
            try:
                done[id(job)] = future.result()
            except Exception as exc:  # the worker died (killed, out of memory): not good
                shutil.rmtree(job.folder, ignore_errors=True)
                done[id(job)] = TargetResult(
                    job.recipe.recipe.name,
                    job.target.name,
                    job.target.kind,
                    FAILED,
                    int(ExitCode.INTERNAL),
                    error=f"worker process failed: {type(exc).__name__}: {exc}",
                )
            if on_target:
                on_target(done[id(job)])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return done

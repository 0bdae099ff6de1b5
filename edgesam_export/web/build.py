"""Build the static web folder: page assets, the two ONNX graphs, onnxruntime-web.

Layout of a built folder (everything the page needs; no CDN at run time)::

    index.html  app.js  processing.js  runtime.js  style.css
    model.json          the model card: metadata of both graphs, file sizes and hashes
    models/             edge_sam_encoder.onnx, edge_sam_decoder.onnx
    ort/                onnxruntime-web runtime files at ORT_WEB_VERSION

onnxruntime-web reaches the folder through npm at build time: `npm pack` fetches the pinned
tarball once into a cache directory (its sha512 is checked against ORT_WEB_INTEGRITY) and only
the few runtime files the page loads are extracted. The repository stays lean (the wasm
binaries are 14-27 MB each). Offline: point $EDGESAM_EXPORT_ORT_WEB at a downloaded
`onnxruntime-web-<version>.tgz`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesam_export.device import publish
from edgesam_export.device.artifacts import MANIFEST_NAME, file_sha256
from edgesam_export.device.contract import MaskTokens, Preprocessing
from edgesam_export.device.errors import ArtifactError, BackendUnavailableError, InputError
from edgesam_export.device.reference_outputs import REFERENCE_OUTPUTS_SUFFIX

Progress = Callable[[str], None]

ORT_WEB_VERSION = "1.30.0"
#: `npm view onnxruntime-web@1.30.0 dist.integrity`: the tarball is checked against it.
ORT_WEB_INTEGRITY = (
    "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7sv"
    "Nc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
)
#: Runtime files per variant, from the package's dist/. The wasm variant is what the page uses
#: without WebGPU; the webgpu bundle (asyncify build) runs the WebGPU execution provider and
#: also falls back to wasm inside itself.
ORT_RUNTIME_FILES: dict[str, tuple[str, ...]] = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": (
        "ort.webgpu.min.mjs",
        "ort-wasm-simd-threaded.asyncify.mjs",
        "ort-wasm-simd-threaded.asyncify.wasm",
    ),
}
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "app.js", "processing.js", "runtime.js", "style.css")
CARD_NAME = "model.json"
ENV_ORT_TGZ = "EDGESAM_EXPORT_ORT_WEB"
ENV_CACHE = "EDGESAM_EXPORT_CACHE"


def _quiet(_: str) -> None:
    return None


@dataclass
class WebBuild:
    """What `build_web` wrote: the folder, its files with sizes, and the model card."""

    output: Path
    card: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "total_bytes": self.total_bytes,
            "files": self.files,
            "card": self.card,
        }


# --------------------------------------------------------------------------------------
# onnxruntime-web from npm
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the npm tarball is kept: $EDGESAM_EXPORT_CACHE, else ~/.cache/edgesam-export."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgesam-export"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def ort_web_tarball(progress: Progress = _quiet) -> Path:
    """The pinned onnxruntime-web tarball: $EDGESAM_EXPORT_ORT_WEB, the cache, or `npm pack`."""
    name = f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    override = os.environ.get(ENV_ORT_TGZ)
    if override:
        path = Path(override)
        if not path.is_file():
            raise InputError(f"${ENV_ORT_TGZ} points to {path}, which is not a file")
        candidates = [path]
    else:
        candidates = [cache_dir() / name]
    path = candidates[0]
    if not path.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise BackendUnavailableError(
                f"the web page needs onnxruntime-web {ORT_WEB_VERSION} from npm, and npm is not"
                " installed: install Node.js/npm (Debian: apt-get install npm), or download"
                f" {name} yourself and set ${ENV_ORT_TGZ} to its path"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        progress(f"fetching onnxruntime-web {ORT_WEB_VERSION} with npm pack (once, cached)")
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            proc = subprocess.run(
                [npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--pack-destination", tmp],
                capture_output=True,
                text=True,
            )
            packed = Path(tmp) / name
            if proc.returncode != 0 or not packed.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise BackendUnavailableError(
                    f"npm pack onnxruntime-web@{ORT_WEB_VERSION} failed (is the npm registry"
                    f" reachable?): {' | '.join(tail)}; or set ${ENV_ORT_TGZ} to a downloaded"
                    f" {name}"
                )
            os.replace(packed, path)
    found = _integrity(path)
    if found != ORT_WEB_INTEGRITY:
        raise ArtifactError(
            f"{path} is not onnxruntime-web {ORT_WEB_VERSION} as published (integrity"
            f" {found[:24]}... differs from the pinned {ORT_WEB_INTEGRITY[:24]}...):"
            " delete it and build again"
        )
    return path


def _extract_runtime(tgz: Path, dest: Path, variants: tuple[str, ...]) -> None:
    wanted = {f"package/dist/{f}": f for v in variants for f in ORT_RUNTIME_FILES[v]}
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            target = wanted.pop(member.name, None)
            if target is None or not member.isfile():
                continue
            src = tar.extractfile(member)
            assert src is not None
            with src, (dest / target).open("wb") as out:
                shutil.copyfileobj(src, out)
    if wanted:
        raise ArtifactError(f"{tgz} lacks {sorted(wanted.values())}: not onnxruntime-web?")


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


def _pick(found: list[tuple[Path, dict[str, str]]], graph: str, where: Path) -> tuple[Path, dict]:
    candidates = [(p, m) for p, m in found if m.get("graph") == graph]
    if graph == "decoder" and len(candidates) > 1:
        # the page ranks masks by predicted IoU; a stability-score decoder may sit beside it
        candidates = [(p, m) for p, m in candidates if m.get("use_stability_score") != "true"]
    if len(candidates) != 1:
        names = sorted(p.name for p, _ in candidates)
        raise InputError(
            f"{where}: expected one ONNX {graph} exported by edgesam-export, found"
            f" {len(candidates)} {names}"
        )
    return candidates[0]


def read_onnx_artifacts(artifact_dir: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """The encoder and decoder .onnx files of a directory with their metadata (runs no model)."""
    from edgesam_export.device.backends import open_session

    if not artifact_dir.is_dir():
        raise InputError(f"artifact directory not found: {artifact_dir}")
    paths = sorted(p for p in artifact_dir.glob("*.onnx") if not p.name.startswith("."))
    if not paths:
        raise InputError(f"no .onnx artifacts in {artifact_dir}: export them with `onnx` first")
    found = [(p, dict(open_session(p).metadata)) for p in paths]
    return {g: _pick(found, g, artifact_dir) for g in ("encoder", "decoder")}


def _card(models: dict[str, tuple[Path, dict[str, str]]], variants: tuple[str, ...]) -> dict:
    """The model card the page reads: file facts plus the preprocessing and mask-token
    convention recorded in the graphs' metadata (what `Predictor` reads from the same keys)."""
    enc_path, enc_meta = models["encoder"]
    dec_path, dec_meta = models["decoder"]
    for key in ("img_size", "pixel_mean", "pixel_std"):
        if key not in enc_meta:
            raise InputError(
                f"the encoder {enc_path.name} has no {key!r} metadata: was it"
                " exported by edgesam-export?"
            )
    if enc_meta.get("model") != dec_meta.get("model"):
        raise InputError(
            f"the encoder {enc_path.name} is {enc_meta.get('model')!r} but the decoder"
            f" {dec_path.name} is {dec_meta.get('model')!r}: keep one model's graphs per folder"
        )
    # Artifacts older than these keys: img_size is the prompt frame and EdgeSAM's recipe
    # applies (contract.Preprocessing / MaskTokens.from_metadata say so once, for every reader).
    try:
        pre = Preprocessing.from_metadata(enc_meta)
        tokens = MaskTokens.from_metadata(dec_meta)
    except (ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"{enc_path.name} / {dec_path.name}: bad metadata ({exc})") from None
    graphs = {
        graph: {
            "file": f"models/{path.name}",
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
            "metadata": meta,
        }
        for graph, (path, meta) in models.items()
    }
    precisions = {m.get("precision", "fp32") for m in (enc_meta, dec_meta)}
    return {
        "model": enc_meta.get("model", ""),
        # fp32 | fp16 | int8 | int8-weights as the export recorded it; "mixed" when they differ
        "precision": precisions.pop() if len(precisions) == 1 else "mixed",
        # what a browser downloads for the models (the two graphs, nothing else of models/)
        "download_bytes": sum(g["bytes"] for g in graphs.values()),
        "family": enc_meta.get("family", ""),
        "weights": enc_meta.get("weights", ""),
        "weights_source": enc_meta.get("weights_source", ""),
        "synthetic": enc_meta.get("weights", "").startswith("synthetic"),
        "img_size": pre.encoder_size,  # encoder input side
        "prompt_frame": pre.frame,  # prompts and low-res masks live in this frame
        "pixel_mean": list(pre.pixel_mean),
        "pixel_std": list(pre.pixel_std),
        "normalize": pre.normalize,
        "pad": pre.pad,
        "mask_tokens": {
            "count": tokens.count,
            "single": list(tokens.single),
            "multi": list(tokens.multi),
        },
        "use_stability_score": dec_meta.get("use_stability_score") == "true",
        "graphs": graphs,
        "onnxruntime_web": {"version": ORT_WEB_VERSION, "variants": list(variants)},
    }


# --------------------------------------------------------------------------------------
# the folder
# --------------------------------------------------------------------------------------


def _check_output(output: Path, force: bool) -> None:
    """Refuse a folder holding files an earlier build did not write (unless `force`): a
    rebuild replaces the folder whole, and once deleted what the user had added there."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output must be a directory, but {output} is a file")
    if force or not output.is_dir() or not any(output.iterdir()):
        return
    card = output / CARD_NAME
    try:
        written = set(json.loads(card.read_text())["files"]) | {CARD_NAME}
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{output} is not empty and is not a web build of this version (no file list in"
            f" {CARD_NAME}): choose another --output, or pass --force to replace it"
        ) from None
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if not p.is_dir()}
    foreign = sorted(on_disk - written)
    if foreign:
        raise InputError(
            f"{output} holds files the web build did not write ({', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}): move them, or pass --force to replace"
            " the folder"
        )


def build_web(
    output: Path,
    *,
    artifact_dir: Path | None = None,
    export: Callable[[Path], None] | None = None,
    webgpu: bool = True,
    progress: Progress = _quiet,
    force: bool = False,
) -> WebBuild:
    """Write the page folder to `output` (replacing an earlier build there, atomically).

    Models come either from `artifact_dir` (copied) or from `export(models_dir)`, a callable
    that exports the ONNX graphs into the folder it is given (the CLI passes the pipeline).
    The folder is built beside `output` under its parent's lock and swapped in whole
    (`device.publish`); files there that no earlier build wrote are refused unless `force`.
    """
    if (artifact_dir is None) == (export is None):
        raise ValueError("give exactly one of artifact_dir or export")
    _check_output(output, force)
    variants = ("wasm", "webgpu") if webgpu else ("wasm",)
    tgz = ort_web_tarball(progress)
    with (
        publish.locked(output.parent, progress=progress),
        publish.staging(output.parent, output.name) as stage,
    ):
        _check_output(output, force)  # again, under the lock
        staging = stage.path
        models_dir = staging / "models"
        models_dir.mkdir(parents=True)
        if export is not None:
            export(models_dir)
            # The export's reference outputs (~5 MB, parity without torch) and its manifest:
            # neither the page nor its self-test reads them, and the card records each graph's
            # hash and metadata. Only the two graphs are shipped.
            for path in models_dir.iterdir():
                if path.name == MANIFEST_NAME or path.name.endswith(REFERENCE_OUTPUTS_SUFFIX):
                    path.unlink()
        else:
            assert artifact_dir is not None
            progress(f"reading the ONNX artifacts in {artifact_dir}")
            for graph, (path, _) in read_onnx_artifacts(artifact_dir).items():
                progress(f"copying the {graph} {path.name}")
                shutil.copy2(path, models_dir / path.name)
        models = read_onnx_artifacts(models_dir)
        progress(f"adding onnxruntime-web {ORT_WEB_VERSION} ({', '.join(variants)})")
        _extract_runtime(tgz, staging / "ort", variants)
        for name in STATIC_FILES:
            shutil.copy2(STATIC_DIR / name, staging / name)
        card = _card(models, variants)
        card["files"] = sorted(
            p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()
        )
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        publish.publish_folder(staging, output)
    files = {
        str(p.relative_to(output)): p.stat().st_size
        for p in sorted(output.rglob("*"))
        if p.is_file()
    }
    return WebBuild(output=output, card=card, files=files)

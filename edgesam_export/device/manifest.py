"""`manifest.json`: what a folder of artifacts holds, hashed so that it can be trusted later.

Device side (standard library only): a device app or a CI job reads a manifest, picks an
artifact and checks its bytes without torch. The manifest is always written from what is on disk
at that moment, never merged with an older manifest, and it carries the sha256 of its own hashed
content, so a hand edit is caught as surely as a flipped byte in an artifact.

Layout:
    {"format": "edgesam-export.manifest/1",
     ...hashed content: "artifacts", "files" (every file in the folder), "tools", ...,
     "content_sha256": sha256 of the canonical JSON of the hashed content,
     "build": {...}}   # timestamps, durations, host: not hashed, so builds can be compared
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "edgesam-export.manifest/1"
UNHASHED = ("build", "content_sha256")  # keys outside the hashed content
#: The lock file of a folder being written (`publish.locked`): never part of a publication.
LOCK_NAME = ".edgesam-export.lock"
_RUN_LEFTOVER = re.compile(r"^\..+\.(staging|old|journal)-\d+-\d+$")


def leftover(name: str) -> str | None:
    """What a killed run may leave in a folder, by name: "staging", "old" (a folder swapped
    out), "journal" (a publication half done), "partial" (an atomic write); else None."""
    found = _RUN_LEFTOVER.match(name)
    if found:
        return found.group(1)
    if name.startswith(".") and name.endswith(".partial"):
        return "partial"
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_mlpackage_manifest(path: Path) -> bool:
    return path.name == "Manifest.json" and path.parent.suffix == ".mlpackage"


def _mlpackage_manifest_sha256(path: Path) -> str:
    """A CoreML package's Manifest.json with its random item UUIDs replaced by item paths.

    coremltools names each item of a package (model spec, weights) by a fresh UUID on every
    save, so two conversions of the same model differ only there. The items themselves (author,
    description, name, path) and which one is the root are what the file means; that is hashed.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        items = doc["itemInfoEntries"]
        root = items.get(doc.get("rootModelIdentifier"), {}).get("path")
        canonical = {
            "fileFormatVersion": doc.get("fileFormatVersion"),
            "items": sorted(items.values(), key=lambda item: json.dumps(item, sort_keys=True)),
            "root": root,
        }
    except (ValueError, KeyError, AttributeError, TypeError):
        return file_sha256(path)  # not the format we know: hash the bytes as they are
    return hashlib.sha256(b"mlpackage-manifest:" + canonical_json(canonical)).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file as the manifest records it: its bytes, except for formats that embed
    random identifiers (a CoreML package's Manifest.json), which are normalised first."""
    if is_mlpackage_manifest(path):
        return _mlpackage_manifest_sha256(path)
    return file_sha256(path)


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files in sorted order (for .mlpackage bundles)."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(bytes.fromhex(file_digest(f)))
    return h.hexdigest()


def walk(folder: Path) -> dict[str, Path]:
    """The files a manifest of `folder` covers: POSIX relative path -> path, sorted.

    Hidden files are covered like any other (a `.hidden.onnx` or `.git/` is content too). Left
    out: the manifest itself, the lock file, leftovers of interrupted runs (`leftover`: what
    `verify` reports apart, and the next run removes) and sub-folders holding their own
    manifest (a build root with one folder per recipe, or `artifacts/` holding
    `artifacts/demo/`).
    """
    found: dict[str, Path] = {}

    def visit(directory: Path) -> None:
        for path in sorted(directory.iterdir()):
            if path.name == LOCK_NAME or leftover(path.name):
                continue
            if path.is_dir():
                if not (path / MANIFEST_NAME).exists():
                    visit(path)
            elif path.is_file() and path != folder / MANIFEST_NAME:
                found[path.relative_to(folder).as_posix()] = path

    visit(folder)
    return dict(sorted(found.items()))


def scan_files(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file `walk` finds (the manifest's `files`)."""
    files: dict[str, dict[str, Any]] = {}
    for rel, path in walk(folder).items():
        files[rel] = {"sha256": file_digest(path), "size": path.stat().st_size}
        if is_mlpackage_manifest(path):
            files[rel]["normalised"] = "mlpackage item UUIDs replaced by item paths"
    return files


def canonical_json(payload: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, UTF-8 (what is hashed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hashed_part(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in UNHASHED}


def content_sha256(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(hashed_part(manifest))).hexdigest()


def seal(content: Mapping[str, Any], build: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest to write: content + its own hash (+ the unhashed build record)."""
    manifest = {"format": FORMAT, **hashed_part(content)}
    manifest["content_sha256"] = content_sha256(manifest)
    if build is not None:
        manifest["build"] = dict(build)
    return manifest


def write(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Atomically write folder/manifest.json (temporary sibling, then rename)."""
    dest = folder / MANIFEST_NAME
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".partial", dir=folder)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a manifest is meant to be read
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


class ManifestError(Exception):
    """The manifest is missing, not JSON or of another format (what `read` raises)."""


def read(folder_or_file: Path) -> dict[str, Any]:
    path = folder_or_file
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (expected {MANIFEST_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{path}: format {found!r} is not {FORMAT!r}")
    return manifest


@dataclass
class Verification:
    """What `verify` found: each problem names the file it concerns."""

    folder: Path
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, what is wrong)
    checked: int = 0
    status: str | None = None  # the manifest's recorded build status ("passed", "failed", ...)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "checked_files": self.checked,
            "status": self.status,
            "problems": [{"file": f, "problem": p} for f, p in self.problems],
        }


def verify(folder: Path) -> Verification:
    """Re-hash every file against the manifest: flipped bytes, missing or extra files, and a
    manifest whose content no longer matches its own hash (edited by hand)."""
    result = Verification(folder)
    try:
        manifest = read(folder)
    except ManifestError as exc:
        result.problems.append((MANIFEST_NAME, str(exc)))
        return result
    result.status = str(manifest.get("status", "unchecked"))
    recorded = manifest.get("content_sha256")
    actual = content_sha256(manifest)
    if recorded != actual:
        result.problems.append(
            (
                MANIFEST_NAME,
                f"content hash {actual[:16]}... does not match the recorded"
                f" {str(recorded)[:16]}...: the manifest was edited after it was written",
            )
        )
    expected: Mapping[str, Any] = manifest.get("files", {})
    on_disk = walk(folder)
    for rel, want in sorted(expected.items()):
        path = on_disk.get(rel)
        if path is None:
            result.problems.append((rel, "missing: listed in the manifest, not on disk"))
            continue
        result.checked += 1
        size = path.stat().st_size
        if size != want.get("size") and "normalised" not in want:
            result.problems.append(
                (rel, f"size {size} differs from the manifest's {want.get('size')}")
            )
        elif file_digest(path) != want.get("sha256"):
            result.problems.append((rel, "sha256 differs from the manifest: the bytes changed"))
    for rel in sorted(set(on_disk) - set(expected)):
        result.problems.append((rel, "extra: on disk, not in the manifest"))
    for rel in leftovers(folder):
        result.problems.append((rel, LEFTOVER_PROBLEM))
    for art in manifest.get("artifacts", []):
        rel = art.get("path", "")
        target = folder / rel
        if rel in expected or not target.is_dir():
            continue  # files were checked above; bundles are checked as a whole here
        if any(f.startswith(rel.rstrip("/") + "/") for f, _ in result.problems):
            continue  # already named file by file
        if path_sha256(target) != art.get("sha256"):
            result.problems.append((rel, "bundle sha256 differs from the manifest"))
    return result


LEFTOVER_PROBLEM = (
    "leftover of an interrupted run: the next export or build into this folder removes it"
)


def leftovers(folder: Path) -> list[str]:
    """Leftovers of interrupted runs in `folder` and its sub-folders (POSIX relative paths)."""
    found: list[str] = []

    def visit(directory: Path) -> None:
        for path in sorted(directory.iterdir()):
            if leftover(path.name):
                found.append(path.relative_to(folder).as_posix())
            elif path.is_dir() and not path.is_symlink() and path.name != LOCK_NAME:
                visit(path)

    if folder.is_dir():
        visit(folder)
    return found


def select(
    manifest: Mapping[str, Any], *, require_parity: bool = True, **where: str
) -> list[dict[str, Any]]:
    """Artifacts matching `where` (e.g. graph="decoder", backend="onnx", precision="fp32").

    With `require_parity` (the default) only artifacts whose parity check passed are returned:
    what a device app should load.
    """
    found = []
    for art in manifest.get("artifacts", []):
        if require_parity and art.get("parity") != "passed":
            continue
        if all(str(art.get(k)) == v for k, v in where.items()):
            found.append(dict(art))
    return found


def check_artifact(folder: Path, artifact: Mapping[str, Any]) -> bool:
    """True when the artifact's bytes on disk are the ones the manifest recorded."""
    path = folder / str(artifact["path"])
    return path.exists() and path_sha256(path) == artifact.get("sha256")


# Libraries whose versions decide what an artifact contains or how it was checked.
TOOL_PACKAGES = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "onnxsim",
    "coremltools",
    "tensorrt",
    "pydantic",
)


# What every build uses, whatever its targets.
BASE_PACKAGES = ("numpy", "torch", "pydantic")


def tool_versions(packages: tuple[str, ...] | None = None) -> dict[str, str]:
    """Installed versions of edgesam-export, Python and `packages` (default: TOOL_PACKAGES).

    A build passes the packages its targets use, so that installing an unrelated backend does
    not change its manifest hash.
    """
    import platform
    from importlib import metadata

    from edgesam_export import __version__

    versions = {"edgesam-export": __version__, "python": platform.python_version()}
    for name in TOOL_PACKAGES if packages is None else packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions

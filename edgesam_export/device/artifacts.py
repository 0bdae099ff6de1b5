"""Artifacts on disk: atomic writes, metadata every backend records, the build manifest.

An interrupted or failed export must never leave a file that looks finished: everything is
written under a temporary name in the destination directory and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgesam_export import __version__
from edgesam_export.device import manifest as mf
from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import InputError
from edgesam_export.device.manifest import MANIFEST_NAME, file_sha256, path_sha256

__all__ = [
    "MANIFEST_NAME",
    "Artifact",
    "atomic_path",
    "file_sha256",
    "path_sha256",
    "record_parity",
    "write_json_atomic",
    "write_manifest",
]


@dataclass(frozen=True)
class Artifact:
    """One exported graph: where it is, what it computes, and how it was made."""

    path: Path
    backend: str
    graph: str  # "encoder" | "decoder"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str] = field(default_factory=dict)
    # Files the artifact needs beside it (an ONNX graph's external-data sidecar).
    data_files: list[Path] = field(default_factory=list)

    def sha256(self) -> str:
        """Of the file (or bundle); with data files, of the file's and each data file's hash."""
        if not self.data_files:
            return path_sha256(self.path)
        h = hashlib.sha256(bytes.fromhex(path_sha256(self.path)))
        for f in self.data_files:
            h.update(f.name.encode())
            h.update(bytes.fromhex(file_sha256(f)))
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        out = {
            "path": self.path.name,
            "backend": self.backend,
            "graph": self.graph,
            "sha256": self.sha256(),
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
            "metadata": self.metadata,
        }
        if self.data_files:
            out["data_files"] = [
                {"path": f.name, "sha256": file_sha256(f), "bytes": f.stat().st_size}
                for f in self.data_files
            ]
        return out


@contextlib.contextmanager
def atomic_path(
    dest: Path, *, replaces_dir: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `dest` only if the block succeeds.

    An existing directory at `dest` is never deleted to make room for a file (`--json .` once
    emptied the working directory): it is refused with exit 3, before the block runs. A
    directory is replaced by a directory only where `replaces_dir(dest)` says it is one we
    wrote (a CoreML package, a report). A destination that cannot be written is refused the
    same way, in one line.
    """
    if dest.is_dir() and (replaces_dir is None or not replaces_dir(dest)):
        raise InputError(f"{dest} is a folder: give a file path (nothing was written)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror}; choose another path") from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"exporter produced nothing at {tmp}")
        if dest.is_dir() and tmp.is_dir():
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old.partial")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        elif dest.is_dir():
            raise InputError(f"{dest} is a folder: give a file path (nothing was written)")
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as the strings "nan", "inf", "-inf": a NaN or an infinite
    error is a result worth reporting, and strict JSON parsers (jq, JSON.parse) refuse the bare
    `NaN`/`Infinity` that `json.dumps` writes by default."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(payload: Any) -> str:
    """The one JSON rendering of reports (`--json`, build reports): sorted, strict."""
    return json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False)


def write_json_atomic(dest: Path, payload: Any) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json_text(payload) + "\n")


def artifact_precision(metadata: dict[str, str]) -> str:
    return metadata.get("precision", "fp32")


def write_manifest(out_dir: Path, artifacts: list[Artifact], **extra: Any) -> Path:
    """Rewrite out_dir/manifest.json from what is on disk now; an older manifest is ignored.

    Merging with the previous manifest let an old `"parity": "passed"` survive next to newly
    overwritten files; now every file in the folder is re-hashed, only the artifacts of this
    export are described, and no parity verdict is written until parity runs on these bytes
    (status "unchecked"; `record_parity` sets "passed" or "failed").
    """
    entries = []
    for art in sorted(artifacts, key=lambda a: a.path.name):
        entry = art.to_json()
        entry["size"] = art.path.stat().st_size if art.path.is_file() else None
        entry["precision"] = artifact_precision(art.metadata)
        entry["parity"] = "unchecked"
        entries.append(entry)
    content = {
        **extra,
        "tool": {"name": "edgesam-export", "version": __version__},
        "tools": mf.tool_versions(),
        "status": "unchecked",
        "artifacts": entries,
        "files": mf.scan_files(out_dir),
    }
    return mf.write(out_dir, mf.seal(content))


def _entry_sha256(out_dir: Path, entry: dict[str, Any]) -> str | None:
    """A manifest entry's hash recomputed from disk as `Artifact.sha256` computes it (with its
    data files: an engine's or program's sidecar, ONNX external data); None when a file is gone."""
    path = out_dir / str(entry.get("path", ""))
    data = [out_dir / str(d.get("path", "")) for d in entry.get("data_files", [])]
    if not entry.get("path") or not all(p.exists() for p in (path, *data)):
        return None
    return Artifact(path, "", "", [], [], data_files=data).sha256()


def record_parity(out_dir: Path, parity: dict[str, Any]) -> Path | None:
    """Record a parity run in out_dir's manifest, rewritten from disk.

    Only artifact entries whose recorded sha256 still matches the file on disk are kept, each
    with the verdict for those bytes; `files` is re-hashed. Returns None when there is no
    manifest to update.
    """
    dest = out_dir / MANIFEST_NAME
    if not dest.exists():
        return None
    try:
        old = json.loads(dest.read_text())
    except (json.JSONDecodeError, OSError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    files = mf.scan_files(out_dir)
    verdicts: dict[str, bool] = {}
    for row in parity.get("summary", []):
        verdicts[row["artifact"]] = verdicts.get(row["artifact"], True) and bool(row["passed"])
    for err in parity.get("errors", []):
        verdicts[err["artifact"]] = False
    entries = []
    for entry in old.get("artifacts", []):
        if _entry_sha256(out_dir, entry) != entry.get("sha256"):
            continue  # described bytes that are gone: drop, never vouch for the new ones
        name = str(entry["path"])
        entry["parity"] = (
            "unchecked" if name not in verdicts else ("passed" if verdicts[name] else "failed")
        )
        entries.append(entry)
    content = {k: v for k, v in old.items() if k not in (*mf.UNHASHED, "format")}
    content.update(
        tools=mf.tool_versions(),
        artifacts=entries,
        files=files,
        status="passed" if parity["passed"] and not parity["errors"] else "failed",
        parity={
            "passed": parity["passed"],
            "summary": parity["summary"],
            "errors": parity["errors"],
            "checked": {
                name: path_sha256(out_dir / name)
                for name in sorted(verdicts)
                if (out_dir / name).exists()
            },
        },
    )
    return mf.write(out_dir, mf.seal(content))

"""Artifacts on disk: atomic writes, metadata every backend records, the build manifest.

An interrupted or failed export must never leave a file that looks finished: everything is
written under a temporary name in the destination directory and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .contract import TensorSpec

if TYPE_CHECKING:  # host-side type only: this module stays importable without torch
    from .models.checkpoint import LoadedModel

MANIFEST_NAME = "manifest.json"


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files in sorted order (for .mlpackage bundles)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `dest` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"exporter produced nothing at {tmp}")
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json_atomic(dest: Path, payload: Any) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def base_metadata(loaded: LoadedModel, graph: str, use_stability_score: bool) -> dict[str, str]:
    """Everything a runtime or the parity checker needs to know, as strings (ONNX metadata_props).

    No timestamps or absolute paths: re-exporting the same checkpoint must give identical bytes.
    """
    spec = loaded.spec
    return {
        "edgesam_export.version": __version__,
        "model": spec.name,
        "family": spec.family,
        "graph": graph,
        "img_size": str(spec.img_size),
        "pixel_mean": json.dumps(list(spec.pixel_mean)),
        "pixel_std": json.dumps(list(spec.pixel_std)),
        "num_mask_tokens": str(spec.num_mask_tokens),
        "use_stability_score": str(use_stability_score).lower(),
        "upsample_mode": loaded.upsample_mode or "none",
        "weights": loaded.weights,
        "weights_source": loaded.source if loaded.synthetic else Path(loaded.source).name,
        "checkpoint_sha256": loaded.sha256 or "",
    } | (
        # Extra checkpoint keys left unused (EdgeSAM's official strict=False loading).
        {"ignored_checkpoint_keys": json.dumps(list(loaded.ignored_keys))}
        if getattr(loaded, "ignored_keys", ())
        else {}
    )


def write_manifest(out_dir: Path, artifacts: list[Artifact], **extra: Any) -> Path:
    """Merge these artifacts into out_dir/manifest.json (hashes, versions, optional verdicts)."""
    dest = out_dir / MANIFEST_NAME
    current: dict[str, Any] = {}
    if dest.exists():
        with contextlib.suppress(json.JSONDecodeError):
            current = json.loads(dest.read_text())
    entries = {a["path"]: a for a in current.get("artifacts", [])}
    for art in artifacts:
        entries[art.path.name] = art.to_json()
    current.update(extra)
    current["tool"] = {"name": "edgesam-export", "version": __version__}
    current["artifacts"] = [entries[k] for k in sorted(entries)]
    write_json_atomic(dest, current)
    return dest

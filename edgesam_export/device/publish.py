"""The one way files reach an output folder: checked, locked, staged, published, cleaned.

Every writer of a folder of artifacts (the export commands, `trt` engine builds, `build`, the
web page) goes through here, so that:

- an output that cannot be written is refused before any model is loaded (`prepare_output`);
- two runs never write one folder at once: a lock file (`manifest.LOCK_NAME`, fcntl) is held
  from the first check to the last rename; a second run waits `wait` seconds or is refused
  (the lock file goes with the run; one left by a killed run locks nothing);
- everything of a run (artifacts, reference outputs, manifest) is written in a staging folder
  beside its destination and only moved into place when complete (`Stage.publish`): a
  journal of the files it replaces lets the next run roll back a publication that was killed
  half-way, so a folder is always one whole publication or the one before;
- a run that failed never replaces the last good publication (a manifest whose status is not
  "failed"): it is discarded and the previous one stands;
- leftovers of killed runs (staging folders, `.X.partial` files of atomic writes, journals)
  are removed by the next run that holds the lock (`clean_leftovers`).

Device side, standard library only (fcntl: POSIX; on Windows the lock is a no-op).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesam_export.device import manifest as mf
from edgesam_export.device.errors import InputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

Progress = Callable[[str], None]

GOOD_STATUSES = ("passed", "unchecked")
_counter = itertools.count()


def _quiet(_: str) -> None:
    return None


def _unique(name: str, kind: str) -> str:
    """`.<name>.<kind>-<pid>-<n>`: hidden, unique in this folder, recognised by `mf.leftover`."""
    return f".{name}.{kind}-{os.getpid()}-{next(_counter)}"


# --- the output folder: writable, locked -----------------------------------------------------


def prepare_output(output: Path) -> bool:
    """Create `output` (a folder) or refuse it in one line, before any work starts; returns
    whether it was created here.

    The check is an actual write (the lock file), not a permission guess: a read-only mount or
    a path under a file fails here, with exit 3.
    """
    if output.exists() and not output.is_dir():
        raise InputError(f"--output must be a directory, but {output} is a file")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot create --output {output}: {parent} is a file")
            break
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        os.close(os.open(output / mf.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as exc:
        raise InputError(
            f"cannot write to --output {output}: {exc.strerror}; choose a folder you can write"
        ) from None
    return created


def _holder(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock.read_text().strip() or "0")
        if pid:
            return f" (pid {pid})"
    return ""


def _acquire(lock: Path, output: Path, wait: float, progress: Progress) -> int:
    """An fd holding the flock of the file now at `lock` (a file unlinked by the previous
    holder while we waited on it is not the lock any more: open it again)."""
    deadline = time.monotonic() + max(0.0, wait)
    told = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise InputError(
                    f"{output} is being written by another edgesam-export run{_holder(lock)}:"
                    " let it finish, or pass --wait SECONDS to queue"
                ) from None
            if not told:
                progress(f"waiting up to {wait:g} s for the run writing {output}{_holder(lock)}")
                told = True
            time.sleep(0.2)
            continue
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def locked(output: Path, *, wait: float = 0.0, progress: Progress = _quiet) -> Iterator[Path]:
    """Hold `output`'s lock for the block; wait up to `wait` seconds for another run's.

    The lock file is removed at the end (a run waiting on it notices and takes a fresh one), and
    so is the output folder when this run created it and left it empty: a refused or failed run
    leaves nothing behind. A killed run leaves its lock file, which locks nothing.
    """
    created = prepare_output(output)
    lock = output / mf.LOCK_NAME
    fd = _acquire(lock, output, wait, progress)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        for removed in clean_leftovers(output):
            progress(f"removed {removed} (left by an interrupted run)")
        yield output
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)  # releases the flock
        if created:
            with contextlib.suppress(OSError):
                output.rmdir()  # only if empty


# --- leftovers of killed runs ----------------------------------------------------------------


def clean_leftovers(output: Path) -> list[str]:
    """Remove what killed runs left in `output` (call with its lock held); returns the names.

    A journal means a publication was interrupted: its files are rolled back first (or, when
    it had committed, the journal is just removed). A `.<name>.old-*` folder whose `<name>` is
    missing is a folder swap interrupted between its two renames: it is put back.
    """
    removed: list[str] = []
    entries = sorted(output.iterdir()) if output.is_dir() else []
    for path in entries:  # journals first: a rollback needs the staged files it names
        if mf.leftover(path.name) == "journal":
            _roll_back(output, path)
            removed.append(path.name)
    for path in entries:
        kind = mf.leftover(path.name)
        if kind is None or kind == "journal" or not os.path.lexists(path):
            continue
        if kind == "old":
            original = output / path.name[1:].rsplit(".old-", 1)[0]
            if not original.exists():
                os.replace(path, original)
                removed.append(path.name)
                continue
        _remove(path)
        removed.append(path.name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- staging and publishing ------------------------------------------------------------------


def publication_status(folder: Path) -> str | None:
    """The status recorded by `folder`'s manifest; None when there is no readable manifest."""
    try:
        manifest = mf.read(folder)
    except mf.ManifestError:
        return None
    return str(manifest.get("status", "unchecked"))


def holds_good_publication(folder: Path) -> bool:
    return publication_status(folder) in GOOD_STATUSES


@dataclass
class Stage:
    """A hidden staging folder in `output` (locked by the caller); see `staging`."""

    output: Path
    path: Path
    published: bool = False

    def publish(self, names: Sequence[str], *, failed: bool = False) -> bool:
        """Move the staged `names` (files or bundles) into the output, then the manifest.

        The manifest staged here (if any) gets its `files` re-hashed over the whole output
        (other exports' files included), as `write_manifest` does; without one, a valid
        manifest already in the output is re-hashed so that it covers the new files. A
        `failed` run is not published over a good publication: returns False and the
        previous one stands.
        """
        if failed and holds_good_publication(self.output):
            return False
        journal = self.output / _unique("edgesam-export", "journal")
        journal.mkdir()
        moves = [n for n in dict.fromkeys(names) if n != mf.MANIFEST_NAME]
        every = [*moves, mf.MANIFEST_NAME]
        existed = [n for n in every if os.path.lexists(self.output / n)]
        (journal / "journal.json").write_text(json.dumps({"names": every, "existed": existed}))
        for name in moves:
            dest = self.output / name
            if os.path.lexists(dest):
                os.replace(dest, journal / name)
            os.replace(self.path / name, dest)
        manifest = self._manifest()
        if manifest is not None:
            if (self.output / mf.MANIFEST_NAME).exists():
                os.replace(self.output / mf.MANIFEST_NAME, journal / mf.MANIFEST_NAME)
            mf.write(self.path, manifest)
            os.replace(self.path / mf.MANIFEST_NAME, self.output / mf.MANIFEST_NAME)
        (journal / "committed").touch()  # from here on the new publication is the one
        shutil.rmtree(journal, ignore_errors=True)
        self.published = True
        return True

    def _manifest(self) -> dict[str, Any] | None:
        staged = self.path / mf.MANIFEST_NAME
        try:
            source = mf.read(staged if staged.exists() else self.output)
        except mf.ManifestError:
            return None
        if not staged.exists() and source.get("content_sha256") != mf.content_sha256(source):
            return None  # an edited manifest is not re-sealed as if it were ours
        content = mf.hashed_part(source)
        content["files"] = mf.scan_files(self.output)
        build = source.get("build")
        return mf.seal(content, build=build if isinstance(build, dict) else None)


def _roll_back(output: Path, journal: Path) -> None:
    """Undo an interrupted `Stage.publish`: put back what it replaced, drop what it added."""
    if not (journal / "committed").exists():
        try:
            record = json.loads((journal / "journal.json").read_text())
            names, existed = list(record["names"]), set(record["existed"])
        except (OSError, ValueError, KeyError, TypeError):
            names, existed = [], set()
        for name in map(str, names):
            previous, dest = journal / name, output / name
            if name in existed:
                if os.path.lexists(previous):  # moved aside: the new one (if any) goes
                    if os.path.lexists(dest):
                        _remove(dest)
                    os.replace(previous, dest)
            elif os.path.lexists(dest):  # added by the interrupted publication
                _remove(dest)
    shutil.rmtree(journal, ignore_errors=True)


@contextlib.contextmanager
def staging(output: Path, name: str = "edgesam-export") -> Iterator[Stage]:
    """A fresh hidden folder in `output`; removed at the end unless it was published whole."""
    path = output / _unique(name, "staging")
    path.mkdir()
    stage = Stage(output, path)
    try:
        yield stage
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def publish_folder(staging_dir: Path, dest: Path) -> None:
    """Replace the folder `dest` with the finished `staging_dir` (two renames, one filesystem).

    Between the renames the old folder waits as `.<dest>.old-*`; a run killed there leaves it,
    and the next `clean_leftovers` puts it back.
    """
    old = None
    if os.path.lexists(dest):
        old = dest.parent / _unique(dest.name, "old")
        os.replace(dest, old)
    os.replace(staging_dir, dest)
    if old is not None:
        _remove(old)

"""`edgesam-bench --backend coreml`: CoreML sessions to time (the CLI's CoreML hook).

Packages given with --artifacts are opened as they are; without, CKPT is exported to a
temporary folder with enough enumerated shapes for the requested prompt counts and box batch.
Timings are labelled with the runtime that produced them: on Linux the numpy MIL executor,
whose speed says nothing about a device.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import progress


def _find_one(directory: Path, pattern: str) -> Path:
    found = sorted(p for p in directory.glob(pattern) if not p.name.startswith("."))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise InputError(f"expected exactly one {pattern} in {directory}, found {what}")
    return found[0]


@contextmanager
def coreml_sessions(
    checkpoint: Path | None,
    artifacts: Path | None,
    upsample: Any,
    seed: int,
    counts: Sequence[int],
    box_batch: int,
) -> Iterator[tuple[Any, Any, bool]]:
    """CoreML encoder and (IoU) decoder sessions, and whether their weights are synthetic."""
    from ..runtime import open_session

    if artifacts is not None:
        if not artifacts.is_dir():
            raise InputError(f"artifact directory not found: {artifacts}")
        enc_path = _find_one(artifacts, "*_encoder.mlpackage")
        dec_path = _find_one(artifacts, "*_decoder.mlpackage")
        progress(f"opening {enc_path.name} and {dec_path.name}")
        enc, dec = open_session(enc_path), open_session(dec_path)
        yield enc, dec, enc.metadata.get("weights") == "synthetic-untrained"
        return

    from ..config import CoreMLOptions, ModelOptions
    from ..pipeline import export_artifacts

    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as tmp:
        try:
            mopts = ModelOptions(
                checkpoint=checkpoint,
                seed=seed,
                upsample=None if upsample is None else upsample.value,
            )
            eopts = CoreMLOptions(
                output=Path(tmp), max_points=max([*counts, 2]), max_batch=max(1, box_batch)
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        loaded, arts = export_artifacts(mopts, "coreml", eopts, progress)
        paths = {a.graph: a.path for a in arts}
        yield open_session(paths["encoder"]), open_session(paths["decoder"]), loaded.synthetic


def label_timings(timings: Sequence[Any], session: Any) -> list[Any]:
    """'coreml (MIL executor (numpy, Linux))' or 'coreml (CoreML runtime (macOS))'."""
    label = f"coreml ({getattr(session, 'runtime_label', 'unknown runtime')})"
    return [dataclasses.replace(t, backend=label) for t in timings]

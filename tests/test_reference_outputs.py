"""Reference outputs (`<stem>_reference.npz`): what the export ships, and parity against them
without torch."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edgesam_export.device.errors import InputError
from edgesam_export.device.judge import judge
from edgesam_export.device.parity import prompt_cases
from edgesam_export.device.reference_outputs import (
    MASK_STRIDE,
    REFERENCE_OUTPUTS_SUFFIX,
    find_reference_outputs,
)
from edgesam_export.device.runtime import Session
from edgesam_export.host.pipeline import open_artifacts, verify_artifacts


class Shifted(Session):
    """A candidate that adds `delta` to one output of a real session: a wrong engine."""

    def __init__(self, inner: Session, output: str, delta: float) -> None:
        super().__init__(inner.graph, inner.inputs, inner.outputs, inner.metadata)
        self.backend = inner.backend
        self.inner, self.output, self.delta = inner, output, delta

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(self.inner.run(feeds))
        out[self.output] = out[self.output] + np.float32(self.delta)
        return out


def test_export_writes_small_matching_reference_outputs(default_artifacts: Path) -> None:
    (path,) = default_artifacts.glob(f"*{REFERENCE_OUTPUTS_SUFFIX}")
    assert path.stat().st_size < 6e6  # small beside ~43 MB of ONNX graphs
    manifest = json.loads((default_artifacts / "manifest.json").read_text())
    assert manifest["reference_outputs"]["path"] == path.name
    opened = open_artifacts(default_artifacts)
    enc = opened.encoders[0][1]
    outputs = find_reference_outputs(default_artifacts, enc.metadata)
    assert outputs.meta["weights"] == enc.metadata["weights"] == "synthetic-untrained"
    assert outputs.meta["reference"].startswith("torch")
    assert outputs.image.dtype == np.uint8 and outputs.image.ndim == 3
    assert outputs.embeddings.shape == (1, 256, 64, 64) and outputs.embeddings.dtype == np.float32
    expected = prompt_cases(1024, (768, 1024))
    assert [c.case.name for c in outputs.cases] == [c.name for c in expected]
    for gc, case in zip(outputs.cases, expected, strict=True):
        np.testing.assert_array_equal(gc.case.point_coords, case.point_coords)
        b = case.point_coords.shape[0]
        assert gc.masks_sub.shape == (b, 4, 256 // MASK_STRIDE, 256 // MASK_STRIDE)
        assert gc.masks_bits.shape == (b, 4, 256, 256) and gc.masks_bits.dtype == np.bool_
        # the bits are the thresholded logits wherever both are stored
        np.testing.assert_array_equal(
            gc.masks_bits[..., ::MASK_STRIDE, ::MASK_STRIDE], gc.masks_sub > 0
        )


def test_outputs_parity_passes_and_agrees_with_torch(default_artifacts: Path) -> None:
    outputs = verify_artifacts(None, default_artifacts, reference="outputs")
    torch_ = verify_artifacts(None, default_artifacts, reference="torch")
    assert outputs.passed and torch_.passed
    assert outputs.inputs["reference"].startswith("reference outputs")
    by_check = {(r["artifact"], r["check"]): r for r in torch_.summary()}
    for row in outputs.summary():
        ref = by_check[(row["artifact"], row["check"])]
        assert row["cases"] == ref["cases"]
        assert row["max_abs"] <= ref["max_abs"] + 1e-7  # a subsample of the same errors
        if row["check"] == "image_embeddings":
            assert row["max_abs"] == pytest.approx(ref["max_abs"], rel=1e-6)


@pytest.mark.parametrize(
    ("graph", "output", "delta", "check"),
    [
        ("decoder", "masks", 1e-3, "decoder.masks"),
        ("decoder", "scores", 1e-3, "decoder.scores"),
        ("encoder", "image_embeddings", 1e-2, "image_embeddings"),
    ],
)
def test_outputs_parity_catches_a_wrong_engine(
    default_artifacts: Path, graph: str, output: str, delta: float, check: str
) -> None:
    opened = open_artifacts(default_artifacts)
    outputs = find_reference_outputs(default_artifacts, opened.encoders[0][1].metadata)
    encoders, decoders = list(opened.encoders), list(opened.decoders)
    if graph == "decoder":
        decoders = [(n, Shifted(s, output, delta)) for n, s in decoders]
    else:
        encoders = [(n, Shifted(s, output, delta)) for n, s in encoders]
    report = judge(outputs, encoders, decoders)
    assert not report.passed
    failed = {c.check for c in report.comparisons if not c.passed}
    assert check in failed


def test_reference_outputs_of_other_weights_are_refused(
    default_artifacts: Path, tmp_path: Path
) -> None:
    for p in default_artifacts.iterdir():
        shutil.copy(p, tmp_path / p.name)
    opened = open_artifacts(tmp_path)
    meta = dict(opened.encoders[0][1].metadata)
    meta["weights_source"] = "synthetic-untrained(seed=99)"
    with pytest.raises(InputError, match=r"other weights.*pass the artifacts. checkpoint"):
        find_reference_outputs(tmp_path, meta)
    for p in tmp_path.glob(f"*{REFERENCE_OUTPUTS_SUFFIX}"):
        p.unlink()
    with pytest.raises(InputError, match=r"no reference outputs.*pass the checkpoint"):
        verify_artifacts(None, tmp_path, reference="outputs")

"""CoreML for every family: encoder and decoder of each variant converted to fp32 ML Programs,
then parity of the SAVED packages against PyTorch on the numpy MIL executor.

`test_families.COREML` is this target's column of the test tables (tied there to each spec's
`verified_targets`): "default" rows run in `make test`, "heavy" rows (large encoders:
minutes and GBs on 2 cores) with `pytest -m heavy`, a (module, function) pair names the test
that covers the variant elsewhere. A variant without a row is not CoreML-verified, and
`edgesam-export models` says so.

Conversions are the cost: each package is built once per session (synthetic weights of the
variant's layout, seed 0) and parity runs once per variant; the tests read the shared result.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_families import COREML

pytest.importorskip("coremltools")

from edgesam_export.config import CoreMLOptions
from edgesam_export.models import LoadedModel, get_spec, list_specs, load_model
from edgesam_export.parity import ParityReport
from edgesam_export.pipeline import verify_artifacts
from edgesam_export.runtime import open_session
from edgesam_export.runtime.coreml import MIL_EXECUTOR
from edgesam_export.runtime.mil import read_spec
from edgesam_export.targets.coreml import LICENSES, SYNTHETIC_LICENSE, descriptions, export

# Every check a CoreML pair must pass (the parity report's rows for the fp32 IoU decoder).
CHECKS = {
    "image_embeddings",
    "decoder.scores",
    "decoder.masks",
    "end_to_end.scores",
    "end_to_end.masks",
}


@dataclass
class Exported:
    loaded: LoadedModel
    folder: Path
    seconds: dict[str, float]  # graph -> conversion + save time
    report: ParityReport

    def worst(self, check: str) -> float:
        rows = [r for r in self.report.summary() if r["check"] == check]
        assert rows, check
        return max(float(r["max_abs"]) for r in rows)


@functools.cache
def _exported(name: str, root: Path) -> Exported:
    loaded = load_model(None, model=name, synthetic="random")
    folder = root / name
    seconds = {}
    for graph in ("encoder", "decoder"):
        t0 = time.perf_counter()
        export(loaded, graph, CoreMLOptions(output=folder))
        seconds[graph] = time.perf_counter() - t0
    report = verify_artifacts(None, folder, loaded=loaded)
    return Exported(loaded, folder, seconds, report)


@pytest.fixture(scope="session")
def coreml_family(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("coreml_families")
    return lambda name: _exported(name, root)


def _rows(where: str) -> list[object]:
    rows: list[object] = []
    for name, kind in sorted(COREML.items()):
        if kind == where == "default":
            rows.append(name)
        elif kind == where == "heavy":
            rows.append(pytest.param(name, marks=pytest.mark.heavy))
    return rows


def _check_export_and_parity(exp: Exported) -> None:
    spec = exp.loaded.spec
    report = exp.report
    assert not report.errors, report.errors
    assert report.passed, [r for r in report.summary() if not r["passed"]]
    assert {r["check"] for r in report.summary()} >= CHECKS
    assert set(report.inputs["runtimes"].values()) == {MIL_EXECUTOR}
    enc = open_session(exp.folder / f"{spec.name}_encoder.mlpackage", runtime="mil")
    assert enc.inputs[0].shape == (1, 3, spec.img_size, spec.img_size)
    for graph in ("encoder", "decoder"):
        meta = dict(
            read_spec(
                exp.folder / f"{spec.name}_{graph}.mlpackage"
            ).description.metadata.userDefined
        )
        assert meta["model"] == spec.name and meta["family"] == spec.family
        assert meta["img_size"] == str(spec.img_size)
        assert meta["prompt_frame"] == str(spec.frame)
        assert meta["normalize"] == spec.normalize and meta["pad"] == spec.pad
        assert meta["num_mask_tokens"] == str(spec.num_mask_tokens)
    print(
        f"{spec.name}: convert encoder {exp.seconds['encoder']:.1f} s, decoder"
        f" {exp.seconds['decoder']:.1f} s; MIL executor max abs: embeddings"
        f" {exp.worst('image_embeddings'):.2e}, decoder masks {exp.worst('decoder.masks'):.2e}"
        f" scores {exp.worst('decoder.scores'):.2e}, end to end masks"
        f" {exp.worst('end_to_end.masks'):.2e} scores {exp.worst('end_to_end.scores'):.2e}"
    )


@pytest.mark.parametrize("name", _rows("default"))
def test_coreml_export_and_parity(name: str, coreml_family) -> None:
    """fp32 encoder + decoder packages of the variant pass parity on the MIL executor:
    embeddings, the decoder alone, and end to end (every prompt case the package accepts)."""
    _check_export_and_parity(coreml_family(name))


@pytest.mark.parametrize("name", _rows("heavy"))
def test_coreml_export_and_parity_heavy(name: str, coreml_family) -> None:
    _check_export_and_parity(coreml_family(name))


def test_efficientvit_packages_describe_the_1024_prompt_frame(coreml_family) -> None:
    """EfficientViT-SAM-L0 encodes 512 x 512 but takes points and returns masks in SAM's 1024
    frame: the package's descriptions and metadata say so (EdgeSAM's said "img_size frame")."""
    exp = coreml_family("efficientvit_sam_l0")
    spec = read_spec(exp.folder / "efficientvit_sam_l0_decoder.mlpackage")
    text = {f.name: f.shortDescription for f in [*spec.description.input, *spec.description.output]}
    assert "1024 x 1024 prompt frame" in text["point_coords"]
    assert "not the 512 x 512 encoder input" in text["point_coords"]
    assert "1024 x 1024 prompt frame at 1/4 scale" in text["masks"]
    enc = read_spec(exp.folder / "efficientvit_sam_l0_encoder.mlpackage").description
    image = next(f.shortDescription for f in enc.input if f.name == "image")
    assert "longer side is 512" in image and "x / 255" in image
    assert "prompt frame 1024" in enc.metadata.shortDescription
    assert enc.metadata.license == SYNTHETIC_LICENSE  # synthetic weights are ours


def test_descriptions_follow_each_spec() -> None:
    """No EdgeSAM wording leaks into another family's package."""
    for spec in list_specs():
        text = descriptions(spec)
        assert f"{spec.frame} x {spec.frame} prompt frame" in text["point_coords"]
        assert (f"not the {spec.img_size}" in text["point_coords"]) == (spec.frame != spec.img_size)
        assert f"longer side is {spec.img_size}" in text["image"]
    assert "0..255 values" in descriptions(get_spec("edge_sam"))["image"]


def test_every_family_has_a_license_line() -> None:
    """The package's license field names the weights' license for every registered family."""
    assert {s.family for s in list_specs()} == set(LICENSES)
    assert "S-Lab" in LICENSES["EdgeSAM"] and "Apache-2.0" in LICENSES["EfficientViT-SAM"]


def test_prompt_points_are_traced_in_the_prompt_frame() -> None:
    """The decoder's example points span the prompt frame (1024 for L0, not 512)."""
    from edgesam_export.targets.coreml import build_module

    loaded = load_model(None, model="efficientvit_sam_l0", synthetic="random")
    _, args = build_module(loaded, "decoder", CoreMLOptions(output=Path("unused")))
    assert float(args[1].max()) > 512 and float(args[1].max()) <= 1024
    assert np.isfinite(args[1].numpy()).all()

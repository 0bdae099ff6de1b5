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

from edgesam_export.device.backends import open_session
from edgesam_export.device.judge import ParityReport
from edgesam_export.device.runtime.coreml import MIL_EXECUTOR
from edgesam_export.device.runtime.mil import read_spec
from edgesam_export.host.config import CoreMLOptions
from edgesam_export.host.models import LoadedModel, get_spec, list_specs, load_model
from edgesam_export.host.pipeline import verify_artifacts
from edgesam_export.host.targets.coreml import LICENSES, SYNTHETIC_LICENSE, descriptions, export

# Per-family export rows: `make test-extended` (CI runs it), not the default run.
pytestmark = pytest.mark.extended

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


def _export_and_verify(name: str, root: Path) -> Exported:
    loaded = load_model(None, model=name, synthetic="untrained")
    folder = root / name
    seconds = {}
    for graph in ("encoder", "decoder"):
        t0 = time.perf_counter()
        export(loaded, graph, CoreMLOptions(output=folder))
        seconds[graph] = time.perf_counter() - t0
    report = verify_artifacts(None, folder, loaded=loaded)
    return Exported(loaded, folder, seconds, report)


_exported = functools.cache(_export_and_verify)  # default rows: shared by several tests


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
def test_coreml_export_and_parity_heavy(name: str, tmp_path: Path) -> None:
    """The same for the large encoders, one at a time (nothing kept after the test)."""
    _check_export_and_parity(_export_and_verify(name, tmp_path))


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
    from edgesam_export.host.targets.coreml import build_module

    loaded = load_model(None, model="efficientvit_sam_l0", synthetic="untrained")
    _, args = build_module(loaded, "decoder", CoreMLOptions(output=Path("unused")))
    assert float(args[1].max()) > 512 and float(args[1].max()) <= 1024
    assert np.isfinite(args[1].numpy()).all()


def test_efficientvit_coreml_pair_matches_the_official_predictor(coreml_family) -> None:
    """The device path end to end on the saved L0 packages (MIL executor): the Predictor reads
    the encoder size (512) and prompt frame (1024) from the packages' metadata, and its scores,
    low-res logits and original-size masks match the official predictor's golden outputs for
    point, multi-point, box and point+box prompts (the export's seed-0 weights are the
    fixture's)."""
    from edgesam_export.device.predictor import Predictor

    exp = coreml_family("efficientvit_sam_l0")
    with np.load(
        Path(__file__).parent / "fixtures" / "efficientvit_sam" / "golden_l0_seed0.npz"
    ) as data:
        g = {k: data[k] for k in data.files}
    enc = open_session(exp.folder / "efficientvit_sam_l0_encoder.mlpackage", runtime="mil")
    dec = open_session(exp.folder / "efficientvit_sam_l0_decoder.mlpackage", runtime="mil")
    predictor = Predictor(enc, dec)
    assert predictor.img_size == 512 and predictor.frame == 1024
    predictor.set_image(g["image"])
    h, w = (int(v) for v in g["original_size"])
    for p in "abcd":
        prompt: dict[str, np.ndarray] = {}
        if f"{p}_point_coords" in g:
            prompt["points"], prompt["labels"] = g[f"{p}_point_coords"], g[f"{p}_point_labels"]
        if f"{p}_box" in g:
            prompt["box"] = g[f"{p}_box"]
        for kind, n in (("single", 1), ("multi", 3)):
            pred = predictor.predict(**prompt, num_multimask_outputs=n)
            where = f"prompt {p} {kind}"
            np.testing.assert_allclose(
                pred.low_res_logits[..., ::2, ::2], g[f"{p}_{kind}_low_res_sub2"], atol=3e-4,
                err_msg=where,
            )  # fmt: skip
            np.testing.assert_allclose(
                pred.scores, g[f"{p}_{kind}_scores"], atol=2e-5, err_msg=where
            )
            masks = np.unpackbits(g[f"{p}_{kind}_masks_packed"], axis=-1, count=w).astype(bool)
            assert pred.masks.shape == masks.shape == (n, h, w)
            mismatch = (pred.masks != masks).reshape(n, -1).mean(axis=1)
            assert mismatch.max() <= 1e-4, (where, mismatch)

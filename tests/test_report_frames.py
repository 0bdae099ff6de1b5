"""The reference outputs and the HTML report follow the model's preprocessing and prompt frame.

EfficientViT-SAM-L0 encodes a 512 x 512 image (/255 normalisation) but takes prompts and
upscales masks in SAM's 1024 frame: the reference outputs record that, their prompt cases live
in the 1024 frame, and the report draws the masks through that frame. Files written before these
keys existed still read as EdgeSAM's recipe with the frame = img_size (how they were written).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesam_export.device import processing as P
from edgesam_export.device.contract import encoder_io
from edgesam_export.device.judge import SessionReference, judge
from edgesam_export.device.parity import make_test_image
from edgesam_export.device.png import decode_png
from edgesam_export.device.reference_outputs import (
    REFERENCE_OUTPUTS_SUFFIX,
    read_reference_outputs,
)
from edgesam_export.device.report import POSITIVE_RGB, _prompt_frame, blend, write_parity_report
from edgesam_export.device.runtime import Session
from edgesam_export.host.models import get_spec
from edgesam_export.host.pipeline import verify_artifacts

L0 = "efficientvit_sam_l0"


@pytest.fixture(scope="module")
def l0_report(family_artifacts, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Parity of the L0 ONNX graphs against their reference outputs, and its HTML report."""
    folder = family_artifacts(L0)
    record: dict[str, Any] = {}
    report = verify_artifacts(None, folder, reference="outputs", record=record)
    page = write_parity_report(tmp_path_factory.mktemp("l0_report") / "parity", report, record)
    return folder, report, record, page


def test_l0_reference_outputs_record_the_models_preprocessing(l0_report: tuple) -> None:
    _, report, record, _ = l0_report
    spec = get_spec(L0)
    outputs = record["reference_outputs"]
    assert outputs.preprocessing == spec.preprocessing
    assert (spec.preprocessing.encoder_size, spec.preprocessing.frame) == (512, 1024)
    for key, value in spec.preprocessing.to_metadata().items():
        assert outputs.meta[key] == value, key
    # the prompt cases lie in the image's extent in the 1024 frame (768 x 1024 for 480 x 640),
    # not in the 512 encoder frame
    h, w = outputs.image.shape[:2]
    extent = P.get_preprocess_shape(h, w, 1024)
    coords = np.concatenate([gc.case.point_coords.reshape(-1, 2) for gc in outputs.cases])
    assert coords[:, 0].max() > 512 and coords[:, 0].max() <= extent[1]
    assert coords[:, 1].max() <= extent[0]
    assert report.passed, [r for r in report.summary() if not r["passed"]]
    assert report.inputs["img_size"] == 512 and report.inputs["prompt_frame"] == 1024


def test_l0_report_draws_masks_and_prompts_in_the_1024_frame(l0_report: tuple) -> None:
    _, _, record, page = l0_report
    outputs = record["reference_outputs"]
    image = outputs.image
    assert _prompt_frame(record) == 1024
    input_size = P.get_preprocess_shape(*image.shape[:2], 1024)
    info = P.ImageInfo(image.shape[:2], input_size, 1024)
    (name,) = [n for n in record if n.endswith("_decoder.onnx")]
    cases = {gc.case.name: gc for gc in outputs.cases}
    for case, slug in (("box", "box"), ("1 positive point", "1_positive_point")):
        k = int(np.argmax(cases[case].scores[0]))
        logits = (record[name][case]["masks"][:1, k] > 0).astype(np.float32) - 0.5
        mask = P.postprocess_masks(logits, info)[0] > 0
        shown = decode_png((page.parent / f"{slug}_{L0}_decoder_onnx.png").read_bytes())
        expected = blend(image, mask)[::2, ::2]
        mismatch = (shown != expected).any(axis=-1).mean()
        assert mismatch < 0.01, (case, mismatch)  # prompt markers aside
    # The point marker sits where the prompt is: frame coordinates scaled by original / extent
    # in the 1024 frame (reading the 512 encoder side as the frame would put it twice as far).
    shown = decode_png((page.parent / "1_positive_point_reference.png").read_bytes())
    x, y = cases["1 positive point"].case.point_coords[0, 0]
    scale = image.shape[0] / input_size[0] / 2  # display stride 2
    for factor, present in ((1.0, True), (2.0, False)):
        px, py = round(x * scale * factor), round(y * scale * factor)
        green = bool((shown[py, px] == POSITIVE_RGB).all())
        assert green is present, (factor, shown[py, px])


def test_reference_outputs_without_the_frame_keys_reads_as_edgesam(
    default_artifacts: Path, tmp_path: Path
) -> None:
    """EdgeSAM reference outputs as written before prompt_frame/normalize/pad: parity and the report
    still work, with the frame = img_size and SAM's normalisation."""
    for p in default_artifacts.iterdir():
        shutil.copy(p, tmp_path / p.name)
    (path,) = tmp_path.glob(f"*{REFERENCE_OUTPUTS_SUFFIX}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta_json"]))
    for key in ("prompt_frame", "normalize", "pad"):
        del meta[key]
    meta["img_size"] = 1024  # older files stored an int
    arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    outputs = read_reference_outputs(path)
    assert outputs.preprocessing == P.Preprocessing()  # EdgeSAM's recipe at 1024
    record: dict[str, Any] = {}
    report = verify_artifacts(None, tmp_path, reference="outputs", record=record)
    assert report.passed and _prompt_frame(record) == 1024
    page = write_parity_report(tmp_path / "report", report, record)
    assert (page.parent / "box_edge_sam_decoder_onnx.png").is_file()


class _Encoder(Session):
    """A stand-in reference encoder with the L0 metadata: records the tensor it was given."""

    backend = "stub"

    def __init__(self, meta: dict[str, str], size: int) -> None:
        inputs, outputs = encoder_io(size, (256, 64, 64))
        super().__init__("encoder", inputs, outputs, meta)
        self.seen: list[np.ndarray] = []

    def _run(self, feeds):
        self.seen.append(feeds["image"])
        return {"image_embeddings": np.zeros((1, 256, 64, 64), np.float32)}


def test_torch_parity_records_its_preprocessing_for_the_report() -> None:
    """The PyTorch path (`judge.SessionReference`) preprocesses with the reference's recorded
    recipe and leaves it in the record, where the report finds the prompt frame."""
    spec = get_spec(L0)
    meta = {"model": L0, **spec.preprocessing.to_metadata()}
    encoder = _Encoder(meta, spec.img_size)
    record: dict[str, Any] = {}
    judge(SessionReference(encoder, {}), [], [], record=record)
    assert record["preprocessing"] == spec.preprocessing
    assert _prompt_frame(record) == 1024
    expected, _ = P.preprocess(make_test_image(), params=spec.preprocessing)
    np.testing.assert_array_equal(encoder.seen[0], expected)
    assert _prompt_frame({}) == 1024  # nothing recorded: EdgeSAM's frame
    assert _prompt_frame({"preprocessing": P.Preprocessing(encoder_size=512, frame=512)}) == 512

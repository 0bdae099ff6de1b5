"""`edgesam-export everything` through Typer's runner on the demo export, and the
`Predictor.predict_low_res` interface the generator drives (batched = one prompt at a time)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.errors import ExitCode, InputError
from edgesam_export.device.everything import MaskGenerator, coco_rle_to_rle, rle_to_mask
from edgesam_export.device.png import encode_png
from edgesam_export.device.predictor import Predictor

runner = CliRunner()
#: The keys of `edgesam-export everything --json` (stdout or file: the same document).
REPORT_KEYS = {"image", "masks", "overlay", "annotations", "params", "seconds", "stats"}
GOLDEN_IMAGE = Path(__file__).parent / "fixtures" / "edge_sam" / "golden_seed0.npz"
# Synthetic weights predict IoU <= ~0.6: a low threshold lets masks through for the checks.
ARGS = ["--points-per-side", "4", "--points-per-batch", "16", "--pred-iou-thresh", "0.3"]
ARGS += ["--stability-thresh", "0", "--score", "iou"]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    with np.load(GOLDEN_IMAGE, allow_pickle=False) as data:
        return data["image"]


@pytest.fixture(scope="module")
def predictor(default_artifacts: Path, image: np.ndarray) -> Predictor:
    p = Predictor(
        open_session(default_artifacts / "edge_sam_encoder.onnx", threads=2),
        open_session(default_artifacts / "edge_sam_decoder.onnx", threads=2),
    )
    p.set_image(image)
    return p


def test_predict_low_res_batches_equal_single_prompts(predictor: Predictor, image: np.ndarray):
    points = np.array([[100.0, 80.0], [320.5, 240.25], [600.0, 400.0]])
    coords = P.transform_coords(points, image.shape[:2])[:, None, :]
    logits, scores = predictor.predict_low_res(coords, np.ones((3, 1), np.float32))
    assert logits.shape == (3, 4, 256, 256) and scores.shape == (3, 4)
    for k, pt in enumerate(points):
        one = predictor.predict(points=pt[None], labels=[1], num_multimask_outputs=4)
        np.testing.assert_allclose(logits[k], one.low_res_logits, atol=1e-3)
        np.testing.assert_allclose(scores[k], one.scores, atol=1e-5)


def test_predictor_conventions_come_from_metadata(predictor: Predictor):
    assert predictor.multimask_tokens == (1, 2, 3)  # EdgeSAM: token 0 is the single mask
    assert predictor.default_score == "stability"  # EdgeSAM's predictor default
    assert predictor.scores_kind == "iou"
    enc = predictor.encoder
    io = {"inputs": predictor.decoder.inputs, "outputs": predictor.decoder.outputs}
    custom = SimpleNamespace(
        **io,
        metadata={
            **{  # a 3-token model: none of EdgeSAM's recorded slots
                k: v
                for k, v in predictor.decoder.metadata.items()
                if not k.startswith("mask_tokens_")
            },
            "family": "SomeSAM",
            "num_mask_tokens": "3",
            "use_stability_score": "true",
        },
    )
    other = Predictor(enc, custom)  # type: ignore[arg-type]
    assert other.multimask_tokens == (0, 1, 2)
    assert other.default_score == "iou" and other.scores_kind == "stability"
    with pytest.raises(InputError, match="stability scores"):
        MaskGenerator(other, score="iou")
    tagged = SimpleNamespace(**io, metadata={**custom.metadata, "multimask_tokens": "[2]"})
    assert Predictor(enc, tagged).multimask_tokens == (2,)  # type: ignore[arg-type]


def test_predict_low_res_needs_an_image(default_artifacts: Path):
    p = Predictor(
        open_session(default_artifacts / "edge_sam_encoder.onnx"),
        open_session(default_artifacts / "edge_sam_decoder.onnx"),
    )
    with pytest.raises(InputError, match="set_image"):
        p.predict_low_res(np.zeros((1, 1, 2), np.float32), np.ones((1, 1), np.float32))


def test_everything_help():
    result = runner.invoke(app, ["everything", "--help"])
    assert result.exit_code == 0 and "--points-per-side" in result.output


def test_everything_on_the_demo_export(default_artifacts, image, predictor, tmp_path):
    png = tmp_path / "photo.png"
    png.write_bytes(encode_png(image))
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["everything", str(default_artifacts), str(png), *ARGS, "-o", str(out), "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds the JSON only
    assert set(report) == REPORT_KEYS
    assert report["params"]["score"] == "iou" and report["stats"]["decoder_calls"] == 1
    coco = json.loads((out / "photo_masks.json").read_text())
    anns = coco["annotations"]
    assert report["masks"] == len(anns) > 0
    assert coco["images"][0] == {"id": 1, "file_name": "photo.png", "height": 480, "width": 640}
    masks = [rle_to_mask(coco_rle_to_rle(a["segmentation"])) for a in anns]
    assert [int(m.sum()) for m in masks] == [a["area"] for a in anns]

    # the same records as the library gives over the same predictor
    direct = MaskGenerator(
        predictor,
        points_per_side=4,
        points_per_batch=16,
        pred_iou_thresh=0.3,
        stability_score_thresh=0.0,
        output_mode="coco_rle",
        score="iou",
    ).generate(image)
    assert [a["segmentation"] for a in anns] == [r["segmentation"] for r in direct]

    overlay = np.asarray(Image.open(out / "photo_masks.png"))
    assert overlay.shape == image.shape
    changed = (overlay != image).any(axis=2)
    union = np.any(masks, axis=0)
    assert changed.any() and not (changed & ~union).any()  # paints masks, nothing else
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial files


def test_everything_default_score_is_the_models(default_artifacts, image, tmp_path):
    npy = tmp_path / "img.npy"
    np.save(npy, image[:200, :300])
    report_path = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "everything",
            str(default_artifacts),
            str(npy),
            "--points-per-side",
            "2",
            "-o",
            str(tmp_path / "o"),
            "--json",
            str(report_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output
    text = report_path.read_text()
    report = json.loads(text)
    assert set(report) == REPORT_KEYS and text.endswith("}\n")
    assert report["params"]["score"] == "stability"
    assert report["overlay"] == str(tmp_path / "o" / "img_masks.png")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_everything_bad_input(default_artifacts, tmp_path):
    def run(*args: str):
        return runner.invoke(app, ["everything", *args, "-o", str(tmp_path / "o")])

    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(b"\xff\xd8\xff")
    r = run(str(default_artifacts), str(jpg))
    assert r.exit_code == ExitCode.BAD_INPUT and "PNG" in r.output
    r = run(str(default_artifacts), str(tmp_path / "missing.png"))
    assert r.exit_code == ExitCode.BAD_INPUT and "not found" in r.output
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros((8, 8, 3), np.uint8))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(str(empty), str(npy))
    assert r.exit_code == ExitCode.BAD_INPUT and "no .onnx artifacts" in r.output
    r = run(str(default_artifacts), str(npy), "--pred-iou-thresh", "1.5")
    assert r.exit_code == ExitCode.BAD_INPUT and "[0, 1]" in r.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "edge_sam_encoder.onnx").write_bytes(b"not onnx")
    r = run(str(broken), str(npy))
    assert r.exit_code == ExitCode.ARTIFACT_UNREADABLE


def test_everything_warns_for_calibrated_synthetic_weights(default_artifacts, image, tmp_path):
    """Calibrated synthetic weights (the default) are no more trained than untrained ones: the
    banner once named only `synthetic-untrained` and stayed silent for the default export."""
    import onnx

    art = tmp_path / "art"
    shutil.copytree(default_artifacts, art)
    decoder = art / "edge_sam_decoder.onnx"
    proto = onnx.load(decoder)
    props = {p.key: p for p in proto.metadata_props}
    assert props["weights"].value.startswith("synthetic-")
    props["weights"].value = "synthetic-calibrated"
    onnx.save(proto, decoder)
    npy = tmp_path / "img.npy"
    np.save(npy, image[:200, :300])
    args = ["everything", str(art), str(npy), "--points-per-side", "2", "-o", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC weights (synthetic-calibrated)" in result.output

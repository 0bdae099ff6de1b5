"""Tests for `edgesam_export.device.processing`: Pillow exactness, golden parity, prompts, masks.

torch and Pillow are test dependencies: they provide the reference semantics (SAM's
torch post-processing, Pillow's resize) that the pure-numpy device code must reproduce.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgesam_export.device import processing as P
from edgesam_export.device.processing import ImageInfo, ProcessingError
from edgesam_export.device.processing import masks as PM

REPO_ROOT = Path(__file__).resolve().parents[1]
# The `golden` fixture (conftest.py) runs each golden test once per golden file.


def pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow reference: what SAM's `ResizeLongestSide.apply_image` does."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def torch_postprocess(logits: np.ndarray, info: ImageInfo) -> np.ndarray:
    """SAM's `postprocess_masks`: upscale to S x S, crop to input_size, resize to original."""
    x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    size = info.img_size
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    x = x[..., : info.input_size[0], : info.input_size[1]]
    x = F.interpolate(x, info.original_size, mode="bilinear", align_corners=False)
    return (x[0] if squeeze else x).numpy()


def reference_preprocess(
    image: np.ndarray, img_size: int = 1024
) -> tuple[np.ndarray, tuple[int, int]]:
    """SAM preprocessing written with PIL + numpy (float32 normalisation, zero pad)."""
    h, w = P.get_preprocess_shape(image.shape[0], image.shape[1], img_size)
    resized = pil_resize(image, (h, w)).astype(np.float32).transpose(2, 0, 1)
    mean = np.array(P.DEFAULT_PIXEL_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(P.DEFAULT_PIXEL_STD, dtype=np.float32)[:, None, None]
    out = np.zeros((1, 3, img_size, img_size), dtype=np.float32)
    out[0, :, :h, :w] = (resized - mean) / std
    return out, (h, w)


# --------------------------------------------------------------------------------------
# module hygiene
# --------------------------------------------------------------------------------------


def test_import_pulls_in_no_heavy_dependencies() -> None:
    code = (
        "import sys\n"
        "import edgesam_export.device.processing\n"
        "bad = sorted(m for m in ('torch', 'cv2', 'PIL') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.stdout.strip() == ""


def test_public_api_is_exported() -> None:
    for name in P.__all__:
        assert hasattr(P, name), name
    assert issubclass(ProcessingError, ValueError)
    assert P.DEFAULT_PIXEL_MEAN == (123.675, 116.28, 103.53)
    assert P.DEFAULT_PIXEL_STD == (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (768, 1024)),
        ((640, 480), (1024, 768)),
        ((333, 517), (660, 1024)),
        ((1024, 1024), (1024, 1024)),
        ((4000, 3000), (1024, 768)),
        ((1, 1000), (1, 1024)),
        ((1, 5000), (1, 1024)),  # SAM would give h = 0; clamped to 1
        ((5000, 1), (1024, 1)),
    ],
)
def test_get_preprocess_shape(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert P.get_preprocess_shape(hw[0], hw[1], 1024) == expected


def test_get_preprocess_shape_rejects_non_positive() -> None:
    with pytest.raises(ProcessingError, match="positive"):
        P.get_preprocess_shape(0, 10, 1024)
    with pytest.raises(ProcessingError, match="positive"):
        P.get_preprocess_shape(10, 10, -5)


def test_image_info_normalises_and_validates() -> None:
    loose: Any = [np.int64(480), 640]  # e.g. read back from JSON / numpy metadata
    info = ImageInfo(original_size=loose, input_size=(768, 1024), img_size=1024)
    assert info.original_size == (480, 640) and isinstance(info.original_size[0], int)
    assert hash(info) == hash(ImageInfo((480, 640), (768, 1024), 1024))
    with pytest.raises(ProcessingError, match="does not fit"):
        ImageInfo((480, 640), (768, 2048), 1024)
    with pytest.raises(ProcessingError, match="height"):
        ImageInfo((0, 640), (768, 1024), 1024)


# --------------------------------------------------------------------------------------
# Pillow-exact resize
# --------------------------------------------------------------------------------------


def _random_resize_cases(count: int = 40) -> list[tuple[int, int, int, int, bool]]:
    rng = np.random.default_rng(20240601)
    cases = []
    for i in range(count):
        in_h, in_w = (int(v) for v in rng.integers(1, 701, size=2))
        # Cycle through regimes: both up, both down, mixed either way, one axis equal.
        regime = i % 5
        if regime == 0:
            out_h, out_w = in_h + int(rng.integers(1, 400)), in_w + int(rng.integers(1, 400))
        elif regime == 1:
            out_h, out_w = int(rng.integers(1, in_h + 1)), int(rng.integers(1, in_w + 1))
        elif regime == 2:
            out_h, out_w = int(rng.integers(1, in_h + 1)), in_w + int(rng.integers(1, 400))
        elif regime == 3:
            out_h, out_w = in_h + int(rng.integers(1, 400)), int(rng.integers(1, in_w + 1))
        else:
            out_h, out_w = in_h, int(rng.integers(1, 1100))
        if i % 2:  # swap to get both portrait and landscape shapes in every regime
            in_h, in_w, out_h, out_w = in_w, in_h, out_w, out_h
        cases.append((in_h, in_w, out_h, out_w, i % 3 == 0))
    return cases


@pytest.mark.parametrize(("in_h", "in_w", "out_h", "out_w", "gray"), _random_resize_cases())
def test_resize_uint8_matches_pillow_exactly(
    in_h: int, in_w: int, out_h: int, out_w: int, gray: bool
) -> None:
    rng = np.random.default_rng(in_h * 1000 + in_w)
    shape = (in_h, in_w) if gray else (in_h, in_w, 3)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ours = P.resize_uint8(image, (out_h, out_w))
    expected = pil_resize(image, (out_h, out_w))
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.count_nonzero(ours != expected) == 0


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [
        ((1, 1), (1, 1)),
        ((1, 1), (5, 700)),
        ((700, 3), (1, 1)),
        ((2, 700), (1024, 1)),
        ((600, 100), (120, 60)),  # Pillow 13 runs the vertical pass first here
        ((300, 100), (250, 60)),  # ... and horizontal first here
        ((257, 255), (256, 256)),
        ((480, 640), (768, 1024)),
    ],
)
def test_resize_uint8_edge_shapes(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    # Smooth-ish content plus noise: exercises rounding near .5 as well as extremes.
    image = rng.integers(0, 256, size=(*in_hw, 3), dtype=np.uint8)
    image[::2] = 255
    assert np.array_equal(P.resize_uint8(image, out_hw), pil_resize(image, out_hw))


def test_resize_uint8_pass_order_and_copy() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(600, 100, 3), dtype=np.uint8)
    auto = P.resize_uint8(image, (120, 60))
    vertical = P.resize_uint8(image, (120, 60), pass_order="vertical")
    horizontal = P.resize_uint8(image, (120, 60), pass_order="horizontal")
    assert np.array_equal(auto, vertical)
    assert not np.array_equal(auto, horizontal)  # the order is observable, hence the rule
    same = P.resize_uint8(image, (600, 100))
    assert np.array_equal(same, image) and not np.shares_memory(same, image)
    with pytest.raises(ProcessingError, match="pass_order"):
        P.resize_uint8(image, (10, 10), pass_order="diagonal")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), np.float32), np.zeros((0, 4), np.uint8), np.zeros((2, 2, 2, 2), np.uint8)],
)
def test_resize_uint8_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ProcessingError, match="uint8"):
        P.resize_uint8(bad, (2, 2))


def test_resize_uint8_rejects_bad_size() -> None:
    image = np.zeros((4, 4), np.uint8)
    with pytest.raises(ProcessingError, match="positive"):
        P.resize_uint8(image, (0, 3))
    with pytest.raises(ProcessingError, match="pair"):
        P.resize_uint8(image, (3,))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------


def test_preprocess_reproduces_golden_tensor(golden) -> None:
    tensor, info = P.preprocess(golden["image"])
    assert tensor.shape == (1, 3, 1024, 1024) and tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    assert np.abs(tensor - golden["input_tensor"]).max() <= 1e-6
    assert info == ImageInfo(
        original_size=tuple(golden["original_size"].tolist()),
        input_size=tuple(golden["input_size"].tolist()),
        img_size=1024,
    )


@pytest.mark.parametrize(
    ("hw", "img_size"),
    [
        ((333, 517), 1024),
        ((517, 333), 1024),
        ((1100, 1500), 1024),
        ((2000, 700), 1024),
        ((64, 48), 256),
    ],
)
def test_preprocess_matches_pil_numpy_reference(hw: tuple[int, int], img_size: int) -> None:
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    tensor, info = P.preprocess(image, img_size)
    expected, input_size = reference_preprocess(image, img_size)
    assert info.input_size == input_size and info.original_size == hw
    assert np.abs(tensor - expected).max() <= 1e-6


def test_preprocess_grayscale_rgba_and_bgr_rules() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    base, _ = P.preprocess(rgb, 256)

    gray = rgb[..., 0]
    gray_tensor, _ = P.preprocess(gray, 256)
    replicated, _ = P.preprocess(np.repeat(gray[..., None], 3, axis=2), 256)
    assert np.array_equal(gray_tensor, replicated)

    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(90, 120, 1), dtype=np.uint8)], axis=2)
    assert np.array_equal(P.preprocess(rgba, 256)[0], base)  # alpha dropped, not composited

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    assert np.array_equal(P.preprocess(bgr, 256, image_format="BGR")[0], base)
    bgra = np.concatenate([bgr, rgba[..., 3:]], axis=2)
    assert np.array_equal(P.preprocess(bgra, 256, image_format="BGR")[0], base)


@pytest.mark.parametrize(
    ("bad", "word"),
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 5), np.uint8), "channels"),
        (np.zeros((8, 8, 1), np.uint8), "channels"),
        (np.zeros((1, 8, 8, 3), np.uint8), "2-D or 3-D"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        ([[[0, 0, 0]]], "numpy array"),
    ],
)
def test_preprocess_rejects_bad_images(bad: object, word: str) -> None:
    with pytest.raises(ProcessingError, match=word) as excinfo:
        P.preprocess(bad)  # type: ignore[arg-type]
    assert "HxWx3" in str(excinfo.value)  # every message says what is accepted


def test_preprocess_rejects_bad_options() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ProcessingError, match="image_format"):
        P.preprocess(image, image_format="RGBA")
    with pytest.raises(ProcessingError, match="pixel_mean"):
        P.preprocess(image, pixel_mean=(1.0, 2.0))
    with pytest.raises(ProcessingError, match="non-zero"):
        P.preprocess(image, pixel_std=(1.0, 0.0, 1.0))
    with pytest.raises(ProcessingError, match="img_size"):
        P.preprocess(image, img_size=0)


# --------------------------------------------------------------------------------------
# coordinates and prompts
# --------------------------------------------------------------------------------------


def test_transform_coords_and_boxes_match_golden(golden) -> None:
    """Original-image prompts map to exactly the float32 coordinates the official code fed."""
    size = golden.original_size
    for name in golden.pred_sets():
        prompt = golden.pred_prompt(name)
        if f"dec_{name}_point_coords" not in golden:
            continue
        rows = []
        if "points" in prompt:
            coords = P.transform_coords(prompt["points"], size, 1024)
            assert coords.dtype == np.float32
            rows.append(coords)
        if "box" in prompt:
            boxes = P.transform_boxes(prompt["box"], size, 1024)
            assert boxes.dtype == np.float32 and boxes.shape == (4,)
            rows.append(boxes.reshape(2, 2))
        assert np.array_equal(np.concatenate(rows)[None], golden[f"dec_{name}_point_coords"])


def test_transform_coords_round_trip() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(1, 4000, size=2))
        points = rng.uniform(0, 1, size=(3, 7, 2)) * [width, height]
        mapped = P.transform_coords(points, (height, width), 1024)
        new_h, new_w = P.get_preprocess_shape(height, width, 1024)
        back = mapped.astype(np.float64) / [new_w / width, new_h / height]
        assert mapped.shape == points.shape
        assert np.abs(back - points).max() < 1e-3


def test_transform_rejects_bad_input() -> None:
    with pytest.raises(ProcessingError, match="finite"):
        P.transform_coords([[np.nan, 1.0]], (10, 10), 1024)
    with pytest.raises(ProcessingError, match="finite"):
        P.transform_boxes([0.0, 0.0, np.inf, 1.0], (10, 10), 1024)
    with pytest.raises(ProcessingError, match=r"\(\.\.\., 2\)"):
        P.transform_coords([[1.0, 2.0, 3.0]], (10, 10), 1024)
    with pytest.raises(ProcessingError, match=r"\(\.\.\., 4\)"):
        P.transform_boxes([[1.0, 2.0]], (10, 10), 1024)


def test_build_prompts_golden(golden) -> None:
    """pad=False gives the wrapper's inputs; pad=True appends (0, 0, -1) to point-only sets."""
    size = golden.original_size
    checked = 0
    for name in golden.pred_sets():
        if f"dec_{name}_point_coords" not in golden:
            continue
        prompt = golden.pred_prompt(name)
        coords, labels = P.build_prompts(**prompt, original_size=size, pad=False)
        assert coords.dtype == np.float32 and labels.dtype == np.float32
        assert np.array_equal(coords, golden[f"dec_{name}_point_coords"])
        assert np.array_equal(labels, golden[f"dec_{name}_point_labels"])
        padded, padded_labels = P.build_prompts(**prompt, original_size=size)
        if "box" in prompt:
            assert np.array_equal(padded, coords) and np.array_equal(padded_labels, labels)
        else:
            assert np.array_equal(padded[:, :-1], coords)
            assert padded[0, -1].tolist() == [0.0, 0.0] and padded_labels[0, -1] == -1
        checked += 1
    assert checked


def test_build_prompts_points_and_box_order() -> None:
    coords, labels = P.build_prompts(
        points=[[10, 20], [30, 40]], labels=[1, 0], box=[0, 0, 100, 50], original_size=(100, 200)
    )
    # scale 1024 / 200 = 5.12 on both axes; points first, then corners, no padding row.
    expected = np.array([[[51.2, 102.4], [153.6, 204.8], [0, 0], [512, 256]]], np.float32)
    assert coords.shape == (1, 4, 2) and np.allclose(coords, expected)
    assert np.array_equal(labels, np.array([[1, 0, 2, 3]], np.float32))


def test_build_prompts_batch_of_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]], np.float32)
    coords, labels = P.build_prompts(box=boxes, original_size=(512, 512))
    assert coords.shape == (3, 2, 2) and labels.shape == (3, 2)
    assert np.array_equal(coords, boxes.reshape(3, 2, 2) * 2)
    assert np.array_equal(labels, np.tile(np.array([2, 3], np.float32), (3, 1)))
    # Points, if given with a batch of boxes, are shared by every prompt set.
    coords, labels = P.build_prompts([[1, 1]], [1], boxes, original_size=(512, 512))
    assert coords.shape == (3, 3, 2)
    assert np.array_equal(labels[:, 0], np.ones(3, np.float32))
    assert np.array_equal(coords[:, 0], np.full((3, 2), 2, np.float32))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"points": [[np.nan, 1.0]], "labels": [1]}, "finite"),
        ({"points": [[1.0, 1.0]], "labels": [7]}, "box="),
        ({"points": [[1.0, 1.0]], "labels": [-1]}, "0 \\(background\\) or 1"),
        ({"points": [[1.0, 1.0], [2.0, 2.0]], "labels": [1]}, "mismatch"),
        ({"points": [[1.0, 1.0]]}, "together"),
        ({"labels": [1]}, "together"),
        ({"box": [10.0, 0.0, 5.0, 10.0]}, "x1 >= x0"),
        ({"box": [0.0, 10.0, 5.0, 5.0]}, "inverted"),
        ({}, "no prompt"),
        ({"points": [1.0, 2.0], "labels": [1]}, r"\(K, 2\)"),
        ({"points": [[1.0, 2.0]], "labels": [[1]]}, r"\(K,\)"),
        ({"box": [1.0, 2.0, 3.0]}, r"\(4,\) or \(B, 4\)"),
        ({"box": np.zeros((2, 2, 4))}, r"\(4,\) or \(B, 4\)"),
        ({"points": "abc", "labels": [1]}, "numeric"),
    ],
)
def test_build_prompts_rejects_bad_prompts(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ProcessingError, match=word):
        P.build_prompts(**kwargs, original_size=(100, 100))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------


def test_postprocess_matches_golden_masks(golden) -> None:
    info = ImageInfo(golden.original_size, golden.input_size, 1024)
    keys = [k[: -len("_masks")] for k in golden if k.startswith("pred_") and k.endswith("_masks")]
    assert keys
    for key in keys:
        low_res = golden[f"{key}_low_res_logits"]
        logits = P.postprocess_masks(low_res, info)
        assert logits.dtype == np.float32 and logits.shape == golden[f"{key}_masks"].shape
        assert np.abs(logits - torch_postprocess(low_res, info)).max() <= 1e-4
        flipped = np.count_nonzero(P.threshold_masks(logits) != golden[f"{key}_masks"])
        assert flipped <= 2e-4 * logits.size, key


@pytest.mark.parametrize(
    ("shape", "original_size"),
    [
        ((3, 256, 256), (333, 517)),
        ((2, 4, 256, 256), (517, 333)),
        ((1, 256, 256), (1, 1000)),
        ((2, 1, 256, 256), (1000, 1)),
        ((1, 256, 256), (1, 5000)),
        ((4, 64, 64), (300, 200)),
    ],
)
def test_postprocess_matches_torch_on_random_data(
    shape: tuple[int, ...], original_size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(shape) + sum(original_size))
    low_res = (rng.standard_normal(shape) * 8).astype(np.float32)
    input_size = P.get_preprocess_shape(*original_size, 1024)
    info = ImageInfo(original_size, input_size, 1024)
    ours = P.postprocess_masks(low_res, info)
    expected = torch_postprocess(low_res, info)
    assert ours.shape == (*shape[:-2], *original_size) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-4


def test_postprocess_caches_read_only_bands() -> None:
    info = ImageInfo((30, 40), (768, 1024), 1024)
    a = PM._postprocess_bands(info.original_size, info.input_size, 1024, (256, 256))
    b = PM._postprocess_bands(info.original_size, info.input_size, 1024, (256, 256))
    assert a is b
    for band in a:
        assert all(not sub.flags.writeable for *_, sub in band)


def test_banded_operator_equals_dense_product() -> None:
    """Skipping the zero columns of each row block changes nothing but the work done."""
    dense = PM._torch_bilinear_matrix(256, 1024)[:700]
    dense = PM._torch_bilinear_matrix(700, 333) @ dense
    x = np.random.default_rng(3).standard_normal((2, 256, 5)).astype(np.float32)
    banded = PM._apply_rows(PM._banded(dense), x, dense.shape[0])
    np.testing.assert_allclose(banded, dense.astype(np.float32) @ x, atol=1e-5)
    for r0, r1, c0, c1, _sub in PM._banded(dense):
        assert not np.any(dense[r0:r1, :c0]) and not np.any(dense[r0:r1, c1:])
        assert c1 - c0 < 40  # narrow windows: the point of banding


def test_postprocess_rejects_bad_input() -> None:
    info = ImageInfo((30, 40), (768, 1024), 1024)
    with pytest.raises(ProcessingError, match=r"\(K, 256, 256\)"):
        P.postprocess_masks(np.zeros((256, 256), np.float32), info)
    with pytest.raises(ProcessingError, match="ImageInfo"):
        P.postprocess_masks(np.zeros((1, 256, 256), np.float32), (30, 40))  # type: ignore[arg-type]


def test_threshold_masks_is_strict() -> None:
    logits = np.array([[-1.0, 0.0], [0.5, 1e-7]], np.float32)
    assert P.threshold_masks(logits).tolist() == [[False, False], [True, True]]
    assert P.threshold_masks(logits, 0.5).tolist() == [[False, False], [False, False]]
    assert P.threshold_masks(logits).dtype == np.bool_


def test_stability_score_formula_and_golden(golden) -> None:
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((2, 4, 32, 32)) * 3).astype(np.float32)
    expected = (logits > 1.0).sum(axis=(-2, -1)).astype(np.float32) / (logits > -1.0).sum(
        axis=(-2, -1)
    ).astype(np.float32)
    score = P.stability_score(logits)
    assert score.dtype == np.float32 and score.shape == (2, 4)
    assert np.array_equal(score, expected)
    for key in golden.dec_sets():
        masks = golden[f"dec_{key}_masks"]
        got = P.stability_score(masks)
        assert np.array_equal(got, golden[f"dec_{key}_scores_stability"])
        assert np.all((got >= 0) & (got <= 1))


def test_stability_score_empty_mask_is_nan() -> None:
    score = P.stability_score(np.full((1, 8, 8), -5.0, np.float32))
    assert np.isnan(score).all()


def test_select_masks_conventions() -> None:
    scores = np.arange(4, dtype=np.float32)
    masks = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 5, 6), np.float32)
    for num, tokens in ((1, [0]), (3, [1, 2, 3]), (4, [0, 1, 2, 3])):
        s, m = P.select_masks(scores, masks, num)
        assert s.tolist() == tokens and m.shape == (len(tokens), 5, 6)
        assert m[:, 0, 0].tolist() == tokens
        sb, mb = P.select_masks(np.stack([scores, scores]), np.stack([masks, masks]), num)
        assert sb.shape == (2, len(tokens)) and mb.shape == (2, len(tokens), 5, 6)
        assert sb[1].tolist() == tokens


def test_select_masks_rejects_bad_input() -> None:
    scores, masks = np.zeros(4, np.float32), np.zeros((4, 5, 6), np.float32)
    with pytest.raises(ProcessingError, match=r"\[1, 3, 4\]"):
        P.select_masks(scores, masks, 2)
    with pytest.raises(ProcessingError, match="4 decoder tokens"):
        P.select_masks(scores[:3], masks[:3], 1)
    with pytest.raises(ProcessingError, match="leading dims"):
        P.select_masks(np.zeros((2, 4)), masks, 1)

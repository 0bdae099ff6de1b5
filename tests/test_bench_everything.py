"""The everything stage of `edgesam-bench` (`edgesam_export.device.bench_everything`) and its report
section: batch-size planning against what a decoder declares (CoreML `max_batch`, TensorRT-style
profiles, refusals found only when run), the stage's numbers on ONNX sessions with a tiny grid,
and the overlay PNG on the report page."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesam_export.device.backends import open_session
from edgesam_export.device.bench_everything import (
    FAILED,
    OK,
    POINTS_PER_PROMPT,
    SKIPPED,
    call_sizes,
    everything_stage,
    overlays,
    plan,
    refusal,
)
from edgesam_export.device.contract import TensorSpec
from edgesam_export.device.errors import InputError
from edgesam_export.device.everything import coco_rle_to_rle, rle_to_mask
from edgesam_export.device.everything.overlay import render_overlay
from edgesam_export.device.parity import make_test_image
from edgesam_export.device.png import decode_png
from edgesam_export.device.report import write_bench_report
from edgesam_export.device.runtime import Session


class Wrapped(Session):
    """An ONNX decoder behind other declared limits (what CoreML / TensorRT artifacts say)."""

    backend = "wrapped"

    def __init__(
        self,
        inner: Session | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        enumerated_batches: tuple[int, ...] | None = None,
        profiles: dict[str, Any] | None = None,
        run_limit: int | None = None,
        run_error: type[Exception] = InputError,
    ) -> None:
        self.inner = inner
        specs = inner.inputs if inner else [TensorSpec("point_coords", "float32", ("b", "n", 2))]
        outs = inner.outputs if inner else []
        meta = {**(inner.metadata if inner else {}), **(metadata or {})}
        super().__init__("decoder", specs, outs, meta)
        self.enumerated = enumerated_batches
        if profiles is not None:
            self.profiles = profiles
        self.run_limit = run_limit
        self.run_error = run_error
        self.calls: list[tuple[int, ...]] = []

    def accepts(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        if self.enumerated is not None and "point_coords" in feeds:
            b = feeds["point_coords"].shape[0]
            if b not in self.enumerated:
                return f"point_coords B={b} is not one of the enumerated shapes"
        return None

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = feeds["point_coords"].shape
        self.calls.append(shape)
        if self.run_limit is not None and shape[0] > self.run_limit:
            raise self.run_error(f"point_coords: shape {shape} is outside the engine's profile")
        assert self.inner is not None
        return self.inner.run(feeds)


def test_call_sizes_include_the_last_partial_batch() -> None:
    assert call_sizes(64, 16) == [16]
    assert call_sizes(64, 48) == [48, 16]
    assert call_sizes(16, 64) == [16]  # one call with every point
    assert call_sizes(10, 4) == [4, 2]


def test_max_batch_1_decoder_is_skipped_with_the_reason_and_falls_back_to_1() -> None:
    coreml_like = Wrapped(metadata={"max_batch": "1"})  # CoreML's default export
    assert refusal(coreml_like, 1) is None
    assert "max_batch" in (refusal(coreml_like, 2) or "")
    rows = plan(coreml_like, (16, 64), 64)
    assert [(b, fb) for b, _, fb in rows] == [(16, False), (64, False), (1, True)]
    assert all("at most 1 prompt set" in str(reason) for _, reason, _ in rows[:2])
    assert rows[2][1] is None
    unlimited = Wrapped()
    assert plan(unlimited, (16, 64), 64) == [(16, None, False), (64, None, False)]


def test_profiles_and_enumerated_shapes_limit_the_batch() -> None:
    trt_like = Wrapped(
        profiles={"point_coords": {"min": [1, 1, 2], "opt": [1, 2, 2], "max": [8, 6, 2]}}
    )
    rows = plan(trt_like, (4, 16), 64)
    assert rows[0] == (4, None, False)
    assert "outside the engine's profile" in str(rows[1][1])
    assert rows[2:] == [(8, None, True)]  # the profile's largest batch, up to 16
    narrow = Wrapped(
        profiles={"point_coords": {"min": [1, 1, 2], "max": [8, POINTS_PER_PROMPT - 1, 2]}}
    )
    assert "profile" in str(refusal(narrow, 1))  # the padded prompt (2 points) does not fit
    ((batch, reason, fallback),) = plan(narrow, (4,), 16)  # nothing fits: no fallback row
    assert batch == 4 and "profile" in str(reason) and not fallback
    # B in {5, 8}: 20 points in batches of 8 end with a batch of 4, which is refused; the
    # largest batch whose every call fits is 5 (four calls of 5)
    enumerated = Wrapped(enumerated_batches=(5, 8))
    rows = plan(enumerated, (8,), 20)
    assert rows[0][0] == 8 and "B=4" in str(rows[0][1]) and "enumerated" in str(rows[0][1])
    assert rows[1:] == [(5, None, True)]


@pytest.fixture(scope="module")
def sessions(default_artifacts: Path) -> tuple[Session, Session]:
    return (
        open_session(default_artifacts / "edge_sam_encoder.onnx", threads=2),
        open_session(default_artifacts / "edge_sam_decoder.onnx", threads=2),
    )


@pytest.fixture(scope="module")
def stage(sessions: tuple[Session, Session]) -> tuple[list[Any], dict[str, Wrapped], np.ndarray]:
    """2x2 points on a small test image: ONNX at B=4, the same decoder declaring max_batch 1,
    one refusing B>2 only when run (typed error) and one failing with a foreign error."""
    encoder, decoder = sessions
    wrapped = {
        "onnx-max1": Wrapped(decoder, metadata={"max_batch": "1"}),
        "onnx-runtime-refusal": Wrapped(decoder, run_limit=2),
        "onnx-broken": Wrapped(decoder, run_limit=0, run_error=RuntimeError),
    }
    image = make_test_image(240, 320)
    columns = {"onnx": (encoder, decoder), **{k: (encoder, v) for k, v in wrapped.items()}}
    runs = everything_stage(
        columns,
        image,
        points_per_side=2,
        batches=(4,),
        iters=1,
        warmup=0,
        pred_iou_thresh=0.0,  # synthetic weights score low: let masks through
        stability_score_thresh=0.0,
    )
    return runs, wrapped, image


def test_stage_runs_each_backend_at_the_batch_sizes_it_accepts(stage: tuple) -> None:
    runs, wrapped, _ = stage
    got = {(r.backend, r.points_per_batch): r.to_json() for r in runs}
    assert set(got) == {
        ("onnx", 4),
        ("onnx-max1", 4),
        ("onnx-max1", 1),
        ("onnx-runtime-refusal", 4),
        ("onnx-broken", 4),
    }
    skipped = got[("onnx-max1", 4)]
    assert skipped["status"] == SKIPPED and "max_batch" in skipped["reason"]
    assert "image_ms" not in skipped
    fallback = got[("onnx-max1", 1)]
    assert fallback["status"] == OK and fallback["fallback"] is True
    assert fallback["decoder_batch_sizes"] == [1, 1, 1, 1]
    assert all(shape[0] == 1 for shape in wrapped["onnx-max1"].calls)  # never sent B > 1
    refused = got[("onnx-runtime-refusal", 4)]
    assert refused["status"] == SKIPPED and "outside the engine's profile" in refused["reason"]
    assert len(wrapped["onnx-runtime-refusal"].calls) == 1  # not retried after refusing
    broken = got[("onnx-broken", 4)]
    assert broken["status"] == FAILED and broken["reason"].startswith("RuntimeError")


def test_stage_numbers_are_consistent(stage: tuple) -> None:
    runs, _, image = stage
    by_key = {(r.backend, r.points_per_batch): r for r in runs}
    for key in (("onnx", 4), ("onnx-max1", 1)):
        run = by_key[key]
        j = run.to_json()
        calls = 4 // key[1]
        assert j["decoder_calls"] == calls and len(j["decoder_batch_sizes"]) == calls
        assert j["image_ms"]["n"] == 1 and j["image_ms"]["warmup"] == 0
        total = j["image_ms"]["p50_ms"]
        parts = j["set_image_ms"] + j["decoder_ms"] + j["postprocess_ms"]
        assert 0 < parts <= total * 1.001 + 0.5  # the generator's parts fit in its wall time
        assert j["decoder_call_ms"] == pytest.approx(j["decoder_ms"] / calls, abs=1e-2)
        assert j["decoder_ms_per_prompt"] == pytest.approx(j["decoder_ms"] / 4, abs=1e-2)
        assert j["masks"] == len(run.records) > 0
        for rec in run.records:  # COCO RLE records of the image's size, areas that match
            mask = rle_to_mask(coco_rle_to_rle(rec["segmentation"]))
            assert mask.shape == image.shape[:2] and int(mask.sum()) == rec["area"]
    # one prompt set per call or four in one: the same decoder finds the same masks
    a, b = by_key[("onnx", 4)].records, by_key[("onnx-max1", 1)].records
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):  # float noise may move a boundary pixel, no more
        ma = rle_to_mask(coco_rle_to_rle(ra["segmentation"]))
        mb = rle_to_mask(coco_rle_to_rle(rb["segmentation"]))
        assert (ma & mb).sum() / (ma | mb).sum() > 0.99


def test_report_shows_each_backends_overlay_with_count_and_timings(
    stage: tuple, tmp_path: Path
) -> None:
    runs, _, image = stage
    shown = overlays(runs, image)
    assert set(shown) == {"onnx", "onnx-max1"}  # backends with a timed run
    payload = {
        "machine": {"cpu": "test"},
        "everything": {"points_per_side": 2, "iterations": 1, "runs": [r.to_json() for r in runs]},
    }
    page = write_bench_report(tmp_path / "report", payload, {}, everything_overlays=shown)
    html = page.read_text()
    assert "Segment everything (2x2 points)" in html
    onnx = next(r for r in runs if r.backend == "onnx")
    caption = f"onnx: {onnx.masks} masks, B=4, {onnx.to_json()['image_ms']['p50_ms']:.0f} ms"
    assert caption in html and 'src="everything_onnx.png"' in html
    assert "skipped: B=4: the decoder takes at most 1 prompt set" in html
    png = decode_png((page.parent / "everything_onnx.png").read_bytes())
    np.testing.assert_array_equal(png, render_overlay(image, onnx.records))
    assert (png != image).any()  # the masks are painted in

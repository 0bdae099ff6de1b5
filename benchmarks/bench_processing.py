"""Our pure-numpy pre/post-processing vs the official SAM path (Pillow + torch).

Run from the repository root:  python benchmarks/bench_processing.py

* preprocess: `edgesam_export.device.processing.preprocess` (numpy, Pillow-exact resize) vs SAM's
  predictor: Pillow `Image.resize` BILINEAR to the long-side-1024 size, then torch
  `as_tensor(...).permute`, `(x - mean) / std` and `F.pad` to 1024 x 1024.
* postprocess: `postprocess_masks` + `threshold_masks` (numpy) vs SAM's `postprocess_masks`:
  `F.interpolate(bilinear, align_corners=False)` to 1024, crop, `F.interpolate` to the original
  size, `> 0`; for 4 masks (logits (1, 4, 256, 256)) at 480x640 and 1080x1920.

Both sides start from and end in numpy arrays (the conversions are part of the cost) and are
timed interleaved. Writes benchmarks/results/bench_processing.{json,md} and prints the table.
Targets are reported (met / missed), never asserted.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgesam_export.device import processing as P
from edgesam_export.device.bench import Timing, machine_info, set_threads, time_interleaved
from edgesam_export.device.parity import make_test_image

NAME = "bench_processing"
SIZES = ((480, 640), (1080, 1920))
IMG_SIZE = P.DEFAULT_IMG_SIZE
WARMUP = 3
# Rounds of BLOCK consecutive timed calls per side, each turn after SETTLE_S of untimed calls:
# OpenBLAS threads spin ~0.1-0.2 s after numpy's matmuls, and torch's F.interpolate ran 2.5-4x
# slower inside that window; alternating call by call would measure that, not the code.
ROUNDS, COLD_ROUNDS, BLOCK, SETTLE_S = 8, 3, 5, 0.25
PRE_TARGET = 2.0  # numpy p50 / Pillow-path p50, at most
POST_TARGET = 1.0  # torch p50 / numpy p50, at least

PIXEL_MEAN = torch.tensor(P.DEFAULT_PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1)
PIXEL_STD = torch.tensor(P.DEFAULT_PIXEL_STD, dtype=torch.float32).view(-1, 1, 1)


def sam_preprocess(image: np.ndarray) -> np.ndarray:
    """SAM's predictor: ResizeLongestSide.apply_image (Pillow), then Sam.preprocess (torch)."""
    new_h, new_w = P.get_preprocess_shape(image.shape[0], image.shape[1], IMG_SIZE)
    resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None, :, :, :]
    x = (x - PIXEL_MEAN) / PIXEL_STD
    x = F.pad(x, (0, IMG_SIZE - new_w, 0, IMG_SIZE - new_h))
    return x.numpy()


def sam_postprocess(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
) -> np.ndarray:
    """SAM's Sam.postprocess_masks followed by `> mask_threshold` (0.0)."""
    masks = torch.from_numpy(low_res)
    masks = F.interpolate(masks, (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
    return (masks > 0.0).numpy()


def _postprocess_cache_clear() -> Callable[[], None] | None:
    """Clears processing.py's cached postprocessing operators (private, so looked up by name)."""
    caches = [
        fn
        for name in dir(P)
        if name.startswith("_postprocess")
        and callable(fn := getattr(getattr(P, name), "cache_clear", None))
    ]
    if not caches:
        return None

    def clear_all() -> None:
        for clear in caches:
            clear()

    return clear_all


def _case(
    step: str,
    size: tuple[int, int],
    ours: Callable[[], object],
    reference: Callable[[], object],
    rounds: int = ROUNDS,
) -> tuple[Timing, Timing]:
    label = f"{size[0]}x{size[1]}"
    _common.log(f"timing {step} at {label}: {rounds} rounds of {BLOCK} calls per side")
    s = time_interleaved(
        {"ours": ours, "reference": reference},
        warmup=WARMUP,
        iters=rounds,
        block=BLOCK,
        settle_s=SETTLE_S,
    )
    return (
        Timing(f"{step} {label}", "numpy", s["ours"]),
        Timing(f"{step} {label}", "reference", s["reference"]),
    )


def run() -> dict[str, Any]:
    set_threads(_common.THREADS)
    monitor = _common.CpuMonitor()
    date = _common.now_utc()
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    low_res = (rng.standard_normal((1, 4, 256, 256)) * 8.0).astype(np.float32)
    clear_cache = _postprocess_cache_clear()
    for size in SIZES:
        image = make_test_image(*size)
        ours_pre, _ = P.preprocess(image)
        diff = float(np.abs(ours_pre - sam_preprocess(image)).max())
        t_ours, t_ref = _case(
            "preprocess",
            size,
            functools.partial(P.preprocess, image),
            functools.partial(sam_preprocess, image),
        )
        rows.append(
            {
                "step": "preprocess",
                "size": list(size),
                "ours": t_ours.to_json(),
                "reference": t_ref.to_json(),
                "reference_name": "Pillow + torch (SAM)",
                "ratio_name": "numpy / reference",
                "ratio": t_ours.p50 / t_ref.p50,
                "target": f"<= {PRE_TARGET}",
                "met": t_ours.p50 / t_ref.p50 <= PRE_TARGET,
                "agreement": f"max |diff| {diff:.1e}",
            }
        )

        input_size = P.get_preprocess_shape(*size, IMG_SIZE)
        info = P.ImageInfo(size, input_size, IMG_SIZE)

        def ours_post(info: P.ImageInfo = info) -> np.ndarray:
            return P.threshold_masks(P.postprocess_masks(low_res, info))

        def ref_post(
            input_size: tuple[int, int] = input_size, size: tuple[int, int] = size
        ) -> np.ndarray:
            return sam_postprocess(low_res, input_size, size)

        flips = int(np.count_nonzero(ours_post() != ref_post()))
        t_ours, t_ref = _case("postprocess", size, ours_post, ref_post)
        ratio = t_ref.p50 / t_ours.p50
        agreement = f"{flips} of {low_res.shape[1] * size[0] * size[1]} mask pixels differ"
        rows.append(
            {
                "step": "postprocess",
                "size": list(size),
                "ours": t_ours.to_json(),
                "reference": t_ref.to_json(),
                "reference_name": "torch F.interpolate (SAM)",
                "ratio_name": "reference / numpy",
                "ratio": ratio,
                "target": f">= {POST_TARGET}",
                "met": ratio >= POST_TARGET,
                "agreement": agreement,
            }
        )

        if clear_cache is not None:  # first call for a new image size: matrices built too

            def ours_cold(info: P.ImageInfo = info) -> np.ndarray:
                clear_cache()
                return P.threshold_masks(P.postprocess_masks(low_res, info))

            t_ours, t_ref = _case("postprocess (cold)", size, ours_cold, ref_post, COLD_ROUNDS)
            rows.append(
                {
                    "step": "postprocess, first call per size (matrices built)",
                    "size": list(size),
                    "ours": t_ours.to_json(),
                    "reference": t_ref.to_json(),
                    "reference_name": "torch F.interpolate (SAM)",
                    "ratio_name": "reference / numpy",
                    "ratio": t_ref.p50 / t_ours.p50,
                    "target": "(info)",
                    "met": None,
                    "agreement": agreement,
                }
            )
    return {
        "benchmark": NAME,
        "date": date,
        "machine": machine_info(),
        "contention": monitor.result(),
        "processing_sha256": hashlib.sha256(Path(P.__file__).read_bytes()).hexdigest(),
        "settings": {
            "threads": _common.THREADS,
            "warmup": WARMUP,
            "rounds": ROUNDS,
            "cold_rounds": COLD_ROUNDS,
            "calls_per_turn": BLOCK,
            "settle_s_per_turn": SETTLE_S,
            "masks": int(low_res.shape[1]),
            "interleaved": "blocks",
        },
        "rows": rows,
    }


def render(result: dict[str, Any]) -> str:
    table_rows = []
    for r in result["rows"]:
        met = "-" if r["met"] is None else _common.met(r["met"])
        table_rows.append(
            [
                r["step"],
                f"{r['size'][0]}x{r['size'][1]}",
                f"{r['ours']['p50_ms']:.1f}",
                f"{r['reference']['p50_ms']:.1f}",
                r["reference_name"],
                f"{r['ratio']:.2f} ({r['ratio_name']})",
                r["target"],
                met,
                r["agreement"],
            ]
        )
    table = _common.md_table(
        [
            "step",
            "image",
            "numpy p50 ms",
            "reference p50 ms",
            "reference",
            "ratio",
            "target",
            "met",
            "agreement",
        ],
        table_rows,
        right=[False, False, True, True, False, True, False, False, False],
    )
    header = _common.machine_md(result["machine"], result["date"], result["contention"])
    st = result["settings"]
    return (
        "# bench_processing: numpy pre/post-processing vs the official Pillow/torch path\n\n"
        f"{header}\n- medians of {st['rounds'] * st['calls_per_turn']} calls per side (cold rows:"
        f" {st['cold_rounds'] * st['calls_per_turn']}), after warm-up, alternating turns of"
        f" {st['calls_per_turn']} consecutive calls, each turn after"
        f" {st['settle_s_per_turn']:.2f} s of untimed calls (lets the other side's spinning"
        " BLAS/OpenMP threads park);"
        " postprocessing: 4 masks,"
        " logits (1, 4, 256, 256), including the threshold\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    raise SystemExit(_common.main(NAME, run, render))

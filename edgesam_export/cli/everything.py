"""`edgesam-export everything`: segment everything in an image with exported artifacts.

Device side: onnxruntime sessions, our `Predictor` and `everything.MaskGenerator`, numpy, and a
PNG codec; no torch, cv2 or Pillow. Writes a PNG overlay and COCO-style JSON (compressed RLE
masks) to the output directory, atomically.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from edgesam_export.cli import (
    DebugOpt,
    JsonOpt,
    count_bar,
    emit_json,
    guarded,
    human_console,
    warn_synthetic,
)
from edgesam_export.device.artifacts import atomic_path
from edgesam_export.device.errors import InputError


class Score(str, Enum):
    stability = "stability"
    iou = "iou"


def open_predictor(artifact_dir: Path, score: str | None, threads: int | None) -> Any:
    """A `Predictor` over the encoder and the decoder of an artifact directory.

    Prefers a decoder with the IoU head (it serves both scores); a stability-score decoder is
    used when it is the only one and the score is stability.
    """
    from edgesam_export.device.backends import get_backend, open_session
    from edgesam_export.device.predictor import Predictor

    if not artifact_dir.is_dir():
        raise InputError(f"artifact directory not found: {artifact_dir}")
    onnx = get_backend("onnx")  # the predictor runs the ONNX graphs; their suffix is the entry's
    suffix = onnx.suffixes[0]
    paths = sorted(p for p in artifact_dir.glob(f"*{suffix}") if not p.name.startswith("."))
    if not paths:
        raise InputError(
            f"no {suffix} artifacts in {artifact_dir}: export them first with"
            f" `edgesam-export {onnx.name} --output DIR`"
        )
    encoders: list[Any] = []
    iou_decoders: list[Any] = []
    stab_decoders: list[Any] = []
    for path in paths:
        session = open_session(path, threads=threads)
        graph = session.metadata.get("graph")
        if graph == "encoder":
            encoders.append(session)
        elif graph == "decoder":
            stab = session.metadata.get("use_stability_score") == "true"
            (stab_decoders if stab else iou_decoders).append(session)
    if len(encoders) != 1:
        raise InputError(
            f"{artifact_dir} must hold exactly one encoder artifact, found {len(encoders)}"
            " (edgesam-export metadata graph=encoder)"
        )
    decoders = iou_decoders + ([] if score == "iou" else stab_decoders)
    if not decoders:
        need = (
            "an IoU decoder (exported without --use-stability-score)"
            if score == "iou"
            else "a decoder"
        )
        raise InputError(f"{artifact_dir} has no {need}")
    return Predictor(encoders[0], decoders[0])


def everything_cmd(
    artifact_dir: Annotated[
        Path, typer.Argument(help="Directory with the encoder and decoder artifacts (.onnx).")
    ],
    image: Annotated[Path, typer.Argument(help="Image: PNG (8-bit) or an HxWx3 uint8 .npy.")],
    points_per_side: Annotated[
        int, typer.Option("--points-per-side", min=1, help="Grid points per image side.")
    ] = 32,
    points_per_batch: Annotated[
        int, typer.Option("--points-per-batch", min=1, help="Grid points per decoder call.")
    ] = 64,
    crops: Annotated[
        int, typer.Option("--crops", min=0, help="Crop layers (layer i adds 4**i crops).")
    ] = 0,
    crop_points_downscale: Annotated[
        int,
        typer.Option("--crop-points-downscale", min=1, help="Points per side / this**layer."),
    ] = 1,
    pred_iou_thresh: Annotated[
        float, typer.Option("--pred-iou-thresh", help="Keep masks with quality above this.")
    ] = 0.88,
    stability_thresh: Annotated[
        float, typer.Option("--stability-thresh", help="Keep masks with stability >= this.")
    ] = 0.95,
    box_nms_thresh: Annotated[
        float, typer.Option("--box-nms-thresh", help="Box IoU above which duplicates go.")
    ] = 0.7,
    min_region_area: Annotated[
        int,
        typer.Option(
            "--min-region-area", min=0, help="Fill holes / drop islands smaller than this (px)."
        ),
    ] = 0,
    score: Annotated[
        Optional[Score],  # noqa: UP045
        typer.Option(
            case_sensitive=False,
            help="Quality score: stability (EdgeSAM's default) or iou (the decoder's IoU head);"
            " default from the artifacts' metadata.",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="onnxruntime threads (default: all cores).", show_default=False),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the overlay PNG and JSON.")
    ] = Path("everything"),
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Segment everything in IMAGE with the artifacts in ARTIFACT_DIR (numpy, no torch).

    Writes OUTPUT/<image>_masks.png (masks over the image) and OUTPUT/<image>_masks.json
    (COCO-style annotations, compressed RLE masks).
    """
    from edgesam_export.device.everything import MaskGenerator
    from edgesam_export.device.everything.overlay import render_overlay
    from edgesam_export.device.png import read_image, write_png

    with guarded(debug):
        if output.exists() and not output.is_dir():
            raise InputError(f"--output {output} is a file; give a directory")
        for name, value in (
            ("--pred-iou-thresh", pred_iou_thresh),
            ("--stability-thresh", stability_thresh),
            ("--box-nms-thresh", box_nms_thresh),
        ):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        rgb = read_image(image)
        predictor = open_predictor(artifact_dir, None if score is None else score.value, threads)
        meta = predictor.decoder.metadata
        if meta.get("weights", "").startswith("synthetic-"):  # untrained or calibrated
            warn_synthetic("These artifacts carry", meta["weights"])
        generator = MaskGenerator(
            predictor,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_thresh,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crops,
            crop_n_points_downscale_factor=crop_points_downscale,
            min_mask_region_area=min_region_area,
            output_mode="coco_rle",
            score=None if score is None else score.value,  # type: ignore[arg-type]
        )
        total = generator.decoder_calls(rgb.shape)
        t0 = time.perf_counter()
        with count_bar("decoding grid points", "decoder calls") as bar:
            task = bar.add_task("decode", total=total)
            records = generator.generate(
                rgb, progress=lambda done, _: bar.update(task, completed=done)
            )
        seconds = time.perf_counter() - t0

        stem = image.stem
        png_path = output / f"{stem}_masks.png"
        coco_path = output / f"{stem}_masks.json"
        write_png(png_path, render_overlay(rgb, records))
        annotations = [
            {"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, **rec}
            for i, rec in enumerate(records)
        ]
        params = {
            "points_per_side": points_per_side,
            "points_per_batch": points_per_batch,
            "crop_n_layers": crops,
            "crop_n_points_downscale_factor": crop_points_downscale,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_thresh,
            "box_nms_thresh": box_nms_thresh,
            "min_mask_region_area": min_region_area,
            "score": generator.score,
        }
        coco = {
            "images": [
                {"id": 1, "file_name": image.name, "height": rgb.shape[0], "width": rgb.shape[1]}
            ],
            "categories": [{"id": 1, "name": "object"}],
            "annotations": annotations,
            "params": params,
            "model": {k: meta.get(k, "") for k in ("model", "family", "weights")},
        }
        with atomic_path(coco_path) as tmp:  # compact: the masks make it large
            tmp.write_text(json.dumps(coco) + "\n")

        out = human_console(json_path)
        table = Table(title=f"Segment everything: {image.name} ({rgb.shape[1]}x{rgb.shape[0]})")
        for col in ("masks", "decoder calls", "score", "seconds", "overlay", "annotations"):
            table.add_column(col)
        table.add_row(
            str(len(records)),
            str(generator.stats.decoder_calls),
            generator.score,
            f"{seconds:.2f}",
            str(png_path),
            str(coco_path),
        )
        out.print(table)
        emit_json(
            json_path,
            {
                "image": str(image),
                "masks": len(records),
                "overlay": str(png_path),
                "annotations": str(coco_path),
                "params": params,
                "seconds": round(seconds, 3),
                "stats": generator.stats.to_json(),
            },
        )

"""Segment everything: segment-anything's automatic mask generator over any low-res predictor.

`MaskGenerator` clicks a grid of points on the image (and optionally on overlapping crops),
decodes ``points_per_batch`` clicks per decoder call, and keeps the masks that pass the quality
and stability filters, box NMS within and across crops, and the crop-edge filter; records are
segment-anything's. Everything here is numpy: no torch, torchvision, cv2 or pycocotools.

Two things make it cheaper than the official loop at the same output: the quality filter runs
on the decoder's scores (or the low-res stability) *before* any upscaling, so only surviving
masks are upscaled, and they are upscaled a chunk at a time with `processing`'s banded
operators instead of as ``B x 3`` full-size float masks at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device import processing as P
from edgesam_export.device.errors import InputError
from edgesam_export.device.everything.boxes import (
    box_area,
    box_nms,
    is_box_near_crop_edge,
    masks_to_boxes,
    xyxy_to_xywh,
)
from edgesam_export.device.everything.grids import build_all_layer_point_grids, generate_crop_boxes
from edgesam_export.device.everything.regions import remove_small_regions
from edgesam_export.device.everything.rle import (
    Rle,
    masks_to_rle,
    rle_area,
    rle_to_coco_rle,
    rle_to_mask,
)

__all__ = ["GenerationStats", "LowResPredictor", "MaskGenerator"]

OutputMode = Literal["binary_mask", "uncompressed_rle", "coco_rle"]
ScoreKind = Literal["stability", "iou"]
#: Masks upscaled to full size at once: bounds memory at CHUNK x H x W float32.
_UPSCALE_CHUNK = 16


@runtime_checkable
class LowResPredictor(Protocol):
    """What the generator drives (our `Predictor` is one; the golden tests use an oracle).

    Optional attributes, read with defaults when absent: ``img_size`` (the prompt frame, 1024),
    ``multimask_tokens`` (indices of the multimask outputs among the K returned; default
    tokens 1..3 of 4, or all of 3), ``default_score`` (``"stability"`` or ``"iou"``) and
    ``scores_kind`` (what the returned scores are: ``"iou"`` unless the decoder was exported
    with stability scores).
    """

    def set_image(self, image: NDArray[np.uint8]) -> None: ...

    def predict_low_res(
        self, point_coords: NDArray[np.float32], point_labels: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...


@dataclass
class GenerationStats:
    """Where the time of the last `generate` went (seconds), and how much was decoded."""

    crops: int = 0
    set_image_s: float = 0.0
    decoder_calls: int = 0
    decoder_s: float = 0.0
    decoder_batch_sizes: list[int] = field(default_factory=list)
    postprocess_s: float = 0.0
    masks_decoded: int = 0
    masks_upscaled: int = 0
    masks_kept: int = 0
    total_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class _Masks:
    """Per-mask columns of one crop (or all crops), filtered together."""

    rles: list[Rle] = field(default_factory=list)
    boxes: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    iou_preds: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    stability: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    points: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    crop_boxes: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, idx: NDArray[Any]) -> _Masks:
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return _Masks(
            [self.rles[int(i)] for i in idx],
            self.boxes[idx],
            self.iou_preds[idx],
            self.stability[idx],
            self.points[idx],
            self.crop_boxes[idx],
        )

    @staticmethod
    def cat(parts: list[_Masks]) -> _Masks:
        if not parts:
            return _Masks()
        return _Masks(
            [r for p in parts for r in p.rles],
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.iou_preds for p in parts]),
            np.concatenate([p.stability for p in parts]),
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.crop_boxes for p in parts]),
        )


def default_multimask_tokens(num_tokens: int) -> tuple[int, ...]:
    """SAM-family convention: with 4 tokens the first is the single-mask answer."""
    if num_tokens == 4:
        return (1, 2, 3)
    if num_tokens in (1, 3):
        return tuple(range(num_tokens))
    raise InputError(
        f"the predictor returned {num_tokens} masks per prompt; say which are the multimask"
        " outputs with a `multimask_tokens` attribute"
    )


class MaskGenerator:
    """Automatic mask generation with segment-anything's parameters and records.

    ``score`` picks the quality score filtered by ``pred_iou_thresh`` and reported as
    ``predicted_iou``: ``"stability"`` (stability of the low-res logits, threshold 0, offset 1,
    EdgeSAM's predictor default), ``"iou"`` (the decoder's IoU head, as SAM, MobileSAM and
    EfficientViT-SAM), or ``None`` for the predictor's ``default_score``.
    """

    def __init__(
        self,
        predictor: LowResPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[NDArray[np.float64]] | None = None,
        min_mask_region_area: int = 0,
        output_mode: OutputMode = "binary_mask",
        score: ScoreKind | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise InputError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            if points_per_side < 1:
                raise InputError(f"points_per_side must be >= 1, got {points_per_side}")
            if crop_n_layers < 0 or crop_n_points_downscale_factor < 1:
                raise InputError(
                    "crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1"
                )
            grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            assert point_grids is not None
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) < crop_n_layers + 1:
                raise InputError(
                    f"point_grids has {len(grids)} grids; crop_n_layers={crop_n_layers} needs"
                    f" {crop_n_layers + 1} (one per layer)"
                )
        for g in grids:
            if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
                raise InputError(f"a point grid must be (N, 2) with N >= 1, got {g.shape}")
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise InputError(
                f"output_mode must be binary_mask, uncompressed_rle or coco_rle, got"
                f" {output_mode!r}"
            )
        if points_per_batch < 1:
            raise InputError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if score is None:
            score = getattr(predictor, "default_score", "iou")
        if score not in ("stability", "iou"):
            raise InputError(f"score must be 'stability' or 'iou', got {score!r}")
        if score == "iou" and getattr(predictor, "scores_kind", "iou") != "iou":
            raise InputError(
                "score='iou' needs the decoder's IoU head, but this decoder's scores are"
                " stability scores (exported with --use-stability-score): use"
                " score='stability' or a decoder exported without it"
            )
        self.predictor = predictor
        self.point_grids = grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode: OutputMode = output_mode
        self.score: ScoreKind = score
        self.img_size = int(getattr(predictor, "img_size", P.DEFAULT_IMG_SIZE))
        self.stats = GenerationStats()

    # ------------------------------------------------------------------ public

    def decoder_calls(self, image_shape: tuple[int, ...]) -> int:
        """How many decoder calls `generate` makes on an image of this shape (for progress)."""
        _, layers = generate_crop_boxes(
            (int(image_shape[0]), int(image_shape[1])), self.crop_n_layers, self.crop_overlap_ratio
        )
        b = self.points_per_batch
        return sum(-(-len(self.point_grids[layer]) // b) for layer in layers)

    def generate(
        self, image: NDArray[np.uint8], progress: Callable[[int, int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Records for every mask found in ``image`` (HxWx3 uint8 RGB).

        Each record: ``segmentation`` (per ``output_mode``), ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords`` ([[x, y]] in image pixels), ``stability_score``,
        ``crop_box`` (XYWH). ``progress(done, total)`` is called after each decoder call.
        """
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise InputError(
                f"generate expects an HxWx3 uint8 RGB image, got shape {arr.shape} and dtype"
                f" {arr.dtype}"
            )
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"image is empty: shape {arr.shape}")
        self.stats = GenerationStats()
        t0 = time.perf_counter()
        data = self._generate_masks(arr, progress)
        if self.min_mask_region_area > 0:
            data = self._postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        records = []
        for i, rle in enumerate(data.rles):
            seg: Any
            if self.output_mode == "coco_rle":
                seg = rle_to_coco_rle(rle)
            elif self.output_mode == "binary_mask":
                seg = rle_to_mask(rle)
            else:
                seg = rle
            records.append(
                {
                    "segmentation": seg,
                    "area": rle_area(rle),
                    "bbox": xyxy_to_xywh(data.boxes[i]),
                    "predicted_iou": float(data.iou_preds[i]),
                    "point_coords": [[float(v) for v in data.points[i]]],
                    "stability_score": float(data.stability[i]),
                    "crop_box": xyxy_to_xywh(data.crop_boxes[i]),
                }
            )
        self.stats.masks_kept = len(records)
        self.stats.total_s = time.perf_counter() - t0
        return records

    # ------------------------------------------------------------------ steps

    def _generate_masks(
        self, image: NDArray[np.uint8], progress: Callable[[int, int], None] | None
    ) -> _Masks:
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layers = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        total = self.decoder_calls(image.shape)
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        parts = [
            self._process_crop(image, box, layer, orig_size, tick)
            for box, layer in zip(crop_boxes, layers, strict=True)
        ]
        self.stats.crops = len(crop_boxes)
        data = _Masks.cat(parts)
        if len(crop_boxes) > 1 and len(data):
            # Prefer masks from smaller crops (score 1 / crop area, in float32 as torch does).
            scores = (1.0 / box_area(data.crop_boxes)).astype(np.float32)
            data = data.take(box_nms(data.boxes, scores, self.crop_nms_thresh))
        return data

    def _process_crop(
        self,
        image: NDArray[np.uint8],
        crop_box: list[int],
        layer: int,
        orig_size: tuple[int, int],
        tick: Callable[[], None],
    ) -> _Masks:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        t = time.perf_counter()
        self.predictor.set_image(crop)
        self.stats.set_image_s += time.perf_counter() - t
        info = P.ImageInfo(
            original_size=crop_size,
            input_size=P.get_preprocess_shape(crop_size[0], crop_size[1], self.img_size),
            img_size=self.img_size,
        )
        points = self.point_grids[layer] * np.asarray(crop_size, dtype=np.float64)[None, ::-1]
        parts = []
        for b0 in range(0, len(points), self.points_per_batch):
            batch = points[b0 : b0 + self.points_per_batch]
            parts.append(self._process_batch(batch, info, crop_box, orig_size))
            tick()
        data = _Masks.cat(parts)
        if len(data):
            data = data.take(box_nms(data.boxes, data.iou_preds, self.box_nms_thresh))
        offset = np.asarray([x0, y0, x0, y0], dtype=np.int64)
        data.boxes = data.boxes + offset
        data.points = data.points + np.asarray([x0, y0], dtype=np.float64)
        data.crop_boxes = np.tile(np.asarray(crop_box, dtype=np.int64), (len(data), 1))
        return data

    def _select(
        self, logits: NDArray[np.float32], scores: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        k = int(logits.shape[1])
        tokens = getattr(self.predictor, "multimask_tokens", None)
        chosen = tuple(tokens) if tokens is not None else default_multimask_tokens(k)
        if any(not 0 <= t < k for t in chosen):
            raise InputError(f"multimask tokens {chosen} out of range for {k} decoder outputs")
        idx = np.asarray(chosen, dtype=np.intp)
        return logits[:, idx], scores[:, idx]

    def _process_batch(
        self,
        points: NDArray[np.float64],
        info: P.ImageInfo,
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> _Masks:
        coords = P.transform_coords(points, info.original_size, self.img_size)[:, None, :]
        labels = np.ones((len(points), 1), dtype=np.float32)
        t = time.perf_counter()
        low_res, scores = self.predictor.predict_low_res(coords, labels)
        self.stats.decoder_s += time.perf_counter() - t
        self.stats.decoder_calls += 1
        self.stats.decoder_batch_sizes.append(len(points))
        low_res = np.asarray(low_res, dtype=np.float32)
        scores = np.asarray(scores, dtype=np.float32)
        if (
            low_res.ndim != 4
            or low_res.shape[0] != len(points)
            or scores.shape != low_res.shape[:2]
        ):
            raise InputError(
                "predict_low_res must return logits (B, K, h, w) and scores (B, K) for B ="
                f" {len(points)} prompts, got {low_res.shape} and {scores.shape}"
            )
        t = time.perf_counter()
        low_res, scores = self._select(low_res, scores)
        per_point = low_res.shape[1]
        low_res = low_res.reshape(-1, *low_res.shape[2:])
        if self.score == "stability":
            quality = P.stability_score(low_res, 0.0, 1.0)
        else:
            quality = scores.reshape(-1)
        point_of = np.repeat(points, per_point, axis=0)
        self.stats.masks_decoded += len(quality)

        keep = np.arange(len(quality))
        if self.pred_iou_thresh > 0.0:
            keep = np.flatnonzero(quality > np.float32(self.pred_iou_thresh))
        parts = []
        for c0 in range(0, len(keep), _UPSCALE_CHUNK):
            idx = keep[c0 : c0 + _UPSCALE_CHUNK]
            parts.append(
                self._upscale_and_filter(
                    low_res[idx], quality[idx], point_of[idx], info, crop_box, orig_size
                )
            )
        self.stats.postprocess_s += time.perf_counter() - t
        return _Masks.cat(parts)

    def _upscale_and_filter(
        self,
        low_res: NDArray[np.float32],
        quality: NDArray[np.float32],
        points: NDArray[np.float64],
        info: P.ImageInfo,
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> _Masks:
        logits = P.postprocess_masks(low_res, info)
        self.stats.masks_upscaled += len(logits)
        stability = P.stability_score(logits, 0.0, self.stability_score_offset)
        keep = np.ones(len(logits), dtype=bool)
        if self.stability_score_thresh > 0.0:
            keep = stability >= np.float32(self.stability_score_thresh)
        masks = logits[keep] > 0.0
        del logits
        boxes = masks_to_boxes(masks)
        orig_h, orig_w = orig_size
        near = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        masks, boxes = masks[~near], boxes[~near]
        sel = np.flatnonzero(keep)[~near]
        return _Masks(
            rles=masks_to_rle(_uncrop_masks(masks, crop_box, orig_h, orig_w)),
            boxes=boxes,
            iou_preds=quality[sel],
            stability=stability[sel],
            points=points[sel],
            crop_boxes=np.zeros((len(sel), 4), dtype=np.int64),
        )

    def _postprocess_small_regions(self, data: _Masks, min_area: int, nms_thresh: float) -> _Masks:
        """Fill small holes and drop small islands, then NMS again preferring unchanged masks."""
        if not len(data):
            return data
        new_masks = []
        unchanged = np.zeros(len(data), dtype=np.float32)
        for i, rle in enumerate(data.rles):
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, "holes")
            mask, changed_islands = remove_small_regions(mask, min_area, "islands")
            new_masks.append(mask)
            unchanged[i] = float(not (changed_holes or changed_islands))
        boxes = masks_to_boxes(np.stack(new_masks))
        keep = box_nms(boxes, unchanged, nms_thresh)
        for i in keep:
            if unchanged[i] == 0.0:
                data.rles[i] = masks_to_rle(new_masks[i][None])[0]
                data.boxes[i] = boxes[i]
        return data.take(keep)


def _uncrop_masks(
    masks: NDArray[np.bool_], crop_box: list[int], orig_h: int, orig_w: int
) -> NDArray[np.bool_]:
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    out = np.zeros((masks.shape[0], orig_h, orig_w), dtype=bool)
    out[:, y0:y1, x0:x1] = masks
    return out

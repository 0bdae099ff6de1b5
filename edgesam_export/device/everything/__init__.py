"""Segment everything on the device: automatic mask generation in numpy over any predictor.

`MaskGenerator` is segment-anything's automatic mask generator (point grids, crop layers,
quality and stability filters, box NMS, crop-edge filtering, RLE records) rewritten without
torch, torchvision, cv2 or pycocotools, driving anything with ``set_image`` and
``predict_low_res`` (our `Predictor` over any backend's sessions, B clicks per decoder call).
"""

from __future__ import annotations

from edgesam_export.device.everything.boxes import box_nms, masks_to_boxes
from edgesam_export.device.everything.generator import (
    GenerationStats,
    LowResPredictor,
    MaskGenerator,
    default_multimask_tokens,
)
from edgesam_export.device.everything.grids import (
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
)
from edgesam_export.device.everything.regions import connected_components, remove_small_regions
from edgesam_export.device.everything.rle import (
    coco_rle_to_rle,
    masks_to_rle,
    rle_area,
    rle_to_coco_rle,
    rle_to_mask,
)

__all__ = [
    "GenerationStats",
    "LowResPredictor",
    "MaskGenerator",
    "box_nms",
    "build_all_layer_point_grids",
    "build_point_grid",
    "coco_rle_to_rle",
    "connected_components",
    "default_multimask_tokens",
    "generate_crop_boxes",
    "masks_to_boxes",
    "masks_to_rle",
    "remove_small_regions",
    "rle_area",
    "rle_to_coco_rle",
    "rle_to_mask",
]

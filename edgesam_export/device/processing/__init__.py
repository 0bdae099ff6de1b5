"""Pure-numpy pre- and post-processing for the SAM family (EdgeSAM, EfficientViT-SAM, SAM, ...).

This module owns everything that happens *around* the exported graphs on a device:

* turning a user image into the encoder input tensor (``preprocess``), including a
  bit-exact re-implementation of Pillow's antialiased bilinear resize (``resize_uint8``)
  so that devices without Pillow produce exactly the tensor the official SAM/EdgeSAM
  predictor produces;
* mapping user prompts (points, boxes) from original-image pixels into the encoder frame
  and packing them into the decoder's ``point_coords`` / ``point_labels`` inputs
  (``transform_coords``, ``transform_boxes``, ``build_prompts``);
* turning the decoder's low-resolution logits back into full-resolution logits and masks,
  scoring and selecting them (``postprocess_masks``, ``threshold_masks``,
  ``stability_score``, ``select_masks``).

It deliberately depends on numpy and the standard library only: importing it must not pull
in torch, cv2 or PIL, because it is shipped to devices where those are unavailable or too
heavy. Invalid user input is reported with :class:`ProcessingError` (a ``ValueError``)
whose message says what was received and what is accepted.

Modules by idea: ``resize`` (Pillow-exact uint8 kernels), ``image`` (image -> encoder tensor,
driven by a model's :class:`Preprocessing`), ``prompts`` (prompt transforms into the model's
prompt frame), ``masks`` (mask upscaling, scores, token selection by :class:`MaskTokens`).
Every public name stays importable from ``edgesam_export.device.processing``.
"""

from __future__ import annotations

from edgesam_export.device.contract import MaskTokens, Preprocessing
from edgesam_export.device.processing._common import (
    ImageInfo,
    ProcessingError,
    get_preprocess_shape,
)
from edgesam_export.device.processing.image import DEFAULT_PIXEL_MEAN, DEFAULT_PIXEL_STD, preprocess
from edgesam_export.device.processing.masks import (
    postprocess_masks,
    select_masks,
    stability_score,
    threshold_masks,
)
from edgesam_export.device.processing.prompts import (
    DEFAULT_IMG_SIZE,
    build_prompts,
    transform_boxes,
    transform_coords,
)
from edgesam_export.device.processing.resize import resize_uint8

__all__ = [
    "DEFAULT_IMG_SIZE",
    "DEFAULT_PIXEL_MEAN",
    "DEFAULT_PIXEL_STD",
    "ImageInfo",
    "MaskTokens",
    "Preprocessing",
    "ProcessingError",
    "build_prompts",
    "get_preprocess_shape",
    "postprocess_masks",
    "preprocess",
    "resize_uint8",
    "select_masks",
    "stability_score",
    "threshold_masks",
    "transform_boxes",
    "transform_coords",
]

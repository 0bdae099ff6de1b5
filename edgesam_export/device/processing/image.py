"""Image -> encoder input tensor, driven by a model's preprocessing parameters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edgesam_export.device.contract import Preprocessing
from edgesam_export.device.processing._common import (
    ImageInfo,
    ProcessingError,
    _as_float_array,
    _as_positive_int,
    _describe,
    get_preprocess_shape,
)
from edgesam_export.device.processing.resize import _resize_planar, resize_float_antialias

#: Side length S of the square encoder input used by SAM and EdgeSAM.
DEFAULT_IMG_SIZE: int = 1024
#: ImageNet RGB mean in 0..255 units, as registered in SAM's ``pixel_mean`` buffer.
DEFAULT_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
#: ImageNet RGB std in 0..255 units, as registered in SAM's ``pixel_std`` buffer.
DEFAULT_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def _as_rgb(image: object, image_format: str) -> NDArray[np.uint8]:
    """Validate ``image`` and return it as HxWx3 (or HxW grayscale) RGB-ordered uint8."""
    accepted = (
        "accepted: a numpy uint8 array of shape HxWx3 (RGB/BGR), HxWx4 (RGBA/BGRA, alpha is "
        "dropped) or HxW (grayscale, replicated to 3 channels)"
    )
    if image_format not in ("RGB", "BGR"):
        raise ProcessingError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise ProcessingError(f"image must be a numpy array, got {_describe(image)}; {accepted}")
    if image.dtype != np.uint8:
        raise ProcessingError(
            f"image must have dtype uint8, got {image.dtype} (convert/scale to 0..255 uint8 "
            f"first); {accepted}"
        )
    if image.ndim not in (2, 3):
        raise ProcessingError(f"image must be 2-D or 3-D, got shape {image.shape}; {accepted}")
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ProcessingError(
            f"image has {image.shape[2]} channels (shape {image.shape}); {accepted}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ProcessingError(f"image is empty (shape {image.shape}); {accepted}")
    if image.ndim == 2:
        return image
    rgb = image[:, :, :3]
    if image_format == "BGR":
        rgb = rgb[:, :, ::-1]
    return rgb


def _channel_vector(values: Sequence[float] | ArrayLike, name: str) -> NDArray[np.float32]:
    arr = _as_float_array(values, name)
    if arr.shape != (3,):
        raise ProcessingError(f"{name} must have exactly 3 values (R, G, B), got shape {arr.shape}")
    return arr.astype(np.float32)


def normalization_table(
    pixel_mean: Sequence[float] | ArrayLike,
    pixel_std: Sequence[float] | ArrayLike,
    normalize: str = "sam",
) -> NDArray[np.float32]:
    """(3, 256) float32: the normalised value of every uint8 level per channel.

    Normalisation of uint8 input has only 256 possible results per channel, so a lookup table
    gives bit-identical values for a fraction of the arithmetic. ``"sam"``: ``(x - mean) / std``
    in float32 on 0..255 values (SAM's buffers). ``"unit"``: torchvision's ``ToTensor`` +
    ``Normalize`` with constants given in 0..255 units: ``x / 255`` in float32, then
    ``(x - mean/255) / (std/255)`` with the constants divided in float64 and stored as float32
    (differs from "sam" by up to ~2.4e-7).
    """
    mean = _channel_vector(pixel_mean, "pixel_mean")
    std = _channel_vector(pixel_std, "pixel_std")
    if np.any(std == 0):
        raise ProcessingError(f"pixel_std must be non-zero, got {pixel_std!r}")
    levels = np.arange(256, dtype=np.float32)[None, :]
    if normalize == "sam":
        return (levels - mean[:, None]) / std[:, None]
    if normalize == "unit":
        mean_u = (_as_float_array(pixel_mean, "pixel_mean") / 255.0).astype(np.float32)
        std_u = (_as_float_array(pixel_std, "pixel_std") / 255.0).astype(np.float32)
        return (levels / np.float32(255.0) - mean_u[:, None]) / std_u[:, None]
    raise ProcessingError(f"normalize must be 'sam' or 'unit', got {normalize!r}")


def _stretch(rgb: NDArray[np.uint8], size: int, params: Preprocessing) -> NDArray[np.float32]:
    """SAM 2: x / 255 in float32, antialiased bilinear to size x size, then (x - m) / s with
    the ImageNet constants as 0..1 float32 values (torchvision ToTensor, Resize, Normalize)."""
    planar = rgb.transpose(2, 0, 1) if rgb.ndim == 3 else np.repeat(rgb[None], 3, axis=0)
    unit = planar.astype(np.float32) / np.float32(255.0)
    resized = resize_float_antialias(unit, (size, size))
    mean = (_as_float_array(params.pixel_mean, "pixel_mean") / 255.0).astype(np.float32)
    std = (_as_float_array(params.pixel_std, "pixel_std") / 255.0).astype(np.float32)
    out = (resized - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(out[None], dtype=np.float32)


def preprocess(
    image: NDArray[np.uint8],
    img_size: int = DEFAULT_IMG_SIZE,
    pixel_mean: Sequence[float] = DEFAULT_PIXEL_MEAN,
    pixel_std: Sequence[float] = DEFAULT_PIXEL_STD,
    image_format: str = "RGB",
    *,
    params: Preprocessing | None = None,
) -> tuple[NDArray[np.float32], ImageInfo]:
    """Turn a user image into the ``(1, 3, S, S)`` float32 encoder input.

    With ``params`` (a model's :class:`Preprocessing`, e.g. ``spec.preprocessing`` or
    ``Preprocessing.from_metadata(session.metadata)``) every parameter comes from it and
    ``img_size`` / ``pixel_mean`` / ``pixel_std`` are ignored. Without it, SAM/EdgeSAM's
    recipe at side ``img_size``.

    Recipe: Pillow-bilinear resize of the long side to the encoder size ``S``, the model's
    normalisation (see :func:`normalization_table`), zero padding at the bottom/right to
    ``S x S`` after normalisation (or before, ``pad="before-normalize"``: padded pixels then
    hold the normalised value of a 0 pixel). The returned :class:`ImageInfo` describes the
    prompt/mask frame (``params.frame``, SAM's 1024 even when the encoder sees 512): its
    ``input_size`` is the image scaled to that frame's long side, as the official predictors
    compute it.

    Accepted inputs (anything else raises :class:`ProcessingError`):

    * ``HxWx3`` uint8, RGB (or BGR when ``image_format="BGR"``; channels are flipped);
    * ``HxWx4`` uint8, RGBA (or BGRA): the alpha channel is dropped, not composited;
    * ``HxW`` uint8 grayscale: replicated to three identical channels.

    Returns the C-contiguous tensor and the :class:`ImageInfo` needed by
    :func:`postprocess_masks`.
    """
    rgb = _as_rgb(image, image_format)
    if params is None:
        size = _as_positive_int(img_size, "img_size")
        frame, normalize, pad = size, "sam", "after-normalize"
        table = normalization_table(pixel_mean, pixel_std, normalize)
    else:
        if not isinstance(params, Preprocessing):
            raise ProcessingError(f"params must be a Preprocessing, got {_describe(params)}")
        size = _as_positive_int(params.encoder_size, "encoder_size")
        frame = _as_positive_int(params.frame, "frame")
        normalize, pad = params.normalize, params.pad
        table = normalization_table(params.pixel_mean, params.pixel_std, normalize)

    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if params is not None and params.resize == "stretch":
        return _stretch(rgb, size, params), ImageInfo(
            original_size=(height, width),
            input_size=(frame, frame),
            img_size=frame,
            resize="stretch",
        )
    new_h, new_w = get_preprocess_shape(height, width, size)
    planar = _resize_planar(rgb, (new_h, new_w))  # (3, h, w), or (1, h, w) for grayscale
    tensor = np.zeros((1, 3, size, size), dtype=np.float32)
    for c in range(3):
        if pad == "before-normalize":
            tensor[0, c] = table[c, 0]
        # Grayscale: resizing once and replicating equals resizing three equal channels.
        np.take(table[c], planar[min(c, planar.shape[0] - 1)], out=tensor[0, c, :new_h, :new_w])
    input_size = (new_h, new_w) if frame == size else get_preprocess_shape(height, width, frame)
    info = ImageInfo(original_size=(height, width), input_size=input_size, img_size=frame)
    return tensor, info

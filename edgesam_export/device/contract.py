"""The I/O contract every backend reproduces: tensor names, dtypes, shapes and constants.

Device side (numpy only): runtimes, processing and the parity checker read it without torch;
`graphs` builds the torch modules that export exactly this contract.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("scores", "masks")
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape with symbolic axes as strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


def encoder_io(
    img_size: int, embed_shape: tuple[int, int, int]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec("image", "float32", (1, 3, img_size, img_size))],
        [TensorSpec("image_embeddings", "float32", (1, *embed_shape))],
    )


def decoder_io(
    embed_shape: tuple[int, int, int], num_mask_tokens: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    _, h, w = embed_shape
    return (
        [
            TensorSpec("image_embeddings", "float32", (1, *embed_shape)),
            TensorSpec("point_coords", "float32", ("batch", "num_points", 2)),
            TensorSpec("point_labels", "float32", ("batch", "num_points")),
        ],
        [
            TensorSpec("scores", "float32", ("batch", num_mask_tokens)),
            TensorSpec("masks", "float32", ("batch", num_mask_tokens, 4 * h, 4 * w)),
        ],
    )


#: ImageNet RGB mean / std in 0..255 units, as registered in SAM's pixel buffers.
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
NORMALIZE_MODES = ("sam", "unit")
PAD_MODES = ("after-normalize", "before-normalize")


def _floats(meta: Mapping[str, str], key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(v) for v in json.loads(meta[key])) if key in meta else default


@dataclass(frozen=True)
class MaskTokens:
    """The decoder's mask-token convention: how many tokens, which answer which question.

    EdgeSAM, SAM, MobileSAM and EfficientViT-SAM all emit 4 tokens (SAM's "3 + 1"): token 0
    answers single-mask requests, tokens 1..3 the multimask ones. A family with another order
    registers its own slots; `select_masks` and the predictor read them from here.
    """

    count: int = 4
    single: tuple[int, ...] = (0,)
    multi: tuple[int, ...] = (1, 2, 3)

    def __post_init__(self) -> None:
        slots = (*self.single, *self.multi)
        if not self.single or not self.multi or any(not 0 <= t < self.count for t in slots):
            raise ValueError(f"mask token slots {self.single}/{self.multi} outside 0..{self.count}")

    def to_metadata(self) -> dict[str, str]:
        return {
            "num_mask_tokens": str(self.count),
            "mask_tokens_single": json.dumps(list(self.single)),
            "mask_tokens_multi": json.dumps(list(self.multi)),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> MaskTokens:
        """Read back; artifacts older than these keys used the EdgeSAM convention."""
        count = int(meta.get("num_mask_tokens", 4))
        # Without explicit slots: SAM's 3 + 1 for four tokens, else every token answers both.
        default_multi = (1, 2, 3) if count == 4 else tuple(range(count))
        single = tuple(int(v) for v in _floats(meta, "mask_tokens_single", (0,)))
        multi = tuple(int(v) for v in _floats(meta, "mask_tokens_multi", default_multi))
        return cls(count, single, multi)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the encoder input, and the frame prompts and masks live in.

    - resize (Pillow-exact bilinear) so the long side is `encoder_size`;
    - normalise: "sam" = (x - mean) / std on 0..255 float32 values (SAM, EdgeSAM);
      "unit" = x / 255 then (x - mean/255) / (std/255) with the constants divided in float64
      and stored as float32 (torchvision ToTensor + Normalize: EfficientViT-SAM);
    - zero-pad bottom/right to `encoder_size` "after-normalize" (pad value 0 in normalised
      space) or "before-normalize" (pad value 0 in pixel space);
    - prompts and low-res masks use the `frame` x `frame` frame (SAM's 1024), whatever the
      encoder size.
    """

    encoder_size: int = 1024
    frame: int = 1024
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD
    normalize: str = "sam"
    pad: str = "after-normalize"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {self.pad!r}")

    def to_metadata(self) -> dict[str, str]:
        return {
            "img_size": str(self.encoder_size),
            "prompt_frame": str(self.frame),
            "pixel_mean": json.dumps(list(self.pixel_mean)),
            "pixel_std": json.dumps(list(self.pixel_std)),
            "normalize": self.normalize,
            "pad": self.pad,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> Preprocessing:
        """Read back from artifact metadata. Older artifacts have only img_size: then the
        prompt frame is img_size too and the SAM normalisation applies (all they could be)."""
        size = int(meta["img_size"])
        return cls(
            encoder_size=size,
            frame=int(meta.get("prompt_frame", size)),
            pixel_mean=_floats(meta, "pixel_mean", SAM_PIXEL_MEAN),
            pixel_std=_floats(meta, "pixel_std", SAM_PIXEL_STD),
            normalize=meta.get("normalize", "sam"),
            pad=meta.get("pad", "after-normalize"),
        )

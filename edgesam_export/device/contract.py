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


#: Graph I/O layouts (`ModelSpec.io`). "sam": the contract above. "sam2" (EdgeTAM): the
#: encoder also returns the two high-resolution features the decoder's upscaling adds
#: (stride 4 and 8, `conv_s0` / `conv_s1` already applied), and the decoder takes them plus a
#: mask prompt (`mask_input` low-res logits used where `has_mask_input` is 1) and also returns
#: the object-score logit.
IO_LAYOUTS = ("sam", "sam2")
SAM2_HIGH_RES = (("high_res_feats_0", 8, 4), ("high_res_feats_1", 4, 8))  # name, C/k, stride


def _high_res(embed_shape: tuple[int, int, int]) -> list[TensorSpec]:
    c, h, w = embed_shape
    # The embedding has stride 16: level 0 (stride 4) is 4x its side, level 1 (stride 8) 2x.
    return [
        TensorSpec(name, "float32", (1, c // div, h * 16 // stride, w * 16 // stride))
        for name, div, stride in SAM2_HIGH_RES
    ]


def encoder_io(
    img_size: int, embed_shape: tuple[int, int, int], layout: str = "sam"
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    outputs = [TensorSpec("image_embeddings", "float32", (1, *embed_shape))]
    if layout == "sam2":
        outputs += _high_res(embed_shape)
    return [TensorSpec("image", "float32", (1, 3, img_size, img_size))], outputs


def decoder_io(
    embed_shape: tuple[int, int, int], num_mask_tokens: int, layout: str = "sam"
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    _, h, w = embed_shape
    inputs = [TensorSpec("image_embeddings", "float32", (1, *embed_shape))]
    if layout == "sam2":
        inputs += _high_res(embed_shape)
    inputs += [
        TensorSpec("point_coords", "float32", ("batch", "num_points", 2)),
        TensorSpec("point_labels", "float32", ("batch", "num_points")),
    ]
    outputs = [
        TensorSpec("scores", "float32", ("batch", num_mask_tokens)),
        TensorSpec("masks", "float32", ("batch", num_mask_tokens, 4 * h, 4 * w)),
    ]
    if layout == "sam2":
        inputs += [
            TensorSpec("mask_input", "float32", ("batch", 1, 4 * h, 4 * w)),
            TensorSpec("has_mask_input", "float32", ("batch",)),
        ]
        outputs.append(TensorSpec("object_score_logits", "float32", ("batch", 1)))
    return inputs, outputs


def dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    """{name: {axis: symbol}} for every symbolic axis (what ONNX export marks dynamic)."""
    found = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in specs}
    return {name: axes for name, axes in found.items() if axes}


#: SAM 2 / EdgeTAM video graphs (`host/models/edgetam/video_graphs.py`), in export order. B:
#: tracked objects, N: prompt points, S: memory frames, K: object pointers.
VIDEO_GRAPHS = ("video_encoder", "video_decoder", "memory_encoder", "memory_attention")
SAM2_MEMORY = (512, 64)  # perceiver latents x memory channels per frame
#: Upper bounds of the SAM 2 contract's symbolic axes that are not options: memory frames (the
#: conditioning frame + 6 recent ones) and object pointers (SAM 2's `max_obj_ptrs_in_encoder`).
SAM2_AXIS_MAX = {"S": 7, "K": 16}
#: The contract's prompt-set / object batch axis, as the SAM and SAM 2 layouts name it.
BATCH_AXES = ("batch", "B")
#: The contract's point-count axis, as the SAM and SAM 2 layouts name it.
POINT_AXES = ("num_points", "N")
SAM2_POINTER_TOKENS = 4  # each 256-d object pointer is split into 4 memory tokens


def axis_bounds(max_points: int, max_batch: int | None = None) -> dict[str, int]:
    """The largest size each symbolic axis of the contract accepts in an artifact exported with
    these options: the point count up to `max_points`, the batch up to `max_batch` (None: the
    target fixes it), SAM 2's memory frames and object pointers up to `SAM2_AXIS_MAX`."""
    bounds = dict(SAM2_AXIS_MAX)
    if max_batch is not None:
        bounds.update(dict.fromkeys(BATCH_AXES, max_batch))
    bounds.update(dict.fromkeys(POINT_AXES, max_points))
    return bounds


def video_io(
    graph: str, embed_shape: tuple[int, int, int], num_mask_tokens: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of one of `VIDEO_GRAPHS` (the tracker's contract)."""
    c, h, w = embed_shape
    feat = (1, c, h, w)
    high = [
        TensorSpec(f"high_res_{i}", t.dtype, t.shape) for i, t in enumerate(_high_res(embed_shape))
    ]
    low = (4 * h, 4 * w)
    f32 = "float32"
    if graph == "video_encoder":
        outs = [TensorSpec("pix_feat", f32, feat), TensorSpec("image_embed", f32, feat), *high]
        return [TensorSpec("image", f32, (1, 3, 16 * h, 16 * w))], outs
    if graph == "video_decoder":
        return [
            TensorSpec("image_embed", f32, ("B", c, h, w)),
            *high,
            TensorSpec("point_coords", f32, ("B", "N", 2)),
            TensorSpec("point_labels", f32, ("B", "N")),
        ], [
            TensorSpec("low_res_masks", f32, ("B", num_mask_tokens, *low)),
            TensorSpec("iou_predictions", f32, ("B", num_mask_tokens)),
            TensorSpec("object_score_logits", f32, ("B", 1)),
            TensorSpec("obj_ptr", f32, ("B", num_mask_tokens, c)),
        ]
    if graph == "memory_encoder":
        return [
            TensorSpec("pix_feat", f32, feat),
            TensorSpec("mask_logits", f32, ("B", 1, *low)),
            TensorSpec("binarize", f32, ("B",)),
        ], [TensorSpec("maskmem_features", f32, ("B", *SAM2_MEMORY))]
    if graph == "memory_attention":
        return [
            TensorSpec("pix_feat", f32, feat),
            TensorSpec("memory", f32, ("B", "S", *SAM2_MEMORY)),
            TensorSpec("memory_tpos", "int64", ("S",)),
            TensorSpec("obj_ptrs", f32, ("B", "K", c)),
        ], [TensorSpec("image_embed", f32, ("B", c, h, w))]
    raise ValueError(f"unknown video graph {graph!r}; one of {', '.join(VIDEO_GRAPHS)}")


#: ImageNet RGB mean / std in 0..255 units, as registered in SAM's pixel buffers.
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
NORMALIZE_MODES = ("sam", "unit")
PAD_MODES = ("after-normalize", "before-normalize")
RESIZE_MODES = ("longest", "stretch")
PROMPT_PAD_MODES = ("no-box", "always")


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
    # SAM 2's single-mask rule: the single token is kept only when its stability
    # count(logit > delta) / count(logit > -delta) reaches `stable_threshold`; otherwise the
    # multimask token with the best score answers. None: the single token always answers.
    stable_threshold: float | None = None
    stable_delta: float = 0.05

    def __post_init__(self) -> None:
        slots = (*self.single, *self.multi)
        if not self.single or not self.multi or any(not 0 <= t < self.count for t in slots):
            raise ValueError(f"mask token slots {self.single}/{self.multi} outside 0..{self.count}")

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "num_mask_tokens": str(self.count),
            "mask_tokens_single": json.dumps(list(self.single)),
            "mask_tokens_multi": json.dumps(list(self.multi)),
        }
        if self.stable_threshold is not None:
            meta["single_mask_stability"] = json.dumps([self.stable_threshold, self.stable_delta])
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> MaskTokens:
        """Read back; artifacts older than these keys used the EdgeSAM convention."""
        count = int(meta.get("num_mask_tokens", 4))
        # Without explicit slots: SAM's 3 + 1 for four tokens, else every token answers both.
        default_multi = (1, 2, 3) if count == 4 else tuple(range(count))
        single = tuple(int(v) for v in _floats(meta, "mask_tokens_single", (0,)))
        multi = tuple(int(v) for v in _floats(meta, "mask_tokens_multi", default_multi))
        if "single_mask_stability" in meta:
            threshold, delta = _floats(meta, "single_mask_stability", ())
            return cls(count, single, multi, threshold, delta)
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

    `resize="stretch"` is SAM 2's recipe instead: the 0..1 float image (x / 255) is stretched
    to the square with antialiased bilinear (torchvision on tensors), then normalised
    ("unit" constants), no padding; prompts are scaled per axis and low-res masks are resized
    once, straight to the original size. `box_first` puts box corners before the points;
    `prompt_pad` "always" appends the padding point also after a box (SAM 2), "no-box" only
    to point-only prompts (SAM, EdgeSAM).
    """

    encoder_size: int = 1024
    frame: int = 1024
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD
    normalize: str = "sam"
    pad: str = "after-normalize"
    resize: str = "longest"
    box_first: bool = False
    prompt_pad: str = "no-box"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {self.pad!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.prompt_pad not in PROMPT_PAD_MODES:
            raise ValueError(f"prompt_pad must be one of {PROMPT_PAD_MODES}")

    def to_metadata(self) -> dict[str, str]:
        return {
            "img_size": str(self.encoder_size),
            "prompt_frame": str(self.frame),
            "pixel_mean": json.dumps(list(self.pixel_mean)),
            "pixel_std": json.dumps(list(self.pixel_std)),
            "normalize": self.normalize,
            "pad": self.pad,
        } | (
            {}
            if self.resize == "longest" and not self.box_first and self.prompt_pad == "no-box"
            else {
                "resize": self.resize,
                "box_first": str(self.box_first).lower(),
                "prompt_pad": self.prompt_pad,
            }
        )

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
            resize=meta.get("resize", "longest"),
            box_first=meta.get("box_first", "false") == "true",
            prompt_pad=meta.get("prompt_pad", "no-box"),
        )

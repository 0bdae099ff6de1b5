"""The model registry: one `ModelSpec` per supported checkpoint variant, as data.

Both sides read a spec: the device side for preprocessing, frames and mask tokens, `models`
and `recipe check` for names and descriptions, the host side to build and load the torch
model. So the table lives here, torch-free: the builders are "module:function" names of host
code that only the host side resolves (`host.models.registry.build_model`). A new family is a
host model module plus an entry in `_ENTRIES`; its checkpoint layout goes to `data/layouts/`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from edgesam_export.device.contract import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    VIDEO_GRAPHS,
    MaskTokens,
    Preprocessing,
    TensorSpec,
    decoder_io,
    encoder_io,
    video_io,
)
from edgesam_export.device.errors import InputError

__all__ = [
    "MaskTokens",
    "ModelSpec",
    "Preprocessing",
    "get_spec",
    "list_specs",
    "load_layout",
    "model_names",
    "parameter_count",
]


@dataclass(frozen=True)
class ModelSpec:
    """One registered model variant. Only the first block of fields is required per entry.

    Frames: `img_size` is the side of the square encoder input (what the image is resized and
    padded to); `prompt_frame` is the side of SAM's frame in which prompts are given to the
    decoder and its low-res masks are upscaled (None = same as img_size). EfficientViT-SAM-L
    encodes 512x512 images but keeps SAM's 1024 prompt/mask frame.
    """

    name: str
    family: str
    description: str
    img_size: int  # encoder input side S_enc
    layout: str  # JSON file under edgesam_export/device/data/layouts/
    signature_prefixes: tuple[str, ...]  # key prefixes that identify this family's checkpoints
    builder: str  # "module:function" of the host-side builder, called with `builder_args`
    builder_args: tuple[Any, ...] = ()
    prompt_frame: int | None = None  # prompt/mask frame side; None = img_size
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN  # in 0..255 units
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    normalize: str = "sam"  # "sam": (x - mean) / std on 0..255; "unit": x/255 then mean/255 ...
    pad: str = "after-normalize"  # or "before-normalize" (zero pixels, then normalised)
    num_mask_tokens: int = 4  # tokens the decoder emits (all are exported)
    mask_tokens: MaskTokens | None = None  # single/multimask slots; None = EdgeSAM/SAM's 0 | 1..3
    embed_shape: tuple[int, int, int] = (256, 64, 64)
    checkpoint_format: str = "state_dict"  # what the official loader accepts (for docs/CLI)
    upsample_modes: tuple[str, ...] = ()  # first one is the default; () = no such option
    verified_targets: tuple[str, ...] = ()  # targets with an export + parity test for it
    # Families whose layout varies per file (SlimSAM's pruned widths) build from the state dict:
    # "module:function" taking the state dict.
    build_from_state: str | None = None
    # The official loader's strict=False (EdgeSAM): unknown extra keys warn instead of stopping.
    extra_keys_allowed: bool = False
    # Decoder I/O contracts an ONNX export may follow: "edgesam" (ours, the default) and
    # "official" (segment-anything's SamOnnxModel: mask_input, has_mask_input, orig_im_size),
    # "efficientvit" (EfficientViT-SAM's DecoderOnnxModel: masks, iou_predictions).
    decoder_contracts: tuple[str, ...] = ("edgesam",)
    # SAM 2 conventions (EdgeTAM): see `Preprocessing` ("stretch" resize, box corners first,
    # the padding point always appended) and `contract.IO_LAYOUTS` ("sam2": high-res features,
    # mask prompt, object score).
    resize: str = "longest"
    box_first: bool = False
    prompt_pad: str = "no-box"
    io_layout: str = "sam"
    # The graphs an export of this model writes, in order (EdgeTAM: the image graphs, then the
    # video tracker's `contract.VIDEO_GRAPHS`, written on its `verified_targets`).
    graphs: tuple[str, ...] = ("encoder", "decoder")

    def __post_init__(self) -> None:
        if self.tokens.count != self.num_mask_tokens:
            raise ValueError(f"{self.name}: mask_tokens.count != num_mask_tokens")
        self.preprocessing  # validates normalize / pad  # noqa: B018

    @property
    def tokens(self) -> MaskTokens:
        """The mask-token convention (defaults to token 0 single, tokens 1..3 multimask)."""
        if self.mask_tokens is not None:
            return self.mask_tokens
        return MaskTokens(count=self.num_mask_tokens)

    @property
    def frame(self) -> int:
        """Side of the prompt/mask frame (SAM's 1024 for every current family)."""
        return self.prompt_frame if self.prompt_frame is not None else self.img_size

    @property
    def preprocessing(self) -> Preprocessing:
        """The device-side preprocessing parameters of this model."""
        return Preprocessing(
            encoder_size=self.img_size,
            frame=self.frame,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            normalize=self.normalize,
            pad=self.pad,
            resize=self.resize,
            box_first=self.box_first,
            prompt_pad=self.prompt_pad,
        )

    def graph_io(self, graph: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs of one of `graphs` (the exported contract)."""
        if graph == "encoder":
            return encoder_io(self.img_size, self.embed_shape, self.io_layout)
        if graph == "decoder":
            return decoder_io(self.embed_shape, self.num_mask_tokens, self.io_layout)
        if graph in VIDEO_GRAPHS and graph in self.graphs:
            return video_io(graph, self.embed_shape, self.num_mask_tokens)
        raise InputError(f"{self.name} has no {graph!r} graph; it has {', '.join(self.graphs)}")

    @property
    def default_upsample(self) -> str | None:
        return self.upsample_modes[0] if self.upsample_modes else None


_HOST = "edgesam_export.host.models"
_SAM_COMMON: dict[str, Any] = dict(
    img_size=1024,
    pixel_mean=SAM_PIXEL_MEAN,
    pixel_std=SAM_PIXEL_STD,
    num_mask_tokens=4,
    embed_shape=(256, 64, 64),
    decoder_contracts=("edgesam", "official"),
)


def _efficientvit(label: str, img_size: int) -> ModelSpec:
    name = f"efficientvit_sam_{label.lower()}"
    return ModelSpec(
        name=name,
        family="EfficientViT-SAM",
        description=(
            f"EfficientViT-SAM-{label} ({img_size} input, prompts/masks in the 1024 frame):"
            f" efficientvit_sam_{label.lower()}.pt"
        ),
        img_size=img_size,
        prompt_frame=1024,
        normalize="unit",
        mask_tokens=MaskTokens(count=4, single=(0,), multi=(1, 2, 3)),
        layout=f"{name}.json",
        signature_prefixes=("image_encoder.backbone.stages.", "image_encoder.neck.input_ops."),
        checkpoint_format="state_dict, bare or under 'state_dict' (weights_only)",
        builder=f"{_HOST}.efficientvit:build_variant",
        builder_args=(name,),
        # An export + parity test row per variant and target (tests/test_families.py ties
        # these to the test tables: L0 in `make test`, the others with `pytest -m heavy`).
        verified_targets=("onnx", "coreml", "executorch"),
        decoder_contracts=("edgesam", "efficientvit"),
    )


def _sam_vit(name: str, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="SAM",
        description=description,
        layout=f"{name}.json",
        signature_prefixes=("image_encoder.blocks.0.attn.qkv.", "image_encoder.pos_embed"),
        builder=f"{_HOST}.sam_family:build_sam_vit_named",
        builder_args=(name,),
        verified_targets=("onnx", "coreml", "executorch"),
        **_SAM_COMMON,
    )


def _slimsam(ratio: str, file: str) -> ModelSpec:
    name = f"slimsam_{ratio}"
    return ModelSpec(
        name=name,
        family="SlimSAM",
        description=(
            f"SlimSAM-{ratio} (SAM ViT-B pruned {ratio} %, widths read from the file;"
            f" pickled module): {file}"
        ),
        layout=f"{name}.json",
        signature_prefixes=("image_encoder.blocks.0.attn.q.", "image_encoder.pos_embed"),
        builder=f"{_HOST}.sam_family:build_slimsam_from_layout",
        builder_args=(name,),
        build_from_state=f"{_HOST}.sam_family:build_slimsam",
        checkpoint_format="pickled-module",
        verified_targets=("onnx", "coreml", "executorch"),
        **_SAM_COMMON,
    )


_ENTRIES: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="edge_sam",
        family="EdgeSAM",
        description="EdgeSAM (RepViT-M1 encoder, 4 mask tokens): edge_sam.pth / edge_sam_3x.pth",
        img_size=1024,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        num_mask_tokens=4,
        embed_shape=(256, 64, 64),
        layout="edge_sam.json",
        signature_prefixes=("image_encoder.features.", "image_encoder.fuse_stage3."),
        upsample_modes=("bicubic", "bilinear"),
        checkpoint_format="bare state_dict (edge_sam.pth / edge_sam_3x.pth)",
        builder=f"{_HOST}.edgesam:build_edge_sam",
        verified_targets=("onnx", "coreml", "executorch"),
        extra_keys_allowed=True,  # official build_sam loads strict=False (fpn.*/rpn_head.* files)
    ),
    _efficientvit("L0", 512),
    _efficientvit("L1", 512),
    _efficientvit("L2", 512),
    _efficientvit("XL0", 1024),
    _efficientvit("XL1", 1024),
    _sam_vit("sam_vit_b", "SAM ViT-B (Meta, 12 blocks, width 768): sam_vit_b_01ec64.pth"),
    _sam_vit("sam_vit_l", "SAM ViT-L (Meta, 24 blocks, width 1024): sam_vit_l_0b3195.pth"),
    _sam_vit("sam_vit_h", "SAM ViT-H (Meta, 32 blocks, width 1280): sam_vit_h_4b8939.pth"),
    _slimsam("50", "SlimSAM-50.pth"),
    _slimsam("77", "SlimSAM-77.pth"),
    ModelSpec(
        name="edgetam",
        family="EdgeTAM",
        description=(
            "EdgeTAM (SAM 2 with a RepViT-M1 trunk; image mode, video memory): edgetam.pt"
        ),
        img_size=1024,
        normalize="unit",
        pad="after-normalize",
        resize="stretch",
        box_first=True,
        prompt_pad="always",
        io_layout="sam2",
        mask_tokens=MaskTokens(
            count=4, single=(0,), multi=(1, 2, 3), stable_threshold=0.98, stable_delta=0.05
        ),
        layout="edgetam.json",
        signature_prefixes=("image_encoder.trunk.body.stem.", "spatial_perceiver."),
        checkpoint_format="dict:model ({'model': state_dict}, loaded strictly)",
        builder=f"{_HOST}.edgetam.model:build_edgetam",
        graphs=("encoder", "decoder", *VIDEO_GRAPHS),
        verified_targets=("onnx", "coreml", "executorch"),
        decoder_contracts=("edgesam",),
    ),
    ModelSpec(
        name="mobile_sam",
        family="MobileSAM",
        description="MobileSAM (TinyViT-5M encoder): mobile_sam.pt",
        layout="mobile_sam.json",
        signature_prefixes=("image_encoder.layers.", "image_encoder.patch_embed.seq."),
        builder=f"{_HOST}.sam_family:build_mobile_sam",
        verified_targets=("onnx", "coreml", "executorch"),
        **_SAM_COMMON,
    ),
)


def _table(entries: tuple[ModelSpec, ...]) -> dict[str, ModelSpec]:
    table: dict[str, ModelSpec] = {}
    for spec in entries:
        if spec.name in table:
            raise ValueError(f"model {spec.name!r} is registered twice")
        table[spec.name] = spec
    return table


_REGISTRY: dict[str, ModelSpec] = _table(_ENTRIES)


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_specs() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


@cache
def load_layout(spec_name: str) -> dict[str, Any]:
    """The checkpoint layout (key -> shape, dtype) that ships inside the package."""
    spec = get_spec(spec_name)
    text = resources.files("edgesam_export.device").joinpath("data/layouts").joinpath(spec.layout)
    layout: dict[str, Any] = json.loads(text.read_text())
    return layout


# State-dict entries that are buffers, not parameters: BatchNorm statistics and SAM's random
# positional-encoding matrix (tests/test_models.py checks the count against a meta build).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_BUFFER_NAMES = ("positional_encoding_gaussian_matrix",)


def parameter_count(spec: ModelSpec) -> int:
    """Learned parameters of the shipped layout, counted without torch."""
    return sum(
        math.prod(entry["shape"])
        for key, entry in load_layout(spec.name)["tensors"].items()
        if not key.endswith(_BUFFER_SUFFIXES) and key.rsplit(".", 1)[-1] not in _BUFFER_NAMES
    )

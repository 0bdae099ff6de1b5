"""The model registry: one `ModelSpec` per supported checkpoint family.

A spec is the single source of truth an exporter, the parity checker and the device-side
processing read: input size, normalisation, mask tokens, embedding shape, the checkpoint layout
that ships with the package (for synthetic weights and key checks) and the builder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgesam_export.device.contract import SAM_PIXEL_MEAN, SAM_PIXEL_STD, MaskTokens, Preprocessing
from edgesam_export.device.errors import InputError
from edgesam_export.host.models.sam_heads import SamModel

__all__ = ["MaskTokens", "ModelSpec", "Preprocessing", "get_spec", "list_specs", "register"]


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
    layout: str  # JSON file under edgesam_export/host/models/layouts/
    signature_prefixes: tuple[str, ...]  # key prefixes that identify this family's checkpoints
    builder: Callable[..., SamModel] = field(repr=False)
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
    # Families whose layout varies per file (SlimSAM's pruned widths) build from the state dict.
    build_from_state: Callable[[Mapping[str, Any]], SamModel] | None = field(
        default=None, repr=False
    )
    # The official loader's strict=False (EdgeSAM): unknown extra keys warn instead of stopping.
    extra_keys_allowed: bool = False
    # Decoder I/O contracts an ONNX export may follow: "edgesam" (ours, the default) and
    # "official" (segment-anything's SamOnnxModel: mask_input, has_mask_input, orig_im_size),
    # "efficientvit" (EfficientViT-SAM's DecoderOnnxModel: masks, iou_predictions).
    decoder_contracts: tuple[str, ...] = ("edgesam",)

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
        )

    @property
    def default_upsample(self) -> str | None:
        return self.upsample_modes[0] if self.upsample_modes else None

    def build(self, upsample_mode: str | None = None) -> SamModel:
        """A fresh model with uninitialised weights, in eval mode."""
        if self.upsample_modes:
            mode = upsample_mode or self.upsample_modes[0]
            if mode not in self.upsample_modes:
                raise InputError(
                    f"{self.name}: upsample mode {mode!r} is not one of {list(self.upsample_modes)}"
                )
            model = self.builder(upsample_mode=mode)
        else:
            if upsample_mode is not None:
                raise InputError(f"{self.name} has no neck upsampling option; drop --upsample")
            model = self.builder()
        return model.eval()

    def build_for(self, state: Mapping[str, Any], upsample_mode: str | None = None) -> SamModel:
        """A model shaped for this state dict (per-file widths), or `build()` for fixed layouts."""
        if self.build_from_state is None:
            return self.build(upsample_mode)
        if upsample_mode is not None:
            raise InputError(f"{self.name} has no neck upsampling option; drop --upsample")
        return self.build_from_state(state).eval()


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_specs() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

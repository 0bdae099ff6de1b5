"""The model registry: one `ModelSpec` per supported checkpoint family.

A spec is the single source of truth an exporter, the parity checker and the device-side
processing read: input size, normalisation, mask tokens, embedding shape, the checkpoint layout
that ships with the package (for synthetic weights and key checks) and the builder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .sam_heads import SamModel


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    description: str
    img_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    num_mask_tokens: int
    embed_shape: tuple[int, int, int]
    layout: str  # JSON file under edgesam_export/models/layouts/
    signature_prefixes: tuple[str, ...]  # key prefixes that identify this family's checkpoints
    builder: Callable[..., SamModel] = field(repr=False)
    upsample_modes: tuple[str, ...] = ()  # first one is the default; () = no such option
    # Families whose layout varies per file (SlimSAM's pruned widths) build from the state dict.
    build_from_state: Callable[[Mapping[str, Any]], SamModel] | None = field(
        default=None, repr=False
    )
    checkpoint_format: str = "state_dict"  # "state_dict" | "pickled-module" (SlimSAM)
    # The official loader's strict=False (EdgeSAM): unknown extra keys warn instead of stopping.
    extra_keys_allowed: bool = False
    # Decoder I/O contracts an ONNX export may follow: "edgesam" (ours, the default) and
    # "official" (segment-anything's SamOnnxModel: mask_input, has_mask_input, orig_im_size).
    decoder_contracts: tuple[str, ...] = ("edgesam",)

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

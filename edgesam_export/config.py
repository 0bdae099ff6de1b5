"""Typed options: one object per target, validated once, flowing CLI -> recipe -> exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

GraphKind = Literal["encoder", "decoder"]
UpsampleMode = Literal["bicubic", "bilinear"]
SyntheticKind = Literal["random", "calibrated"]


class ModelOptions(BaseModel):
    """Which model and weights: a checkpoint path, or deterministic synthetic weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "edge_sam"
    checkpoint: Path | None = None
    seed: int = Field(0, ge=0, description="synthetic-weight seed when no checkpoint is given")
    upsample: UpsampleMode | None = None  # None: the family default (EdgeSAM: bicubic, as trained)
    # Without a checkpoint: the fixture rule's weights as drawn ("random"), or with BatchNorm
    # statistics calibrated so activations stay near unit scale ("calibrated": fp16/int8 work).
    synthetic: SyntheticKind = "random"
    # Refuse checkpoint keys a family's official loader ignores (EdgeSAM loads strict=False).
    strict: bool = False


class ExportOptions(BaseModel):
    """What every target shares: the graphs to build and where to write them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    graphs: tuple[GraphKind, ...] = ("encoder", "decoder")
    use_stability_score: bool = False
    output: Path = Path("artifacts")

    @field_validator("graphs")
    @classmethod
    def _graphs_nonempty_unique(cls, v: tuple[GraphKind, ...]) -> tuple[GraphKind, ...]:
        if not v:
            raise ValueError("choose at least one graph (encoder, decoder)")
        return tuple(dict.fromkeys(v))


DecoderContract = Literal["edgesam", "official"]


class OnnxOptions(ExportOptions):
    opset: int = Field(17, ge=11, le=21)
    simplify: bool = True
    # Decoder I/O: "edgesam" (ours) or "official" (segment-anything's SamOnnxModel signature).
    decoder_contract: DecoderContract = "edgesam"
    return_single_mask: bool = False  # official contract only: keep one mask, as its notebook
    # Weights in a `<file>.onnx.data` sidecar: None = when the graph would pass ONNX's 2 GB limit.
    external_data: bool | None = None

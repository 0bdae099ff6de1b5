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


class OnnxOptions(ExportOptions):
    opset: int = Field(17, ge=11, le=21)
    simplify: bool = True
    gelu_approximate: bool = False  # tanh GELU (EdgeSAM's --gelu-approximate)


CoreMLPrecision = Literal["fp32", "fp16"]
PointShapes = Literal["enumerated", "range"]
DEPLOYMENT_TARGETS = (
    "iOS15",
    "iOS16",
    "iOS17",
    "iOS18",
    "macOS12",
    "macOS13",
    "macOS14",
    "macOS15",
)


class CoreMLOptions(ExportOptions):
    """CoreML ML Program export (see docs/coreml.md for the trade-offs of each choice)."""

    precision: CoreMLPrecision = "fp32"  # compute precision of the ML Program
    quantize: Literal["int8"] | None = None  # weight-only linear quantization
    max_points: int = Field(16, ge=1, le=64, description="largest prompt point count")
    max_batch: int = Field(1, ge=1, le=16, description="largest number of prompt sets (B)")
    # enumerated: one shape per (B, N) (keeps the Neural Engine); range: RangeDim (CPU/GPU only)
    point_shapes: PointShapes = "enumerated"
    gelu_approximate: bool = False
    # None: the oldest target the other options allow (iOS18 for enumerated, else iOS16).
    minimum_deployment_target: str | None = None

    @field_validator("minimum_deployment_target")
    @classmethod
    def _known_target(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for known in DEPLOYMENT_TARGETS:
            if v.lower() == known.lower():
                return known
        raise ValueError(
            f"unknown --minimum-deployment-target {v!r};"
            f" choose one of {', '.join(DEPLOYMENT_TARGETS)}"
        )

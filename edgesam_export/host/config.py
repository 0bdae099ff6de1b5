"""Typed options: one object per target, validated once, flowing CLI -> recipe -> exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

GraphKind = Literal["encoder", "decoder"]
UpsampleMode = Literal["bicubic", "bilinear"]
SyntheticKind = Literal["random", "calibrated"]
# onnxslim: the default; onnxsim: what many users' pipelines name; none: the traced graph as is.
SimplifierKind = Literal["onnxslim", "onnxsim", "none"]


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


DecoderContract = Literal["edgesam", "official", "efficientvit"]


class OnnxOptions(ExportOptions):
    opset: int = Field(17, ge=11, le=21)
    simplify: bool = True  # False is simplifier="none" (kept for --no-simplify)
    simplifier: SimplifierKind = "onnxslim"
    gelu_approximate: bool = False  # tanh GELU (EdgeSAM's --gelu-approximate)
    # Decoder I/O: "edgesam" (ours), "official" (segment-anything's SamOnnxModel signature) or
    # "efficientvit" (EfficientViT-SAM's DecoderOnnxModel).
    decoder_contract: DecoderContract = "edgesam"
    return_single_mask: bool = False  # family contracts only: keep one mask, as their exports
    # Weights in a `<file>.onnx.data` sidecar: None = when the graph would pass ONNX's 2 GB limit.
    external_data: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _simplify_means_simplifier(cls, data: object) -> object:
        """`simplify: false` and `simplifier: none` say the same; a contradiction is an error."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("simplify") is False:
            if data.get("simplifier", "none") != "none":
                raise ValueError(
                    f"simplify=false contradicts simplifier={data['simplifier']!r};"
                    " use simplifier: none"
                )
            data["simplifier"] = "none"
        elif data.get("simplifier") == "none":
            data["simplify"] = False
        return data

    # Reduced precision (targets/onnx_precision.py): a real fp16 graph with the fp16-unsafe
    # layers kept fp32, or dynamic int8 quantization; float32 I/O either way.
    precision: Literal["fp32", "fp16"] = "fp32"
    quantize: Literal["int8"] | None = None

    @field_validator("quantize")
    @classmethod
    def _one_reduction(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("precision", "fp32") != "fp32":
            raise ValueError("choose --precision fp16 or --quantize int8, not both")
        return v


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

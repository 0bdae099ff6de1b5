"""Typed options: one object per target, validated once, flowing CLI -> recipe -> exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, cast, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# The image graphs, and EdgeTAM's video graphs (`device.contract.VIDEO_GRAPHS`).
GraphKind = Literal[
    "encoder", "decoder", "video_encoder", "video_decoder", "memory_encoder", "memory_attention"
]
UpsampleMode = Literal["bicubic", "bilinear"]
# Synthetic weights (no checkpoint): "untrained" = the fixture rule as drawn (what the golden
# fixtures use); "calibrated" = the same with BatchNorm statistics fitted so activations stay near
# unit scale like trained weights (fp16/int8 checks need it). Artifacts record them as
# `synthetic-<kind>` and `synthetic-<kind>(seed=N)`.
SyntheticKind = Literal["untrained", "calibrated"]
DEFAULT_SYNTHETIC: SyntheticKind = "calibrated"
# onnxslim: the default; onnxsim: what many users' pipelines name; none: the traced graph as is.
SimplifierKind = Literal["onnxslim", "onnxsim", "none"]


class ModelOptions(BaseModel):
    """Which model and weights: a checkpoint path, or deterministic synthetic weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "edge_sam"
    checkpoint: Path | None = None
    seed: int = Field(0, ge=0, description="synthetic-weight seed when no checkpoint is given")
    upsample: UpsampleMode | None = None  # None: the family default (EdgeSAM: bicubic, as trained)
    # Without a checkpoint: which synthetic weights (see SyntheticKind); the CLI's default too.
    synthetic: SyntheticKind = DEFAULT_SYNTHETIC
    # Refuse checkpoint keys a family's official loader ignores (EdgeSAM loads strict=False).
    strict: bool = False


class ExportOptions(BaseModel):
    """What every target shares: the graphs to build and where to write them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    graphs: tuple[GraphKind, ...] = ("encoder", "decoder")
    use_stability_score: bool = Field(
        False, description="Decoder `scores` output holds stability scores, not IoU"
    )
    output: Path = Path("artifacts")
    #: Fields that change only the decoder: a non-default value needs the decoder exported.
    DECODER_ONLY: ClassVar[tuple[str, ...]] = ("use_stability_score",)

    @field_validator("graphs")
    @classmethod
    def _graphs_nonempty_unique(cls, v: tuple[GraphKind, ...]) -> tuple[GraphKind, ...]:
        """Each graph once, in `GraphKind`'s order whatever order they were given in: exports
        run encoder first, so a decoder exported beside a reduced encoder is always judged on
        that encoder's embeddings (targets/onnx.py)."""
        if not v:
            raise ValueError("choose at least one graph (encoder, decoder)")
        order = get_args(GraphKind)
        return tuple(sorted(dict.fromkeys(v), key=order.index))

    @model_validator(mode="after")
    def _decoder_options_need_a_decoder(self) -> ExportOptions:
        """A decoder option with only the encoder exported would be ignored: say so instead."""
        fields = type(self).model_fields
        given = [f for f in self.DECODER_ONLY if getattr(self, f) != fields[f].default]
        if given and "decoder" not in self.graphs:
            raise ValueError(
                f"{', '.join(given)} applies to the decoder, which is not exported;"
                " drop it or export the decoder too"
            )
        return self


DecoderContract = Literal["edgesam", "official", "efficientvit"]


# The calibration images of a static int8 export: one definition for every target that
# calibrates (ONNX `--quantize int8`, ExecuTorch `--precision int8`); each target declares the
# two fields with these types (`calibration: CalibrationFolder = None`, `calibration_images:
# CalibrationCount = CALIBRATION_IMAGES`), so they keep their place in its option order, and
# takes `Int8Calibration` as a base for the rule that refuses them without int8.
CalibrationFolder = Annotated[
    Path | None,
    Field(
        description="int8: folder of calibration images (PNG or HxWx3 uint8 .npy; default:"
        " built-in synthetic images, never the held-out images the result is judged on)",
    ),
]
CalibrationCount = Annotated[
    int, Field(ge=1, le=256, description="int8: how many calibration images to use")
]
CALIBRATION_IMAGES = 8


def mask_bar_text(value: str) -> str:
    """An `--accuracy-target` value in its canonical form (one parser: `MaskBar.parse`)."""
    from edgesam_export.device.errors import InputError
    from edgesam_export.device.mask_bar import MaskBar

    try:
        return str(MaskBar.parse(value))
    except InputError as exc:
        raise ValueError(str(exc)) from None


MaskBarText = Annotated[str, AfterValidator(mask_bar_text)]


class Int8Calibration(BaseModel):
    """The rule of the calibration fields: given without the int8 mode that reads them, they
    are refused, not ignored. A target sets `CALIBRATES_WITH` (the flag that turns calibration
    on, for the error) and `calibrates()`; `CALIBRATION_FIELDS` may name more options that only
    apply in that mode. No fields here: a base's fields would move ahead of the target's own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    CALIBRATION_FIELDS: ClassVar[tuple[str, ...]] = ("calibration", "calibration_images")
    CALIBRATES_WITH: ClassVar[str] = "int8"

    def calibrates(self) -> bool:
        """Whether this export runs the calibration (the mode the calibration fields need)."""
        raise NotImplementedError

    def calibration_source(self) -> str:
        """What the calibration images are, for reports and metadata: the `--calibration`
        folder's name (never its absolute path: the same recipe gives the same bytes on any
        machine), or "synthetic" (the built-in set)."""
        folder: Path | None = getattr(self, "calibration", None)
        return folder.name if folder is not None else "synthetic"

    @model_validator(mode="after")
    def _calibration_needs_int8(self) -> Int8Calibration:
        given = changed_fields(self, self.CALIBRATION_FIELDS)
        if given and not self.calibrates():
            raise ValueError(
                f"{', '.join(given)} applies to {self.CALIBRATES_WITH}; add it or drop them"
            )
        return self


#: The decoder's cross-attention form (`Attention` in host/models/sam_heads.py); None: the
#: target's own for the precision (`AttentionRule`).
DecoderAttention = Annotated[
    Literal["folded", "projected"] | None,
    Field(
        description="Decoder cross-attention: folded (the default but for ExecuTorch int8: the"
        " 4096 image tokens are never projected; 0.52x the multiply-adds at 1 point, 0.70x at"
        " 5, but 1.16x at 16) or projected (the faster one from about 12 points)"
    ),
]


#: The ONNX decoder's: the two forms, or "auto", both in one graph that picks per call by the
#: point count (`targets/onnx_switch.py`).
OnnxDecoderAttention = Annotated[
    Literal["folded", "projected", "auto"] | None,
    Field(
        description="Decoder cross-attention: folded (the default: the 4096 image tokens are"
        " never projected; 0.52x the multiply-adds at 1 point, 0.70x at 5, but 1.16x at 16),"
        " projected (the faster one from about 14 points; int8: 9) or auto (both in one graph,"
        " an If on the point count runs the faster one)"
    ),
]


class AttentionRule(BaseModel):
    """The rule of a target's `attention` field (declared by the target, after its own
    fields). Float decoders take the folded form. An int8 decoder takes the target's
    `INT8_ATTENTION`: onnxruntime's static int8 quantizes the weight products either form has
    (folded: the upscaling's, the token side's), ExecuTorch's PT2E int8 the image-side
    projections only the projected form has, so there `--attention folded` is refused. ONNX
    also takes "auto": both forms in one graph, the faster run per call by the point count
    (`targets/onnx_switch.py`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    INT8_ATTENTION: ClassVar[Literal["folded", "projected"]] = "projected"

    def int8_decoder(self) -> bool:
        """Whether the decoder is exported with int8 compute."""
        raise NotImplementedError

    def attention_form(self) -> Literal["folded", "projected"]:
        """The form one traced decoder takes (for "auto", which traces both and switches
        between them, the few-points one: folded)."""
        given = getattr(self, "attention", None)
        if given in ("folded", "projected"):
            return cast(Literal["folded", "projected"], given)
        return "folded" if given == "auto" or not self.int8_decoder() else self.INT8_ATTENTION

    def switches_attention(self) -> bool:
        """Whether the decoder holds both forms and picks one per call (ONNX's "auto")."""
        return getattr(self, "attention", None) == "auto"

    @model_validator(mode="after")
    def _folded_is_float(self) -> AttentionRule:
        folded = getattr(self, "attention", None) == "folded"
        if folded and self.int8_decoder() and self.INT8_ATTENTION == "projected":
            raise ValueError(
                "--attention folded leaves int8 no image-side projection to quantize: an int8"
                " decoder takes --attention projected (its default)"
            )
        return self


class OnnxOptions(Int8Calibration, AttentionRule, ExportOptions):
    """Export the encoder and/or decoder to ONNX (I/O identical to EdgeSAM's own exports)."""

    # static int8 quantizes a decoder's weight products (quantize/static.py), which the folded
    # form keeps; folded is the faster int8 at 1 and 5 points, projected at 16 (docs/quantize.md);
    # `--attention auto` holds both, each searched on its own (targets/onnx_switch.py)
    INT8_ATTENTION: ClassVar[Literal["folded", "projected"]] = "folded"

    opset: int = Field(17, ge=11, le=21, description="ONNX opset")
    simplifier: SimplifierKind = Field(
        "onnxslim", description="Graph simplifier that runs after the export"
    )
    gelu_approximate: bool = Field(False, description="tanh GELU (EdgeSAM's export option)")
    decoder_contract: DecoderContract = Field(
        "edgesam",
        description="Decoder I/O: edgesam (ours), official (segment-anything's SamOnnxModel:"
        " mask_input, has_mask_input, orig_im_size; SAM, SlimSAM and MobileSAM) or"
        " efficientvit (EfficientViT-SAM's DecoderOnnxModel: masks, iou_predictions)",
    )
    return_single_mask: bool = Field(
        False, description="Official / efficientvit contract: return the one best mask only"
    )
    attention: OnnxDecoderAttention = None
    DECODER_ONLY = (
        *ExportOptions.DECODER_ONLY,
        "decoder_contract",
        "return_single_mask",
        "attention",
    )
    external_data: bool | None = Field(
        None,
        description="Weights in a <file>.onnx.data sidecar (default: only when the graph would"
        " pass ONNX's 2 GB limit)",
    )

    # Reduced precision (targets/onnx_precision.py): a real fp16 graph with the fp16-unsafe
    # layers kept fp32; static int8 QDQ searched to meet an accuracy target (host/quantize/);
    # dynamic int8 (MatMul/Gemm weights only); or weight-only int8 (int8 storage, float
    # compute). Float32 I/O in every case.
    precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="fp32, or fp16 (fp16-unsafe layers kept fp32; float32 I/O)"
    )
    quantize: Literal["int8", "int8-dynamic", "int8-weights"] | None = Field(
        None,
        description="int8: static QDQ, calibrated, the blocks that break the masks kept float"
        " (--accuracy-target); int8-dynamic: dynamic MatMul/Gemm int8 (onnxruntime);"
        " int8-weights: int8 weights per channel, float compute (smaller file, same speed)",
    )
    encoder_quantize: Literal["int8", "int8-dynamic", "int8-weights", "none"] | None = Field(
        None,
        description="The encoder's reduction where it differs from --quantize (none: fp32),"
        " e.g. --quantize int8 --encoder-quantize int8-weights: a static int8 decoder beside a"
        " weight-only encoder. Each graph is searched and named by its own mode",
    )
    # Static int8 and weight-only int8's search (docs/quantize.md); int8-weights selects its
    # float16 weights on the calibration images (its selection set; 8 by default, as static).
    calibration: CalibrationFolder = None
    calibration_images: CalibrationCount = CALIBRATION_IMAGES
    calibration_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="Static int8: how activation ranges are calibrated"
    )
    activation_symmetric: bool = Field(
        False, description="Static int8: symmetric int8 activations (TensorRT's convention)"
    )
    accuracy_target: MaskBarText = Field(
        "miou=0.97,worst=0.9",
        description="int8 / int8-weights: mask IoU bar against PyTorch on held-out images and"
        " prompts (mean and worst); the search keeps the fewest blocks (int8-weights: weights,"
        " as float16) float that meet it",
    )
    heldout_images: int = Field(
        5,
        ge=1,
        le=50,
        description="int8 / int8-weights: held-out images the result is judged on (the static"
        " search selects on them: with 3, MobileSAM's searched decoder met the bar on them and"
        " missed it on 5)",
    )
    search_budget: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="int8 / int8-weights: graphs the search may evaluate (each sensitivity"
        " measurement and each judged probe counts one; at most half for sensitivity); the"
        " fewest-float graph meeting the bar by then is kept. Default: the complete search."
        " Counted, not timed: the same inputs give the same graph on any machine load",
    )
    CALIBRATES_WITH = "--quantize int8 or int8-weights (or --encoder-quantize)"
    STATIC_ONLY: ClassVar[tuple[str, ...]] = ("calibration_method", "activation_symmetric")
    CALIBRATION_FIELDS = (
        *Int8Calibration.CALIBRATION_FIELDS,
        *STATIC_ONLY,
        "accuracy_target",
        "heldout_images",
        "search_budget",
    )

    @field_validator("quantize")
    @classmethod
    def _one_reduction(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("precision", "fp32") != "fp32":
            raise ValueError(f"choose --precision fp16 or --quantize {v}, not both")
        return v

    def graph_quantize(self, graph: GraphKind) -> str | None:
        """The reduction one graph is exported with (--encoder-quantize, else --quantize)."""
        if graph == "encoder" and self.encoder_quantize is not None:
            return None if self.encoder_quantize == "none" else self.encoder_quantize
        return self.quantize

    def for_graph(self, graph: GraphKind) -> OnnxOptions:
        """The options one graph is exported with: its own reduction as `quantize`."""
        if self.encoder_quantize is None:
            return self
        return self.model_copy(
            update={"quantize": self.graph_quantize(graph), "encoder_quantize": None}
        )

    def calibrates(self) -> bool:
        return any(self.graph_quantize(g) in ("int8", "int8-weights") for g in self.graphs)

    def int8_decoder(self) -> bool:
        return self.graph_quantize("decoder") == "int8"

    @model_validator(mode="after")
    def _static_only_options(self) -> OnnxOptions:
        given = changed_fields(self, self.STATIC_ONLY)
        if given and not any(self.graph_quantize(g) == "int8" for g in self.graphs):
            raise ValueError(f"{', '.join(given)} applies to --quantize int8 (static) only")
        return self

    @model_validator(mode="after")
    def _encoder_quantize(self) -> OnnxOptions:
        if self.encoder_quantize is None:
            return self
        if "encoder" not in self.graphs:
            raise ValueError("encoder_quantize applies to the encoder, which is not exported")
        if self.precision != "fp32":
            raise ValueError(f"choose --precision {self.precision} or --encoder-quantize, not both")
        return self


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
    """Export the encoder and/or decoder to CoreML ML Program packages (.mlpackage).

    Same input/output names and semantics as the ONNX graphs. Parity runs on the saved
    packages: with the CoreML runtime on macOS, with the numpy MIL executor elsewhere
    (docs/coreml.md gives the trade-offs of each option).
    """

    precision: CoreMLPrecision = Field("fp32", description="Compute precision of the program")
    quantize: Literal["int8"] | None = Field(
        None, description="Weight-only linear quantization (int8)"
    )
    max_points: int = Field(16, ge=1, le=64, description="Largest prompt point count N")
    max_batch: int = Field(1, ge=1, le=16, description="Largest number of prompt sets B per call")
    point_shapes: PointShapes = Field(
        "enumerated",
        description="enumerated: one shape per (B, N), keeps the Neural Engine, needs"
        " iOS18/macOS15; range: RangeDim (official export), CPU/GPU only, any target",
    )
    gelu_approximate: bool = Field(False, description="tanh GELU (EdgeSAM's export option)")
    DECODER_ONLY = (*ExportOptions.DECODER_ONLY, "max_points", "max_batch", "point_shapes")
    minimum_deployment_target: str | None = Field(
        None,
        description="iOS15..iOS18 or macOS12..macOS15; default: iOS18 for enumerated shapes,"
        " iOS16 for range",
    )

    @field_validator("minimum_deployment_target")
    @classmethod
    def _known_target(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for known in DEPLOYMENT_TARGETS:
            if v.lower() == known.lower():
                return known
        raise ValueError(
            f"invalid value for minimum_deployment_target: {v!r};"
            f" allowed: {', '.join(DEPLOYMENT_TARGETS)}"
        )


class TensorRTOptions(ExportOptions):
    """A TensorRT engine per graph, built on this machine's GPU from our ONNX export of the
    graph: the options of `edgesam-export trt` (docs/tensorrt.md)."""

    precision: Literal["fp32", "fp16"] = "fp32"
    opset: int = Field(17, ge=11, le=21, description="opset of the ONNX graph the engine parses")
    workspace_mb: int = Field(1024, ge=64, description="builder workspace in MB (--workspace)")
    points: str | None = Field(
        None, description="Profile of the decoder's point count N as MIN:OPT:MAX (default 1:2:32)"
    )
    batch: str | None = Field(
        None,
        description="Profile of the prompt-set batch B as MIN:OPT:MAX (default 1:1:64); applies"
        " to an encoder only when its graph has a dynamic 'batch' axis",
    )

    @field_validator("points", "batch")
    @classmethod
    def _profile_range(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Checked here, so a bad range fails when the recipe is read, not after an export."""
        from edgesam_export.device.errors import InputError
        from edgesam_export.device.trt_check import parse_range

        if v is not None:
            try:
                parse_range(v, str(info.field_name))
            except InputError as exc:
                raise ValueError(str(exc).removeprefix("--")) from None
        return v


class ExecuTorchOptions(Int8Calibration, AttentionRule, ExportOptions):
    """Export the encoder and/or decoder to ExecuTorch programs (.pte, XNNPACK delegate).

    Same input/output names and semantics as the ONNX graphs (the decoder takes one prompt set
    of 1..N points); each program has a <file>.pte.json sidecar with its metadata. Parity runs
    the saved programs on ExecuTorch's Python runtime (docs/executorch.md).
    """

    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="fp32, or int8: PT2E with the XNNPACK quantizer, per-channel int8 weights;"
        " the decoder's activations int8 with ranges calibrated on images that are not the"
        " held-out images it is judged on, the encoder's int8 with per-call scales; in"
        " each graph the blocks that break the masks kept float (--accuracy-target)",
    )
    max_points: int = Field(
        16, ge=1, le=64, description="Largest prompt point count N (dynamic 1..N)"
    )
    attention: DecoderAttention = None
    calibration: CalibrationFolder = None
    calibration_images: CalibrationCount = CALIBRATION_IMAGES
    accuracy_target: MaskBarText = Field(
        "miou=0.97,worst=0.9",
        description="int8: mask IoU bar against PyTorch (mean and worst) that every int8"
        " program meets on the held-out images (a miss fails the export); each graph's"
        " search first meets it on the calibration images with the fewest float blocks",
    )
    search_budget: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="int8: programs each graph's search may evaluate (each sensitivity"
        " measurement and each judged probe counts one; at most half for sensitivity)."
        " Default: the complete search. Counted, not timed",
    )
    DECODER_ONLY = (*ExportOptions.DECODER_ONLY, "max_points", "attention")
    CALIBRATES_WITH = "--precision int8"
    CALIBRATION_FIELDS = (
        *Int8Calibration.CALIBRATION_FIELDS,
        "accuracy_target",
        "search_budget",
    )

    def calibrates(self) -> bool:
        return self.precision == "int8"

    def int8_decoder(self) -> bool:
        return self.precision == "int8"


def changed_fields(options: BaseModel, names: tuple[str, ...]) -> list[str]:
    """The named fields set away from their defaults: options that only apply to one mode
    (int8) are refused when given without it."""
    fields = type(options).model_fields
    return [f for f in names if getattr(options, f) != fields[f].default]


def allowed_values(model: type[BaseModel], field: str) -> str | None:
    """The values a field accepts, for one-line error messages: its choices or its range."""
    info = model.model_fields.get(field)
    if info is None:
        return None
    choices = [a for a in _literal_args(info.annotation) if a is not None]
    if choices:
        return ", ".join(map(str, choices))
    low = next((getattr(m, "ge", None) for m in info.metadata if hasattr(m, "ge")), None)
    high = next((getattr(m, "le", None) for m in info.metadata if hasattr(m, "le")), None)
    if low is not None or high is not None:
        return f"{'' if low is None else low}..{'' if high is None else high}"
    return None


def _literal_args(annotation: object) -> tuple[object, ...]:
    """Literal["a", "b"] and Literal["a"] | None -> their values."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(v for arg in get_args(annotation) for v in _literal_args(arg))

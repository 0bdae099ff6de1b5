"""EfficientViT-SAM (MIT Han Lab): EfficientViT-L/XL backbone, SAM neck, plus SAM's heads.

Module and parameter names follow the released checkpoints (`image_encoder.backbone.stages.*`,
`image_encoder.neck.{input_ops,middle,output_ops}.*`, `image_encoder.norm.*`, then SAM's
`prompt_encoder.*` / `mask_decoder.*`), so official files load unchanged, bare or wrapped
under "state_dict". Model-definition facts that differ from plain SAM live here, not in the
loader: every norm uses eps 1e-6 (the zoo sets it on the whole model, the mask decoder's
LayerNorms included), the encoder's GELU is the tanh approximation, and LiteMLA divides by its
normaliser + 1e-15.

Variants (from the official model zoo's configuration): L0/L1/L2 see a 512x512 input, XL0/XL1 a
1024x1024 one; all emit (256, 64, 64) embeddings, and prompts and masks stay in SAM's 1024 frame.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.host.models.edgesam import MatrixUpsample
from edgesam_export.host.models.sam_heads import LayerNorm2d, SamModel

NORM_EPS = 1e-6  # the zoo's set_norm_eps(model, 1e-6): BatchNorm and LayerNorm, whole model
ATTENTION_EPS = 1e-15  # LiteMLA's normaliser epsilon (not a norm: left as is by the zoo)
EMBED_HW = 64  # the neck resizes every branch to 64x64


def _gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class ConvLayer(nn.Module):
    """Conv (same padding) -> optional BatchNorm -> optional tanh-GELU (`conv`, `norm`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout, eps=NORM_EPS) if norm else None
        self.act = _gelu() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class OpSequential(nn.Module):
    """A sequence under `op_list` (the checkpoint's name)."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: Tensor) -> Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """`main(x) + x`, or `main(x)` alone for a stage's downsampling block."""

    def __init__(self, main: nn.Module, shortcut: bool) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + x if self.shortcut else self.main(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: float) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.conv1 = ConvLayer(cin, mid, 3, stride, act=True)
        self.conv2 = ConvLayer(mid, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool = False
    ) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.spatial_conv = ConvLayer(cin, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm,
                                      act=True)  # fmt: skip
        self.point_conv = ConvLayer(mid, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool = False
    ) -> None:
        super().__init__()
        mid = round(cin * expand)
        norm = not fewer_norm
        self.inverted_conv = ConvLayer(cin, mid, 1, bias=fewer_norm, norm=norm, act=True)
        self.depth_conv = ConvLayer(
            mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=norm, act=True
        )
        self.point_conv = ConvLayer(mid, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention (head dim `dim`), as EfficientViT defines it.

    qkv channels are head-major ([q, k, v] of head 0, then head 1, ...); the multi-scale branch
    (depthwise k x k, then a grouped 1x1) doubles the heads. Attention is linear: with v padded
    by a row of ones, (v k^T) q gives the numerator and, in its last row, the normaliser.
    The quadratic branch of the official code only runs for H*W <= dim (never at SAM sizes).
    """

    def __init__(self, channels: int, dim: int = 32, scales: tuple[int, ...] = (5,)) -> None:
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim = dim
        self.qkv = ConvLayer(channels, 3 * total, 1, norm=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvLayer(total * (1 + len(scales)), channels, 1)

    def attention(self, qkv: Tensor) -> Tensor:
        b, _, h, w = qkv.shape
        if h * w <= self.dim:
            raise ValueError("LiteMLA's quadratic branch (H*W <= head dim) is not implemented")
        qkv = qkv.reshape(b, -1, 3 * self.dim, h * w)
        q = F.relu(qkv[:, :, : self.dim])
        k = F.relu(qkv[:, :, self.dim : 2 * self.dim])
        v = F.pad(qkv[:, :, 2 * self.dim :], (0, 0, 0, 1), mode="constant", value=1.0)
        out = (v @ k.transpose(-1, -2)) @ q
        out = out[:, :, :-1] / (out[:, :, -1:] + ATTENTION_EPS)
        return out.reshape(b, -1, h, w)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], dim=1)
        return self.proj(self.attention(qkv))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, expand: float, scales: tuple[int, ...]) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, 32, scales), shortcut=True)
        self.local_module = Residual(
            MBConv(channels, channels, 1, expand, fewer_norm=True), shortcut=True
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.local_module(self.context_module(x))


@dataclass(frozen=True)
class BackboneConfig:
    """EfficientViT-L/XL backbone (`EfficientViTLargeBackbone` arguments of the model zoo)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    blocks: tuple[str, ...]  # per stage: res | fmb | mb | att (scale 5) | att@3
    expands: tuple[float, ...]
    fewer_norm: tuple[bool, ...]


_L_BLOCKS = ("res", "fmb", "fmb", "mb", "att")
_L_EXPANDS = (1.0, 4.0, 4.0, 4.0, 6.0)
_L_FEWER = (False, False, False, True, True)
_XL_BLOCKS = ("res", "fmb", "fmb", "fmb", "att@3", "att@3")
_XL_EXPANDS = (1.0, 4.0, 4.0, 4.0, 4.0, 6.0)
_XL_FEWER = (False, False, False, False, True, True)


def _local_block(
    kind: str, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool
) -> nn.Module:
    if kind == "res":
        if fewer_norm:
            raise ValueError("res blocks with fewer_norm are not used by any EfficientViT-SAM")
        return ResBlock(cin, cout, stride, expand)
    if kind == "fmb":
        return FusedMBConv(cin, cout, stride, expand, fewer_norm)
    if kind == "mb":
        return MBConv(cin, cout, stride, expand, fewer_norm)
    raise ValueError(f"unknown EfficientViT block {kind!r}")


class EfficientViTBackbone(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        w0 = cfg.widths[0]
        stage0: list[nn.Module] = [ConvLayer(3, w0, 3, 2, act=True)]
        for _ in range(cfg.depths[0]):
            block = _local_block(cfg.blocks[0], w0, w0, 1, cfg.expands[0], cfg.fewer_norm[0])
            stage0.append(Residual(block, shortcut=True))
        stages = [OpSequential(stage0)]
        cin = w0
        for i in range(1, len(cfg.widths)):
            kind, width = cfg.blocks[i], cfg.widths[i]
            expand, fewer = cfg.expands[i], cfg.fewer_norm[i]
            down_kind = kind if kind in ("mb", "fmb") else "mb"
            ops: list[nn.Module] = [
                Residual(_local_block(down_kind, cin, width, 2, expand * 4, fewer), shortcut=False)
            ]
            for _ in range(cfg.depths[i]):
                if kind.startswith("att"):
                    scales = (3,) if kind == "att@3" else (5,)
                    ops.append(EfficientViTBlock(width, expand, scales))
                else:
                    block = _local_block(kind, width, width, 1, expand, fewer)
                    ops.append(Residual(block, shortcut=True))
            stages.append(OpSequential(ops))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class ResizeTo(nn.Module):
    """Bicubic resize to a fixed size (PyTorch's a = -0.75), skipped when already that size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)


class SamNeck(nn.Module):
    """Branches (1x1 conv + BN, bicubic to 64x64) summed, FusedMBConv blocks, 1x1 conv."""

    def __init__(
        self,
        stage_ids: tuple[int, ...],
        in_channels: tuple[int, ...],
        depth: int,
        expand: float,
        width: int = 256,
        out_dim: int = 256,
    ) -> None:
        super().__init__()
        self.stage_ids = stage_ids
        self.input_ops = nn.ModuleList(
            OpSequential([ConvLayer(c, width, 1), ResizeTo(EMBED_HW)]) for c in in_channels
        )
        self.middle = OpSequential(
            [Residual(FusedMBConv(width, width, 1, expand), shortcut=True) for _ in range(depth)]
        )
        self.output_ops = nn.ModuleList(
            [OpSequential([ConvLayer(width, out_dim, 1, bias=True, norm=False)])]
        )

    def forward(self, stages: list[Tensor]) -> Tensor:
        feats = [op(stages[i]) for i, op in zip(self.stage_ids, self.input_ops, strict=True)]
        # The official sum is right-associative: f0 + (f1 + (f2 + ...)).
        total = feats[-1]
        for f in reversed(feats[:-1]):
            total = f + total
        return cast(Tensor, self.output_ops[0](self.middle(total)))


class EfficientViTSamEncoder(nn.Module):
    def __init__(self, backbone: BackboneConfig, neck: SamNeck, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.backbone = EfficientViTBackbone(backbone)
        self.neck = neck
        self.norm = LayerNorm2d(256, eps=NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.neck(self.backbone(x)))

    def export_friendly(self) -> EfficientViTSamEncoder:
        """A copy whose fixed-size bicubic resizes are two constant matmuls each.

        onnxruntime's cubic Resize is slow on these maps and CoreML has no bicubic op; the
        matrices hold PyTorch's own interpolation weights (see `edgesam.MatrixUpsample`).
        """
        clone = copy.deepcopy(self)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.img_size, self.img_size)
            sizes = [int(s.shape[-1]) for s in self.backbone(probe)]
        for idx, ops in zip(clone.neck.stage_ids, clone.neck.input_ops, strict=True):
            side = sizes[idx]
            seq = cast(OpSequential, ops)
            if side != EMBED_HW:
                if EMBED_HW % side:
                    raise ValueError(f"neck input {side} does not divide {EMBED_HW}")
                seq.op_list[1] = MatrixUpsample((side, side), "bicubic", EMBED_HW // side)
            else:
                seq.op_list[1] = nn.Identity()
        return clone


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    img_size: int
    backbone: BackboneConfig
    neck_stages: tuple[int, ...]
    neck_channels: tuple[int, ...]
    neck_depth: int
    neck_expand: float
    layout: str


def _l(depths: tuple[int, ...]) -> BackboneConfig:
    return BackboneConfig((32, 64, 128, 256, 512), depths, _L_BLOCKS, _L_EXPANDS, _L_FEWER)


def _xl(depths: tuple[int, ...]) -> BackboneConfig:
    return BackboneConfig((32, 64, 128, 256, 512, 1024), depths, _XL_BLOCKS, _XL_EXPANDS, _XL_FEWER)


# Official model zoo (efficientvit/models/efficientvit/sam.py + backbone.py).
VARIANTS: tuple[Variant, ...] = (
    Variant("efficientvit_sam_l0", "L0", 512, _l((1, 1, 1, 4, 4)), (4, 3, 2), (512, 256, 128),
            4, 1.0, "efficientvit_sam_l0.json"),
    Variant("efficientvit_sam_l1", "L1", 512, _l((1, 1, 1, 6, 6)), (4, 3, 2), (512, 256, 128),
            8, 1.0, "efficientvit_sam_l1.json"),
    Variant("efficientvit_sam_l2", "L2", 512, _l((1, 2, 2, 8, 8)), (4, 3, 2), (512, 256, 128),
            12, 1.0, "efficientvit_sam_l2.json"),
    Variant("efficientvit_sam_xl0", "XL0", 1024, _xl((0, 1, 1, 2, 3, 3)), (5, 4, 3),
            (1024, 512, 256), 6, 4.0, "efficientvit_sam_xl0.json"),
    Variant("efficientvit_sam_xl1", "XL1", 1024, _xl((1, 2, 2, 4, 6, 6)), (5, 4, 3),
            (1024, 512, 256), 12, 4.0, "efficientvit_sam_xl1.json"),
)  # fmt: skip


def build_efficientvit_sam(variant: Variant) -> SamModel:
    neck = SamNeck(variant.neck_stages, variant.neck_channels, variant.neck_depth,
                   variant.neck_expand)  # fmt: skip
    encoder = EfficientViTSamEncoder(variant.backbone, neck, variant.img_size)
    return SamModel(encoder, num_mask_tokens=4, norm_eps=NORM_EPS)


_VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


def build_variant(name: str) -> SamModel:
    """The builder the registry names (`device.models`): one variant by its registry name."""
    return build_efficientvit_sam(_VARIANTS_BY_NAME[name])

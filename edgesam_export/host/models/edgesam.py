"""EdgeSAM: RepViT-M1 image encoder with the two-stage fusion neck, plus SAM's heads.

Parameter names match the released `edge_sam.pth` / `edge_sam_3x.pth` (bare state dicts) so they
load with `strict=True`. Conv + BatchNorm pairs are kept unfused, as in the official model, so the
PyTorch reference computes the same float32 arithmetic; exporters fold them.
"""

from __future__ import annotations

import copy
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.host.models.sam_heads import LayerNorm2d, SamModel

UpsampleMode = Literal["bicubic", "bilinear"]

# RepViT-M1 blocks after the stem: (output channels, stride, squeeze-excite).
_M1_BLOCKS: tuple[tuple[int, int, bool], ...] = (
    (48, 1, True), (48, 1, False), (48, 1, False),
    (96, 2, False), (96, 1, True), (96, 1, False), (96, 1, False),
    (192, 2, False), *(((192, 1, True), (192, 1, False)) * 7), (192, 1, False),
    (384, 2, False), (384, 1, True), (384, 1, False),
)  # fmt: skip
_STAGE2_END = 23  # index in `features` of the last 64x64 block (fuse_stage2 input)


class ConvBN(nn.Sequential):
    """Bias-free conv followed by eval-mode BatchNorm (`c`, `bn`: the checkpoint's names)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    @torch.no_grad()
    def folded(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of the equivalent biased conv: BatchNorm folded in."""
        conv, bn = cast(nn.Conv2d, self.c), cast(nn.BatchNorm2d, self.bn)
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


SEMean = Literal["mean", "split", "pooled"]


class SqueezeExcite(nn.Module):
    """timm's SEModule as EdgeSAM uses it: mean, 1x1 conv, ReLU, 1x1 conv, sigmoid gate.

    `mean` says how the spatial mean is written (identical maths, different graphs):
    - "mean": one ReduceMean over H and W, the official form. An ONNX Runtime ReduceMean over
      65536 values loses enough float32 precision for these networks to amplify it (0.02 on the
      embeddings).
    - "split": a mean over W then over H; two short reductions keep ORT within 1e-3.
    - "pooled" (exported to ONNX): 16x16 average pools, then a global average pool. Pooling ops
      run in onnxruntime's blocked (NCHWc) conv layout, where ReduceMean forces a reorder of the
      whole map to NCHW and back; the sums stay short (<= 256 terms) like "split".

    `broadcast_gate` (exported to ONNX) repeats the (1, C, 1, 1) gate to the map's size with a
    nearest-neighbour Resize before the product: onnxruntime's blocked layout multiplies only
    same-shape tensors, so a broadcast product costs three full-map reorders and a separate
    residual Add; the Resize keeps the block in the blocked layout. Same numbers.
    """

    def __init__(self, channels: int, mean: SEMean = "mean", broadcast_gate: bool = False) -> None:
        super().__init__()
        reduced = max(8, int(channels * 0.25 + 4) // 8 * 8)  # make_divisible(C/4, 8), no round-up
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.mean: SEMean = mean
        self.broadcast_gate = broadcast_gate

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])  # fixed by the encoder's input size
        if self.mean == "pooled" and h % 16 == 0 and w % 16 == 0:
            s = F.adaptive_avg_pool2d(F.avg_pool2d(x, 16), 1)
        elif self.mean in ("split", "pooled"):
            s = x.mean(3, keepdim=True).mean(2, keepdim=True)
        else:
            s = x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        if self.broadcast_gate:
            gate = F.interpolate(gate, scale_factor=(float(h), float(w)), mode="nearest")
        return x * gate


class RepVGGDW(nn.Module):
    """Depthwise 3x3 Conv-BN + depthwise 1x1 Conv-BN + identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = ConvBN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One depthwise 3x3 conv with bias computing the same sum (RepVGG re-parameterisation).

        Folding the two BatchNorms and the identity into one kernel saves a conv and two
        full-size additions per block at run time; float32 results move by ~3e-5 here.
        """
        w3, b3 = self.conv.folded()
        w1, b1 = self.conv1.folded()
        weight = w3.clone()
        weight[:, :, 1:2, 1:2] += w1
        weight[:, :, 1, 1] += 1.0
        channels = weight.shape[0]
        conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=True)
        conv.weight.copy_(weight)
        assert conv.bias is not None
        conv.bias.copy_(b3 + b1)
        return conv


class ChannelMixer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.m = nn.Sequential(
            ConvBN(channels, 2 * channels), nn.GELU(), ConvBN(2 * channels, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.m(x)


class RepViTBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_se: bool) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(cin) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(
                ConvBN(cin, cin, 3, 2, 1, groups=cin), se, ConvBN(cin, cout)
            )
        else:
            if cin != cout:
                raise ValueError("a stride-1 RepViT block keeps its width")
            self.token_mixer = nn.Sequential(RepVGGDW(cin), se)
        self.channel_mixer = ChannelMixer(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_mixer(self.token_mixer(x))


class ChannelsLastLayerNorm2d(nn.Module):
    """`LayerNorm2d` as one last-axis LayerNormalization between two transposes.

    The NCHW form exports as two ReduceMean over channels plus seven elementwise ops, none of
    which onnxruntime fuses; this form is one fused kernel. Same parameters, same maths.
    """

    def __init__(self, norm: LayerNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Upsample2x(nn.Module):
    def __init__(self, mode: UpsampleMode) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False)


def interpolation_matrix(in_size: int, out_size: int, mode: UpsampleMode) -> Tensor:
    """(out, in) matrix of PyTorch's 1-D `F.interpolate` weights (align_corners=False).

    Read off `F.interpolate` itself applied to the identity, so border clamping and the cubic
    coefficient (-0.75) are PyTorch's by construction. Bilinear and bicubic are separable:
    a 2-D resize equals one such matrix per axis.
    """
    basis = torch.eye(in_size, dtype=torch.float32).reshape(1, in_size, in_size, 1)
    with torch.no_grad():
        out = F.interpolate(basis, size=(out_size, 1), mode=mode, align_corners=False)
    return out[0, :, :, 0].T.contiguous()


class MatrixUpsample(nn.Module):
    """A fixed-size 2-D resize as two constant matmuls: `A_h @ x @ A_w^T`.

    onnxruntime's cubic Resize takes ~100 ms on this 256x32x32 map (a quarter of the whole
    encoder); two small MatMuls take under 1 ms and run on every backend (CoreML has no
    bicubic op at all). Same weights as PyTorch, float32 summation order aside.
    """

    rows: Tensor
    cols_t: Tensor

    def __init__(self, in_hw: tuple[int, int], mode: UpsampleMode, factor: int = 2) -> None:
        super().__init__()
        (h, w) = in_hw
        self.register_buffer("rows", interpolation_matrix(h, factor * h, mode))
        self.register_buffer("cols_t", interpolation_matrix(w, factor * w, mode).T.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return self.rows @ (x @ self.cols_t)


class FuseStage3(nn.Module):
    def __init__(self, cin: int, mode: UpsampleMode) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([nn.Conv2d(cin, 256, 1, bias=False), Upsample2x(mode)])

    def forward(self, x: Tensor) -> Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class RepViTEncoder(nn.Module):
    """RepViT-M1 to (1, 256, 64, 64) embeddings for a 1024x1024 input."""

    def __init__(self, upsample_mode: UpsampleMode = "bicubic", img_size: int = 1024) -> None:
        super().__init__()
        self.img_size = img_size
        self.upsample_mode: UpsampleMode = upsample_mode
        first = _M1_BLOCKS[0][0]
        layers: list[nn.Module] = [
            nn.Sequential(
                ConvBN(3, first // 2, 3, 2, 1), nn.GELU(), ConvBN(first // 2, first, 3, 2, 1)
            )
        ]
        cin = first
        for cout, stride, use_se in _M1_BLOCKS:
            layers.append(RepViTBlock(cin, cout, stride, use_se))
            cin = cout
        self.features = nn.ModuleList(layers)
        self.fuse_stage2 = nn.Conv2d(_M1_BLOCKS[_STAGE2_END - 1][0], 256, 1, bias=False)
        self.fuse_stage3 = FuseStage3(cin, upsample_mode)
        self.neck = nn.Sequential(
            nn.Conv2d(256, 256, 1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    def export_friendly(self, onnxruntime_layout: bool = False) -> RepViTEncoder:
        """A copy computing the same function faster and closer to PyTorch on ONNX runtimes.

        - squeeze-excite means are split (see `SqueezeExcite`);
        - each RepVGGDW token mixer is re-parameterised into one conv;
        - the neck's 2x upsampling (fixed 32 -> 64 grid for a 1024 input) becomes two constant
          matmuls (`MatrixUpsample`);
        - the neck's first 1x1 conv (bias-free) is folded into the two fusion convs before it:
          W0 (W2 a + up(W3 b)) = (W0 W2) a + up((W0 W3) b), as the upsampling mixes no channels;
          one 256x256 conv over the 64x64 map fewer;
        - the neck's LayerNorm2d run channels-last (`ChannelsLastLayerNorm2d`).

        `onnxruntime_layout` (the ONNX export) also writes the squeeze-excite blocks with pooling
        ops and a broadcast gate so that onnxruntime keeps them in its blocked conv layout (see
        `SqueezeExcite`); other backends keep the plain product. The original stays the
        bit-faithful reference.
        """
        clone = copy.deepcopy(self)
        stage3_hw = (self.img_size // 32, self.img_size // 32)
        clone.fuse_stage3.op_list[1] = MatrixUpsample(stage3_hw, self.upsample_mode)
        with torch.no_grad():
            w0 = cast(nn.Conv2d, clone.neck[0]).weight[:, :, 0, 0]
            for conv in (clone.fuse_stage2, clone.fuse_stage3.op_list[0]):
                assert isinstance(conv, nn.Conv2d) and conv.bias is None
                conv.weight.copy_(torch.einsum("oc,cikl->oikl", w0, conv.weight))
        clone.neck[0] = nn.Identity()
        for i in (1, 3):
            clone.neck[i] = ChannelsLastLayerNorm2d(cast(LayerNorm2d, clone.neck[i]))
        for module in list(clone.modules()):
            if isinstance(module, SqueezeExcite):
                module.mean = "pooled" if onnxruntime_layout else "split"
                module.broadcast_gate = onnxruntime_layout
            if isinstance(module, RepViTBlock) and isinstance(module.token_mixer[0], RepVGGDW):
                module.token_mixer[0] = module.token_mixer[0].fused()
        return clone

    def forward(self, x: Tensor) -> Tensor:
        stage2 = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _STAGE2_END:
                stage2 = x
        return self.neck(self.fuse_stage2(stage2) + self.fuse_stage3(x))


def build_edge_sam(upsample_mode: UpsampleMode = "bicubic") -> SamModel:
    return SamModel(RepViTEncoder(upsample_mode), num_mask_tokens=4)

"""EdgeTAM's image trunk: RepViT-M1 (timm `repvit_m1`, legacy blocks) without timm.

The official config builds `timm.create_model("repvit_m1.dist_in1k", features_only=True,
out_indices=(0, 1, 2, 3))` and keeps it as `image_encoder.trunk.body`; timm's feature wrapper
names the stages `stages_0..3`. Module names here reproduce that layout, so the released
state dict (BatchNorm not folded, `<conv>.c` + `<conv>.bn`) loads strictly. The trunk returns
the four stage outputs: strides 4, 8, 16, 32 with 48, 96, 192, 384 channels.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: RepViT-M1: stage widths and block counts (the downsampling block of stages 1-3 is extra).
M1_WIDTHS = (48, 96, 192, 384)
M1_DEPTHS = (2, 2, 14, 2)


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm, as `c` and `bn` (eval-mode statistics)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(cout))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean over H, W)))); reduction width rounded to a multiple of 8."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(8, int(channels * 0.25 + 4) // 8 * 8)  # timm make_divisible, no floor
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class TokenMixer(nn.Module):
    """Depthwise 3x3 ConvBN + depthwise 1x1 ConvBN + identity (the legacy RepVGG-style mixer)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = ConvBN(dim, dim, 3, groups=dim)
        self.conv1 = ConvBN(dim, dim, 1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.conv1(x) + x


class ChannelMixer(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, hidden)
        self.act = nn.GELU()
        self.conv2 = ConvBN(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.conv1(x)))


class Block(nn.Module):
    """Token mixer, optional squeeze-excite, then a residual channel MLP (ratio 2)."""

    def __init__(self, dim: int, use_se: bool) -> None:
        super().__init__()
        self.token_mixer = TokenMixer(dim)
        self.se: nn.Module = SqueezeExcite(dim) if use_se else nn.Identity()
        self.channel_mixer = ChannelMixer(dim, dim * 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class Downsample(nn.Module):
    """Block without SE, depthwise stride-2 ConvBN, pointwise ConvBN to the new width, + MLP."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pre_block = Block(cin, use_se=False)
        self.spatial_downsample = ConvBN(cin, cin, 3, stride=2, groups=cin)
        self.channel_downsample = ConvBN(cin, cout)
        self.ffn = ChannelMixer(cout, cout * 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))
        return x + self.ffn(x)


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cout // 2, 3, stride=2)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(cout // 2, cout, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act1(self.conv1(x)))


class Stage(nn.Module):
    """Optional downsampling block, then blocks alternating SE on / off (first one on)."""

    def __init__(self, cin: int, cout: int, depth: int, downsample: bool) -> None:
        super().__init__()
        if downsample:
            self.downsample: nn.Module = Downsample(cin, cout)
        self.blocks = nn.Sequential(*(Block(cout, use_se=(i % 2 == 0)) for i in range(depth)))
        self.has_downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        if self.has_downsample:
            x = self.downsample(x)
        return self.blocks(x)


class RepViTBody(nn.Module):
    def __init__(
        self, widths: tuple[int, ...] = M1_WIDTHS, depths: tuple[int, ...] = M1_DEPTHS
    ) -> None:
        super().__init__()
        self.stem = Stem(3, widths[0])
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            self.add_module(f"stages_{i}", Stage(cin, width, depth, downsample=i > 0))
            cin = width
        self.num_stages = len(widths)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for i in range(self.num_stages):
            x = getattr(self, f"stages_{i}")(x)
            features.append(x)
        return features


class RepViTTrunk(nn.Module):
    """`image_encoder.trunk`: the body plus the channel list the neck expects (deepest first)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = RepViTBody()
        self.channel_list = list(M1_WIDTHS[::-1])

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)

    def export_friendly(self, onnxruntime_layout: bool = False) -> RepViTTrunk:
        """A copy computing the same function in the forms EdgeSAM's RepViT export uses
        (`host/models/edgesam.py`, docs/onnx-graph.md); the original stays the reference.

        - every token mixer (depthwise 3x3 Conv-BN + depthwise 1x1 Conv-BN + identity) is
          re-parameterised into one depthwise 3x3 conv: a conv and two full-map adds fewer;
        - `onnxruntime_layout` (the ONNX export): squeeze-excite means as pooling and the gate
          repeated to the map's size, so onnxruntime keeps every block in its blocked conv
          layout instead of reordering the map to NCHW and back around each squeeze-excite.
        """
        from edgesam_export.host.models.edgesam import RepVGGDW
        from edgesam_export.host.models.edgesam import SqueezeExcite as ExportSqueezeExcite

        clone = copy.deepcopy(self)
        for module in list(clone.modules()):
            if not isinstance(module, Block):
                continue
            state = module.token_mixer.state_dict()
            mixer = RepVGGDW(int(state["conv.c.weight"].shape[0]))
            mixer.load_state_dict(state)
            module.token_mixer = mixer.fused()  # type: ignore[assignment]
            if onnxruntime_layout and isinstance(module.se, SqueezeExcite):
                se = ExportSqueezeExcite(module.se.fc1.in_channels, "pooled", broadcast_gate=True)
                se.load_state_dict(module.se.state_dict())
                module.se = se
        return clone

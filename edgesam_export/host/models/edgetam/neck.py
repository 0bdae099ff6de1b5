"""EdgeTAM's FPN neck and the sine position encoding SAM 2 computes (not stored).

The neck projects each trunk stage to 256 channels with a 1x1 conv (`convs.0` takes the
deepest stage). Only levels 2 and 3 take part in the top-down path (nearest 2x upsampling of
level 3 added to level 2); levels 0 and 1 are the bare projections. The image encoder drops
level 3 (`scalp=1`), so the outputs are levels 0, 1, 2 (strides 4, 8, 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sine_position_encoding(
    height: int, width: int, channels: int = 256, temperature: float = 10000.0
) -> Tensor:
    """(1, channels, H, W) DETR-style normalised sine encoding: y block, then x block.

    Positions 1..H (1..W) are divided by (H + 1e-6) and scaled by 2 pi; channel pairs take
    sin / cos of the position over temperature ** (2 * (i // 2) / (channels / 2)). Computed in
    float32, as the official code does.
    """
    half = channels // 2
    scale = 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32)
    x = torch.arange(1, width + 1, dtype=torch.float32)
    y = y / (y[-1] + 1e-6) * scale
    x = x / (x[-1] + 1e-6) * scale
    dim_t = torch.arange(half, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(pos: Tensor) -> Tensor:  # (n,) -> (n, half), interleaved sin/cos
        p = pos[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0).contiguous()


class FpnNeck(nn.Module):
    def __init__(
        self,
        backbone_channel_list: tuple[int, ...] = (384, 192, 96, 48),
        d_model: int = 256,
        top_down_levels: tuple[int, ...] = (2, 3),
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            branch = nn.Sequential()
            branch.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(branch)
        self.backbone_channel_list = list(backbone_channel_list)
        self.top_down_levels = top_down_levels
        self.d_model = d_model

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """Trunk stages (shallowest first) -> FPN levels (shallowest first), all of them."""
        n = len(self.convs) - 1
        out: list[Tensor] = [xs[0]] * (n + 1)
        prev: Tensor | None = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                prev = lateral + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest")
            else:
                prev = lateral
            out[i] = prev
        return out

"""MobileSAM's image encoder: TinyViT-5M at a 1024 input, with SAM's neck.

Parameter names follow the released `mobile_sam.pt` (a bare state dict): `patch_embed.seq`,
`layers.0` (MBConv blocks), `layers.1..3` (windowed attention blocks with LeViT-style attention
biases), PatchMerging downsamplers, the unused classification head (`norm_head`, `head`, kept so
the file loads strictly) and `neck`.

Export-friendly: every resolution, window count and padding is a Python integer fixed at build
time (the official code reads them from `input_resolution` as well, but branches on them at run
time); the attention biases are gathered through a constant index buffer from the loaded
`attention_biases` on every call, so no stale cache (the official `ab` attribute, filled when
`.eval()` runs before the weights are loaded) can be exported.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.host.models.sam_heads import LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    img_size: int = 1024
    num_classes: int = 1000
    out_chans: int = 256


class ConvBN(nn.Sequential):
    """Bias-free conv + BatchNorm (`c`, `bn`: the checkpoint's names)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(3, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 (stride 2, or 1 into the 320/448/576-wide last stage), 1x1 conv."""

    def __init__(self, resolution: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.out_resolution = resolution // stride
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # tokens (B, L, C) -> (B, C, H, W); static in any traced graph
            r = self.resolution
            x = x.reshape(-1, r, r, x.shape[-1]).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


def _bias_index(window: int) -> tuple[Tensor, int]:
    """LeViT's attention-bias index: offsets (|dy|, |dx|) numbered in first-seen order."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).reshape(n, n), len(offsets)


class TinyAttention(nn.Module):
    """LayerNorm, head-major qkv ([q, k, v] of head 0, then head 1, ...), softmax(qk^T s + b)."""

    attention_bias_idxs: Tensor

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        idx, n_offsets = _bias_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        self.register_buffer("attention_bias_idxs", idx, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, h, d = x.shape[1], self.num_heads, self.key_dim
        qkv = self.qkv(self.norm(x)).reshape(-1, n, h, 3 * d)
        q, k, v = qkv.permute(0, 2, 1, 3).split([d, d, d], dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, h * d))


class TinyMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (grid zero-padded before the attention's LayerNorm), depthwise 3x3
    local conv, MLP; tokens stay (B, L, C) between blocks as in the official model."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.padded = -(-resolution // window) * window
        self.attn = TinyAttention(dim, num_heads, window)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        r, ws, p = self.resolution, self.window, self.padded
        c = x.shape[-1]
        res = x
        if r == ws:
            x = self.attn(x)
        else:
            x = x.reshape(-1, r, r, c)
            if p != r:
                x = F.pad(x, (0, 0, 0, p - r, 0, p - r))
            nw = p // ws
            x = x.reshape(-1, nw, ws, nw, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
            x = self.attn(x)
            x = x.reshape(-1, nw, nw, ws, ws, c).transpose(2, 3).reshape(-1, p, p, c)
            if p != r:
                x = x[:, :r, :r]
            x = x.reshape(-1, r * r, c)
        x = res + x
        x = self.local_conv(x.transpose(1, 2).reshape(-1, c, r, r))
        x = x.reshape(-1, c, r * r).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, out_dim: int, expand: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class TinyViT(nn.Module):
    """TinyViT to (1, 256, 64, 64) embeddings for a 1024x1024 input."""

    def __init__(self, cfg: TinyViTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TinyViTConfig()
        self.config = cfg
        self.img_size = cfg.img_size
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(dims[0])
        res = cfg.img_size // 4
        layers: list[nn.Module] = []
        for i, dim in enumerate(dims):
            out_dim = dims[i + 1] if i + 1 < len(dims) else None
            if i == 0:
                assert out_dim is not None
                layer: nn.Module = ConvLayer(
                    dim, res, cfg.depths[0], out_dim, cfg.mbconv_expand_ratio
                )
            else:
                layer = BasicLayer(
                    dim,
                    res,
                    cfg.depths[i],
                    cfg.num_heads[i],
                    cfg.window_sizes[i],
                    cfg.mlp_ratio,
                    out_dim,
                )
            layers.append(layer)
            down = getattr(layer, "downsample", None)
            if isinstance(down, PatchMerging):
                res = down.out_resolution
        self.layers = nn.ModuleList(layers)
        self.out_resolution = res
        self.norm_head = nn.LayerNorm(dims[-1])  # classification head: loaded, never run
        self.head = nn.Linear(dims[-1], cfg.num_classes)
        o = cfg.out_chans
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], o, 1, bias=False),
            LayerNorm2d(o),
            nn.Conv2d(o, o, 3, padding=1, bias=False),
            LayerNorm2d(o),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        r = self.out_resolution
        x = x.reshape(-1, r, r, x.shape[-1]).permute(0, 3, 1, 2)
        return self.neck(x)

"""SAM's ViT image encoder (ViT-B/L/H) and SlimSAM's pruned variant of it, export-friendly.

Parameter names follow the released checkpoints (`image_encoder.patch_embed.proj`, `pos_embed`,
`blocks.N.{norm1,attn,norm2,mlp}`, `neck`), so Meta's `sam_vit_{b,l,h}` files load unchanged.
SlimSAM splits each block's fused `qkv` into three `q`, `k`, `v` layers and prunes every block to
its own widths; `vit_config_from_state` reads all of them from the tensor shapes.

Export-friendly by construction: the token grid, window padding (64 -> 70 for 14x14 windows) and
relative-position index tables are Python integers and constant buffers fixed at build time, so a
traced graph has no shape arithmetic and no data-dependent control flow. The decomposed relative
position terms are two batched matmuls (what `einsum` computes, without an Einsum node).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.device.errors import CheckpointError
from edgesam_export.host.models.sam_heads import LayerNorm2d


@dataclass(frozen=True)
class ViTBlockConfig:
    attn_dim: int  # width of q, k and v (= embed_dim in SAM, pruned per block in SlimSAM)
    num_heads: int
    mlp_dim: int
    window_size: int  # 0 = global attention over the whole grid

    @property
    def head_dim(self) -> int:
        return self.attn_dim // self.num_heads


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int
    blocks: tuple[ViTBlockConfig, ...]
    separate_qkv: bool = False  # SlimSAM: q, k, v as three Linear layers
    img_size: int = 1024
    patch_size: int = 16
    out_chans: int = 256

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


def sam_vit_config(
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    window_size: int = 14,
    mlp_ratio: float = 4.0,
) -> ViTConfig:
    """Meta's configuration of an unpruned SAM ViT (fused qkv, one width everywhere)."""
    block = ViTBlockConfig(embed_dim, num_heads, int(embed_dim * mlp_ratio), window_size)
    glob = ViTBlockConfig(embed_dim, num_heads, int(embed_dim * mlp_ratio), 0)
    return ViTConfig(
        embed_dim=embed_dim,
        blocks=tuple(glob if i in global_attn_indexes else block for i in range(depth)),
    )


def vit_config_from_state(
    state: Mapping[str, Tensor], prefix: str = "image_encoder.", img_size: int = 1024
) -> ViTConfig:
    """Every width of a (possibly pruned) SAM ViT from its tensor shapes.

    Embedding width: `pos_embed`; per block: q/k/v width from the q (or a third of the fused qkv)
    rows, head width from the relative-position tables' columns (so heads = width / head width),
    window from their rows (2*14 - 1 = 27: 14x14 windows; 2*64 - 1 = 127: global), MLP width
    from `lin1`. Anything inconsistent is a CheckpointError naming the tensor.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"not a SAM ViT encoder: {key} is missing")
        return tuple(state[key].shape)

    pos = shape(prefix + "pos_embed")
    if len(pos) != 4 or pos[0] != 1 or pos[1] != pos[2]:
        raise CheckpointError(f"{prefix}pos_embed has shape {pos}, expected (1, g, g, C)")
    grid, embed_dim = pos[1], pos[3]
    patch = shape(prefix + "patch_embed.proj.weight")
    if patch[0] != embed_dim or patch[2] != patch[3]:
        raise CheckpointError(f"{prefix}patch_embed.proj.weight {patch} does not match pos_embed")
    if grid * patch[2] != img_size:
        raise CheckpointError(
            f"{prefix}: a {grid}x{grid} grid of {patch[2]}-pixel patches is not a {img_size} input"
        )
    depth = 0
    while f"{prefix}blocks.{depth}.norm1.weight" in state:
        depth += 1
    if depth == 0:
        raise CheckpointError(f"not a SAM ViT encoder: no {prefix}blocks.0.*")
    separate = f"{prefix}blocks.0.attn.q.weight" in state
    blocks = []
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        if separate:
            attn_dim = shape(b + "attn.q.weight")[0]
            for name in ("k", "v"):
                if shape(f"{b}attn.{name}.weight")[0] != attn_dim:
                    raise CheckpointError(f"{b}attn.q/k/v have different widths")
        else:
            rows = shape(b + "attn.qkv.weight")[0]
            if rows % 3:
                raise CheckpointError(f"{b}attn.qkv.weight has {rows} rows, not 3 x width")
            attn_dim = rows // 3
        rel_rows, head_dim = shape(b + "attn.rel_pos_h")
        if head_dim <= 0 or attn_dim % head_dim:
            raise CheckpointError(
                f"{b}attn.rel_pos_h width {head_dim} does not divide the attention width {attn_dim}"
            )
        if shape(b + "attn.rel_pos_w") != (rel_rows, head_dim):
            raise CheckpointError(f"{b}attn.rel_pos_w does not match rel_pos_h")
        size = (rel_rows + 1) // 2
        if rel_rows != 2 * size - 1 or not (size == grid or size < grid):
            raise CheckpointError(f"{b}attn.rel_pos_h has {rel_rows} rows: no window size fits")
        window = 0 if size == grid else size
        mlp_dim = shape(b + "mlp.lin1.weight")[0]
        blocks.append(ViTBlockConfig(attn_dim, attn_dim // head_dim, mlp_dim, window))
    out_chans = shape(prefix + "neck.0.weight")[0]
    return ViTConfig(
        embed_dim=embed_dim,
        blocks=tuple(blocks),
        separate_qkv=separate,
        img_size=img_size,
        patch_size=patch[2],
        out_chans=out_chans,
    )


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # channels last (B, g, g, C)


def _relative_index(size: int) -> Tensor:
    """(size, size) row indices into a (2*size - 1)-row table: q - k + size - 1 (SAM's rule)."""
    coords = torch.arange(size)
    return coords[:, None] - coords[None, :] + (size - 1)


class ViTAttention(nn.Module):
    """Multi-head attention over an (S x S) token grid with decomposed relative positions."""

    rel_index: Tensor

    def __init__(self, dim: int, cfg: ViTBlockConfig, size: int, separate_qkv: bool) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.attn_dim = cfg.attn_dim
        self.size = size
        self.scale = self.head_dim**-0.5
        self.separate_qkv = separate_qkv
        if separate_qkv:
            self.q = nn.Linear(dim, cfg.attn_dim)
            self.k = nn.Linear(dim, cfg.attn_dim)
            self.v = nn.Linear(dim, cfg.attn_dim)
        else:
            self.qkv = nn.Linear(dim, 3 * cfg.attn_dim)
        self.proj = nn.Linear(cfg.attn_dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))
        self.register_buffer("rel_index", _relative_index(size), persistent=False)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, S, S, heads*d) -> (B*heads, S*S, d), channel c in head c // d (SAM's split)."""
        n, d = self.size * self.size, self.head_dim
        return x.reshape(-1, n, self.num_heads, d).permute(0, 2, 1, 3).reshape(-1, n, d)

    def forward(self, x: Tensor) -> Tensor:
        s, n, d, heads = self.size, self.size * self.size, self.head_dim, self.num_heads
        if self.separate_qkv:
            q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        else:
            qkv = self.qkv(x).reshape(-1, n, 3, heads, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.reshape(3, -1, n, d).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        # Decomposed relative positions (SAM's add_decomposed_rel_pos), on the unscaled q.
        rh = self.rel_pos_h[self.rel_index]  # (S_q, S_k, d)
        rw = self.rel_pos_w[self.rel_index]
        r_q = q.reshape(-1, s, s, d)
        rel_h = r_q @ rh.transpose(1, 2)  # (B', qh, qw, kh)
        rel_w = (r_q.transpose(1, 2) @ rw.transpose(1, 2)).transpose(1, 2)  # (B', qh, qw, kw)
        attn = attn.reshape(-1, s, s, s, s) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        attn = attn.reshape(-1, n, n).softmax(dim=-1)
        out = (attn @ v).reshape(-1, heads, s, s, d).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(-1, s, s, heads * d))


class ViTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block; windowed blocks zero-pad the grid to a multiple of the window.

    The padded (zero) tokens take part as keys and values, as in SAM: there is no attention mask.
    """

    def __init__(self, dim: int, cfg: ViTBlockConfig, grid: int, separate_qkv: bool) -> None:
        super().__init__()
        self.window = cfg.window_size
        self.grid = grid
        size = cfg.window_size or grid
        self.padded = -(-grid // size) * size  # static: 64 -> 70 for 14x14 windows
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, cfg, size, separate_qkv)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMLP(dim, cfg.mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            ws, g, p = self.window, self.grid, self.padded
            c = x.shape[-1]
            x = F.pad(x, (0, 0, 0, p - g, 0, p - g))
            nw = p // ws
            x = x.reshape(-1, nw, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
            x = self.attn(x)
            x = x.reshape(-1, nw, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p, p, c)
            x = x[:, :g, :g, :]
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """Patch embedding + absolute positions + transformer blocks + neck -> (1, 256, 64, 64)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.img_size = cfg.img_size
        dim, grid = cfg.embed_dim, cfg.grid
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, b, grid, cfg.separate_qkv) for b in cfg.blocks)
        self.neck = nn.Sequential(
            nn.Conv2d(dim, cfg.out_chans, 1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def parameter_count(cfg: ViTConfig) -> int:
    """Parameters of the encoder alone, from the configuration (no weights needed)."""
    c, p = cfg.embed_dim, cfg.patch_size
    total = c * 3 * p * p + c + cfg.grid * cfg.grid * c
    for b in cfg.blocks:
        size = b.window_size or cfg.grid
        total += 4 * c  # two LayerNorms
        total += 3 * (c * b.attn_dim + b.attn_dim) + b.attn_dim * c + c
        total += 2 * (2 * size - 1) * b.head_dim
        total += c * b.mlp_dim + b.mlp_dim + b.mlp_dim * c + c
    o = cfg.out_chans
    return total + c * o + 2 * o + o * o * 9 + 2 * o

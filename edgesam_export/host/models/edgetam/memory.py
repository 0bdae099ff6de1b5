"""EdgeTAM's video memory: memory encoder, 2-D spatial perceiver and RoPE memory attention.

Parameter names follow the released checkpoint (`memory_encoder.*`, `spatial_perceiver.*`,
`memory_attention.*`, `maskmem_tpos_enc`), so the official state dict loads strictly. The code is
written for export: rotary encodings are real-valued cos/sin tables (no complex tensors), the
perceiver works for any batch (one row per tracked object), and the memory attention takes the
spatial memories as a (B, S, 512, 64) block plus the object-pointer tokens separately, so the
number of memory frames S and pointer tokens P are plain tensor dimensions.

Conventions (see shared/fixtures/edgetam/README.md, "Video mode"):
- the memory encoder sees the level-2 features WITHOUT `no_mem_embed` and a +-10 scaled mask;
- the perceiver returns 256 global latents (zero position encoding) then 256 window latents (one
  per 4x4 window of the 64x64 map, sine encoding of the 16x16 window grid);
- in the cross-attention only the window latents of every spatial memory are rotated (16x16 key
  grid), the global latents and the pointer tokens are not; queries use the 64x64 grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.host.models.edgetam.neck import sine_position_encoding
from edgesam_export.host.models.sam_heads import LayerNorm2d

MEM_DIM = 64
HIDDEN_DIM = 256
NUM_MASKMEM = 7
FEAT_SIZE = 64
WINDOW_GRID = 16
NUM_LATENTS = 256


def axial_rope_tables(
    dim: int, end_x: int, end_y: int, theta: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """cos/sin tables (end_x*end_y, dim/2) of SAM 2's axial RoPE, float32 like the official code.

    Complex channel k < dim/4 turns by x * f_k, channel dim/4 + k by y * f_k, f_k = theta^(-4k/dim);
    token index = y * end_x + x.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., N, C) by the tables (N, C/2)."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


# --------------------------------------------------------------------------- memory encoder


class ChannelsLastLayerNorm2d(LayerNorm2d):
    """LayerNorm2d (same keys, same function) computed as one last-axis layer norm: runtimes fuse
    that into a single LayerNormalization instead of five reductions and elementwise passes."""

    def forward(self, x: Tensor) -> Tensor:
        return channels_last_layer_norm(x.permute(0, 2, 3, 1), self).permute(0, 3, 1, 2)


def channels_last_layer_norm(x: Tensor, norm: LayerNorm2d) -> Tensor:
    """LayerNorm2d's function on an (..., C) channels-last tensor."""
    return F.layer_norm(x, (norm.weight.shape[0],), norm.weight, norm.bias, norm.eps)


class MaskDownSampler(nn.Module):
    """4 x (conv 3x3 s2, LayerNorm2d, GELU): 1 -> 4 -> 16 -> 64 -> 256 channels, 1x1 conv."""

    def __init__(self, embed_dim: int = HIDDEN_DIM, num_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = 1
        for _ in range(num_layers):
            out = chans * 4
            layers += [
                nn.Conv2d(chans, out, 3, stride=2, padding=1),
                ChannelsLastLayerNorm2d(out),
                nn.GELU(),
            ]
            chans = out
        layers.append(nn.Conv2d(chans, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm2d, MLP x4 with GELU, layer scale, residual."""

    def __init__(self, dim: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        y = channels_last_layer_norm(self.dwconv(x).permute(0, 2, 3, 1), self.norm)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CXBlock() for _ in range(num_layers)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """pix_feat (B, 256, 64, 64) + scaled mask (B, 1, 1024, 1024) -> (B, 64, 64, 64) features."""

    def __init__(self) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler()
        self.pix_feat_proj = nn.Conv2d(HIDDEN_DIM, HIDDEN_DIM, kernel_size=1)
        self.fuser = Fuser()
        self.out_proj = nn.Conv2d(HIDDEN_DIM, MEM_DIM, kernel_size=1)

    def forward(self, pix_feat: Tensor, mask_for_mem: Tensor) -> Tensor:
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask_for_mem)
        return self.out_proj(self.fuser(x))


# --------------------------------------------------------------------------- spatial perceiver


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to inputs (one head of 64); the position is added to projected k and v."""

    def __init__(self, dim: int = MEM_DIM) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, latents: Tensor, x: Tensor, pos: Tensor | None = None) -> Tensor:
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(self.norm_x(x)).chunk(2, dim=-1)
        if pos is not None:
            k, v = k + pos, v + pos
        return self.to_out(F.scaled_dot_product_attention(q, k, v))


class PerceiverSelfAttention(nn.Module):
    def __init__(self, dim: int = MEM_DIM) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.to_out(F.scaled_dot_product_attention(self.to_q(x), k, v))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int = MEM_DIM) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim)
        self.ff = _feed_forward(dim)
        self.self_attn = PerceiverSelfAttention(dim)
        self.self_ff = _feed_forward(dim)

    def forward(self, latents: Tensor, x: Tensor, pos: Tensor | None = None) -> Tensor:
        latents = self.attn(latents, x, pos) + latents
        latents = self.ff(latents) + latents
        latents = self.self_attn(latents) + latents
        return self.self_ff(latents) + latents


class SpatialPerceiver(nn.Module):
    """EdgeTAM's 2-D spatial perceiver: (B, 64, 64, 64) memory map -> (B, 512, 64) latents.

    Tokens 0..255: global latents over all 4096 positions (keys/values carry the map's sine
    encoding). Tokens 256..511: one latent per 4x4 window, window index y * 16 + x, no position
    encoding. Unlike the official `view`, every reshape here is valid for any batch.
    """

    map_pos: Tensor
    latent_pos: Tensor

    def __init__(self, dim: int = MEM_DIM, depth: int = 2) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(NUM_LATENTS, dim))
        self.latents_2d = nn.Parameter(torch.zeros(NUM_LATENTS, dim))
        self.layers = nn.ModuleList([PerceiverLayer(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        pos = sine_position_encoding(FEAT_SIZE, FEAT_SIZE, dim)[0].flatten(1).t()  # (4096, 64)
        self.register_buffer("map_pos", pos, persistent=False)
        window_pos = sine_position_encoding(WINDOW_GRID, WINDOW_GRID, dim)[0].flatten(1).t()
        self.register_buffer(
            "latent_pos",
            torch.cat([torch.zeros(NUM_LATENTS, dim), window_pos], dim=0),
            persistent=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, _ = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C), index y * W + x
        latents = self.latents.unsqueeze(0).expand(b, -1, -1)
        for layer in self.layers:
            latents = layer(latents, tokens, self.map_pos)
        latents = self.norm(latents)

        win = h // WINDOW_GRID
        # windows in (b, row, column) order, tokens in (y, x) order within a window; rank <= 4
        # throughout (CoreML refuses rank-6 tensors)
        windows = x.permute(0, 2, 3, 1).reshape(b * WINDOW_GRID, win, WINDOW_GRID, win * c)
        windows = windows.permute(0, 2, 1, 3).reshape(b * WINDOW_GRID * WINDOW_GRID, win * win, c)
        lat2 = self.latents_2d.unsqueeze(0).expand(b, -1, -1).reshape(-1, 1, c)
        for layer in self.layers:
            lat2 = layer(lat2, windows)
        lat2 = self.norm(lat2.reshape(b, WINDOW_GRID * WINDOW_GRID, c))
        return torch.cat([latents, lat2], dim=1)


# --------------------------------------------------------------------------- memory attention


class RoPESelfAttention(nn.Module):
    """Single-head self-attention with axial RoPE on q and k over the 64x64 grid."""

    cos: Tensor
    sin: Tensor

    def __init__(self, dim: int = HIDDEN_DIM) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        cos, sin = axial_rope_tables(dim, FEAT_SIZE, FEAT_SIZE)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        q = apply_rope(self.q_proj(x), self.cos, self.sin)
        k = apply_rope(self.k_proj(x), self.cos, self.sin)
        return self.out_proj(F.scaled_dot_product_attention(q, k, self.v_proj(x)))


class RoPECrossAttention(nn.Module):
    """Queries (64x64 grid, rotated) attend to spatial memories and pointer tokens (kv dim 64).

    spatial: (B, S, 512, 64) tokens with their position added for the keys; only tokens 256..511
    of every memory are rotated, with the 16x16 grid. pointers: (B, P, 64), never rotated.

    Same function as projecting every key and value to 256 and attending, computed with a
    quarter of the work where the projection is linear in the 64-d memory tokens:
    - values: softmax rows sum to one, so attn @ (M Wv^T + bv) = (attn @ M) Wv^T + bv: attend
      over the 64-d tokens, project once;
    - unrotated keys (global latents, pointers): q . (Wk m + bk) = (q Wk) . m + q . bk. The
      q . bk term is the same for every key of a row, and softmax ignores a per-row shift, so it
      is subtracted from the rotated keys instead (R(Wk m + bk) - bk, on the small key matrix).
    Only the rotated window keys are scored in 256-d.
    """

    cos_q: Tensor
    sin_q: Tensor
    cos_k: Tensor
    sin_k: Tensor

    def __init__(self, dim: int = HIDDEN_DIM, kv_dim: int = MEM_DIM) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        cos_q, sin_q = axial_rope_tables(dim, FEAT_SIZE, FEAT_SIZE)
        cos_k, sin_k = axial_rope_tables(dim, WINDOW_GRID, WINDOW_GRID)
        self.register_buffer("cos_q", cos_q, persistent=False)
        self.register_buffer("sin_q", sin_q, persistent=False)
        self.register_buffer("cos_k", cos_k, persistent=False)
        self.register_buffer("sin_k", sin_k, persistent=False)

    def forward(self, x: Tensor, spatial_k: Tensor, spatial_v: Tensor, ptr: Tensor) -> Tensor:
        b, dim = spatial_k.shape[0], x.shape[-1]  # x may be batch 1, broadcast against B
        # 1/sqrt(256) = 1/16: an exact power of two, applied to q instead of the scores
        q = apply_rope(self.q_proj(x), self.cos_q, self.sin_q) * (dim**-0.5)
        k_win = apply_rope(self.k_proj(spatial_k[:, :, NUM_LATENTS:]), self.cos_k, self.sin_k)
        k_win = (k_win - self.k_proj.bias).reshape(b, -1, dim)  # (B, 256 S, 256)
        k_plain = torch.cat([spatial_k[:, :, :NUM_LATENTS].reshape(b, -1, MEM_DIM), ptr], dim=1)
        scores = torch.cat(
            [
                torch.matmul(q, k_win.transpose(1, 2)),
                torch.matmul(torch.matmul(q, self.k_proj.weight), k_plain.transpose(1, 2)),
            ],
            dim=-1,
        )
        values = torch.cat(
            [
                spatial_v[:, :, NUM_LATENTS:].reshape(b, -1, MEM_DIM),
                spatial_v[:, :, :NUM_LATENTS].reshape(b, -1, MEM_DIM),
                ptr,
            ],
            dim=1,
        )
        return self.out_proj(self.v_proj(torch.matmul(torch.softmax(scores, dim=-1), values)))


class MemoryAttentionLayer(nn.Module):
    def __init__(self, dim: int = HIDDEN_DIM, ffn: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPESelfAttention(dim)
        self.cross_attn_image = RoPECrossAttention(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, spatial_k: Tensor, spatial_v: Tensor, ptr: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn_image(self.norm2(x), spatial_k, spatial_v, ptr)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    """Condition the current frame's level-2 features on the memory bank.

    curr: (B, 256, 64, 64) features WITHOUT no_mem_embed, or (1, 256, 64, 64) shared by every
    object: the first layer's self-attention (which sees only the frame) then runs once for all
    B objects and broadcasts at its first cross-attention; memory / memory_pos: (B, S, 512, 64);
    ptr_tokens: (B, P, 64) (each 256-d object pointer split into 4 tokens, zero position).
    Returns (B, 256, 64, 64).
    """

    curr_pos: Tensor

    def __init__(self, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MemoryAttentionLayer() for _ in range(num_layers)])
        self.norm = nn.LayerNorm(HIDDEN_DIM)
        pos = (
            sine_position_encoding(FEAT_SIZE, FEAT_SIZE, HIDDEN_DIM)[0].flatten(1).t()
        )  # (4096, 256)
        self.register_buffer("curr_pos", pos, persistent=False)

    def forward(
        self, curr: Tensor, memory: Tensor, memory_pos: Tensor, ptr_tokens: Tensor
    ) -> Tensor:
        _, c, h, w = curr.shape
        x = curr.flatten(2).transpose(1, 2) + 0.1 * self.curr_pos
        spatial_k = memory + memory_pos
        for layer in self.layers:
            x = layer(x, spatial_k, memory, ptr_tokens)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], c, h, w)


def split_object_pointers(obj_ptrs: Tensor) -> Tensor:
    """(B, K, 256) pointers -> (B, 4K, 64): values [64j, 64j+64) of pointer k -> token 4k + j."""
    b, k, c = obj_ptrs.shape
    return obj_ptrs.reshape(b, k * (c // MEM_DIM), MEM_DIM)


class EdgeTamMemory(nn.Module):
    """The memory half of EdgeTAM as one module (the keys it owns in the released state dict)."""

    PREFIXES = ("memory_encoder.", "spatial_perceiver.", "memory_attention.", "maskmem_tpos_enc")

    def __init__(self) -> None:
        super().__init__()
        self.memory_encoder = MemoryEncoder()
        self.spatial_perceiver = SpatialPerceiver()
        self.memory_attention = MemoryAttention()
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(NUM_MASKMEM, 1, 1, MEM_DIM))

    @classmethod
    def owns(cls, key: str) -> bool:
        return key.startswith(cls.PREFIXES)

    def load_from(self, state_dict: dict[str, Tensor]) -> EdgeTamMemory:
        """Load this module's keys from a full EdgeTAM state dict (strict on them)."""
        self.load_state_dict({k: v for k, v in state_dict.items() if self.owns(k)}, strict=True)
        return self

    def encode(self, pix_feat: Tensor, mask_for_mem: Tensor) -> Tensor:
        """(B, 256, 64, 64) features + (B, 1, 1024, 1024) +-10 mask -> (B, 512, 64) latents."""
        return self.spatial_perceiver(self.memory_encoder(pix_feat, mask_for_mem))

    def memory_pos(self, tpos_index: Tensor) -> Tensor:
        """(S,) temporal indices (6 = conditioning frame, 0 = previous frame) -> (S, 512, 64)."""
        return (
            self.spatial_perceiver.latent_pos[None]
            + self.maskmem_tpos_enc.reshape(NUM_MASKMEM, 1, MEM_DIM)[tpos_index]
        )

"""SAM's prompt encoder, two-way transformer and mask decoder, shared by every family.

Module and parameter names follow the released checkpoints (`prompt_encoder.*`, `mask_decoder.*`)
so official state dicts load unchanged. Only what inference needs is implemented; the export graphs
in `edgesam_export.host.graphs` call `embed_points`, `dense_pe` and `MaskDecoder.predict` directly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of NCHW maps (the ConvNeXt/detectron2 formulation)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding: sin/cos(2*pi*(2c - 1) @ G), sin block first."""

    positional_encoding_gaussian_matrix: Tensor

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.zeros(2, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """Encode coordinates normalised to [0, 1], last axis (x, y)."""
        gaussian = self.positional_encoding_gaussian_matrix
        coords = 2 * coords - 1
        coords = coords @ gaussian
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, size: tuple[int, int]) -> Tensor:
        """(1, C, h, w) encoding of the embedding grid's pixel centres, computed as SAM does."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self.encode(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1).unsqueeze(0)


class PromptEncoder(nn.Module):
    """Sparse (points, box corners) and dense (no-mask) prompt embeddings.

    `mask_downscaling` is kept so checkpoints load strictly; mask prompts are not part of the
    exported contract yet (EdgeSAM's own exports have no mask input).
    """

    num_point_embeddings = 4  # positive, negative, box top-left, box bottom-right

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def embed_points(self, coords: Tensor, labels: Tensor, img_size: int) -> Tensor:
        """(B, N, 2) coords in the img_size frame + (B, N) float labels -> (B, N, C).

        Labels: -1 padding (positional encoding dropped, `not_a_point_embed` added), 0 negative,
        1 positive, 2/3 box corners; any other value keeps the bare positional encoding. Written
        with masks instead of indexing so the graph has no data-dependent control flow.
        """
        coords = (coords + 0.5) / img_size
        pe = self.pe_layer.encode(coords)
        labels = labels.unsqueeze(-1)
        pe = pe * (labels != -1).to(pe.dtype)
        pe = pe + self.not_a_point_embed.weight * (labels == -1).to(pe.dtype)
        for i in range(self.num_point_embeddings):
            embedding: nn.Embedding = self.point_embeddings[i]  # type: ignore[assignment]
            pe = pe + embedding.weight * (labels == i).to(pe.dtype)
        return pe

    def dense_embedding(self) -> Tensor:
        """(1, C, 1, 1): the no-mask dense prompt, broadcast over the embedding grid."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def dense_pe(self) -> Tensor:
        return self.pe_layer.dense(self.image_embedding_size)


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


ImageSide = Literal["q", "kv"]
#: How a cross-attention computes its image side (export only; see `Attention`).
AttentionForm = Literal["plain", "transposed", "folded"]


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of q/k/v (SAM's cross-attention).

    `image_side` (export only; None in the reference) says which inputs are the 4096 image
    tokens: "kv" (token-to-image) or "q" (image-to-token); `form` says how that side is
    computed. All forms are the same function (float32 summation order aside):
    - "transposed": the image-side projections as W @ X^T (channels by pixels), so the
      per-head split of the image tokens is a reshape and every remaining transpose sits on a
      MatMul operand, which onnxruntime folds into the GEMM (FusedMatMul transA/transB);
    - "folded": the image tokens are never projected. The projection weights are folded into
      the T prompt tokens' side instead: token-to-image scores are (q_h W_k,h) . x and its values
      are attended before their projection, (P_h x) W_v,h^T; image-to-token scores are
      x . (W_q,h^T k_h) and each head's values are projected through its slice of the output
      projection first, so the output is one product P (HW x heads*T) @ (heads*T x C). That is
      2 x HW x C x heads*T multiply-adds per attention against 2 x HW x C x C/2 for the two
      image-side projections: fewer while heads*T < C/2. For SAM's decoder (8 heads, C/2 =
      128, T = 5 output tokens + the points) the whole decoder does 0.52x the multiply-adds of
      the plain form at 1 point, 0.70x at 5, 0.96x at 11 and 1.16x at 16. The key bias drops
      out of the token-to-image scores (it adds the same number to every score of a row, which
      softmax ignores) and the value bias passes through (each row of P sums to 1); for the
      same reason the image-to-token output bias is added to its heads * T values (divided
      by the head count), not to the HW output rows.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide the internal dimension")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)  # checkpoint order: q, v, k
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.image_side: ImageSide | None = None
        self.form: AttentionForm = "plain"

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _heads_transposed(self, proj: nn.Linear, x: Tensor) -> Tensor:
        """(b, n, C) tokens -> (b, heads, head_dim, n): the projection computed as W @ x^T."""
        b, n, _ = x.shape
        xt = proj.weight @ x.transpose(1, 2) + proj.bias[:, None]
        return xt.reshape(b, self.num_heads, self.internal_dim // self.num_heads, n)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.image_side is not None and self.form == "folded":
            if self.image_side == "kv":
                return self._image_keys_folded(q, k, v)
            return self._image_queries_folded(q, k, v)
        if self.image_side is not None and self.form == "transposed":
            if self.image_side == "kv":
                return self._image_keys(q, k, v)
            return self._image_queries(q, k, v)
        q = self._split(self.q_proj(q))
        k = self._split(self.k_proj(k))
        v = self._split(self.v_proj(v))
        attn = q @ k.permute(0, 1, 3, 2)
        attn = attn / math.sqrt(q.shape[-1])
        attn = torch.softmax(attn, dim=-1)
        out = (attn @ v).transpose(1, 2)
        b, n = out.shape[:2]
        return self.out_proj(out.reshape(b, n, self.internal_dim))

    def _image_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Token queries (B, T, C) against image keys/values (1 or B, HW, C)."""
        qh = self._split(self.q_proj(q))
        kt = self._heads_transposed(self.k_proj, k)
        vt = self._heads_transposed(self.v_proj, v)
        attn = torch.softmax((qh @ kt) / math.sqrt(qh.shape[-1]), dim=-1)
        out = (attn @ vt.transpose(-1, -2)).transpose(1, 2)
        b, n = out.shape[:2]
        return self.out_proj(out.reshape(b, n, self.internal_dim))

    def _image_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Image queries (1 or B, HW, C) against token keys/values (B, T, C)."""
        qt = self._heads_transposed(self.q_proj, q)
        kh = self._split(self.k_proj(k))
        vh = self._split(self.v_proj(v))
        attn = qt.transpose(-1, -2) @ kh.transpose(-1, -2)
        attn = torch.softmax(attn / math.sqrt(qt.shape[-2]), dim=-1)
        out_t = vh.transpose(-1, -2) @ attn.transpose(-1, -2)  # (B, heads, head_dim, HW)
        b, _, _, n = out_t.shape
        out_t = out_t.reshape(b, self.internal_dim, n)
        return out_t.transpose(1, 2) @ self.out_proj.weight.t() + self.out_proj.bias

    def _by_head(self, tokens: Tensor) -> Tensor:
        """(B, T, heads * d) -> (heads, B * T, d): the heads as the batch of a 3-D product."""
        b, t, _ = tokens.shape
        return tokens.reshape(b * t, self.num_heads, -1).transpose(0, 1)

    def _heads_as_rows(self, x: Tensor, b: int, t: int) -> Tensor:
        """(heads, B * T, C) -> (B, heads * T, C), rows ordered head-major."""
        return x.reshape(self.num_heads, b, t, -1).transpose(0, 1).reshape(b, -1, x.shape[-1])

    def _rows_by_head(self, x: Tensor, b: int, t: int) -> Tensor:
        """`_heads_as_rows`' inverse: (B, heads * T, C) -> (heads, B * T, C)."""
        return (
            x.reshape(b, self.num_heads, t, -1).transpose(0, 1).reshape(self.num_heads, b * t, -1)
        )

    def _weight_by_head(self, proj: nn.Linear) -> Tensor:
        """A projection's (heads * d, C) weight as (heads, d, C)."""
        return proj.weight.reshape(self.num_heads, -1, proj.weight.shape[-1])

    def _image_keys_folded(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """`form="folded"`: token queries (B, T, C) against image keys/values (1 or B, HW, C).

        The scores are computed as x @ (q_h W_k,h)^T, the image tokens on the left (a runtime
        such as XNNPACK packs the right operand at every call: here the small one), then
        transposed at (HW, heads * T); the attended values P @ x take them on the right."""
        b, t, _ = q.shape
        scale = 1.0 / math.sqrt(self.internal_dim // self.num_heads)
        qh = self._by_head(self.q_proj(q) * scale)  # (heads, B*T, d)
        qk = self._heads_as_rows(torch.bmm(qh, self._weight_by_head(self.k_proj)), b, t)
        attn = torch.softmax((k @ qk.transpose(1, 2)).transpose(1, 2), dim=-1)  # (B, hT, HW)
        pv = self._rows_by_head(attn @ v, b, t)  # (heads, B*T, C): x attended, unprojected
        out = torch.bmm(pv, self._weight_by_head(self.v_proj).transpose(1, 2))  # (h, B*T, d)
        out = out.transpose(0, 1).reshape(b, t, self.internal_dim) + self.v_proj.bias
        return self.out_proj(out)

    def _image_queries_folded(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """`form="folded"`: image queries (1 or B, HW, C) against token keys/values (B, T, C)."""
        b, t, _ = k.shape
        scale = 1.0 / math.sqrt(self.internal_dim // self.num_heads)
        kh = self._by_head(self.k_proj(k) * scale)  # (heads, B*T, d)
        m = self._heads_as_rows(torch.bmm(kh, self._weight_by_head(self.q_proj)), b, t)
        bias = torch.bmm(kh, self.q_proj.bias.reshape(self.num_heads, -1, 1))  # (h, B*T, 1)
        bias = self._heads_as_rows(bias, b, t).transpose(1, 2)  # (B, 1, heads*T)
        attn = q @ m.transpose(1, 2) + bias  # (B, HW, heads*T)
        attn = torch.softmax(attn.reshape(b, -1, self.num_heads, t), dim=-1)
        wo = self.out_proj.weight.reshape(-1, self.num_heads, self.internal_dim // self.num_heads)
        vo = torch.bmm(self._by_head(self.v_proj(v)), wo.permute(1, 2, 0))  # (h, B*T, C)
        # each head's scores of a row sum to 1, so the output bias rides on the T values of
        # every head (divided by the head count) instead of an add over the HW image rows
        vo = self._heads_as_rows(vo, b, t) + self.out_proj.bias / self.num_heads  # (B, hT, C)
        return attn.reshape(b, -1, self.num_heads * t) @ vo


class TwoWayAttentionBlock(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.mlp = MLPBlock(embedding_dim, mlp_dim)
        self.norm3 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.norm4 = nn.LayerNorm(embedding_dim, eps=norm_eps)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim, eps=norm_eps)

    def set_attention_form(self, form: AttentionForm) -> None:
        """Give every cross-attention the export `form` of its image side (see `Attention`);
        call on a copy, never on the reference model ("plain" is the reference's own)."""
        for layer in self.layers:
            assert isinstance(layer, TwoWayAttentionBlock)
            layer.cross_attn_token_to_image.image_side = "kv"
            layer.cross_attn_image_to_token.image_side = "q"
        self.final_attn_token_to_image.image_side = "kv"
        for module in self.modules():
            if isinstance(module, Attention) and module.image_side is not None:
                module.form = form

    def forward(
        self, keys: Tensor, key_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Image tokens `keys` and `key_pe` are channels-last (b, h*w, c).

        They may have batch 1 while the queries have batch B: broadcasting then computes the
        first layer's image-side projections once for all prompt sets.
        """
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, outs, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else F.relu(layer(x))
        return x


class MaskDecoder(nn.Module):
    """SAM's mask decoder; `num_mask_tokens` is 4 for EdgeSAM and SAM (1 single + 3 multimask)."""

    def __init__(
        self,
        transformer_dim: int = 256,
        num_mask_tokens: int = 4,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.transformer = TwoWayTransformer(embedding_dim=transformer_dim, norm_eps=norm_eps)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, num_mask_tokens, iou_head_depth
        )

    def predict(
        self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
    ) -> tuple[Tensor, Tensor]:
        """All mask tokens for B prompt sets against one image: (B, K, 4h, 4w) logits, (B, K).

        `image_embeddings` is (1, C, h, w) and is broadcast to the B prompt sets with `expand`
        (a view, exported as one Expand node) instead of SAM's `repeat_interleave`.
        """
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)

        src = image_embeddings.expand(batch, -1, -1, -1) + dense
        pos_src = image_pe.expand(batch, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(
            src.flatten(2).permute(0, 2, 1), pos_src.flatten(2).permute(0, 2, 1), tokens
        )
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


class SamModel(nn.Module):
    """Image encoder + SAM heads under the checkpoint's top-level names.

    `norm_eps` is the epsilon of the two-way transformer's LayerNorms: `nn.LayerNorm`'s 1e-5 in
    SAM and EdgeSAM; EfficientViT-SAM's zoo sets 1e-6 on its whole model. (The LayerNorm2d of
    the prompt encoder and output upscaling are 1e-6 in every family.)
    """

    def __init__(
        self, image_encoder: nn.Module, num_mask_tokens: int = 4, norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder: PromptEncoder = PromptEncoder()
        self.mask_decoder: MaskDecoder = MaskDecoder(
            num_mask_tokens=num_mask_tokens, norm_eps=norm_eps
        )

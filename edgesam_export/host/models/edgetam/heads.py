"""SAM 2's prompt encoder and mask decoder as EdgeTAM uses them (`sam_prompt_encoder.*`,
`sam_mask_decoder.*`).

The prompt encoder is SAM's (same parameters and label convention, shared with the other
families); SAM 2 always appends the padding point, also after box corners, which is the
caller's job here (`EdgeTAM.embed_prompts`). The mask decoder differs from SAM's: an object
score token before the IoU token, the transformer MLPs named `mlp.layers.N`, the IoU head ends
in a sigmoid, and the upscaling adds the two high-resolution features (`conv_s0` / `conv_s1`
projections of FPN levels 0 and 1, precomputed by the image encoder path).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from edgesam_export.host.models.sam_heads import (
    MLP,
    Attention,
    LayerNorm2d,
    PromptEncoder,
    TwoWayAttentionBlock,
)

__all__ = ["MLP", "MaskDecoder2", "PromptEncoder", "dynamic_single_mask", "stability"]


class _Block(TwoWayAttentionBlock):
    """SAM's two-way block with SAM 2's MLP naming (`mlp.layers.0/1`, ReLU)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__(dim, heads, mlp_dim, 2, skip_first_layer_pe)
        self.mlp = MLP(dim, mlp_dim, dim, 2)  # type: ignore[assignment]


class TwoWayTransformer2(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(
            _Block(dim, heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, keys: Tensor, key_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Image tokens channels-last (b, h*w, c); key_pe may have batch 1."""
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MaskDecoder2(nn.Module):
    """All four mask tokens, IoU (sigmoid), mask-token outputs and the object-score logit."""

    def __init__(self, dim: int = 256, num_mask_tokens: int = 4) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.transformer = TwoWayTransformer2(dim=dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def predict(
        self,
        image_embed: Tensor,
        high_res_0: Tensor,
        high_res_1: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, K, 4h, 4w) logits, (B, K) IoU, (B, K, C) mask-token outputs, (B, 1) object score.

        Image inputs have batch 1 and are broadcast to the B prompt sets; `dense` is (B or 1,
        C, h, w) or (1, C, 1, 1).
        """
        batch = sparse.shape[0]
        tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0
        )
        tokens = torch.cat((tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
        src = image_embed + dense
        src = src.expand(batch, -1, -1, -1)
        b, c, h, w = src.shape
        hs, keys = self.transformer(
            src.flatten(2).permute(0, 2, 1), image_pe.flatten(2).permute(0, 2, 1), tokens
        )
        obj_token_out = hs[:, 0, :]
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]

        src = keys.transpose(1, 2).reshape(b, c, h, w)
        up = self.output_upscaling
        dc1, ln1, dc2 = (cast(nn.Module, up[i]) for i in (0, 1, 3))
        x = torch.nn.functional.gelu(ln1(dc1(src) + high_res_1))
        x = torch.nn.functional.gelu(dc2(x) + high_res_0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = x.shape
        masks = (hyper_in @ x.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou = torch.sigmoid(self.iou_prediction_head(iou_token_out))
        return masks, iou, mask_tokens_out, self.pred_obj_score_head(obj_token_out)


def stability(logits: Tensor, delta: float = 0.05) -> Tensor:
    """count(logit > delta) / count(logit > -delta) over the last two axes; 1 when empty."""
    high = (logits > delta).flatten(-2).sum(-1).float()
    low = (logits > -delta).flatten(-2).sum(-1).float()
    return torch.where(low > 0, high / low.clamp(min=1), torch.ones_like(low))


def dynamic_single_mask(
    masks: Tensor, iou: Tensor, threshold: float = 0.98, delta: float = 0.05
) -> tuple[Tensor, Tensor]:
    """SAM 2's single-mask answer: token 0 if stable, else the best-IoU multimask token."""
    best = iou[:, 1:].argmax(dim=-1)
    rows = torch.arange(masks.shape[0])
    best_masks = masks[:, 1:][rows, best].unsqueeze(1)
    best_iou = iou[:, 1:][rows, best].unsqueeze(1)
    stable = stability(masks[:, 0:1], delta) >= threshold
    return (
        torch.where(stable[..., None, None], masks[:, 0:1], best_masks),
        torch.where(stable, iou[:, 0:1], best_iou),
    )

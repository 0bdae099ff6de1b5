"""The exported graphs: the exact I/O contract every backend reproduces.

Encoder: `image` (1, 3, S, S) float32, normalised and padded -> `image_embeddings` (1, C, h, w).
Decoder: `image_embeddings` (1, C, h, w), `point_coords` (B, N, 2) (x, y) in the prompt frame
(`ModelSpec.frame`: SAM's 1024, also for encoders that see 512),
`point_labels` (B, N) -> `scores` (B, K), `masks` (B, K, 4h, 4w) low-resolution logits.
B = 1 is exactly EdgeSAM's own export; B > 1 runs B prompt sets (same N) against one image.

These wrappers exist for tracing: no data-dependent Python control flow, positional encodings
precomputed as constants, and export-only rewrites (split squeeze-excite means, fused blocks,
channels-last upscaling) applied to copies or buffers, so the PyTorch reference model stays
bit-faithful to the official code.
"""

from __future__ import annotations

import copy
import inspect
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.device.contract import (  # noqa: F401  (re-exported: the contract is part of the graphs' API)
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    MASK_THRESHOLD,
    STABILITY_OFFSET,
    TensorSpec,
    decoder_io,
    encoder_io,
)
from edgesam_export.host.models.edgetam.model import EdgeTAM
from edgesam_export.host.models.sam_heads import (
    AttentionForm,
    LayerNorm2d,
    MaskDecoder,
    PromptEncoder,
    SamModel,
)


def stability_score(
    masks: Tensor, threshold: float = MASK_THRESHOLD, offset: float = STABILITY_OFFSET
) -> Tensor:
    """count(logit > t + o) / count(logit > t - o) per mask, in float32 only.

    Counts are sums of 0/1 float32 values: exact below 2**24 pixels, and unlike the official
    int16 row sums they pass TensorRT's ONNX parser. 0/0 gives NaN, as the official code does.
    """
    high = (masks > threshold + offset).to(torch.float32).sum(dim=(-1, -2))
    low = (masks > threshold - offset).to(torch.float32).sum(dim=(-1, -2))
    return high / low


class EncoderGraph(nn.Module):
    """image -> image_embeddings.

    `optimized=False` runs the encoder as loaded (the parity reference). `optimized=True` (what
    is exported) uses the encoder's `export_friendly()` copy when the family provides one:
    the same function with runtime-friendly reductions and re-parameterised blocks.
    `onnxruntime_layout` (the ONNX target) asks for the forms that onnxruntime's blocked conv
    layout keeps without reorders, where the family has such forms.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        optimized: bool = False,
        gelu_approximate: bool = False,
        onnxruntime_layout: bool = False,
    ) -> None:
        super().__init__()
        rewrite = getattr(image_encoder, "export_friendly", None) if optimized else None
        if callable(rewrite):
            accepts = "onnxruntime_layout" in inspect.signature(rewrite).parameters
            kwargs = {"onnxruntime_layout": True} if onnxruntime_layout and accepts else {}
            self.image_encoder = rewrite(**kwargs)
        else:
            self.image_encoder = image_encoder
        if gelu_approximate:  # EdgeSAM's --gelu-approximate: tanh GELU, on a copy
            if self.image_encoder is image_encoder:
                self.image_encoder = copy.deepcopy(image_encoder)
            for module in self.image_encoder.modules():
                if isinstance(module, nn.GELU):
                    module.approximate = "tanh"

    def forward(self, image: Tensor) -> Tensor:
        return self.image_encoder(image)


def _deconv2x2_as_matrix(deconv: nn.ConvTranspose2d) -> tuple[Tensor, Tensor]:
    """A 2x2 stride-2 transposed conv as one (Cin, 4*Cout) matrix over channels-last pixels.

    Column (a*2 + b)*Cout + o produces output sub-pixel (a, b) of channel o: the same dot
    products as the convolution, as one large GEMM instead of ConvTranspose's scatter.
    """
    w = deconv.weight.detach()  # (Cin, Cout, 2, 2)
    if w.shape[2:] != (2, 2) or deconv.stride != (2, 2) or deconv.bias is None:
        raise ValueError("expected a 2x2, stride-2 transposed convolution with bias")
    cin, cout = w.shape[:2]
    return w.permute(0, 2, 3, 1).reshape(cin, 4 * cout).contiguous(), deconv.bias.detach().repeat(4)


class ChannelsLastUpscaling(nn.Module):
    """The mask decoder's output upscaling on channels-last image tokens: (B, h*w, C) ->
    (B, h*w*16, C/8), rows ordered (i, j, a, b, c, d) for pixel (4i + 2a + c, 4j + 2b + d).
    Each 2x2 transposed conv is one GEMM (`_deconv2x2_as_matrix`), LayerNorm2d a last-axis
    LayerNorm. A module of its own so that its exported nodes carry a module path
    (`/upscaling/...`), which the int8 search ranks as one block."""

    up1_weight: Tensor
    up1_bias: Tensor
    up2_weight: Tensor
    up2_bias: Tensor

    def __init__(self, upscaling: nn.Sequential, gelu: str) -> None:
        super().__init__()
        self.gelu = gelu
        self.norm = cast(LayerNorm2d, upscaling[1])
        with torch.no_grad():
            w1, b1 = _deconv2x2_as_matrix(cast(nn.ConvTranspose2d, upscaling[0]))
            w2, b2 = _deconv2x2_as_matrix(cast(nn.ConvTranspose2d, upscaling[3]))
        self.register_buffer("up1_weight", w1, persistent=False)
        self.register_buffer("up1_bias", b1, persistent=False)
        self.register_buffer("up2_weight", w2, persistent=False)
        self.register_buffer("up2_bias", b2, persistent=False)
        self.norm_shape = (int(b1.shape[0]) // 4,)

    def forward(self, src: Tensor) -> Tensor:
        batch, tokens = src.shape[:2]
        x = (src @ self.up1_weight + self.up1_bias).reshape(batch, tokens * 4, -1)
        x = F.layer_norm(x, self.norm_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        x = F.gelu(x, approximate=self.gelu)
        x = F.gelu(x @ self.up2_weight + self.up2_bias, approximate=self.gelu)
        return x.reshape(batch, tokens * 16, -1)


class DecoderGraph(nn.Module):
    """(image_embeddings, point_coords, point_labels) -> (scores, masks), all mask tokens.

    `optimized=False` runs the mask decoder exactly as the official code does (the parity
    reference). `optimized=True` (what is exported) computes the same function in a layout that
    runtimes execute faster:
    - image tokens stay batch 1 and broadcast against the B prompt sets, so the first layer's
      image-side projections run once, and no Expand copies of the 4 MB embeddings are made;
    - the positional encoding is a channels-last constant (no runtime transpose);
    - the cross-attentions take the export `attention` form of their image side
      (`Attention`): "folded" (the default) never projects the 4096 image tokens, folding the
      projection weights into the prompt tokens' side (fewer multiply-adds up to 11 points);
      "transposed" computes the image-side projections as W @ X^T, so no 4096-token tensor is
      transposed at run time; "plain" is the reference's layout, weights on the right of each
      projection, which onnxruntime's and XNNPACK's int8 kernels take;
    - output upscaling runs channels-last: each 2x2 transposed conv is one GEMM, LayerNorm2d is a
      last-axis LayerNormalization, and the pixel shuffle is applied once to the 4 mask logits
      instead of to the 32 feature channels.

    `gelu_approximate` computes the upscaling GELUs with the tanh approximation, as EdgeSAM's
    `--gelu-approximate` export option does (on a copy: the loaded model is untouched).
    """

    image_pe: Tensor
    image_pe_tokens: Tensor
    dense_embedding: Tensor

    def __init__(
        self,
        model: SamModel,
        img_size: int,  # the prompt frame's side (ModelSpec.frame), not the encoder input
        use_stability_score: bool = False,
        optimized: bool = False,
        gelu_approximate: bool = False,
        attention: AttentionForm = "folded",
    ) -> None:
        super().__init__()
        self.gelu = "tanh" if gelu_approximate else "none"
        self.prompt_encoder: PromptEncoder = model.prompt_encoder
        self.mask_decoder: MaskDecoder = model.mask_decoder
        if gelu_approximate and not optimized:  # the reference of a tanh-GELU export: a copy
            self.mask_decoder = copy.deepcopy(model.mask_decoder)
            for module in self.mask_decoder.modules():
                if isinstance(module, nn.GELU):
                    module.approximate = "tanh"
        if optimized:  # the export form of the attention, on a copy
            self.mask_decoder = copy.deepcopy(model.mask_decoder)
            self.mask_decoder.transformer.set_attention_form(attention)
        self.img_size = img_size
        self.use_stability_score = use_stability_score
        self.optimized = optimized
        with torch.no_grad():
            image_pe = self.prompt_encoder.dense_pe()
            self.register_buffer("image_pe", image_pe, persistent=False)
            self.register_buffer(
                "image_pe_tokens", image_pe.flatten(2).permute(0, 2, 1).clone(), persistent=False
            )
            self.register_buffer(
                "dense_embedding", self.prompt_encoder.dense_embedding().clone(), persistent=False
            )
        self.upscaling = ChannelsLastUpscaling(self.mask_decoder.output_upscaling, self.gelu)

    def forward(
        self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, self.img_size)
        if self.optimized:
            masks, scores = self._predict_channels_last(image_embeddings, sparse)
        else:
            masks, scores = self.mask_decoder.predict(
                image_embeddings, self.image_pe, sparse, self.dense_embedding
            )
        if self.use_stability_score:
            scores = stability_score(masks)
        return scores, masks

    def _predict_channels_last(
        self, image_embeddings: Tensor, sparse: Tensor, dense: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(masks, scores) in the channels-last layout; `dense`: a per-call dense prompt
        embedding (the official contract's mask input) instead of the no-mask constant."""
        dec = self.mask_decoder
        batch = sparse.shape[0]
        _, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
        if dense is None:
            keys = image_embeddings.flatten(2).permute(0, 2, 1)
            keys = keys + self.dense_embedding.reshape(1, 1, c)
        else:
            keys = (image_embeddings + dense).flatten(2).permute(0, 2, 1)
        hs, src = dec.transformer(keys, self.image_pe_tokens, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]

        x = self.upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )
        k = dec.num_mask_tokens
        # Rows of x are ordered (i, j, a, b, c, d): pixel (4i + 2a + c, 4j + 2b + d). The shuffle
        # to raster order is two moves of whole runs, a before j (runs of b, c, d), then c
        # before j (runs of d): onnxruntime copies those 2x faster than the one 6-D permute
        # (0.37 against 0.73 ms for 4 masks here), whose innermost run is 2 values.
        masks = (hyper_in @ x.transpose(1, 2)).reshape(batch * k * h, w, 2, 8).transpose(1, 2)
        masks = masks.reshape(batch * k * h * 2, w, 2, 2, 2).permute(0, 3, 1, 2, 4)
        return masks.reshape(batch, k, 4 * h, 4 * w), dec.iou_prediction_head(iou_token_out)


class Sam2EncoderGraph(nn.Module):
    """SAM 2 layout (EdgeTAM): image -> image_embeddings (level 2 + no_mem_embed),
    high_res_feats_0, high_res_feats_1 (`conv_s0` / `conv_s1` of FPN levels 0 / 1)."""

    def __init__(self, model: EdgeTAM, onnxruntime_layout: bool = False) -> None:
        super().__init__()
        self.model = model
        # the ONNX target traces the trunk's export forms (`ImageEncoder.export_friendly`)
        self.encoder = model.image_encoder.export_friendly(True) if onnxruntime_layout else None

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.encoder is None:
            return self.model.encode_image(image)
        level0, level1, level2 = self.encoder(image)
        dec = self.model.sam_mask_decoder
        embed = level2 + self.model.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, dec.conv_s0(level0), dec.conv_s1(level1)


class Sam2DecoderGraph(nn.Module):
    """SAM 2 layout (EdgeTAM): features + prompts + mask prompt -> scores, masks, object score.

    Prompts arrive as the predictor packs them (`processing.build_prompts` with the model's
    `Preprocessing`: box corners first, padding point appended). `mask_input` (B, 1, 256, 256)
    logits replace the no-mask embedding where `has_mask_input` (B,) is 1. All four mask
    tokens are returned; the single-mask stability rule is applied by the predictor (it
    reads it from the decoder's `single_mask_stability` metadata).
    """

    image_pe: Tensor

    def __init__(self, model: EdgeTAM, frame: int) -> None:
        super().__init__()
        self.model = model
        self.frame = frame
        with torch.no_grad():
            self.register_buffer("image_pe", model.dense_pe().clone(), persistent=False)

    def forward(
        self,
        image_embeddings: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        pe = self.model.sam_prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels, self.frame)
        flag = has_mask_input.reshape(-1, 1, 1, 1)
        dense = flag * pe.mask_downscaling(mask_input) + (1 - flag) * pe.dense_embedding()
        masks, iou, _, obj = self.model.sam_mask_decoder.predict(
            image_embeddings, high_res_feats_0, high_res_feats_1, self.image_pe, sparse, dense
        )
        return iou, masks, obj


def sam2_graph(
    model: EdgeTAM, graph: str, frame: int, onnxruntime_layout: bool = False
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The SAM 2 layout's module for `graph` (image or video) and deterministic trace inputs."""
    if graph not in ("encoder", "decoder"):  # the video tracker's graphs
        from edgesam_export.host.models.edgetam.video_graphs import video_graph

        return video_graph(model, graph, onnxruntime_layout)
    gen = torch.Generator().manual_seed(0)
    if graph == "encoder":
        return Sam2EncoderGraph(model, onnxruntime_layout).eval(), (
            torch.randn(1, 3, 1024, 1024, generator=gen),
        )
    c, h, w = 256, 64, 64
    return Sam2DecoderGraph(model, frame).eval(), (
        torch.randn(1, c, h, w, generator=gen),
        torch.randn(1, c // 8, 4 * h, 4 * w, generator=gen),
        torch.randn(1, c // 4, 2 * h, 2 * w, generator=gen),
        torch.rand(2, 3, 2, generator=gen) * frame,
        torch.tensor([[2.0, 3.0, -1.0], [1.0, 0.0, -1.0]]),
        torch.randn(2, 1, 4 * h, 4 * w, generator=gen),
        torch.tensor([1.0, 0.0]),
    )

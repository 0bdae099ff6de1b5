"""The official `SamOnnxModel` decoder contract as a traceable graph (host side, torch).

Same inputs, outputs, mask-prompt embedding, single-mask selection and mask post-processing as
segment-anything's `utils/onnx.py` (see `official_contract` for the contract itself), computed
with this package's prompt encoder and mask decoder, so SAM / MobileSAM clients that drive the
official files run ours unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesam_export.device.official_contract import SINGLE_MASK_REWEIGHT
from edgesam_export.host.graphs import DecoderGraph, stability_score
from edgesam_export.host.models.sam_heads import AttentionForm, MaskDecoder, PromptEncoder, SamModel


class OfficialDecoderGraph(nn.Module):
    """(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size)
    -> (masks upscaled to orig_im_size, iou_predictions, low_res_masks).

    `optimized=False` runs the mask decoder as the official code does (the reference);
    `optimized=True` (what is exported) runs it channels-last like `DecoderGraph`'s exported
    form (one GEMM per transposed conv, constant channels-last positional encoding), with the
    dense (mask-prompt) embedding added to the image tokens.
    """

    image_pe: Tensor
    score_reweight: Tensor

    def __init__(
        self,
        model: SamModel,
        img_size: int,
        return_single_mask: bool = False,
        use_stability_score: bool = False,
        optimized: bool = False,
        attention: AttentionForm = "folded",
    ) -> None:
        super().__init__()
        self.optimized = optimized
        self.fast = (
            DecoderGraph(model, img_size, optimized=True, attention=attention)
            if optimized
            else None
        )
        self.prompt_encoder: PromptEncoder = model.prompt_encoder
        self.mask_decoder: MaskDecoder = model.mask_decoder
        self.img_size = img_size
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        with torch.no_grad():
            self.register_buffer("image_pe", self.prompt_encoder.dense_pe(), persistent=False)
        weights = torch.zeros(1, self.mask_decoder.num_mask_tokens)
        weights[0, 0] = SINGLE_MASK_REWEIGHT
        self.register_buffer("score_reweight", weights, persistent=False)

    def _embed_masks(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        pe = self.prompt_encoder
        mask_embedding = has_mask_input * pe.mask_downscaling(mask_input)
        return mask_embedding + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _upscale(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        """Bilinear to the padded input frame, crop the resized image, bilinear to the original."""
        s = self.img_size
        masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        prepadded = torch.floor(s / torch.max(size) * size + 0.5).to(torch.int64)
        masks = masks[..., : prepadded[0], : prepadded[1]]
        hw = orig_im_size.to(torch.int64)
        size_hw: Any = (hw[0], hw[1])  # tensors: traced as a dynamic Resize, as the official
        return F.interpolate(masks, size=size_hw, mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, self.img_size)
        dense = self._embed_masks(mask_input, has_mask_input)
        if self.fast is not None:
            masks, scores = self.fast._predict_channels_last(image_embeddings, sparse, dense)
        else:
            masks, scores = self.mask_decoder.predict(
                image_embeddings, self.image_pe, sparse, dense
            )
        if self.use_stability_score:
            scores = stability_score(masks)
        if self.return_single_mask:
            num_points = point_coords.shape[1]
            best = torch.argmax(scores + (num_points - 2.5) * self.score_reweight, dim=1)
            masks = masks[torch.arange(masks.shape[0]), best].unsqueeze(1)
            scores = scores[torch.arange(scores.shape[0]), best].unsqueeze(1)
        return self._upscale(masks, orig_im_size), scores, masks


class EfficientViTDecoderGraph(nn.Module):
    """EfficientViT-SAM's `DecoderOnnxModel` contract: (image_embeddings, point_coords,
    point_labels) -> (masks: 256x256 logits, iou_predictions), see `official_contract`.

    The mask prediction is `DecoderGraph`'s (points embedded as given, no padding point added,
    no-mask dense prompt); only the output order, the names and the optional single-mask
    selection (argmax of the predicted IoU over every token) differ.
    """

    def __init__(
        self,
        model: SamModel,
        frame: int,
        return_single_mask: bool = False,
        use_stability_score: bool = False,
        optimized: bool = False,
        gelu_approximate: bool = False,
        attention: AttentionForm = "folded",
    ) -> None:
        super().__init__()
        self.decoder = DecoderGraph(
            model,
            frame,
            use_stability_score,
            optimized=optimized,
            gelu_approximate=gelu_approximate,
            attention=attention,
        )
        self.return_single_mask = return_single_mask

    def forward(
        self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        scores, masks = self.decoder(image_embeddings, point_coords, point_labels)
        if self.return_single_mask:
            rows = torch.arange(masks.shape[0])
            best = torch.argmax(scores, dim=1)
            masks = masks[rows, best].unsqueeze(1)
            scores = scores[rows, best].unsqueeze(1)
        return masks, scores

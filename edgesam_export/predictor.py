"""A runtime predictor over any pair of sessions, built only from `processing` plus the sessions.

`set_image` runs the encoder once; `predict` runs the decoder for points, a box, or a batch of
boxes in one call, and post-processes in numpy. The same class serves torch, onnxruntime and
later backends, because sessions share one interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import processing as P
from .errors import InputError
from .runtime import Session


@dataclass(frozen=True)
class Prediction:
    masks: np.ndarray  # bool, (K, H, W) or (B, K, H, W) for a batch of boxes
    scores: np.ndarray  # float32, (K,) or (B, K)
    low_res_logits: np.ndarray  # float32, (K, 256, 256) or (B, K, 256, 256)


class Predictor:
    def __init__(self, encoder: Session, decoder: Session) -> None:
        meta = encoder.metadata
        try:
            self.preprocessing = P.Preprocessing.from_metadata(meta)
        except KeyError as exc:
            raise InputError(
                f"encoder artifact has no {exc.args[0]!r} metadata: was it exported by"
                " edgesam-export?"
            ) from None
        self.tokens = P.MaskTokens.from_metadata(decoder.metadata)
        self.img_size = self.preprocessing.encoder_size  # encoder input side
        self.frame = self.preprocessing.frame  # prompt / mask frame side
        self.pixel_mean = self.preprocessing.pixel_mean
        self.pixel_std = self.preprocessing.pixel_std
        self.encoder = encoder
        self.decoder = decoder
        self._embeddings: np.ndarray | None = None
        self._info: P.ImageInfo | None = None

    @property
    def image_info(self) -> P.ImageInfo:
        if self._info is None:
            raise InputError("call set_image(image) before predict()")
        return self._info

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        tensor, info = P.preprocess(image, image_format=image_format, params=self.preprocessing)
        self._embeddings = self.encoder.run({"image": tensor})["image_embeddings"]
        self._info = info

    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        num_multimask_outputs: int = 1,
        pad: bool = True,
    ) -> Prediction:
        """Masks at the original size for prompts in original-image pixels.

        `box` may be (4,) or, with no points, (B, 4): B boxes decoded in one call.
        `pad=True` appends EdgeSAM's padding point to point-only prompts as its PyTorch
        predictor does; `pad=False` sends points as-is, like EdgeSAM's ONNX client.
        """
        info = self.image_info
        assert self._embeddings is not None
        coords, lab = P.build_prompts(
            points, labels, box, original_size=info.original_size, img_size=self.frame, pad=pad
        )
        out = self.decoder.run(
            {"image_embeddings": self._embeddings, "point_coords": coords, "point_labels": lab}
        )
        scores, logits = P.select_masks(
            out["scores"], out["masks"], num_multimask_outputs, self.tokens
        )
        masks = P.threshold_masks(P.postprocess_masks(logits, info))
        batched = box is not None and np.asarray(box).ndim == 2
        if not batched:
            return Prediction(masks[0], scores[0], logits[0])
        return Prediction(masks, scores, logits)

"""A runtime predictor over any pair of sessions, built only from `processing` plus the sessions.

`set_image` runs the encoder once; `predict` runs the decoder for points, a box, or a batch of
boxes in one call, and post-processes in numpy. The same class serves torch, onnxruntime and
later backends, because sessions share one interface. A NaN or inf from either graph is an
error (`ArtifactError`), never returned: thresholded, NaN logits read as empty masks and NaN
scores sort anywhere, so a broken artifact would otherwise look like a model that found nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.errors import ArtifactError, InputError
from edgesam_export.device.parity import nonfinite_count
from edgesam_export.device.runtime import Session

#: The quality score each family's own predictor reports when a caller does not choose:
#: EdgeSAM's `SamPredictor.predict_torch` defaults to `use_stability_score=True`; SAM,
#: MobileSAM and EfficientViT-SAM use the IoU head. A `quality_score` metadata entry wins.
DEFAULT_SCORE_BY_FAMILY = {"EdgeSAM": "stability"}


@dataclass(frozen=True)
class Prediction:
    masks: np.ndarray  # bool, (K, H, W) or (B, K, H, W) for a batch of boxes
    scores: np.ndarray  # float32, (K,) or (B, K)
    low_res_logits: np.ndarray  # float32, (K, 256, 256) or (B, K, 256, 256)
    # (1,) or (B, 1) when the decoder has an object-score output (SAM 2 layout), else None
    object_score_logits: np.ndarray | None = None


def _finite(session: Session, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs, or ArtifactError naming the first one that holds NaN/inf."""
    for name, value in outputs.items():
        bad = nonfinite_count(value)
        if bad:
            raise ArtifactError(
                f"the {session.graph} ({session.backend}) returned {bad} NaN/inf values in"
                f" {name!r}: the artifact is broken; check it with `edgesam-export parity` on"
                " its folder (it names the first node producing them)"
            )
    return outputs


def decoder_feeds(
    decoder: Session,
    features: Mapping[str, np.ndarray],
    coords: np.ndarray,
    labels: np.ndarray,
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The decoder's feeds: every encoder output it takes by name, the prompts, and, for a
    decoder with a mask prompt (SAM 2 layout), `mask_input` (one 256x256 low-res logit map
    for every prompt set) or a zero map with `has_mask_input` 0."""
    wanted = {t.name: t for t in decoder.inputs}
    feeds = {k: v for k, v in features.items() if k in wanted}
    feeds["point_coords"], feeds["point_labels"] = coords, labels
    if "mask_input" not in wanted:
        if mask_input is not None:
            raise InputError(
                f"this {decoder.backend} decoder has no mask_input; export a model whose"
                " decoder takes one (EdgeTAM) or drop mask_input"
            )
        return feeds
    batch = coords.shape[0]
    shape = tuple(int(d) for d in wanted["mask_input"].shape[2:])
    if mask_input is None:
        feeds["mask_input"] = np.zeros((batch, 1, *shape), np.float32)
        feeds["has_mask_input"] = np.zeros((batch,), np.float32)
        return feeds
    m = np.asarray(mask_input, dtype=np.float32)
    if m.shape[-2:] != shape or m.size != int(np.prod(shape)):
        raise InputError(
            f"mask_input must be one {shape[0]}x{shape[1]} low-res logit map (as returned in"
            f" Prediction.low_res_logits), got shape {m.shape}"
        )
    feeds["mask_input"] = np.ascontiguousarray(
        np.broadcast_to(m.reshape(1, 1, *shape), (batch, 1, *shape))
    )
    feeds["has_mask_input"] = np.ones((batch,), np.float32)
    return feeds


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
        dmeta = decoder.metadata
        self.num_mask_tokens = int(dmeta.get("num_mask_tokens", meta.get("num_mask_tokens", 4)))
        # Which outputs are the multimask answers: a `multimask_tokens` metadata entry (JSON
        # list) wins; otherwise the model's recorded mask-token convention (`self.tokens`).
        tokens = dmeta.get("multimask_tokens")
        self.multimask_tokens: tuple[int, ...] = (
            tuple(int(t) for t in json.loads(tokens)) if tokens else self.tokens.multi
        )
        family = dmeta.get("family", meta.get("family", ""))
        self.default_score: str = dmeta.get(
            "quality_score", DEFAULT_SCORE_BY_FAMILY.get(family, "iou")
        )
        self.scores_kind = (
            "stability" if dmeta.get("use_stability_score", "false") == "true" else "iou"
        )
        self._features: dict[str, np.ndarray] | None = None
        self._info: P.ImageInfo | None = None
        # Decoder inputs beyond the prompts: encoder outputs of the same name (the SAM 2
        # layout adds the high-resolution features), and an optional mask prompt.
        self.accepts_mask_input = any(t.name == "mask_input" for t in decoder.inputs)

    @property
    def image_info(self) -> P.ImageInfo:
        if self._info is None:
            raise InputError("call set_image(image) before predict()")
        return self._info

    @property
    def _embeddings(self) -> np.ndarray | None:
        return None if self._features is None else self._features["image_embeddings"]

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        tensor, info = P.preprocess(image, image_format=image_format, params=self.preprocessing)
        self._features = _finite(self.encoder, self.encoder.run({"image": tensor}))
        self._info = info

    def _decoder_feeds(
        self, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        assert self._features is not None
        return decoder_feeds(self.decoder, self._features, coords, labels, mask_input)

    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        num_multimask_outputs: int = 1,
        pad: bool = True,
        mask_input: np.ndarray | None = None,
    ) -> Prediction:
        """Masks at the original size for prompts in original-image pixels.

        `box` may be (4,) or, with no points, (B, 4): B boxes decoded in one call.
        `pad=True` appends the model's padding point as its PyTorch predictor does (EdgeSAM:
        to point-only prompts; SAM 2 layouts: always); `pad=False` sends the prompts as-is,
        like EdgeSAM's ONNX client. `mask_input` (decoders that take one, e.g. EdgeTAM): a
        previous answer's 256x256 low-res logits. Single-mask answers follow the model's rule
        (SAM 2: token 0 only when stable, else the best multimask token).
        """
        info = self.image_info
        coords, lab = P.build_prompts(
            points,
            labels,
            box,
            original_size=info.original_size,
            pad=pad,
            params=self.preprocessing,
        )
        out = _finite(self.decoder, self.decoder.run(self._decoder_feeds(coords, lab, mask_input)))
        scores, logits = P.select_masks(
            out["scores"], out["masks"], num_multimask_outputs, self.tokens
        )
        masks = P.threshold_masks(P.postprocess_masks(logits, info))
        obj = out.get("object_score_logits")
        batched = box is not None and np.asarray(box).ndim == 2
        if not batched:
            return Prediction(masks[0], scores[0], logits[0], None if obj is None else obj[0])
        return Prediction(masks, scores, logits, obj)

    def predict_low_res(
        self, point_coords: np.ndarray, point_labels: np.ndarray, pad: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """All K low-res logits (B, K, 256, 256) and scores (B, K) for B prompt sets, one call.

        `point_coords` (B, N, 2) are (x, y) in the `img_size` frame of the image last set
        (see `processing.transform_coords`), `point_labels` (B, N). This is the interface the
        automatic mask generator drives. With `pad` (default), prompt sets without box corners
        get EdgeSAM's padding point, as its PyTorch predictor adds one.
        """
        if self._features is None:
            raise InputError("call set_image(image) before predict_low_res()")
        coords = np.asarray(point_coords, dtype=np.float32)
        labels = np.asarray(point_labels, dtype=np.float32)
        if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise InputError(
                "predict_low_res expects point_coords (B, N, 2) and point_labels (B, N), got"
                f" {coords.shape} and {labels.shape}"
            )
        always = self.preprocessing.prompt_pad == "always"
        if pad and (always or not np.isin(labels, (2.0, 3.0)).any()):
            b = coords.shape[0]
            coords = np.concatenate([coords, np.zeros((b, 1, 2), np.float32)], axis=1)
            labels = np.concatenate([labels, np.full((b, 1), -1.0, np.float32)], axis=1)
        feeds = self._decoder_feeds(np.ascontiguousarray(coords), np.ascontiguousarray(labels))
        out = _finite(self.decoder, self.decoder.run(feeds))
        return out["masks"], out["scores"]

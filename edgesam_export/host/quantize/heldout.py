"""The PyTorch side of the mask bar: reduced-precision sessions against the float32 model, end
to end, over a set of images and their prompt sets.

`MaskReference` computes PyTorch's embeddings and decoder outputs once (`reference_sessions`,
the parity reference); `judge` runs a candidate encoder and/or decoder (any `Session`; None:
PyTorch's) on the same inputs and scores the masks with `device.mask_bar`. The int8 searches
(ONNX and ExecuTorch) judge their candidates with it on their selection or held-out images;
`heldout_mask_bar` is the held-out judgement every int8 artifact, test and benchmark shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from edgesam_export.device.mask_bar import MaskBar, MaskBarResult, mask_bar
from edgesam_export.host.quantize.data import (
    HELDOUT_PROMPT_SEED,
    Inputs,
    heldout_images,
    prepare,
)

if TYPE_CHECKING:
    from edgesam_export.device.runtime.base import Session
    from edgesam_export.host.models import LoadedModel


class Pair(NamedTuple):
    """One prompt set judged: its image's index, PyTorch's outputs and the candidate's."""

    image: int
    reference: dict[str, np.ndarray]
    candidate: dict[str, np.ndarray]


HELDOUT_IMAGES = 3  # the held-out images int8 programs are judged on (calibration never holds them)


class MaskReference:
    """PyTorch's float32 embeddings and decoder outputs over `inputs`, computed once: each
    prompt case's sets as one batch, or one set per call (`one_set_per_call`: the batch the
    ExecuTorch programs take)."""

    def __init__(self, loaded: LoadedModel, inputs: Inputs, one_set_per_call: bool) -> None:
        from edgesam_export.host.reference import reference_sessions

        encoder, decoders = reference_sessions(loaded)
        self.inputs, self.one_set_per_call = inputs, one_set_per_call
        self.decoder = decoders[False]
        self.embeddings = [encoder.run({"image": t})["image_embeddings"] for t in inputs.tensors]
        self.reference = [self.decoder.run(f) for f in self.feeds(self.embeddings)]

    def feeds(self, embeddings: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return list(self.inputs.decoder_feeds(embeddings, self.one_set_per_call))

    def pairs(
        self,
        encoder: Session | None = None,
        decoder: Session | None = None,
        embeddings: Sequence[np.ndarray] | None = None,
    ) -> list[Pair]:
        """(image index, PyTorch's float32 decoder outputs, the candidate's) per prompt set:
        `decoder` (None: PyTorch's) on the embeddings of `encoder` (or the given `embeddings`;
        neither: PyTorch's). Prompt sets a decoder refuses (`accepts`: more points than its
        max_points) are left out."""
        if embeddings is None:
            embeddings = (
                self.embeddings
                if encoder is None
                else [encoder.run({"image": t})["image_embeddings"] for t in self.inputs.tensors]
            )
        candidate = decoder if decoder is not None else self.decoder
        return [
            Pair(image, ref, candidate.run(feeds))
            for image, ref, feeds in zip(
                self.inputs.feed_images(self.one_set_per_call),
                self.reference,
                self.feeds(embeddings),
                strict=True,
            )
            if candidate.accepts(feeds) is None
        ]

    def judge(
        self,
        bar: MaskBar,
        encoder: Session | None = None,
        decoder: Session | None = None,
        embeddings: Sequence[np.ndarray] | None = None,
    ) -> MaskBarResult:
        """The candidate's masks (`pairs`) against PyTorch's float32 masks, with each image's
        own result."""
        return self.bar(self.pairs(encoder, decoder, embeddings), bar)

    @staticmethod
    def bar(pairs: Sequence[Pair], bar: MaskBar) -> MaskBarResult:
        """The mask bar over `pairs`, overall and per image."""
        return mask_bar(
            [(p.reference["scores"], p.reference["masks"], p.candidate["masks"]) for p in pairs],
            bar,
            images=[p.image for p in pairs],
        )


def heldout_mask_bar(
    loaded: LoadedModel,
    encoder: Session | None = None,
    decoder: Session | None = None,
    images: int = HELDOUT_IMAGES,
    bar: MaskBar | None = None,
) -> MaskBarResult:
    """The int8 mask bar on the held-out images (the parity image plus synthetic ones, prompt
    seed 0), one prompt set per call: `encoder` and `decoder` (None: PyTorch's) end to end
    against the float32 PyTorch model."""
    inputs = prepare(heldout_images(images), loaded.spec.preprocessing, HELDOUT_PROMPT_SEED)
    return MaskReference(loaded, inputs, one_set_per_call=True).judge(
        bar or MaskBar(), encoder, decoder
    )

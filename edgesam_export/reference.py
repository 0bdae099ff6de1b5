"""The PyTorch reference: sessions over our torch graphs, what every artifact is compared with.

Host side (imports torch); the device side never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .contract import TensorSpec
from .runtime.base import Session


class TorchSession(Session):
    """A traced-graph wrapper (`graphs.EncoderGraph` / `DecoderGraph`) run eagerly."""

    backend = "torch"

    def __init__(
        self,
        module: Any,
        graph: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        metadata: Mapping[str, str],
        device: str = "cpu",
    ) -> None:
        super().__init__(graph, inputs, outputs, metadata)
        self.device = device
        self.module = module.eval().to(device)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [
            torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.device)
            for t in self.inputs
        ]
        with torch.inference_mode():
            out = self.module(*args)
        if not isinstance(out, tuple):
            out = (out,)
        return {t.name: o.detach().cpu().numpy() for t, o in zip(self.outputs, out, strict=True)}


def reference_sessions(
    loaded: Any, device: str = "cpu"
) -> tuple[TorchSession, dict[bool, TorchSession]]:
    """PyTorch encoder and decoder sessions of a loaded model: the parity reference.

    Returns the encoder and the decoders keyed by use_stability_score. The encoder keeps the
    official single spatial mean, so the reference is the official maths.
    """
    from .artifacts import base_metadata
    from .graphs import DecoderGraph, EncoderGraph, decoder_io, encoder_io

    spec = loaded.spec
    meta = base_metadata(loaded, graph="", use_stability_score=False)
    ein, eout = encoder_io(spec.img_size, spec.embed_shape)
    din, dout = decoder_io(spec.embed_shape, spec.num_mask_tokens)
    enc = TorchSession(
        EncoderGraph(loaded.model.image_encoder),
        "encoder",
        ein,
        eout,
        {**meta, "graph": "encoder"},
        device,
    )
    decoders = {
        stab: TorchSession(
            DecoderGraph(loaded.model, spec.frame, stab),
            "decoder",
            din,
            dout,
            {**meta, "graph": "decoder", "use_stability_score": str(stab).lower()},
            device,
        )
        for stab in (False, True)
    }
    return enc, decoders

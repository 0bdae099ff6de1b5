"""Weight-only int8 under the mask bar: which weights stay float16.

The same search as static int8 (`search.search`), with weight tensors as its blocks: a candidate
is the fp32 graph with every weight of `weight_names` stored as per-channel int8 except the ones
kept float16 (`to_int8_weights(keep=...)`). The sensitivity pass quantizes one weight at a time;
the bisection keeps the k most harmful per byte at float16 (`search(cost=...)`:
10^(-SQNR/10) per element kept, so a 590k-element neck conv ranks after the small stem convs
that hurt the embeddings as much). Selection (sensitivity and bisection) runs on
the calibration images; the chosen graph is then judged once on the held-out images, which the
search never saw (`search.quantize_graph`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgesam_export.host.targets.onnx_weights import to_int8_weights, weight_names


class WeightQuantizer:
    """One fp32 graph and quantize(float16 weights) -> its weight-only int8 form (the
    `StaticQuantizer` interface, so `search.search` drives both)."""

    def __init__(self, proto: Any) -> None:
        self.fp32 = proto
        self.names = list(weight_names(proto))

    def blocks(self) -> dict[str, list[str]]:
        """Search blocks: one per weight tensor (its own name), in graph order."""
        return {name: [name] for name in self.names}

    def costs(self) -> dict[str, int]:
        """What keeping each weight float16 costs over int8: one byte per element."""
        sizes = {t.name: int(np.prod(t.dims)) for t in self.fp32.graph.initializer}
        return {name: sizes[name] for name in self.names}

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Any:
        """The graph with `exclude` kept float16 (or only `only` stored as int8)."""
        keep = set(exclude)
        if only is not None:
            keep |= set(self.names) - set(only)
        return to_int8_weights(copy.deepcopy(self.fp32), keep=keep & set(self.names))

    def close(self) -> None:
        return None

    def __enter__(self) -> WeightQuantizer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

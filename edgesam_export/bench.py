"""Timing loops and statistics, shared by `edgesam-bench` and `benchmarks/`.

Latency is measured per call with a monotonic clock after warm-up; we report p50/p90 (medians are
what to compare: these machines are noisy) and derive throughput-style ratios in the callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import processing as P
from .parity import make_test_image
from .runtime import Session, metadata_floats


@dataclass(frozen=True)
class Timing:
    name: str
    backend: str
    samples_ms: tuple[float, ...]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(p50_ms=self.p50, p90_ms=self.p90, n=len(self.samples_ms))
        return d


def time_call(fn: Callable[[], object], *, warmup: int = 2, iters: int = 10,
              max_seconds: float = 60.0) -> tuple[float, ...]:
    """Per-call wall times in ms; stops early (after at least 3 samples) past max_seconds."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return tuple(samples)


def decoder_feeds(embeddings: np.ndarray, n_points: int, batch: int = 1, seed: int = 0,
                  img_size: int = 1024) -> dict[str, np.ndarray]:
    """Random positive/negative points (or, with n_points == 2 and batch > 1, boxes)."""
    rng = np.random.default_rng(seed)
    coords = (rng.random((batch, n_points, 2)) * img_size * 0.75).astype(np.float32)
    labels = rng.integers(0, 2, (batch, n_points)).astype(np.float32)
    if batch > 1 and n_points == 2:
        coords[:, 1] = coords[:, 0] + 0.2 * img_size
        labels[:] = (2.0, 3.0)
    return {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels}


def bench_sessions(encoder: Session, decoder: Session, *, points: Sequence[int] = (1, 5, 16),
                   box_batch: int = 8, warmup: int = 2, iters: int = 10,
                   encoder_iters: int | None = None) -> list[Timing]:
    """Encoder latency, decoder latency per prompt count, and a batch of boxes vs one box."""
    meta = encoder.metadata
    img_size = int(meta["img_size"])
    tensor, _ = P.preprocess(make_test_image(), img_size, metadata_floats(meta, "pixel_mean"),
                             metadata_floats(meta, "pixel_std"))
    feeds = {"image": tensor}
    timings = [Timing("encoder", encoder.backend,
                      time_call(lambda: encoder.run(feeds), warmup=max(1, warmup // 2),
                                iters=encoder_iters or max(3, iters // 2)))]
    emb = encoder.run(feeds)["image_embeddings"]
    for n in points:
        f = decoder_feeds(emb, n, img_size=img_size)
        timings.append(Timing(f"decoder N={n}", decoder.backend,
                              time_call(lambda f=f: decoder.run(f), warmup=warmup, iters=iters)))
    if box_batch > 1:
        one = decoder_feeds(emb, 2, batch=1, img_size=img_size)
        one["point_labels"][:] = (2.0, 3.0)
        many = decoder_feeds(emb, 2, batch=box_batch, img_size=img_size)
        timings.append(Timing("decoder 1 box", decoder.backend,
                              time_call(lambda: decoder.run(one), warmup=warmup, iters=iters)))
        timings.append(Timing(f"decoder {box_batch} boxes (batched)", decoder.backend,
                              time_call(lambda: decoder.run(many), warmup=warmup, iters=iters)))
    return timings

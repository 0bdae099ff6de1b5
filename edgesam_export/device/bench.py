"""Timing loops, statistics and machine info, shared by `edgesam-bench` and `benchmarks/`.

Latency is measured per call with a monotonic clock after warm-up; we report p50/p90 (medians are
what to compare: these machines are noisy) and derive throughput-style ratios in the callers
(`device.benchmark` runs `edgesam-bench` on these pieces).
This module owns the *what* of a session benchmark (`session_stages`: the encoder, the decoder per
prompt count, one box vs a batch of boxes), the *how* (`time_call`, `time_interleaved`) and the
record of *where* (`machine_info`); it never prints.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.parity import make_test_image
from edgesam_export.device.runtime import Session

#: Stage name of a single-box decoder call (the reference for the batched-boxes ratio).
BOX_SINGLE_STAGE = "decoder 1 box"

#: Packages whose versions `machine_info` records (distribution names).
VERSIONED_PACKAGES = ("numpy", "torch", "onnxruntime", "onnx", "pillow")


@dataclass(frozen=True)
class Timing:
    """The timed calls of one stage on one backend (warm-up calls excluded, their count kept)."""

    name: str
    backend: str
    samples_ms: tuple[float, ...]
    warmup: int = 0

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def throughput(self) -> float:
        """Calls per second at the mean latency (one call at a time)."""
        return 1e3 / self.mean if self.mean > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            p50_ms=self.p50,
            p90_ms=self.p90,
            p99_ms=self.p99,
            mean_ms=self.mean,
            throughput_per_s=self.throughput,
            n=len(self.samples_ms),
        )
        return d


@dataclass(frozen=True)
class Stage:
    """One thing to time: a name, the graph it runs, and a zero-argument call with fixed feeds."""

    name: str
    graph: str
    call: Callable[[], object]


def box_batch_stage(box_batch: int) -> str:
    """Stage name of a decoder call with `box_batch` boxes in one batch."""
    return f"decoder {box_batch} boxes (batched)"


def time_call(
    fn: Callable[[], object], *, warmup: int = 2, iters: int = 10, max_seconds: float = 60.0
) -> tuple[float, ...]:
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


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    iters: int = 10,
    max_seconds: float = 120.0,
    gap_s: float = 0.0,
    block: int = 1,
    settle_s: float = 0.0,
) -> dict[str, tuple[float, ...]]:
    """Per-call wall times in ms of several callables, timed round-robin (A B, B A, A B ...).

    Interleaving spreads slow drift (thermal, other tenants, page cache) evenly over the
    contenders instead of penalising whichever ran last. Each of the `iters` rounds gives every
    contender a turn of `block` timed calls. Switching contenders has a cost that belongs to
    neither: worker threads that spin-wait after a call (onnxruntime and torch's OpenMP briefly,
    OpenBLAS for ~0.1-0.2 s) steal the cores from whoever runs next. Two remedies, both untimed:
    `gap_s` idles before each timed call (enough for onnxruntime vs torch: back-to-back decoder
    calls were 30-70 % slower); `settle_s` starts each turn by calling the contender repeatedly
    for that long (at least once), so the previous contender's threads park while this one's
    stay warm (needed after numpy's BLAS: torch's F.interpolate ran 2.5-4x slower right after).
    Stops early, after at least 3 rounds, past max_seconds (untimed parts included).
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    order = list(calls.items())
    for i in range(iters):
        # A B, then B A: whoever runs first in a round gets no systematic advantage.
        for name, fn in order if i % 2 == 0 else order[::-1]:
            if settle_s > 0:
                settled = time.perf_counter() + settle_s
                fn()
                while time.perf_counter() < settled:
                    fn()
            for _ in range(block):
                if gap_s > 0:
                    time.sleep(gap_s)
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
        if i + 1 >= 3 and time.perf_counter() - start > max_seconds:
            break
    return {name: tuple(s) for name, s in samples.items()}


def decoder_feeds(
    embeddings: np.ndarray, n_points: int, batch: int = 1, seed: int = 0, img_size: int = 1024
) -> dict[str, np.ndarray]:
    """Random positive/negative points (or, with n_points == 2 and batch > 1, boxes)."""
    rng = np.random.default_rng(seed)
    coords = (rng.random((batch, n_points, 2)) * img_size * 0.75).astype(np.float32)
    labels = rng.integers(0, 2, (batch, n_points)).astype(np.float32)
    if batch > 1 and n_points == 2:
        coords[:, 1] = coords[:, 0] + 0.2 * img_size
        labels[:] = (2.0, 3.0)
    return {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels}


#: Decoder inputs with a prompt-set axis (sliced for the single-box stage).
PROMPT_INPUTS = ("point_coords", "point_labels", "mask_input", "has_mask_input")


def prompt_feeds(
    decoder: Session,
    features: Mapping[str, np.ndarray],
    n_points: int,
    batch: int = 1,
    seed: int = 0,
    img_size: int = 1024,
) -> dict[str, np.ndarray]:
    """`decoder_feeds`' random prompts, with every encoder output the decoder takes by name
    (SAM 2: both high-resolution features, and a zero mask prompt), as `Predictor` feeds it."""
    from edgesam_export.device.predictor import decoder_feeds as predictor_feeds

    f = decoder_feeds(features["image_embeddings"], n_points, batch, seed, img_size)
    return predictor_feeds(decoder, features, f["point_coords"], f["point_labels"])


def encoder_input(encoder: Session, image: np.ndarray | None = None) -> np.ndarray:
    """The encoder's input tensor for `image` (default: the structured parity test image)."""
    params = P.Preprocessing.from_metadata(encoder.metadata)
    tensor, _ = P.preprocess(make_test_image() if image is None else image, params=params)
    return tensor


#: End-to-end stage names (what an application sees, numpy processing included).
CLICK_STAGE = "click (decoder + postprocess)"
IMAGE_STAGE = "image (preprocess + encoder + click)"
#: Stages that run the encoder (they get the encoder's iteration and warm-up counts).
ENCODER_STAGES = ("encoder", IMAGE_STAGE)


def end_to_end_stages(encoder: Session, decoder: Session, image: np.ndarray) -> list[Stage]:
    """A click on cached embeddings (decoder, then numpy post-processing to the original size)
    and a new image (numpy pre-processing, encoder, one click), through `Predictor`."""
    from edgesam_export.device.predictor import Predictor

    predictor = Predictor(encoder, decoder)
    predictor.set_image(image)
    h, w = image.shape[:2]
    click = functools.partial(
        predictor.predict, points=np.array([[0.3 * w, 0.35 * h]]), labels=np.array([1])
    )

    def new_image() -> object:
        predictor.set_image(image)
        return click()

    return [Stage(CLICK_STAGE, "decoder", click), Stage(IMAGE_STAGE, "encoder", new_image)]


def session_stages(
    encoder: Session,
    decoder: Session,
    *,
    points: Sequence[int] = (1, 5, 16),
    box_batch: int = 8,
    image: np.ndarray | None = None,
    end_to_end: bool = False,
) -> list[Stage]:
    """The stages of a session benchmark, feeds prepared (runs the encoder once for them).

    Encoder; decoder with N random points for each N in `points`; and, when box_batch > 1,
    the first box alone and `box_batch` boxes in one call (the single box is the batch's first
    row, so both calls decode the same kind of prompt); with `end_to_end`, the click and image
    stages of `end_to_end_stages`.
    """
    img_size = P.Preprocessing.from_metadata(encoder.metadata).frame  # prompts: prompt frame
    feeds = {"image": encoder_input(encoder, image)}
    stages = [Stage("encoder", "encoder", functools.partial(encoder.run, feeds))]
    features = encoder.run(feeds)
    for n in points:
        f = prompt_feeds(decoder, features, n, img_size=img_size)
        stages.append(Stage(f"decoder N={n}", "decoder", functools.partial(decoder.run, f)))
    if box_batch > 1:
        many = prompt_feeds(decoder, features, 2, batch=box_batch, img_size=img_size)
        one = {k: np.ascontiguousarray(v[:1]) if k in PROMPT_INPUTS else v for k, v in many.items()}
        stages.append(Stage(BOX_SINGLE_STAGE, "decoder", functools.partial(decoder.run, one)))
        stages.append(
            Stage(box_batch_stage(box_batch), "decoder", functools.partial(decoder.run, many))
        )
    if end_to_end:
        stages += end_to_end_stages(encoder, decoder, make_test_image() if image is None else image)
    return stages


def box_set_ratio(
    timings: Sequence[Timing], box_batch: int, backend: str | None = None
) -> float | None:
    """(batched ms / box_batch) / (single-box ms) from p50s; None when either stage is missing.

    Below 1.0, decoding the boxes in one call beats one call per box.
    """
    by_name = {t.name: t for t in timings if backend is None or t.backend == backend}
    single, batched = by_name.get(BOX_SINGLE_STAGE), by_name.get(box_batch_stage(box_batch))
    if box_batch < 2 or single is None or batched is None or single.p50 <= 0:
        return None
    return (batched.p50 / box_batch) / single.p50


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux `clear_refs` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float | None:
    """Current resident memory of this process in MB (Linux), else None."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """Peak resident memory in MB since the last `reset_peak_rss` (Linux), else since start."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    import resource  # Unix; ru_maxrss is KB on Linux, bytes on macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads in torch (ORT takes them per session: open_session)."""
    torch = sys.modules.get("torch")  # only where torch is already in use: never import it here
    if torch is not None:
        torch.set_num_threads(threads)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        try:
            for line in cpuinfo.read_text(errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Processor"):
                    if value.strip():
                        return value.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU, cores, OS, Python and the versions of the numeric stack.

    Versions come from package metadata, so this does not import torch or onnxruntime. The
    1-minute load average (when the OS has one) tells a noisy run from a quiet one.
    """
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": cores,
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in VERSIONED_PACKAGES},
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = int(torch.get_num_threads())
    return info

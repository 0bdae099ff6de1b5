"""Checkpoint loading: safe unpickling, format and family detection, strict key checks.

Official builders load with `strict=False` and only print the outcome, so a wrong file silently
keeps random weights. Here every mismatch is an error that names the keys, and a file of another
family (or no checkpoint at all) is called what it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import file_sha256
from ..config import SyntheticKind
from ..errors import CheckpointError
from .registry import ModelSpec, get_spec, list_specs
from .sam_heads import SamModel

# Families we recognise but do not build yet: key prefix -> human name.
_FOREIGN_SIGNATURES: dict[str, str] = {
    "image_encoder.backbone.stages.": "EfficientViT-SAM",
    "image_encoder.layers.": "MobileSAM (TinyViT)",
    "image_encoder.module.": "SlimSAM (pruned ViT wrapped in DataParallel)",
    "image_encoder.blocks.": "SAM (ViT-B/L/H)",
}
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-run reference model and where its weights came from."""

    spec: ModelSpec
    model: SamModel
    source: str  # file path, "synthetic(seed=N)" or "synthetic-calibrated(seed=N)"
    synthetic: bool
    upsample_mode: str | None
    sha256: str | None  # of the checkpoint file, None for synthetic weights
    calibrated: bool = False  # synthetic weights with BatchNorm statistics calibrated

    @property
    def weights(self) -> str:
        """What artifacts record: checkpoint, synthetic-untrained or synthetic-calibrated."""
        if not self.synthetic:
            return "checkpoint"
        return "synthetic-calibrated" if self.calibrated else "synthetic-untrained"


@cache
def load_layout(spec_name: str) -> dict[str, Any]:
    """The checkpoint layout (key -> shape, dtype) that ships inside the package."""
    spec = get_spec(spec_name)
    text = (
        resources.files("edgesam_export.models")
        .joinpath("layouts")
        .joinpath(spec.layout)
        .read_text()
    )
    layout: dict[str, Any] = json.loads(text)
    return layout


def synth_tensor(key: str, shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Deterministic stand-in weights: depend only on (seed, key, shape), same on any machine.

    Norm scales near one, biases near zero, matrices ~N(0, 1/fan_in), BatchNorm statistics in a
    plausible range. Clearly not trained: masks from such weights do not follow image content.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    if not dtype.startswith("float"):
        return np.zeros(shape, dtype=dtype)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        x = rng.uniform(0.5, 1.5, shape)
    elif leaf == "running_mean":
        x = rng.normal(0.0, 0.1, shape)
    elif len(shape) <= 1:
        x = rng.uniform(0.8, 1.2, shape) if leaf == "weight" else rng.normal(0.0, 0.02, shape)
    else:
        x = rng.normal(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), shape)
    return x.astype(dtype)


def synth_state_dict(spec_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    tensors = load_layout(spec_name)["tensors"]
    return {
        key: torch.from_numpy(synth_tensor(key, tuple(t["shape"]), t["dtype"], seed))
        for key, t in tensors.items()
    }


#: Leading bytes of files people mistake for checkpoints -> what they are.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<!DOCTYPE html", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
)


def sniff_non_checkpoint(path: Path) -> str | None:
    """What a file is when its first bytes say it cannot be a checkpoint (images, pages...)."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Open a checkpoint file safely and return its flat tensor state dict."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    kind = sniff_non_checkpoint(path)
    if kind is not None:
        raise CheckpointError(
            f"{path} is {kind}, not a model checkpoint (whatever its name says): pass the"
            " .pth state dict the model was trained into"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "GLOBAL" in msg:
            hint = ""
            if "segment_anything" in msg or "DataParallel" in msg or "Sam" in msg:
                hint = (
                    " It looks like a whole pickled model (SlimSAM-style); this version loads"
                    " only state dicts."
                )
            raise CheckpointError(
                f"{path} is not a plain weights file: it pickles Python objects, which are not"
                f" loaded for safety (torch.load(weights_only=True)).{hint}"
            ) from None
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({msg.splitlines()[0]})"
        ) from None
    except Exception as exc:  # torch.load raises many types for non-checkpoints
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint: it is truncated, corrupted or of"
            f" another format ({first})"
        ) from None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds a dict without tensors: not a model checkpoint")
    return tensors


def detect_family(keys: set[str]) -> str | None:
    """Name of the registered spec or known foreign family whose signature the keys carry.

    Variants of one family share their signature: among several matching specs the one whose
    layout has exactly these keys (BatchNorm step counters aside) is named, else none.
    """
    candidates = [
        spec
        for spec in list_specs()
        if all(any(k.startswith(p) for k in keys) for p in spec.signature_prefixes)
    ]
    if len(candidates) == 1:
        return candidates[0].name
    if candidates:
        counters = ".num_batches_tracked"
        wanted = {k for k in keys if not k.endswith(counters)}
        for spec in candidates:
            layout = {k for k in load_layout(spec.name)["tensors"] if not k.endswith(counters)}
            if layout == wanted:
                return spec.name
        return None
    for prefix, name in _FOREIGN_SIGNATURES.items():
        if any(k.startswith(prefix) for k in keys):
            return name
    return None


def _check_keys(
    spec: ModelSpec, model: nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    expected = model.state_dict()
    # BatchNorm step counters carry no weights; PyTorch's strict load of official files
    # succeeds without them (efficientvit fixture README), so their absence is not an error.
    missing = sorted(
        k for k in set(expected) - set(state) if not k.endswith(".num_batches_tracked")
    )
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        family = detect_family(set(state))
        if family is not None and family != spec.name:
            other = f"model {family!r}" if family in {s.name for s in list_specs()} else family
            raise CheckpointError(
                f"{source} is a {other} checkpoint, not {spec.family} ({spec.name});"
                f" {len(missing)} expected keys missing, {len(unexpected)} unexpected."
                + (
                    f" Use --model {family}."
                    if other.startswith("model")
                    else " That family is not supported by this version."
                )
            )
        if family is None and not any(
            k.startswith(("image_encoder.", "mask_decoder.")) for k in state
        ):
            raise CheckpointError(
                f"{source} is not a Segment-Anything-family checkpoint (first keys:"
                f" {', '.join(sorted(state)[:3])})"
            )

        def show(keys: list[str]) -> str:
            head = ", ".join(keys[:8])
            return head + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = [f"{source} does not match the {spec.name} layout:"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise CheckpointError(" ".join(parts))
    bad = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensors have the wrong shape for {spec.name}: "
            + "; ".join(bad[:5])
        )


def load_model(
    checkpoint: Path | str | None,
    *,
    model: str = "edge_sam",
    upsample_mode: str | None = None,
    seed: int = 0,
    synthetic: SyntheticKind = "random",
) -> LoadedModel:
    """Build `model`; load a checkpoint strictly, or synthetic weights when checkpoint is None.

    `synthetic="calibrated"` recalibrates the synthetic weights' BatchNorm statistics so that
    activations stay near unit scale (what fp16/int8 checks need; see `calibration`).
    """
    spec = get_spec(model)
    net = spec.build(upsample_mode)
    mode = upsample_mode or spec.default_upsample
    if checkpoint is None:
        state = synth_state_dict(spec.name, seed)
        calibrated = synthetic == "calibrated"
        tag = "synthetic-calibrated" if calibrated else "synthetic"
        source, is_synthetic, digest = f"{tag}(seed={seed})", True, None
    else:
        path = Path(checkpoint)
        state = read_checkpoint(path)
        source, is_synthetic, digest, calibrated = str(path), False, file_sha256(path), False
    _check_keys(spec, net, state, source)
    expected = net.state_dict()
    for key in set(expected) - set(state):  # only BatchNorm step counters (see _check_keys)
        state[key] = torch.zeros_like(expected[key])
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if calibrated:
        from .calibration import calibrate_batchnorm

        calibrate_batchnorm(net, spec)
    return LoadedModel(
        spec=spec,
        model=net,
        source=source,
        synthetic=is_synthetic,
        upsample_mode=mode,
        sha256=digest,
        calibrated=calibrated,
    )

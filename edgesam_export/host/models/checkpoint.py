"""Checkpoint loading: safe unpickling, format and family detection, strict key checks.

Official builders load with `strict=False` and only print the outcome, so a wrong file silently
keeps random weights. Here every mismatch is an error that names the keys, and a file of another
family (or no checkpoint at all) is called what it is.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgesam_export.device.artifacts import file_sha256
from edgesam_export.device.errors import CheckpointError
from edgesam_export.device.models import ModelSpec, get_spec, load_layout
from edgesam_export.host.config import DEFAULT_SYNTHETIC, SyntheticKind
from edgesam_export.host.models.identify import identify
from edgesam_export.host.models.registry import build_for_state, build_model
from edgesam_export.host.models.sam_heads import SamModel

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-run reference model and where its weights came from."""

    spec: ModelSpec
    model: SamModel
    source: str  # file path, or `synthetic-untrained(seed=N)` / `synthetic-calibrated(seed=N)`
    synthetic: bool
    upsample_mode: str | None
    sha256: str | None  # of the checkpoint file, None for synthetic weights
    calibrated: bool = False  # synthetic weights with BatchNorm statistics calibrated
    # Extra checkpoint keys the family's official loader ignores (strict=False), left unused.
    ignored_keys: tuple[str, ...] = ()

    @property
    def weights(self) -> str:
        """What artifacts record: checkpoint, synthetic-untrained or synthetic-calibrated."""
        if not self.synthetic:
            return "checkpoint"
        return "synthetic-calibrated" if self.calibrated else "synthetic-untrained"


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


def _is_module_pickle_error(msg: str) -> bool:
    return "Weights only load failed" in msg or "GLOBAL" in msg


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Open a checkpoint file safely and return its flat tensor state dict.

    Plain weights files go through `torch.load(weights_only=True)`. Whole pickled modules
    (SlimSAM's releases) are read by `safe_pickle`'s restricted unpickler, which rebuilds tensors
    and inert module records only and refuses any other global by name; DataParallel wrappers
    (`image_encoder.module.`) are unwrapped.
    """
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
        if _is_module_pickle_error(msg):
            if not zipfile.is_zipfile(path):  # legacy/plain pickles: never unpickled here
                raise CheckpointError(
                    f"{path} is not a plain weights file: it pickles Python objects, which are"
                    " not loaded for safety (torch.load(weights_only=True) refused it)"
                ) from None
            return _read_module_pickle(path)
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
    return _unwrap_data_parallel(tensors)


def _unwrap_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`image_encoder.module.*` (a DataParallel-wrapped encoder) -> `image_encoder.*`."""
    prefix = "image_encoder.module."
    if not any(k.startswith(prefix) for k in state):
        return state
    return {
        ("image_encoder." + k[len(prefix) :] if k.startswith(prefix) else k): v
        for k, v in state.items()
    }


def _read_module_pickle(path: Path) -> dict[str, torch.Tensor]:
    from edgesam_export.host.models.safe_pickle import UnsafePickleError, read_module_checkpoint

    try:
        ckpt = read_module_checkpoint(path)
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            f"{path} is not a plain weights file and was not loaded: {exc}"
        ) from None
    return _unwrap_data_parallel(ckpt.state_dict)


def detect_family(keys: set[str] | dict[str, torch.Tensor]) -> str | None:
    """The registered model (or, when none builds it, the family) the checkpoint belongs to."""
    found = identify(keys)
    if found is None:
        return None
    return found.model or found.description


def _show(keys: list[str]) -> str:
    head = ", ".join(keys[:8])
    return head + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


def _foreign_error(spec: ModelSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError naming the file's family when it is not `spec`'s."""
    found = identify(state)
    if found is not None and found.model != spec.name:
        advice = (
            f" Use --model {found.model}."
            if found.model is not None
            else " That model is not supported by this version."
        )
        what = (
            f"holds {found.model}, another {spec.family} variant, not {spec.name}"
            if found.description == spec.family and found.model is not None
            else f"is a {found.description} checkpoint, not {spec.family} ({spec.name})"
        )
        raise CheckpointError(f"{source} {what}.{advice}")
    if found is None and not any(k.startswith(("image_encoder.", "mask_decoder.")) for k in state):
        raise CheckpointError(
            f"{source} is not a Segment-Anything-family checkpoint (first keys:"
            f" {', '.join(sorted(state)[:3])})"
        )


def _check_keys(
    spec: ModelSpec,
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    strict: bool = False,
) -> tuple[str, ...]:
    """Check `state` against the model; returns the extra keys left unused (EdgeSAM only).

    Missing keys and wrong shapes always stop with an error that names them; so do unexpected
    keys, except for families whose official loader uses strict=False (EdgeSAM's released files
    may carry `fpn.*` / `rpn_head.*` from a merged RPN) unless `strict`. BatchNorm's
    `num_batches_tracked` may be absent, as PyTorch's strict loading allows.
    """
    expected = model.state_dict()
    # BatchNorm step counters carry no weights; PyTorch's strict load of official files
    # succeeds without them (efficientvit fixture README), so their absence is not an error.
    missing = sorted(
        k for k in set(expected) - set(state) if not k.endswith(".num_batches_tracked")
    )
    unexpected = sorted(set(state) - set(expected))
    if missing or (unexpected and (strict or not spec.extra_keys_allowed)):
        _foreign_error(spec, state, source)
        parts = [f"{source} does not match the {spec.name} layout:"]
        if missing:
            parts.append(f"missing keys: {_show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_show(unexpected)}")
            if spec.extra_keys_allowed:
                parts.append("(extra keys are refused because of --strict)")
        raise CheckpointError(" ".join(parts))
    bad = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        _foreign_error(spec, state, source)
        raise CheckpointError(
            f"{source}: {len(bad)} tensors have the wrong shape for {spec.name}: "
            + "; ".join(bad[:5])
        )
    return tuple(unexpected)


def load_model(
    checkpoint: Path | str | None,
    *,
    model: str = "edge_sam",
    upsample_mode: str | None = None,
    seed: int = 0,
    synthetic: SyntheticKind = DEFAULT_SYNTHETIC,
    strict: bool = False,
) -> LoadedModel:
    """Build `model`; load a checkpoint's keys exactly, or synthetic weights when it is None.

    Synthetic weights are calibrated by default: their BatchNorm statistics are refitted so that
    activations stay near unit scale like trained weights (what fp16/int8 checks need; see
    `calibration`); `synthetic="untrained"` keeps the fixture rule's draw (the golden fixtures').
    `strict=True` also refuses extra keys a family's official loader would ignore (EdgeSAM).
    """
    spec = get_spec(model)
    mode = upsample_mode or spec.default_upsample
    if spec.build_from_state is None:
        net = build_model(spec, upsample_mode)
    if checkpoint is None:
        state = synth_state_dict(spec.name, seed)
        calibrated = synthetic == "calibrated"
        source, is_synthetic, digest = f"synthetic-{synthetic}(seed={seed})", True, None
    else:
        path = Path(checkpoint)
        state = read_checkpoint(path)
        source, is_synthetic, digest, calibrated = str(path), False, file_sha256(path), False
    if spec.build_from_state is not None:  # widths differ per file (SlimSAM)
        try:
            net = build_for_state(spec, state, upsample_mode)
        except CheckpointError as exc:
            _foreign_error(spec, state, source)
            raise CheckpointError(f"{source}: {exc}") from None
    ignored = _check_keys(spec, net, state, source, strict)
    expected = net.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}
    for key, value in expected.items():  # absent num_batches_tracked: keep the module's own
        state.setdefault(key, value)
    net.load_state_dict(state, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if calibrated and any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        from edgesam_export.host.models.calibration import calibrate_batchnorm

        calibrate_batchnorm(net, spec)
    return LoadedModel(
        spec=spec,
        model=net,
        source=source,
        synthetic=is_synthetic,
        upsample_mode=mode,
        sha256=digest,
        calibrated=calibrated,
        ignored_keys=ignored,
    )

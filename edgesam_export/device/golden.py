"""Golden reference outputs shipped beside the artifacts, so a device without torch can run parity.

Device side (numpy only). The export writes `<stem>_reference.npz` (the *sidecar*) next to the
artifacts; `edgesam-export parity ARTIFACT_DIR` judges them against it when torch is absent (or
with `--reference golden`), with the same checks, tolerances and verdicts as against PyTorch.

What it holds, and why it stays small (about 5 MB next to ~40 MB of ONNX graphs):

- the parity test image (uint8) and the prompt cases (points and labels, in the S frame),
  because both are drawn from random generators whose streams numpy does not promise to keep;
- the reference image embeddings in full float32: the decoder-alone check feeds them to the
  candidate decoder, so they must be exact (a float16 copy would move decoder outputs by more
  than the float32 decoder tolerance);
- per prompt case the reference IoU scores and stability scores (both decoder flavours share
  their mask logits), the low-resolution mask logits on every `MASK_STRIDE`-th row and column
  (max/mean abs error are measured there), and the full-resolution thresholded masks as packed
  bits (mask IoU is measured on every pixel).

Everything was computed by the PyTorch reference in float32 on the CPU at export time; the
metadata block records the model, weights and checkpoint digest, so a sidecar is never applied
to artifacts of other weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.artifacts import atomic_path
from edgesam_export.device.errors import ArtifactError, InputError
from edgesam_export.device.official_contract import foreign_contract
from edgesam_export.device.parity import (
    ParityReport,
    PromptCase,
    _judge,
    candidate_precision,
    compare_arrays,
    make_test_image,
    mask_metrics,
    prompt_cases,
)
from edgesam_export.device.runtime import Session

SIDECAR_SUFFIX = "_reference.npz"
FORMAT_VERSION = 1
MASK_STRIDE = 4  # keep rows and columns 0, 4, 8, ... of each 256 x 256 logit map
#: Metadata keys a sidecar must share with the artifacts it judges.
MATCH_KEYS = ("model", "weights", "weights_source", "checkpoint_sha256", "upsample_mode")


@dataclass(frozen=True)
class GoldenCase:
    case: PromptCase
    scores: np.ndarray  # (B, K) IoU scores
    stability_scores: np.ndarray  # (B, K)
    masks_sub: np.ndarray  # (B, K, 256 / stride, 256 / stride) float32 logits
    masks_bits: np.ndarray  # (B, K, 256, 256) bool: logits > 0


@dataclass(frozen=True)
class Golden:
    """A sidecar read back: the reference's inputs and outputs."""

    path: Path
    meta: dict[str, Any]
    image: np.ndarray
    embeddings: np.ndarray
    cases: list[GoldenCase]

    @property
    def stride(self) -> int:
        return int(self.meta["mask_stride"])

    @property
    def preprocessing(self) -> P.Preprocessing:
        """How the reference preprocessed the image and where its prompt cases live."""
        return P.Preprocessing.from_metadata({k: str(v) for k, v in self.meta.items()})

    def matches(self, metadata: Mapping[str, str]) -> bool:
        return all(self.meta.get(k, "") == metadata.get(k, "") for k in MATCH_KEYS)


def sidecar_path(out_dir: Path, stem: str) -> Path:
    return out_dir / f"{stem}{SIDECAR_SUFFIX}"


def write_golden(
    dest: Path,
    encoder: Session,
    decoders: Mapping[bool, Session],
    *,
    reference: str,
    image: np.ndarray | None = None,
) -> Path:
    """Run the reference sessions on the parity inputs and store what a device needs (atomic).

    `decoders` maps use_stability_score -> reference decoder; `reference` describes it
    (e.g. "torch 2.13.0 cpu float32"). The metadata is the reference encoder's.
    """
    image = make_test_image() if image is None else np.ascontiguousarray(image, dtype=np.uint8)
    meta_in = encoder.metadata
    params = P.Preprocessing.from_metadata(meta_in)  # encoder size, prompt frame, normalisation
    tensor, info = P.preprocess(image, params=params)
    emb = encoder.run({"image": tensor})["image_embeddings"].astype(np.float32)
    cases = prompt_cases(params.frame, info.input_size)  # in the prompt frame
    arrays: dict[str, np.ndarray] = {"image": image, "image_embeddings": emb}
    for i, case in enumerate(cases):
        feeds = {
            "image_embeddings": emb,
            "point_coords": case.point_coords,
            "point_labels": case.point_labels,
        }
        iou = decoders[False].run(feeds)
        stab = decoders[True].run(feeds)
        masks = iou["masks"].astype(np.float32)
        arrays[f"case{i}_point_coords"] = case.point_coords
        arrays[f"case{i}_point_labels"] = case.point_labels
        arrays[f"case{i}_scores"] = iou["scores"].astype(np.float32)
        arrays[f"case{i}_stability_scores"] = stab["scores"].astype(np.float32)
        arrays[f"case{i}_masks_sub"] = np.ascontiguousarray(
            masks[..., ::MASK_STRIDE, ::MASK_STRIDE]
        )
        arrays[f"case{i}_masks_bits"] = np.packbits(masks > 0.0, axis=-1)
    meta: dict[str, Any] = {k: meta_in.get(k, "") for k in MATCH_KEYS}
    meta.update(
        format=FORMAT_VERSION,
        reference=reference,
        # img_size, prompt_frame, pixel_mean, pixel_std, normalize, pad (sidecars written
        # before prompt_frame existed hold only the first three: `preprocessing` reads them as
        # EdgeSAM's recipe with the frame = img_size, which is how they were written).
        **params.to_metadata(),
        mask_stride=MASK_STRIDE,
        mask_shape=list(masks.shape[-2:]),
        cases=[c.name for c in cases],
    )
    arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(dest) as tmp:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    return dest


def read_golden(path: Path) -> Golden:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays["meta_json"]))
        if meta.get("format") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: golden format {meta.get('format')!r}, this version reads"
                f" {FORMAT_VERSION}; re-export the artifacts"
            )
        height, width = (int(v) for v in meta["mask_shape"])
        cases = []
        for i, name in enumerate(meta["cases"]):
            bits = np.unpackbits(arrays[f"case{i}_masks_bits"], axis=-1, count=width)
            cases.append(
                GoldenCase(
                    PromptCase(
                        name, arrays[f"case{i}_point_coords"], arrays[f"case{i}_point_labels"]
                    ),
                    arrays[f"case{i}_scores"],
                    arrays[f"case{i}_stability_scores"],
                    arrays[f"case{i}_masks_sub"],
                    bits.astype(bool).reshape(*bits.shape[:-2], height, width),
                )
            )
        return Golden(path, meta, arrays["image"], arrays["image_embeddings"], cases)
    except ArtifactError:
        raise
    except Exception as exc:  # zip, key and JSON errors of a damaged sidecar
        raise ArtifactError(f"golden reference {path} is unreadable: {exc}") from None


def find_golden(artifact_dir: Path, metadata: Mapping[str, str]) -> Golden:
    """The sidecar in `artifact_dir` recorded for the artifacts' model and weights."""
    found = sorted(artifact_dir.glob(f"*{SIDECAR_SUFFIX}"))
    if not found:
        raise InputError(
            f"no golden reference (*{SIDECAR_SUFFIX}) in {artifact_dir}, and no PyTorch"
            " reference here: re-export the artifacts with this version (it writes one), or"
            " install torch (pip install 'edgesam-export[export]') to compare with PyTorch"
        )
    goldens = [read_golden(p) for p in found]
    for golden in goldens:
        if golden.matches(metadata):
            return golden
    raise InputError(
        f"no golden reference in {artifact_dir} matches the artifacts' weights"
        f" ({metadata.get('weights_source', '?')}); found {', '.join(p.name for p in found)}"
    )


def _subsample(masks: np.ndarray, stride: int) -> np.ndarray:
    return np.ascontiguousarray(masks[..., ::stride, ::stride])


def check_golden(
    golden: Golden,
    encoders: Sequence[tuple[str, Session]],
    decoders: Sequence[tuple[str, Session]],
    *,
    report: ParityReport | None = None,
    record: dict[str, Any] | None = None,
) -> ParityReport:
    """`parity.check` against a sidecar: same checks, tolerances and verdicts.

    Mask max/mean abs errors are measured on the stored pixel grid (every `stride`-th row and
    column), mask IoU on every pixel, scores in full. `record` (optional) receives the
    candidates' raw outputs for the report. A decoder with a family's own contract
    (`official_contract.FOREIGN`) gets its contract's feeds and has its low-res masks and scores
    judged (single-mask files against the token the contract's rule picks); upscaled masks are
    not (the sidecar keeps no full-precision logits to upscale).
    """
    report = report or ParityReport()
    meta = golden.meta
    params = golden.preprocessing
    tensor, _ = P.preprocess(golden.image, params=params)
    report.inputs = {
        "image_shape": list(golden.image.shape),
        "img_size": params.encoder_size,
        "prompt_frame": params.frame,
        "reference": f"golden {golden.path.name} ({meta['reference']})",
        "mask_stride": golden.stride,
        "prompt_cases": [c.case.name for c in golden.cases],
        # which runtime produced each artifact's numbers (CoreML itself, or the MIL executor)
        "runtimes": {name: s.runtime_label for name, s in [*encoders, *decoders]},
    }
    own_embedding = None
    for name, enc in encoders:
        emb = enc.run({"image": tensor})["image_embeddings"]
        own_embedding = emb if own_embedding is None else own_embedding
        if record is not None:
            record.setdefault(name, {})["image_embeddings"] = emb
        metrics = compare_arrays(emb, golden.embeddings)
        precision = candidate_precision(enc)
        _judge(report, name, enc.backend, "image_embeddings", "test image", metrics, precision)
    for name, dec in decoders:
        stab = dec.metadata.get("use_stability_score", "false") == "true"
        precision = candidate_precision(dec)
        score_key = "stability_scores" if stab else "scores"
        tag = " (stability)" if stab else ""
        runs = [("decoder", golden.embeddings)]
        if own_embedding is not None:
            runs.append(("end_to_end", own_embedding))
        foreign = foreign_contract(dec.metadata)
        single = dec.metadata.get("return_single_mask", "false") == "true"
        for gc in golden.cases:
            ref_scores = gc.stability_scores if stab else gc.scores
            masks_sub, masks_bits = gc.masks_sub, gc.masks_bits
            coords, labels = gc.case.point_coords, gc.case.point_labels
            if foreign is not None and coords.shape[0] != 1 and not foreign.batched:
                continue
            if foreign is not None and single:
                rows = np.arange(ref_scores.shape[0])
                idx = foreign.single_mask_index(ref_scores, coords.shape[1])
                ref_scores = ref_scores[rows, idx][:, None]
                masks_sub, masks_bits = (
                    masks_sub[rows, idx][:, None],
                    masks_bits[rows, idx][:, None],
                )
            for stage, embedding in runs:
                if foreign is None:
                    out = dec.run(
                        {"image_embeddings": embedding, "point_coords": coords,
                         "point_labels": labels}
                    )  # fmt: skip
                else:
                    raw = dec.run(foreign.feeds(embedding, coords, labels, golden.image.shape[:2]))
                    out = {"scores": raw[foreign.scores_key], "masks": raw[foreign.low_res_key]}
                if record is not None and stage == "decoder":
                    record.setdefault(name, {})[gc.case.name] = out
                case = gc.case.name + tag
                metrics = compare_arrays(out["scores"], ref_scores)
                _judge(report, name, dec.backend, f"{stage}.{score_key}", case, metrics, precision)
                metrics = compare_arrays(_subsample(out["masks"], golden.stride), masks_sub)
                ref_logits = masks_bits.astype(np.float32) - 0.5  # > 0 exactly on the mask
                metrics.update(mask_metrics(out["masks"], ref_logits, out["scores"], ref_scores))
                _judge(report, name, dec.backend, f"{stage}.masks", case, metrics, precision)
    return report

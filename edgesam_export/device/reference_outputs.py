"""Reference outputs shipped beside the artifacts, so a device without torch can run parity.

Device side (numpy only). The export writes `<stem>_reference.npz` (our PyTorch reference's
outputs on the parity inputs; not the "golden" fixtures, which are the official code's) next to
the artifacts; `edgesam-export parity ARTIFACT_DIR` judges them against it when torch or the
checkpoint is absent (or with `--reference outputs`), through the same judge as against PyTorch.

What it holds, and why it stays small (about 5 MB next to ~40 MB of ONNX graphs):

- the parity test image (uint8) and the prompt cases (points and labels, in the S frame),
  because both are drawn from random generators whose streams numpy does not promise to keep;
- the reference image embeddings in full float32: the decoder-alone check feeds them to the
  candidate decoder, so they must be exact (a float16 copy would move decoder outputs by more
  than the float32 decoder tolerance); for the SAM 2 layout (EdgeTAM) also both
  high-resolution features (`feature_high_res_feats_0/1`, 12 MB more), which its decoder takes;
- per prompt case the reference IoU scores and stability scores (both decoder flavours share
  their mask logits), SAM 2's object-score logits, the low-resolution mask logits on every
  `MASK_STRIDE`-th row and column (max/mean abs error are measured there), and the
  full-resolution thresholded masks as packed bits (mask IoU is measured on every pixel).

Everything was computed by the PyTorch reference in float32 on the CPU at export time; the
metadata block records the model, weights and checkpoint digest, so reference outputs are never
applied to artifacts of other weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.artifacts import atomic_path
from edgesam_export.device.contract import MASK_THRESHOLD, STABILITY_OFFSET
from edgesam_export.device.errors import ArtifactError, InputError
from edgesam_export.device.judge import Expected
from edgesam_export.device.parity import PromptCase, make_test_image, prompt_cases
from edgesam_export.device.predictor import decoder_feeds
from edgesam_export.device.runtime import Session

REFERENCE_OUTPUTS_SUFFIX = "_reference.npz"
FORMAT_VERSION = 1
FEATURE_PREFIX = "feature_"  # encoder outputs besides the embeddings (SAM 2's high-res ones)
MASK_STRIDE = 4  # keep rows and columns 0, 4, 8, ... of each 256 x 256 logit map
#: Metadata keys reference outputs must share with the artifacts they judge.
MATCH_KEYS = ("model", "weights", "weights_source", "checkpoint_sha256", "upsample_mode")


@dataclass(frozen=True)
class ReferenceCase:
    case: PromptCase
    scores: np.ndarray  # (B, K) IoU scores
    stability_scores: np.ndarray  # (B, K)
    masks_sub: np.ndarray  # (B, K, 256 / stride, 256 / stride) float32 logits
    masks_bits: np.ndarray  # (B, K, 256, 256) bool: logits > 0
    object_scores: np.ndarray | None = None  # (B, 1) object-score logits (SAM 2 layout)


@dataclass(frozen=True)
class ReferenceOutputs:
    """Reference outputs read back: the reference's inputs and outputs (a judge `Reference`)."""

    path: Path
    meta: dict[str, Any]
    image: np.ndarray
    embeddings: np.ndarray
    cases: list[ReferenceCase]
    extra_features: Mapping[str, np.ndarray] = field(default_factory=dict)  # SAM 2 high-res

    @property
    def features(self) -> dict[str, np.ndarray]:
        """Every reference encoder output kept: the embeddings first."""
        return {"image_embeddings": self.embeddings, **self.extra_features}

    @property
    def description(self) -> str:
        return f"reference outputs {self.path.name} ({self.meta['reference']})"

    @property
    def prompts(self) -> list[PromptCase]:
        return [c.case for c in self.cases]

    def expected(self, index: int, stability: bool) -> Expected:
        """Scores of the flavour asked for; both flavours share their masks. The file keeps
        no full-precision logits, so upscaled masks of a family contract are not judged."""
        c = self.cases[index]
        scores = c.stability_scores if stability else c.scores
        return Expected(scores, c.masks_sub, c.masks_bits, None, c.object_scores)

    def video_cases(self) -> None:
        """The file keeps no video-graph answers: those are judged against PyTorch only."""
        return None

    def record_into(self, record: dict[str, Any]) -> None:
        record["reference_outputs"] = self

    @property
    def stride(self) -> int:
        return int(self.meta["mask_stride"])

    @property
    def preprocessing(self) -> P.Preprocessing:
        """How the reference preprocessed the image and where its prompt cases live."""
        return P.Preprocessing.from_metadata({k: str(v) for k, v in self.meta.items()})

    def matches(self, metadata: Mapping[str, str]) -> bool:
        return all(self.meta.get(k, "") == metadata.get(k, "") for k in MATCH_KEYS)


def reference_outputs_path(out_dir: Path, stem: str) -> Path:
    return out_dir / f"{stem}{REFERENCE_OUTPUTS_SUFFIX}"


def save_reference_outputs(
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
    features = encoder.run({"image": tensor})
    emb = features["image_embeddings"].astype(np.float32)
    cases = prompt_cases(params.frame, info.input_size)  # in the prompt frame
    arrays: dict[str, np.ndarray] = {"image": image, "image_embeddings": emb}
    for name, value in features.items():
        if name != "image_embeddings":
            arrays[FEATURE_PREFIX + name] = value.astype(np.float32)
    for i, case in enumerate(cases):
        feeds = decoder_feeds(decoders[False], features, case.point_coords, case.point_labels)
        iou = decoders[False].run(feeds)
        masks = iou["masks"].astype(np.float32)
        # A family without a stability-score decoder (SAM 2 layout): the same score computed
        # from the reference masks (what such a decoder graph would output).
        stab = (
            decoders[True].run(feeds)
            if True in decoders
            else {"scores": P.stability_score(masks, MASK_THRESHOLD, STABILITY_OFFSET)}
        )
        arrays[f"case{i}_point_coords"] = case.point_coords
        arrays[f"case{i}_point_labels"] = case.point_labels
        arrays[f"case{i}_scores"] = iou["scores"].astype(np.float32)
        arrays[f"case{i}_stability_scores"] = stab["scores"].astype(np.float32)
        arrays[f"case{i}_masks_sub"] = np.ascontiguousarray(
            masks[..., ::MASK_STRIDE, ::MASK_STRIDE]
        )
        arrays[f"case{i}_masks_bits"] = np.packbits(masks > 0.0, axis=-1)
        if "object_score_logits" in iou:
            arrays[f"case{i}_object_scores"] = iou["object_score_logits"].astype(np.float32)
    meta: dict[str, Any] = {k: meta_in.get(k, "") for k in MATCH_KEYS}
    meta.update(
        format=FORMAT_VERSION,
        reference=reference,
        # img_size, prompt_frame, pixel_mean, pixel_std, normalize, pad (files written before
        # prompt_frame existed hold only the first three: `preprocessing` reads them as
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


def read_reference_outputs(path: Path) -> ReferenceOutputs:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays["meta_json"]))
        if meta.get("format") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: reference outputs format {meta.get('format')!r}, this version reads"
                f" {FORMAT_VERSION}; re-export the artifacts"
            )
        height, width = (int(v) for v in meta["mask_shape"])
        cases = []
        for i, name in enumerate(meta["cases"]):
            bits = np.unpackbits(arrays[f"case{i}_masks_bits"], axis=-1, count=width)
            cases.append(
                ReferenceCase(
                    PromptCase(
                        name, arrays[f"case{i}_point_coords"], arrays[f"case{i}_point_labels"]
                    ),
                    arrays[f"case{i}_scores"],
                    arrays[f"case{i}_stability_scores"],
                    arrays[f"case{i}_masks_sub"],
                    bits.astype(bool).reshape(*bits.shape[:-2], height, width),
                    arrays.get(f"case{i}_object_scores"),
                )
            )
        extra = {
            k[len(FEATURE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(FEATURE_PREFIX)
        }
        return ReferenceOutputs(
            path, meta, arrays["image"], arrays["image_embeddings"], cases, extra
        )
    except ArtifactError:
        raise
    except Exception as exc:  # zip, key and JSON errors of a damaged file
        raise ArtifactError(f"reference outputs {path} are unreadable: {exc}") from None


def find_reference_outputs(artifact_dir: Path, metadata: Mapping[str, str]) -> ReferenceOutputs:
    """The reference outputs in `artifact_dir` recorded for the artifacts' model and weights.

    Missing or foreign reference outputs are a provenance problem (exit 3): the message says
    what to pass instead.
    """
    found = sorted(artifact_dir.glob(f"*{REFERENCE_OUTPUTS_SUFFIX}"))
    if not found:
        raise InputError(
            f"no reference outputs (*{REFERENCE_OUTPUTS_SUFFIX}) in {artifact_dir}: pass the"
            " checkpoint the artifacts came from (parity CKPT ARTIFACT_DIR, needs torch: pip"
            " install 'edgesam-export[export]'), or re-export them with this version"
        )
    for path in found:
        outputs = read_reference_outputs(path)
        if outputs.matches(metadata):
            return outputs
    raise InputError(
        f"the reference outputs in {artifact_dir} ({', '.join(p.name for p in found)}) belong"
        f" to other weights than the artifacts' ({metadata.get('model', '?')},"
        f" {metadata.get('weights_source', '?')}): pass the artifacts' checkpoint"
        " (parity CKPT ARTIFACT_DIR) or copy their own *_reference.npz beside them"
    )

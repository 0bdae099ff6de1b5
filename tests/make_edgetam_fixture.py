"""Write tests/fixtures/edgetam/ from ../shared/fixtures/edgetam/ (run from the repo root).

    python tests/make_edgetam_fixture.py [SHARED_EDGETAM_DIR]

The shared golden file is 43.6 MB; the tests keep a trimmed copy (`golden_trim.npz`):
- image mode, kept whole: `image`, `original_size`, every prompt array of sets a-e (points,
  boxes, what the prompt encoder received, low-res logits, scores, masks, token 0);
- image mode, strided (exact values at the kept positions; key suffix `_sK` = every K-th row
  and column of the last two axes): `input_tensor_s4` (10.5 MB -> 0.8 MB),
  `image_embed_s2`, `high_res_feats_0_s4`, `high_res_feats_1_s2`. The tests run our encoder on
  the image and compare at those positions, then decode from our own features (end to end);
- video mode: the keys listed in `VIDEO_KEYS` (the video engineer's part), kept whole unless a
  stride is given there. Dropped: `video_input_frames01` and the `video_jpeg_*` bytes (tests
  start from the decoded `video_frames`, as the shared README advises), and what is not listed.
`manifest.json` is copied unchanged (the checkpoint layout; the synthetic weights are
regenerated from it with seed 0).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "edgetam"

#: key -> stride of the last two axes (1 = whole).
IMAGE_STRIDED = {
    "input_tensor": 4,
    "image_embed": 2,
    "high_res_feats_0": 4,
    "high_res_feats_1": 2,
}
#: Video arrays the video tests need: key -> stride (1 = whole). Extended by the video mode.
VIDEO_KEYS: dict[str, int] = {}


def _shared_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    for parent in HERE.parents:
        candidate = parent / "shared" / "fixtures" / "edgetam"
        if candidate.is_dir():
            return candidate
    raise SystemExit("../shared/fixtures/edgetam not found; pass its path")


def trimmed(golden: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in golden.files:
        if key[:2] in ("a_", "b_", "c_", "d_", "e_") or key in ("image", "original_size"):
            out[key] = golden[key]
    for key, stride in IMAGE_STRIDED.items():
        out[f"{key}_s{stride}"] = np.ascontiguousarray(golden[key][..., ::stride, ::stride])
    for key, stride in VIDEO_KEYS.items():
        value = golden[key]
        out[key if stride == 1 else f"{key}_s{stride}"] = np.ascontiguousarray(
            value if stride == 1 else value[..., ::stride, ::stride]
        )
    return out


def main() -> None:
    shared = _shared_dir()
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / "manifest.json", OUT / "manifest.json")
    with np.load(shared / "golden_seed0.npz", allow_pickle=False) as golden:
        arrays = trimmed(golden)
    np.savez_compressed(OUT / "golden_trim.npz", **arrays)
    size = (OUT / "golden_trim.npz").stat().st_size
    print(json.dumps({"arrays": len(arrays), "bytes": size}))


if __name__ == "__main__":
    main()

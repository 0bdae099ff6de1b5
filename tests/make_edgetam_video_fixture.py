"""Write tests/fixtures/edgetam/video_seed0.npz: the video part of ../shared/fixtures/edgetam/.

    python tests/make_edgetam_video_fixture.py [SHARED_GOLDEN.npz]

Copies the official EdgeTAM video outputs (seed 0, see the shared README) that the video tests use,
trimmed to fit the repository: the preprocessed frames keep every 32nd row, the cross-attention
outputs every 4th stored token (tokens 0, 4, ... of rows 0, 8, ..., 56), the memory-conditioned
features their first 2 stored rows (rows 0 and 8); the frame-0 masks fed
to the memory encoder are bit-packed (they are +-10); the masks are bit-packed. Everything else is
copied unchanged. Image-mode arrays belong to the image fixture, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "fixtures" / "edgetam" / "golden_seed0.npz"
OUT = ROOT / "tests" / "fixtures" / "edgetam" / "video_seed0.npz"
ROW_STEP = 32
TOKEN_STEP = 4  # of the 512 stored cross-attention tokens
FEAT_ROWS = 2  # of the 8 stored feature rows

COPIED = (
    "video_frames",
    "video_f0_maskmem_pos_enc",
    "video_f1_vision_feat_rows",
    "meta_json",
)
PER_OBJECT = (
    "low_res_logits",
    "object_score_logits",
    "obj_ptr",
    "track_ious",
    "f0_ious",
    "f0_maskmem_features",
    "f0_maskmem_features_bank",
    "f0_memenc_features_rows",
    "f0_pe_point_coords",
    "f0_pe_point_labels",
    "f1_memory",
    "f1_memory_pos",
)


def main(src: Path = DEFAULT) -> None:
    g = np.load(src, allow_pickle=False)
    out: dict[str, np.ndarray] = {k: g[k] for k in COPIED}
    out["video_input_frames01_rows"] = g["video_input_frames01"][:, :, ::ROW_STEP, :]
    out["video_input_row_step"] = np.array(ROW_STEP)
    out["video_cross_attn_token_step"] = np.array(TOKEN_STEP)
    out["video_obj1_point_coords"] = g["video_obj1_point_coords"]
    out["video_obj1_point_labels"] = g["video_obj1_point_labels"]
    out["video_obj2_box"] = g["video_obj2_box"]
    for obj in (1, 2):
        for name in PER_OBJECT:
            out[f"video_obj{obj}_{name}"] = g[f"video_obj{obj}_{name}"]
        for layer in (0, 1):
            key = f"video_obj{obj}_f1_cross_attn_out_l{layer}_rows"
            out[key] = g[key][:, ::TOKEN_STEP]
        key = f"video_obj{obj}_f1_pix_feat_with_mem_rows"
        out[key] = g[key][:, :, :FEAT_ROWS]
        masks = g[f"video_obj{obj}_masks"]
        out[f"video_obj{obj}_masks_packed"] = np.packbits(masks, axis=-1)
        mem = g[f"video_obj{obj}_f0_mask_for_mem"]
        assert set(np.unique(mem)) <= {-10.0, 10.0}
        out[f"video_obj{obj}_f0_mask_for_mem_packed"] = np.packbits(mem > 0, axis=-1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"{OUT}: {OUT.stat().st_size / 1e6:.1f} MB, {len(out)} arrays")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)

"""EdgeTAM image mode on the device:
`python tests/edgetam_device_check.py ARTIFACT_DIR GOLDEN [SUFFIX]` (SUFFIX: .onnx by default,
.mlpackage for CoreML on the MIL executor).

Run by tests/test_edgetam.py and tests/test_edgetam_coreml.py with torch, cv2 and PIL blocked
(tests/torch_blocker). Opens the exported encoder and decoder, runs the numpy `Predictor` on the
golden image and prompts a-e, and prints one JSON object of the largest differences against the
goldens (the test judges them).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np


def main(artifacts: Path, golden_path: Path, suffix: str = ".onnx") -> None:
    for module in ("torch", "cv2", "PIL"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        raise AssertionError(f"{module} is importable: not a torch-free environment")
    from edgesam_export.device import processing as P
    from edgesam_export.device.backends import open_session
    from edgesam_export.device.predictor import Predictor

    g = dict(np.load(golden_path, allow_pickle=False))
    predictor = Predictor(
        open_session(artifacts / f"edgetam_encoder{suffix}"),
        open_session(artifacts / f"edgetam_decoder{suffix}"),
    )
    tensor, _ = P.preprocess(g["image"], params=predictor.preprocessing)
    predictor.set_image(g["image"])
    feats = predictor._features
    assert feats is not None
    ref_embed = g["image_embed_s2"]
    result: dict[str, object] = {
        "input_tensor": float(np.abs(tensor[..., ::4, ::4] - g["input_tensor_s4"]).max()),
        "image_embed_rel": float(
            np.abs(feats["image_embeddings"][..., ::2, ::2] - ref_embed).max()
            / np.abs(ref_embed).max()
        ),
        "high_res_feats_0": float(
            np.abs(feats["high_res_feats_0"][..., ::4, ::4] - g["high_res_feats_0_s4"]).max()
        ),
        "high_res_feats_1": float(
            np.abs(feats["high_res_feats_1"][..., ::2, ::2] - g["high_res_feats_1_s2"]).max()
        ),
    }
    best_a = g["a_multi_low_res_logits"][int(np.argmax(g["a_multi_scores"]))]
    for name in "abcde":
        prompt: dict[str, np.ndarray] = {}
        if f"{name}_point_coords" in g:
            prompt["points"] = g[f"{name}_point_coords"]
            prompt["labels"] = g[f"{name}_point_labels"]
        if f"{name}_box" in g:
            prompt["box"] = g[f"{name}_box"]
        if name == "e":
            prompt["mask_input"] = best_a
        for kind, k in (("multi", 3), ("single", 1)):
            pred = predictor.predict(num_multimask_outputs=k, **prompt)  # type: ignore[arg-type]
            logits = g[f"{name}_{kind}_low_res_logits"]
            flips = pred.masks != g[f"{name}_{kind}_masks"]
            full = P.postprocess_masks(pred.low_res_logits, predictor.image_info)
            result[f"{name}_{kind}"] = {
                "logits": float(np.abs(pred.low_res_logits - logits).max()),
                "scores": float(np.abs(pred.scores - g[f"{name}_{kind}_scores"]).max()),
                "flips": int(flips.reshape(len(flips), -1).sum(-1).max()),
                "flip_logit": float(np.abs(full[flips]).max()) if flips.any() else 0.0,
                "object_score": pred.object_score_logits is not None,
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])

"""The device path, run where torch cannot be imported: `python tests/device_check.py ARTIFACT_DIR`.

Run by `tests/test_device_side.py` with torch, cv2 and PIL blocked (tests/torch_blocker on
PYTHONPATH, inherited by every subprocess), and by `make test-device` in `.venv-device`, where
the package is installed without torch (`pip install -e '.[onnxruntime]'`). ARTIFACT_DIR holds
ONNX artifacts and the reference outputs written by `edgesam-export onnx`.

Checks: torch/cv2/PIL are really absent; `Predictor` over the ONNX files, end to end from a
uint8 image, reproduces the reference outputs; `edgesam-bench --backend onnx ARTIFACT_DIR`
runs with a passing parity verdict against the reference outputs, its everything stage
(segment everything at two batch sizes) included, and writes its report with the everything
overlay; `edgesam-export parity ARTIFACT_DIR` passes against the reference outputs; asking for
the PyTorch reference or backend says it is not installed (exit 6). Exits non-zero on any failure.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _absent(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        return
    raise AssertionError(f"{module} is importable: this is not a torch-free device environment")


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", f"edgesam_export.cli.{module}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    print(f"$ edgesam-{module} {' '.join(args)} -> exit {proc.returncode}", flush=True)
    return proc


def check_predictor(artifacts: Path) -> None:
    from edgesam_export.device.backends import open_session
    from edgesam_export.device.predictor import Predictor
    from edgesam_export.device.reference_outputs import find_reference_outputs

    encoder = open_session(next(artifacts.glob("*_encoder.onnx")))
    decoder = open_session(next(artifacts.glob("*_decoder.onnx")))
    outputs = find_reference_outputs(artifacts, encoder.metadata)
    predictor = Predictor(encoder, decoder)
    image = outputs.image
    h, w = image.shape[:2]
    predictor.set_image(image)
    # The prompt case "point + padding" is the point (0.25, 0.3) of the resized frame plus
    # SAM's padding point: what Predictor sends for this click in original pixels.
    out = predictor.predict(points=[[0.25 * w, 0.3 * h]], labels=[1], num_multimask_outputs=4)
    case = next(c for c in outputs.cases if c.case.name == "point + padding")
    assert out.masks.shape == (4, h, w) and out.masks.dtype == np.bool_, out.masks.shape
    sub = out.low_res_logits[..., :: outputs.stride, :: outputs.stride]
    err = float(np.abs(sub - case.masks_sub[0]).max())
    assert err < 2e-2, f"predictor low-res logits differ from the reference outputs by {err}"
    assert np.allclose(out.scores, case.scores[0], atol=2e-3), (out.scores, case.scores[0])
    agree = float(((out.low_res_logits > 0) == case.masks_bits[0]).mean())
    assert agree > 0.999, f"only {agree:.4%} of mask pixels agree with the reference outputs"
    boxes = np.array([[10, 20, 200, 220], [300, 50, 600, 300]])
    batch = predictor.predict(box=boxes)
    assert batch.masks.shape == (2, 1, h, w) and batch.scores.shape == (2, 1)
    print(f"predictor: end to end OK (max low-res logit error vs the reference outputs {err:.1e})")


def check_cli(artifacts: Path, work: Path) -> None:
    report = work / "bench_report"
    proc = _cli(
        "bench", "--backend", "onnx", str(artifacts), "--points", "1", "--box-batch", "2",
        "--iterations", "1", "--warmup", "0", "--json", "-", "--report", str(report),
        "--everything-points", "2", "--everything-batches", "2,4",
        "--everything-iou-thresh", "0", "--everything-stability-thresh", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    (onnx,) = payload["backends"]
    assert onnx["name"] == "onnx" and onnx["available"], onnx
    assert onnx["parity"]["passed"], onnx
    assert onnx["parity"]["reference"].startswith("reference outputs"), onnx
    stages = {t["name"] for t in payload["timings"]}
    assert {"encoder", "click (decoder + postprocess)"} <= stages, stages
    runs = payload["everything"]["runs"]
    assert [(r["backend"], r["points_per_batch"], r["status"]) for r in runs] == [
        ("onnx", 2, "ok"),
        ("onnx", 4, "ok"),
    ], runs
    assert [r["decoder_calls"] for r in runs] == [2, 1] and all(r["masks"] > 0 for r in runs)
    assert (report / "index.html").is_file()
    assert "everything_onnx.png" in (report / "index.html").read_text()
    assert (report / "everything_onnx.png").is_file()
    print("edgesam-bench --backend onnx (everything stage included): OK")

    proc = _cli("export", "parity", str(artifacts), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    parity = json.loads(proc.stdout)
    assert parity["passed"], parity
    assert parity["inputs"]["reference"].startswith("reference outputs"), parity
    print("edgesam-export parity (reference outputs): OK")

    proc = _cli("export", "parity", str(artifacts), "--reference", "torch")
    assert proc.returncode == 6 and "torch" in proc.stderr, (proc.returncode, proc.stderr)
    proc = _cli("bench", "--backend", "torch", str(artifacts))
    assert proc.returncode == 6 and "not installed" in proc.stderr, (proc.returncode, proc.stderr)
    print("torch asked for without torch: exit 6 OK")


def main() -> None:
    artifacts = Path(sys.argv[1])
    for module in ("torch", "cv2", "PIL"):
        _absent(module)
    check_predictor(artifacts)
    with tempfile.TemporaryDirectory() as tmp:
        check_cli(artifacts, Path(tmp))
    assert "torch" not in sys.modules
    print("device check: all OK")


if __name__ == "__main__":
    main()

"""The PyTorch columns on a CUDA GPU (`edgesam-bench --device cuda [--cuda-graphs]`).

The GPU tests skip where torch sees no CUDA device (this project's CI machines); they ran on the
device tool's H200 (docs/device.md). The TF32 guard is checked everywhere: its flags are plain
globals.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgesam_export.cli.bench import app
from edgesam_export.device.backends import tolerance_row
from edgesam_export.host.reference import ieee_float32

runner = CliRunner()
TINY = ["--points", "1", "--box-batch", "2", "--iters", "2", "--warmup", "1"]
TINY += ["--everything-points", "0"]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here (the device tool runs these)"
)


@pytest.mark.parametrize("default", [True, False])
def test_ieee_float32_turns_tf32_off_and_restores_the_flags(default: bool) -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = default
    try:
        with ieee_float32():
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (default, default)
        with pytest.raises(RuntimeError), ieee_float32():
            raise RuntimeError("restored on errors too")
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (default, default)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_cuda_columns_pass_their_precision_rows(precision: str, graphs: bool) -> None:
    """Both PyTorch columns on the GPU, judged against PyTorch as loaded on the CPU in float32
    with the torch backend's row for the precision. fp32 under PyTorch's default TF32
    convolutions failed its row (embeddings 5.2e-2 against 4e-3): `ieee_float32`."""
    args = ["--backend", "torch", "--device", "cuda", "--precision", precision, *TINY]
    result = runner.invoke(app, [*args, *(["--cuda-graphs"] if graphs else []), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    columns = {b["name"]: b for b in report["backends"]}
    assert set(columns) == {"torch", "torch-opt"}
    row = tolerance_row("torch", precision, "EdgeSAM")
    assert not row.estimate, "a GPU verdict on an estimated row proves nothing"
    for column in columns.values():
        assert column["device"] == "cuda" and column["precision"] == precision
        assert column["parity"]["passed"] is True, column["parity"]
        assert column["mask_iou"]["worst"] >= row.min_mask_iou


@needs_cuda
def test_cuda_graph_replays_compute_what_the_eager_session_computes() -> None:
    """The captured graph (copied-in feeds, replay) gives the eager session's outputs, for a
    second input of the same shape too (the replay reads the new feeds)."""
    from edgesam_export.host.models import load_model
    from edgesam_export.host.reference import CudaGraphSession, torch_sessions

    loaded = load_model(None, model="edge_sam", seed=0, synthetic="calibrated")
    enc, _ = torch_sessions(loaded, optimized=True, device="cuda")
    graphed = CudaGraphSession(enc)
    rng = np.random.default_rng(0)
    name = enc.inputs[0].name
    for _ in range(2):
        feeds = {name: rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32)}
        eager, replayed = enc.run(feeds), graphed.run(feeds)
        for key in eager:
            np.testing.assert_allclose(replayed[key], eager[key], rtol=0, atol=1e-4)

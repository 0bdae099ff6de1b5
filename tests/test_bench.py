"""`edgesam-bench` and the timing helpers of `device.bench` (tiny, fast runs only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesam_export.cli.bench import app
from edgesam_export.device.backends import all_backends
from edgesam_export.device.bench import (
    BOX_SINGLE_STAGE,
    CLICK_STAGE,
    IMAGE_STAGE,
    Timing,
    box_batch_stage,
    box_set_ratio,
    machine_info,
    time_call,
    time_interleaved,
)
from edgesam_export.device.errors import ExitCode
from edgesam_export.device.parity import make_test_image
from edgesam_export.device.png import decode_png

runner = CliRunner()
TINY_BASE = ["--points", "1", "--box-batch", "2", "--iters", "1", "--warmup", "0"]
TINY = [*TINY_BASE, "--everything-points", "0"]  # the everything stage: one test below
# 2x2 grid points in one decoder call; no quality filters (synthetic weights score low). Several
# batch sizes: tests/device_check.py (onnx) and tests/test_bench_everything.py.
TINY_EVERYTHING = ["--everything-points", "2", "--everything-batches", "4"]
TINY_EVERYTHING += ["--everything-iou-thresh", "0", "--everything-stability-thresh", "0"]
TINY_STAGES = [
    "encoder",
    "decoder N=1",
    BOX_SINGLE_STAGE,
    box_batch_stage(2),
    CLICK_STAGE,
    IMAGE_STAGE,
]
STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "n", "warmup")


def _check_timings(report: dict, backends: list[str]) -> None:
    names = [t["name"] for t in report["timings"]]
    assert names == [s for s in TINY_STAGES for _ in backends]  # stage by stage, interleaved
    for t in report["timings"]:
        assert t["backend"] in backends and t["n"] == 1 and t["warmup"] == 0
        assert all(k in t for k in STATS) and t["p50_ms"] > 0
        assert t["throughput_per_s"] == pytest.approx(1e3 / t["mean_ms"])
    assert report["machine"]["cores"] >= 1


def test_help() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    for option in (
        "--backend", "--points", "--box-batch", "--iterations", "--warmup", "--threads",
        "--model", "--device", "--cuda-graphs", "--precision", "--json", "--report",
        "--everything-points", "--everything-batches",
    ):  # fmt: skip
        assert option in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout and "<bool>" not in result.stdout


@pytest.mark.extended
def test_tiny_torch_run_has_both_torch_columns(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["--backend", "torch", *TINY, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.stderr.lower()  # the untrained-weights note
    assert "per-set ratio" in result.stdout
    report = json.loads(out.read_text())
    assert report["backend"] == "torch" and report["settings"]["box_batch"] == 2
    _check_timings(report, ["torch", "torch-opt"])
    by_name = {b["name"]: b for b in report["backends"]}
    assert by_name["torch"]["parity"]["reference"] == "is the reference"
    # the export's graph rewrites, judged against torch as loaded
    assert by_name["torch-opt"]["parity"]["passed"] is True
    assert by_name["torch-opt"]["peak_rss_mb"] > 0
    assert set(report["ratios"]) == {"torch", "torch-opt"}
    assert report["settings"]["everything_points"] == 0 and "everything" not in report


@pytest.mark.slow
def test_tiny_onnx_run_on_artifacts(default_artifacts: Path) -> None:
    result = runner.invoke(
        app, ["--backend", "onnx", "--artifacts", str(default_artifacts), *TINY, "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # with --json -, stdout holds the JSON only
    _check_timings(report, ["onnx"])
    (onnx,) = report["backends"]
    assert onnx["parity"]["passed"] and onnx["parity"]["reference"].startswith("torch")
    assert "Latency" in result.stderr  # the table moved to stderr


def test_all_backends_in_one_table_with_verdicts_and_report(
    default_artifacts: Path, tmp_path: Path
) -> None:
    from browser import assert_not_blank, screenshot

    report_dir = tmp_path / "report"
    result = runner.invoke(
        app,
        ["--backend", "all", str(default_artifacts), *TINY_BASE, *TINY_EVERYTHING, "--json",
         "-", "--report", str(report_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _check_timings(report, ["torch", "torch-opt", "onnx"])
    by_name = {b["name"]: b for b in report["backends"]}
    artifact_backends = [b for b in all_backends() if b.suffixes]  # the registry's, in order
    assert list(by_name) == ["torch", "torch-opt", *(b.name for b in artifact_backends)]
    for name in ("torch-opt", "onnx"):
        assert by_name[name]["available"] and by_name[name]["parity"]["passed"] is True
        assert by_name[name]["rss_added_mb"] is not None
    for b in artifact_backends[1:]:  # only ONNX artifacts in the folder, or not installed
        reason = by_name[b.name]["reason"]
        assert not by_name[b.name]["available"]
        assert b.suffixes[0] in reason or f"{b.requires} does not import" in reason, reason
    for word in ("Backends", "Latency", "p99"):
        assert word in result.stderr  # both tables (at 80 columns cells wrap: titles only)
    page = report_dir / "index.html"
    html = page.read_text()
    assert "<svg" in html and "torch-opt" in html and "unavailable" in html

    # the everything stage: every live backend, in the tables and the page
    every = report["everything"]
    assert every["points"] == 4 and every["batches"] == [4]
    runs = {(r["backend"], r["points_per_batch"]): r for r in every["runs"]}
    assert list(runs) == [(b, 4) for b in ("torch", "torch-opt", "onnx")]
    for (_, batch), r in runs.items():
        assert r["status"] == "ok" and not r["fallback"], r
        assert r["decoder_batch_sizes"] == [batch] * (4 // batch)
        assert r["image_ms"]["p50_ms"] > r["decoder_ms"] > 0 and r["image_ms"]["n"] == 1
        assert r["decoder_call_ms"] == pytest.approx(r["decoder_ms"] / (4 // batch), abs=0.01)
        assert r["masks"] > 0  # no quality filters: some masks survive box NMS
    assert "Segment everything" in result.stderr
    assert "Segment everything (2x2 points)" in html
    for backend in ("torch", "torch-opt", "onnx"):
        r = runs[(backend, 4)]
        assert f"{backend}: {r['masks']} masks, B=4" in html
        overlay = decode_png(
            (report_dir / f"everything_{backend.replace('-', '_')}.png").read_bytes()
        )
        assert overlay.shape == (480, 640, 3) and (overlay != make_test_image()).any()
    assert_not_blank(screenshot(page, 1100, 1500), 1100, 1500)


@pytest.mark.parametrize(("backend", "needs"), [("trt", "tensorrt"), ("coreml", "coremltools")])
def test_unavailable_backends_exit_6(backend: str, needs: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, needs, None)  # not importable, even where installed
    result = runner.invoke(app, ["--backend", backend])
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE == 6
    assert needs in result.stderr


def test_cuda_without_a_gpu_exits_6() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error path does not apply")
    result = runner.invoke(app, ["--backend", "torch", "--device", "cuda", *TINY])
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE, result.output
    assert "CUDA" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "onnx", "--points", "1,x"],
        ["--backend", "onnx", "--points", "0"],
        ["--backend", "onnx", "--artifacts", "/nonexistent/dir"],
        ["--backend", "onnx", "--upsample", "nearest"],
        ["--backend", "onnx", "--iterations", "0"],
        ["--backend", "fast"],
        ["--backend", "torch", "--cuda-graphs"],
        ["--backend", "onnx", "--everything-batches", "16,0"],
        ["--backend", "onnx", "--everything-batches", "x"],
        ["--backend", "onnx", "--everything-points", "-1"],
        ["--backend", "onnx", "--everything-iou-thresh", "1.5"],
        ["--backend", "onnx", "--model", "sam_vit_z"],
        ["--backend", "onnx", "--points", "1", "CKPT", "--seed", "1"],
        ["--backend", "onnx", "ARTIFACT_DIR", "--model", "sam_vit_b"],
        ["--backend", "onnx", "ARTIFACT_DIR", "--seed", "1"],
        ["--backend", "onnx", "--precision", "int4"],
        ["--backend", "onnx", "--precision", "fp32,,x"],
    ],
)
def test_bad_options_exit_3(args: list[str], tmp_path: Path) -> None:
    """One error style (fault 10): one line, exit 3, no pydantic text, no usage block. Flags
    that would be ignored (--seed with CKPT, --model or --seed with ARTIFACT_DIR: the artifacts
    say) are refused the same way, before anything loads."""
    ckpt = tmp_path / "edge_sam.pth"
    ckpt.write_bytes(b"never read")
    paths = {"CKPT": str(ckpt), "ARTIFACT_DIR": str(tmp_path)}
    result = runner.invoke(app, [paths.get(a, a) for a in args])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for word in ("pydantic", "http", "Value error", "Usage:"):
        assert word not in result.output


def test_missing_backend_is_usage() -> None:
    assert runner.invoke(app, []).exit_code == ExitCode.USAGE


def test_time_call_sample_count() -> None:
    calls = []
    samples = time_call(lambda: calls.append(1), warmup=2, iters=5)
    assert len(samples) == 5 and len(calls) == 7
    assert all(s >= 0 for s in samples)


def test_time_interleaved_alternates() -> None:
    order: list[str] = []
    samples = time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, iters=3
    )
    # warm-up a b, then rounds a b | b a | a b: neither side always goes first
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}


def test_time_interleaved_blocks_and_settle() -> None:
    order: list[str] = []
    samples = time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        warmup=0,
        iters=2,
        block=3,
        settle_s=1e-9,
    )
    # each turn: at least one untimed settling call, then 3 timed calls
    assert order[:4] == ["a"] * 4 and order.count("a") >= 8 and order.count("b") >= 8
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6}


def test_x_torch_divides_like_by_like() -> None:
    """Fault 13: with `--device cuda` the "x torch" column divided GPU PyTorch times by CPU
    onnxruntime times. A ratio is now given only between columns on the same device."""
    from edgesam_export.device.benchmark import x_torch

    timings = [
        Timing("encoder", "torch", (2.0,)),
        Timing("encoder", "torch-opt", (1.0,)),
        Timing("encoder", "onnx", (10.0,)),
        Timing("encoder", "tensorrt", (0.5,)),
    ]
    devices = {"torch": "cuda", "torch-opt": "cuda", "onnx": "cpu", "tensorrt": "cuda"}
    ratios = x_torch(timings, devices)
    assert ratios == {("encoder", "torch-opt"): 2.0, ("encoder", "tensorrt"): 4.0}
    on_cpu = x_torch(timings, {**devices, "torch": "cpu"})
    assert on_cpu == {("encoder", "onnx"): pytest.approx(0.2)}


@pytest.mark.extended
def test_cuda_torch_columns_get_no_ratio_against_cpu_onnx(
    default_artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 13 through the command: PyTorch columns that say they ran on CUDA (CPU sessions
    labelled cuda: this machine has no GPU) next to CPU onnxruntime. The onnx rows get no
    "x torch" ratio, torch-opt (same device as torch) gets one; the JSON says the rule."""
    from edgesam_export.host import benchmark, reference

    original = reference.torch_sessions

    def on_cuda(loaded, *, optimized, device="cpu", precision="fp32"):
        sessions = original(loaded, optimized=optimized, device="cpu", precision=precision)
        for session in sessions:
            session.compute_device = "cuda"
        return sessions

    monkeypatch.setattr(benchmark, "require_cuda", lambda: None)
    monkeypatch.setattr(reference, "torch_sessions", on_cuda)
    result = runner.invoke(
        app, ["--backend", "all", str(default_artifacts), "--device", "cuda", *TINY, "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    devices = {b["name"]: b["device"] for b in report["backends"] if b["available"]}
    assert devices == {"torch": "cuda", "torch-opt": "cuda", "onnx": "cpu"}
    assert "same compute device" in report["settings"]["x_torch"]
    by_backend: dict[str, list] = {}
    for t in report["timings"]:
        by_backend.setdefault(t["backend"], []).append(t["x_torch"])
    assert all(r is None for r in by_backend["onnx"]) and all(
        r is None for r in by_backend["torch"]
    )
    assert all(isinstance(r, float) and r > 0 for r in by_backend["torch-opt"])
    assert "same device" in result.stderr  # the table's caption says the rule


def test_box_set_ratio() -> None:
    timings = [
        Timing(BOX_SINGLE_STAGE, "onnx", (10.0,)),
        Timing(box_batch_stage(8), "onnx", (40.0,)),
        Timing(BOX_SINGLE_STAGE, "torch", (10.0,)),
    ]
    assert box_set_ratio(timings, 8, backend="onnx") == pytest.approx(0.5)
    assert box_set_ratio(timings, 8, backend="torch") is None  # no batched stage
    assert box_set_ratio(timings, 1) is None


def test_machine_info() -> None:
    info = machine_info()
    assert isinstance(info["cores"], int) and info["cores"] >= 1
    assert info["python"].count(".") == 2
    assert info["versions"]["numpy"] and info["versions"]["torch"]
    assert info["cpu"]
    json.dumps(info)  # serialisable as is


# --------------------------------------------------------------------------------------
# precision columns: accuracy beside speed
# --------------------------------------------------------------------------------------


class _FakeSession:
    def __init__(self, outputs: dict, metadata: dict | None = None) -> None:
        from types import SimpleNamespace

        self.outputs, self.metadata, self.calls = outputs, metadata or {}, []
        names = ("image_embeddings", "point_coords", "point_labels")
        self.inputs = [SimpleNamespace(name=n) for n in names]

    def accepts(self, feeds) -> str | None:
        return None

    def run(self, feeds):
        self.calls.append(feeds)
        return self.outputs


def test_mask_iou_column_is_end_to_end_against_the_reference() -> None:
    """The accuracy column: the column's own encoder feeds its decoder (end to end), and the
    IoU is of the reference's top-scoring token (here token 1) over every prompt set."""
    from types import SimpleNamespace

    import numpy as np

    from edgesam_export.device import processing as P
    from edgesam_export.device.backends import OpenedBackend
    from edgesam_export.device.benchmark import end_to_end_mask_iou
    from edgesam_export.device.judge import Expected
    from edgesam_export.device.parity import PromptCase

    ref_bits = np.zeros((2, 4, 8, 8), bool)
    ref_bits[:, 1, :4] = True  # the top token's mask: 32 pixels per prompt set
    scores = np.array([[0.1, 0.9, 0.2, 0.3]] * 2, np.float32)
    cand = np.where(ref_bits, 1.0, -1.0).astype(np.float32)
    cand[1, 1, 4, :] = 1.0  # set 1: 8 extra pixels -> IoU 32/40
    cand[0, 0] = 5.0  # a token the reference does not pick: not judged
    case = PromptCase("two sets", np.zeros((2, 1, 2), np.float32), np.ones((2, 1), np.float32))
    reference = SimpleNamespace(
        image=make_test_image(48, 64),
        preprocessing=P.Preprocessing.from_metadata({"img_size": "64"}),
        prompts=[case, case],
        expected=lambda index, stab: Expected(scores, ref_bits.astype(np.float32), ref_bits, None),
    )
    emb = np.full((1, 256, 64, 64), 3.0, np.float32)
    encoder = _FakeSession({"image_embeddings": emb})
    decoder = _FakeSession({"masks": cand})
    acc = end_to_end_mask_iou(reference, OpenedBackend("x", encoder, decoder))
    assert acc is not None and acc.count == 4
    assert acc.worst_iou == pytest.approx(0.8) and acc.mean_iou == pytest.approx(0.9)
    assert all(call["image_embeddings"] is emb for call in decoder.calls)  # its own encoder
    nan = _FakeSession({"masks": np.full_like(cand, np.nan)})
    assert end_to_end_mask_iou(reference, OpenedBackend("x", encoder, nan)).worst_iou == 0.0


@pytest.fixture(scope="module")
def precision_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of calibrated synthetic EdgeSAM graphs at fp32, fp16 and int8 (the same
    weights, so the fp32 export's reference outputs judge all three), each through the one
    export path; int8 with the bar at 0: every block quantized, no search (bounded time)."""
    import shutil

    from edgesam_export.host.config import ModelOptions, OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts

    model = ModelOptions(synthetic="calibrated")
    root = tmp_path_factory.mktemp("precisions")
    int8 = {"quantize": "int8", "accuracy_target": "miou=0,worst=0"}
    int8 |= {"calibration_images": 2, "heldout_images": 1}
    for name, extra in (("fp32", {}), ("fp16", {"precision": "fp16"}), ("int8", int8)):
        export_artifacts(model, "onnx", OnnxOptions(output=root / name, **extra))
    for name in ("fp16", "int8"):
        for graph in (root / name).glob("*.onnx"):
            shutil.copy2(graph, root / "fp32" / graph.name)
    return root / "fp32"


@pytest.mark.extended
def test_precision_columns_show_mask_iou_beside_speed_without_torch(
    precision_folder: Path,
) -> None:
    """`edgesam-bench --backend onnx --precision fp32,fp16,int8 DIR` on a device (torch, cv2
    and PIL blocked): one column per precision, each timed and judged against the reference
    outputs shipped in DIR, with its end-to-end mask IoU and size in the table and the JSON."""
    import os
    import subprocess

    tests = Path(__file__).parent
    env = {**os.environ, "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join([str(tests / "torch_blocker"), str(tests.parent)])
    code = "from edgesam_export.cli.bench import main; main()"
    args = ["--backend", "onnx", "--precision", "fp32,fp16,int8", str(precision_folder)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, *TINY, "--json", "-"],
        capture_output=True,
        text=True,
        env=env,
    )
    report = json.loads(proc.stdout)
    columns = {b["name"]: b for b in report["backends"]}
    assert list(columns) == ["onnx fp32", "onnx fp16", "onnx int8"], proc.stderr
    assert report["settings"]["precisions"] == ["fp32", "fp16", "int8"]
    assert report["reference"].startswith("reference outputs")  # no torch here
    _check_timings(report, list(columns))
    for name, col in columns.items():
        assert col["available"] and col["precision"] == name.split()[1]
        assert col["size_bytes"] == sum(
            (precision_folder / a).stat().st_size for a in col["artifacts"]
        )
        iou = col["mask_iou"]
        assert iou["masks"] > 0 and 0.0 <= iou["worst"] <= iou["mean"] <= 1.0
        print(f"{name}: {col['size_bytes'] / 1e6:.1f} MB, mask IoU mean {iou['mean']:.4f}"
              f" worst {iou['worst']:.4f}, parity {col['parity']['passed']}")  # fmt: skip
    fp32, fp16, int8 = (columns[f"onnx {p}"] for p in ("fp32", "fp16", "int8"))
    assert fp32["mask_iou"]["worst"] >= 0.99  # the graphs the reference outputs came from
    assert int8["size_bytes"] < fp16["size_bytes"] < fp32["size_bytes"]
    # the exit code follows the verdicts: 4 exactly when a column failed parity
    failed = [n for n, c in columns.items() if not c["parity"]["passed"]]
    assert proc.returncode == (ExitCode.PARITY_FAILED if failed else 0), proc.stderr
    assert "Accuracy beside speed" in proc.stderr and "IoU worst" in proc.stderr

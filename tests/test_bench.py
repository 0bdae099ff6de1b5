"""`edgesam-bench` and the timing helpers of `edgesam_export.bench` (tiny, fast runs only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesam_export.bench import (
    BOX_SINGLE_STAGE,
    Timing,
    box_batch_stage,
    box_set_ratio,
    machine_info,
    time_call,
    time_interleaved,
)
from edgesam_export.cli.bench import app
from edgesam_export.errors import ExitCode

runner = CliRunner()
TINY = ["--points", "1", "--box-batch", "2", "--iters", "1", "--warmup", "0"]
TINY_STAGES = ["encoder", "decoder N=1", BOX_SINGLE_STAGE, box_batch_stage(2)]


def _check_report(path: Path, backend: str) -> dict:
    report = json.loads(path.read_text())
    assert report["backend"] == backend
    assert [t["name"] for t in report["timings"]] == TINY_STAGES
    for t in report["timings"]:
        assert t["backend"] == backend and t["n"] == 1 and t["p50_ms"] > 0
    assert report["ratios"]["box_batch_per_set"] > 0
    assert report["machine"]["cores"] >= 1
    return report


def test_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--backend", "--points", "--box-batch", "--artifacts", "--json"):
        assert option in result.stdout


def test_tiny_torch_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["--backend", "torch", *TINY, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.stderr.lower()  # the untrained-weights note
    assert "per-set ratio" in result.stdout
    report = _check_report(out, "torch")
    assert report["settings"]["box_batch"] == 2


@pytest.mark.slow
def test_tiny_onnx_run_on_artifacts(default_artifacts: Path) -> None:
    result = runner.invoke(
        app, ["--backend", "onnx", "--artifacts", str(default_artifacts), *TINY, "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # with --json -, stdout holds the JSON only
    assert [t["name"] for t in report["timings"]] == TINY_STAGES
    assert all(t["backend"] == "onnx" and t["p50_ms"] > 0 for t in report["timings"])
    assert "Latency" in result.stderr  # the table moved to stderr


@pytest.mark.parametrize(("backend", "needs"), [("trt", "tensorrt"), ("coreml", "coremltools")])
def test_unavailable_backends_exit_6(backend: str, needs: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, needs, None)  # not importable, even where installed
    result = runner.invoke(app, ["--backend", backend])
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE == 6
    assert needs in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "onnx", "--points", "1,x"],
        ["--backend", "onnx", "--points", "0"],
        ["--backend", "torch", "--artifacts", "."],
        ["--backend", "onnx", "--artifacts", "/nonexistent/dir"],
    ],
)
def test_bad_options_exit_3(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output


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
    assert order == ["a", "b"] * 4
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

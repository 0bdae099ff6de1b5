"""The one export-and-publish path (`device/publish.py`) and the file faults of issue 16.

Tiny fakes stand in for exports: what is tested is how files reach a folder (checked, locked,
staged, published whole or not at all, leftovers cleaned), not what an exporter computes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device import manifest as mf
from edgesam_export.device import publish
from edgesam_export.device.errors import InputError


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_line(err: str) -> str:
    return " ".join(err.split())


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the refusals below must come before any model work."""
    import edgesam_export.host.models as models

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(models, "load_model", forbidden)


def _stage_publication(stage: publish.Stage, files: dict[str, bytes], status: str) -> None:
    for name, data in files.items():
        (stage.path / name).write_bytes(data)
    mf.write(stage.path, mf.seal({"status": status, "files": mf.scan_files(stage.path)}))


# --- fault 1: --json and -o FILE never delete a folder -----------------------------------------


def test_json_refuses_a_folder_and_keeps_it(tmp_path: Path) -> None:
    """`models --json d` deleted d and everything in it (atomic_path removed the folder)."""
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "f").write_text("1")
    code, _, err = _cli("models", "--json", str(tmp_path / "d"))
    assert code == 3, err
    assert "is a folder" in _one_line(err)
    assert (tmp_path / "d" / "x" / "f").read_text() == "1"


def test_json_dot_keeps_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    """`--json .` emptied the working directory."""
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli("models", "--json", ".")
    assert code == 3, err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_recipe_schema_output_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    code, _, err = _cli("recipe", "schema", "-o", str(tmp_path / "d"))
    assert code == 3
    assert "is a folder" in err and "Traceback" not in err
    assert (tmp_path / "d" / "f").read_text() == "1"


# --- fault 5: an output that cannot be written is refused first, in one line -------------------


def test_recipe_schema_on_an_unwritable_path_is_one_line() -> None:
    """It printed a traceback (no `guarded`, OSError from mkstemp)."""
    code, out, err = _cli("recipe", "schema", "-o", "/proc/edgesam-export-test/schema.json")
    assert code == 3
    assert "Traceback" not in err + out
    assert err.strip().startswith("error: cannot write") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_unwritable_output_is_refused_before_the_model_loads(
    tmp_path: Path, no_model_load: None, where: str
) -> None:
    """It exited 1 ("internal error ... please report it") after loading and exporting."""
    (tmp_path / "file").write_text("x")
    output = tmp_path / "file" / "sub" if where == "under-a-file" else Path("/proc/edgesam-test")
    code, _, err = _cli("onnx", "--decoder", "-o", str(output))
    assert code == 3, err
    text = _one_line(err)
    assert ("is a file" in text) if where == "under-a-file" else ("cannot write" in text)
    assert "internal error" not in text and "loading" not in text


# --- fault 6: --json is written on early errors ------------------------------------------------


def test_json_is_written_on_early_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntargets: [{name: t, kind: nope}]\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    runs = {
        "r.json": ("recipe", "check", str(bad)),
        "j.json": ("onnx", str(empty), "-o", str(tmp_path / "o")),
        "v.json": ("verify", str(tmp_path / "missing")),
    }
    for name, args in runs.items():
        code, _, err = _cli(*args, "--json", str(tmp_path / name))
        assert code == 3, err
        report = json.loads((tmp_path / name).read_text())
        assert report["ok"] is False and report["exit_code"] == 3
        assert report["error"] and _one_line(report["error"]) in _one_line(err)


# --- fault 4: two runs never write one folder together -----------------------------------------


def test_a_locked_output_is_refused_before_the_model_loads(
    tmp_path: Path, no_model_load: None
) -> None:
    """Two exports into one --output interleaved: the manifest of one described the other's
    bytes. Now the second one is refused (or waits, --wait) while the first holds the lock."""
    out = tmp_path / "out"
    with publish.locked(out):
        code, _, err = _cli("onnx", "--decoder", "-o", str(out))
        assert sorted(p.name for p in out.iterdir()) == [mf.LOCK_NAME]  # nothing else written
    assert code == 3
    text = _one_line(err)
    assert "being written by another edgesam-export run" in text and "--wait" in text
    assert f"(pid {os.getpid()})" in text
    assert not out.exists()  # the lock goes with its run, and the folder it created if empty


def test_a_second_run_waits_for_the_lock(tmp_path: Path) -> None:
    holding = threading.Event()
    said: list[str] = []

    def hold() -> None:
        with publish.locked(tmp_path):
            holding.set()
            time.sleep(0.6)
            holding.clear()  # still inside: the lock is released after this

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    with pytest.raises(InputError, match="another edgesam-export run"):
        with publish.locked(tmp_path, wait=0):
            pass
    with publish.locked(tmp_path, wait=30, progress=said.append):
        assert not holding.is_set()  # never both at once
    holder.join()
    assert said and said[0].startswith("waiting up to 30 s")


# --- fault 3: a failed run never replaces the last good publication ----------------------------


def test_failed_run_keeps_the_good_publication(tmp_path: Path) -> None:
    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        _stage_publication(stage, {"a.onnx": b"good"}, "passed")
        assert stage.publish(["a.onnx"])
    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        _stage_publication(stage, {"a.onnx": b"bad", "b.onnx": b"new"}, "failed")
        assert stage.publish(["a.onnx", "b.onnx"], failed=True) is False
    assert (tmp_path / "a.onnx").read_bytes() == b"good" and not (tmp_path / "b.onnx").exists()
    assert mf.read(tmp_path)["status"] == "passed" and mf.verify(tmp_path).ok
    assert {p.name for p in tmp_path.iterdir()} == {"a.onnx", mf.MANIFEST_NAME}


def test_failed_run_is_published_where_nothing_good_stood(tmp_path: Path) -> None:
    """With no good build to keep, the failure is published: its manifest says what failed."""
    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        _stage_publication(stage, {"a.onnx": b"bad"}, "failed")
        assert stage.publish(["a.onnx"], failed=True)
    assert mf.read(tmp_path)["status"] == "failed" and mf.verify(tmp_path).ok


def test_publication_rehashes_the_whole_folder(tmp_path: Path) -> None:
    (tmp_path / "other.onnx").write_bytes(b"an earlier export")
    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        _stage_publication(stage, {"a.onnx": b"a"}, "passed")
        stage.publish(["a.onnx"])
    assert set(mf.read(tmp_path)["files"]) == {"a.onnx", "other.onnx"}
    assert mf.verify(tmp_path).ok


def test_interrupted_publication_is_rolled_back_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between two renames: the next run puts the previous publication back whole."""
    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        _stage_publication(stage, {"a.onnx": b"old a", "b.onnx": b"old b"}, "passed")
        stage.publish(["a.onnx", "b.onnx"])
    real_replace = os.replace
    calls = []

    def dies_on_the_third_rename(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the kill: c.onnx is in, the old a.onnx set aside
        real_replace(src, dst)  # type: ignore[arg-type]

    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        new = {"a.onnx": b"new a", "b.onnx": b"new b", "c.onnx": b"c"}
        _stage_publication(stage, new, "passed")
        monkeypatch.setattr(os, "replace", dies_on_the_third_rename)
        with pytest.raises(KeyboardInterrupt):
            stage.publish(["c.onnx", "a.onnx", "b.onnx"])
        monkeypatch.setattr(os, "replace", real_replace)
    assert not mf.verify(tmp_path).ok  # half published: c.onnx is new, a.onnx is gone
    with publish.locked(tmp_path):
        pass
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"a.onnx", "b.onnx", mf.MANIFEST_NAME}
    assert (tmp_path / "a.onnx").read_bytes() == b"old a"
    assert mf.verify(tmp_path).ok


# --- fault 7: leftovers of killed runs are reported, then removed ------------------------------


def test_leftovers_are_reported_by_verify_and_removed_by_the_next_run(tmp_path: Path) -> None:
    """`.X.onnx.*.partial/` folders of interrupted exports stayed forever."""
    with publish.locked(tmp_path), publish.staging(tmp_path) as stage:
        _stage_publication(stage, {"a.onnx": b"a"}, "passed")
        stage.publish(["a.onnx"])
    partial = tmp_path / ".a.onnx.k2j3.partial"
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    (tmp_path / ".edgesam-export.staging-99999999-0").mkdir()
    problems = dict(mf.verify(tmp_path).problems)
    assert set(problems) == {".a.onnx.k2j3.partial", ".edgesam-export.staging-99999999-0"}
    assert all("leftover of an interrupted run" in p for p in problems.values())
    said: list[str] = []
    with publish.locked(tmp_path, progress=said.append):
        pass
    assert not partial.exists() and len(said) == 2
    assert mf.verify(tmp_path).ok


def test_swapped_out_folder_is_put_back_when_the_swap_was_cut(tmp_path: Path) -> None:
    """A build killed between its two renames leaves `.dec.old-*` and no `dec`."""
    old = tmp_path / ".dec.old-99999999-3"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    publish.clean_leftovers(tmp_path)
    assert (tmp_path / "dec" / "manifest.json").exists() and not old.exists()


# --- trt engine builds hold the same lock ------------------------------------------------------


def test_trt_engines_are_built_under_the_folder_lock(
    default_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trt` wrote engines into a folder another run could be writing; now it holds the
    folder's lock while it builds, checks and records them. TensorRT is faked (the build
    stops at the first engine): what is tested is the lock, not what TensorRT builds."""
    import shutil

    import edgesam_export.host.targets.tensorrt as trt_target
    from edgesam_export.device.errors import ExportFailedError

    folder = tmp_path / "onnx"
    shutil.copytree(default_artifacts, folder)
    locked_during_build: list[bool] = []

    def fake_build(plan: object, trt: object) -> Path:
        with pytest.raises(InputError, match="another edgesam-export run"):
            with publish.locked(folder):
                pass
        locked_during_build.append(True)
        raise ExportFailedError("fake TensorRT: stop after the lock was checked")

    class FakeTrt:
        __version__ = "10.0-fake"

    monkeypatch.setattr(trt_target, "require_tensorrt", lambda: FakeTrt)
    monkeypatch.setattr(trt_target, "build_engine", fake_build)
    code, _, err = _cli("trt", str(folder), "--decoder")
    assert code == 7, err
    assert locked_during_build == [True]
    assert not (folder / mf.LOCK_NAME).exists()  # released and removed with the run


def test_json_reports_stay_strict_json_when_a_metric_is_not_finite(tmp_path: Path) -> None:
    """A NaN output's error is inf/nan; `--json` wrote bare `Infinity`/`NaN`, which strict
    parsers (jq, JSON.parse) refuse. Non-finite numbers are written as strings."""
    import json as _json

    from edgesam_export.cli import emit_json

    def strict(text: str) -> object:
        def refuse(name: str) -> object:
            raise ValueError(f"non-standard JSON constant {name}")

        return _json.loads(text, parse_constant=refuse)

    payload = {"max_abs": float("inf"), "rows": [float("nan"), -float("inf"), 1.5]}
    emit_json(tmp_path / "r.json", payload)
    assert strict((tmp_path / "r.json").read_text()) == {
        "max_abs": "inf",
        "rows": ["nan", "-inf", 1.5],
    }

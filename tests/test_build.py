"""`edgesam-export build` / `verify`: manifest, reproducibility, verification, failures, kills.

Most builds use a decoder-only recipe (seconds); one test builds the CI recipe in full.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device import manifest as mf
from edgesam_export.host import build as B

ROOT = Path(__file__).resolve().parents[1]

DECODER_RECIPE = """\
name: dec
weights: {synthetic: untrained, seed: 0}
targets:
  - name: slim
    kind: onnx
    options: {graphs: [decoder]}
  - name: sim
    kind: onnx
    options: {graphs: [decoder], simplifier: onnxsim}
"""


def _recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def decoder_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(recipe file, published folder, --json report) of one decoder-only build."""
    base = tmp_path_factory.mktemp("decoder_build")
    recipe = _recipe(base, DECODER_RECIPE)
    code, _, err = _cli(
        "build", str(recipe), "-o", str(base / "out"), "--json", str(base / "r.json")
    )
    assert code == 0, err
    return recipe, base / "out" / "dec", json.loads((base / "r.json").read_text())


def test_build_publishes_artifacts_and_manifest(decoder_build) -> None:
    recipe, folder, report = decoder_build
    manifest = mf.read(folder)
    assert manifest["status"] == "passed" and report["exit_code"] == 0
    assert manifest["recipe"]["sha256"] == mf.file_sha256(recipe)
    assert manifest["recipe"]["resolved"]["targets"][1]["options"]["simplifier"] == "onnxsim"
    assert manifest["weights"] == {"kind": "synthetic-untrained", "seed": 0}
    assert {"torch", "onnx", "onnxruntime", "onnxslim", "onnxsim"} <= set(manifest["tools"])
    assert "coremltools" not in manifest["tools"]  # only what the targets use: an unrelated
    assert "tensorrt" not in manifest["tools"]  # install does not change the manifest hash
    assert [t["name"] for t in manifest["targets"]] == ["slim", "sim"]
    assert all(t["status"] == "passed" and t["exit_code"] == 0 for t in manifest["targets"])
    # each target's parity result says which runtime produced the numbers
    (built,) = report["recipes"]
    assert [t["parity"]["runtimes"] for t in built["targets"]] == [
        {"edge_sam_decoder.onnx": "onnx"}
    ] * 2
    for art in manifest["artifacts"]:
        rows = art["parity_checks"]
        assert rows and all(r["passed"] and r["max_abs"] <= r["tolerance"] for r in rows)
        assert {r["check"] for r in rows} == {"decoder.masks", "decoder.scores"}
        assert art["options"]["graphs"] == ["decoder"]
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    assert set(by_path) == {"slim/edge_sam_decoder.onnx", "sim/edge_sam_decoder.onnx"}
    references = {f"{t}/edge_sam_reference.npz" for t in ("slim", "sim")}
    assert set(manifest["files"]) == set(by_path) | references
    for path, art in by_path.items():
        assert art["sha256"] == mf.file_sha256(folder / path)
        assert art["size"] == (folder / path).stat().st_size
        assert art["parity"] == "passed" and art["precision"] == "fp32"
        assert [t["name"] for t in art["inputs"]] == [
            "image_embeddings",
            "point_coords",
            "point_labels",
        ]
        assert art["metadata"]["weights"] == "synthetic-untrained"
    # the manifest records which simplifier ran (and the artifact says so itself)
    assert by_path["slim/edge_sam_decoder.onnx"]["metadata"]["onnx.simplifier"] == "onnxslim"
    assert by_path["sim/edge_sam_decoder.onnx"]["metadata"]["onnx.simplifier"] == "onnxsim"
    assert set(manifest["build"]["seconds"]) == {"slim", "sim"}
    # nothing but the published folder is left in the build root
    assert sorted(p.name for p in folder.parent.iterdir()) == ["dec"]
    assert mf.verify(folder).ok


def _differences(a: object, b: object, where: str = "") -> list[str]:
    """Paths at which two JSON values differ (readable failures instead of two hashes)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k), b.get(k), f"{where}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_two_builds_are_byte_identical(decoder_build, tmp_path: Path) -> None:
    """Same recipe, another folder, two worker processes: same bytes, same manifest hash."""
    recipe, first, _ = decoder_build
    code, _, err = _cli("build", str(recipe), "-o", str(tmp_path), "--jobs", "2")
    assert code == 0, err
    second = tmp_path / "dec"
    a, b = mf.read(first), mf.read(second)
    assert _differences(mf.hashed_part(a), mf.hashed_part(b)) == []
    assert a["content_sha256"] == b["content_sha256"]
    assert a["files"] == b["files"]
    for rel in a["files"]:
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
    assert b["build"]["jobs"] == 2


@pytest.mark.parametrize("damage", ["flip", "missing", "extra", "manifest"])
def test_verify_names_the_damaged_file(decoder_build, tmp_path: Path, damage: str) -> None:
    _, published, _ = decoder_build
    folder = tmp_path / "dec"
    shutil.copytree(published, folder)
    assert _cli("verify", str(folder))[0] == 0
    target = folder / "sim" / "edge_sam_decoder.onnx"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[12345] ^= 0x10
        target.write_bytes(bytes(data))
        named = "sim/edge_sam_decoder.onnx"
    elif damage == "missing":
        target.unlink()
        named = "sim/edge_sam_decoder.onnx"
    elif damage == "extra":
        (folder / "slim" / "notes.txt").write_text("added later")
        named = "slim/notes.txt"
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["artifacts"][0]["parity_checks"][0]["max_abs"] = 0.0
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        named = "manifest.json"
    code, _, err = _cli("verify", str(tmp_path), "--json", str(tmp_path / "v.json"))
    assert code == 5
    assert named in err
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] is False
    assert [p["file"] for p in report["folders"][0]["problems"]] == [named]


def test_failed_targets_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A good target, one failing parity, one whose simplifier is not installed; with no good
    build there before, the failed build is published and its manifest says what failed."""
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # "not installed"
    recipe = _recipe(
        tmp_path,
        "name: dec\nweights: {synthetic: untrained}\ntargets:\n"
        "  - {name: plain, kind: onnx, options: {graphs: [decoder], simplifier: none}}\n"
        "  - name: tight\n    kind: onnx\n    parity: {tolerances: {decoder.masks: 1.0e-12}}\n"
        "    options: {graphs: [decoder]}\n"
        "  - {name: sim, kind: onnx, options: {graphs: [decoder], simplifier: onnxsim}}\n",
    )
    result = B.build([recipe], tmp_path / "out")
    assert result.exit_code == 4  # the first target that did not pass: tight
    folder = tmp_path / "out" / "dec"
    manifest = mf.read(folder)
    status = {t["name"]: t["status"] for t in manifest["targets"]}
    assert status == {"plain": "passed", "tight": "parity_failed", "sim": "unavailable"}
    assert manifest["status"] == "failed" and result.recipes[0].published
    sim = manifest["targets"][2]
    assert sim["exit_code"] == 6 and "pip install onnxsim" in sim["error"]
    assert sim["artifacts"] == [] and not (folder / "sim").exists()
    tight = manifest["targets"][1]
    assert "decoder.masks" in tight["error"] and tight["parity"]["passed"] is False
    assert {a["path"]: a["parity"] for a in manifest["artifacts"]} == {
        "plain/edge_sam_decoder.onnx": "passed",
        "tight/edge_sam_decoder.onnx": "failed",
    }
    # a device app picking artifacts gets only the one that passed
    assert [a["target"] for a in mf.select(manifest, graph="decoder")] == ["plain"]
    assert set(manifest["files"]) == {
        f"{t}/edge_sam_{f}" for t in ("plain", "tight") for f in ("decoder.onnx", "reference.npz")
    }
    assert mf.verify(folder).ok


def test_a_failed_build_never_replaces_the_good_one(decoder_build, tmp_path: Path) -> None:
    """`build -o B`, then the same with `--checkpoint empty.pth`: the good artifacts were
    deleted, a failed manifest published, and `verify B` said "ok (0 files)"."""
    recipe, published, _ = decoder_build
    shutil.copytree(published, tmp_path / "out" / "dec")
    before = mf.read(tmp_path / "out" / "dec")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    code, _, err = _cli(
        "build", str(recipe), "-o", str(tmp_path / "out"), "--checkpoint", str(empty),
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert code == 3, err
    text = " ".join(err.split())
    assert "not published" in text and "the previous build in" in text and "stands" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["recipes"][0]["published"] is False
    assert report["recipes"][0]["status"] == "failed"
    assert mf.read(tmp_path / "out" / "dec") == before
    code, out, err = _cli("verify", str(tmp_path / "out"))
    assert code == 0, err
    assert f"({len(before['files'])} files match the manifest; status passed)" in out


def test_build_ships_reference_outputs_checkable_without_torch(decoder_build) -> None:
    """`build` never wrote `<stem>_reference.npz`: CI builds could not be checked on a device."""
    _, published, _ = decoder_build
    for target in ("slim", "sim"):
        assert (published / target / "edge_sam_reference.npz").is_file()
        code, _, err = _cli("parity", "--reference", "outputs", str(published / target))
        assert code == 0, err


def test_only_builds_a_subset_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxsim", None)
    recipe = _recipe(tmp_path, DECODER_RECIPE)
    code, _, err = _cli("build", str(recipe), "-o", str(tmp_path / "out"), "--only", "sim")
    assert code == 6, err
    manifest = mf.read(tmp_path / "out" / "dec")
    assert manifest["partial"] is True
    assert [(t["name"], t["status"]) for t in manifest["targets"]] == [("sim", "unavailable")]
    assert manifest["artifacts"] == [] and manifest["files"] == {}


@pytest.mark.parametrize(
    ("args", "recipe_text", "message"),
    [
        (["--only", "nope"], DECODER_RECIPE, "--only nope: no such target; targets: sim, slim"),
        (["--checkpoint", "missing.pth"], DECODER_RECIPE, "checkpoint not found: missing.pth"),
        (
            [],
            DECODER_RECIPE.replace("seed: 0}", "seed: 0, require_checkpoint: true}"),
            "weights.require_checkpoint is true: pass --checkpoint",
        ),
        (
            ["--checkpoint", "{ckpt}"],
            DECODER_RECIPE.replace("seed: 0}", f"sha256: {'a' * 64}}}"),
            "but the recipe pins aaaa",
        ),
        (
            [],
            "name: dec\ntargets: [{name: t, kind: onnx, options: {opset: 9}}]\n",
            "targets[0].options.opset: Input should be greater than or equal to 11",
        ),
    ],
    ids=["unknown-only", "missing-checkpoint", "require-checkpoint", "sha256-pin", "schema"],
)
def test_bad_builds_fail_before_exporting(
    tmp_path: Path, args: list[str], recipe_text: str, message: str
) -> None:
    recipe = _recipe(tmp_path, recipe_text)
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"not the pinned checkpoint")
    args = [a.replace("{ckpt}", str(ckpt)) for a in args]
    code, _, err = _cli("build", str(recipe), "-o", str(tmp_path / "out"), *args)
    assert code == 3
    assert message in " ".join(err.split())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_killed_build_leaves_nothing_that_looks_finished(tmp_path: Path) -> None:
    """SIGKILL once the first artifact is written (mid-build, before parity and publishing)."""
    recipe = _recipe(tmp_path, DECODER_RECIPE)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesam_export.cli.export", "build", str(recipe), "-o", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob(".dec.staging-*/slim/*.onnx")):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "no artifact written within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    visible = [
        p for p in out.rglob("*") if not any(s.startswith(".") for s in p.relative_to(out).parts)
    ]
    assert visible == []  # no published folder, no manifest
    assert not list(out.rglob("manifest.json"))
    (staging,) = out.glob(".dec.staging-*")
    code, _, err = _cli("verify", str(out))  # a build root: its leftovers are reported
    assert code == 5, err
    assert staging.name in " ".join(err.split())
    from edgesam_export.device import publish

    assert publish.clean_leftovers(out) == [staging.name]  # the next build removes them
    assert [p.name for p in out.iterdir()] == [mf.LOCK_NAME]  # the killed run's: locks nothing


def test_full_build_of_the_ci_recipe(tmp_path: Path) -> None:
    """Encoder + decoder + stability decoder from the shipped CI recipe, verified end to end."""
    code, _, err = _cli("build", str(ROOT / "recipes" / "ci-smoke.yaml"), "-o", str(tmp_path))
    assert code == 0, err
    folder = tmp_path / "ci-smoke"
    manifest = mf.read(folder)
    assert manifest["status"] == "passed"
    graphs = sorted(
        (a["graph"], a["metadata"]["use_stability_score"]) for a in manifest["artifacts"]
    )
    assert graphs == [("decoder", "false"), ("decoder", "true"), ("encoder", "false")]
    checks = {r["check"] for a in manifest["artifacts"] for r in a["parity_checks"]}
    assert {"image_embeddings", "end_to_end.masks", "decoder.stability_scores"} <= checks
    code, out, _ = _cli("verify", str(folder))
    # three graphs and the reference outputs of each of the two target folders
    assert code == 0 and "5 files match" in out


def test_coreml_target_builds_from_a_recipe(tmp_path: Path) -> None:
    """A CoreML entry is one more target kind: exported, checked (MIL executor off macOS),
    fingerprinted and verified like the ONNX ones."""
    pytest.importorskip("coremltools")
    recipe = _recipe(
        tmp_path,
        """\
name: cm
weights: {synthetic: calibrated, seed: 0}
targets:
  - name: coreml
    kind: coreml
    options: {graphs: [decoder], max_points: 3}
""",
    )
    code, _, err = _cli("build", str(recipe), "-o", str(tmp_path / "out"))
    assert code == 0, err
    manifest = mf.read(tmp_path / "out" / "cm")
    assert manifest["status"] == "passed"
    (art,) = manifest["artifacts"]
    assert art["path"].endswith(".mlpackage") and art["parity"] == "passed"
    assert "coremltools" in manifest["tools"]
    assert _cli("verify", str(tmp_path / "out" / "cm"))[0] == 0

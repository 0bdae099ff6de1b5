"""manifest.json: rewritten from disk, self-hashed, verified file by file (no exports here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesam_export.device import manifest as mf
from edgesam_export.device.artifacts import Artifact, record_parity, write_manifest
from edgesam_export.device.contract import TensorSpec


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "build"
    (folder / "onnx").mkdir(parents=True)
    (folder / "onnx" / "enc.onnx").write_bytes(b"encoder bytes" * 100)
    (folder / "onnx" / "dec.onnx").write_bytes(b"decoder bytes" * 50)
    content = {
        "artifacts": [
            {
                "path": "onnx/dec.onnx",
                "graph": "decoder",
                "backend": "onnx",
                "parity": "passed",
                "precision": "fp32",
                "sha256": mf.file_sha256(folder / "onnx" / "dec.onnx"),
            },
            {
                "path": "onnx/enc.onnx",
                "graph": "encoder",
                "backend": "onnx",
                "parity": "failed",
                "precision": "fp32",
                "sha256": mf.file_sha256(folder / "onnx" / "enc.onnx"),
            },
        ],
        "files": mf.scan_files(folder),
    }
    mf.write(folder, mf.seal(content, build={"started_utc": "2026-01-01T00:00:00+00:00"}))
    return folder


def test_sealed_manifest_verifies(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    result = mf.verify(folder)
    assert result.ok, result.problems
    assert result.checked == 2


def test_timestamps_are_outside_the_hash(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    manifest = mf.read(folder)
    manifest["build"]["started_utc"] = "2030-01-01T00:00:00+00:00"
    assert mf.content_sha256(manifest) == manifest["content_sha256"]
    manifest["artifacts"][1]["parity"] = "passed"
    assert mf.content_sha256(manifest) != manifest["content_sha256"]


def test_flipped_byte_is_caught(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = folder / "onnx" / "enc.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = mf.verify(folder)
    assert [f for f, _ in result.problems] == ["onnx/enc.onnx"]
    assert "sha256 differs" in result.problems[0][1]


def test_missing_and_extra_files_are_caught(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "onnx" / "dec.onnx").unlink()
    (folder / "onnx" / "stray.onnx").write_bytes(b"x")
    problems = dict(mf.verify(folder).problems)
    assert "missing" in problems["onnx/dec.onnx"]
    assert "extra" in problems["onnx/stray.onnx"]


def test_hand_edited_manifest_is_caught(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = folder / mf.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["artifacts"][1]["parity"] = "passed"  # promote the failed encoder
    path.write_text(json.dumps(manifest))
    problems = mf.verify(folder).problems
    assert problems and problems[0][0] == mf.MANIFEST_NAME
    assert "edited" in problems[0][1]


def test_unreadable_manifest_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / mf.MANIFEST_NAME).write_text("{not json")
    (problem,) = mf.verify(folder).problems
    assert problem[0] == mf.MANIFEST_NAME and "not valid JSON" in problem[1]


def test_hidden_files_are_covered_and_nested_manifest_folders_are_not(tmp_path: Path) -> None:
    """`.hidden.onnx` and `.git/evil` passed verify: hidden entries were skipped."""
    folder = _folder(tmp_path)
    nested = folder / "other"
    nested.mkdir()
    (nested / "a.onnx").write_bytes(b"a")
    mf.write(nested, mf.seal({"files": mf.scan_files(nested)}))
    assert mf.verify(folder).ok
    (folder / ".hidden.onnx").write_bytes(b"x")
    (folder / ".git").mkdir()
    (folder / ".git" / "evil").write_bytes(b"x")
    problems = dict(mf.verify(folder).problems)
    assert problems == {
        ".git/evil": "extra: on disk, not in the manifest",
        ".hidden.onnx": "extra: on disk, not in the manifest",
    }
    assert set(mf.walk(folder)) == {".git/evil", ".hidden.onnx", "onnx/dec.onnx", "onnx/enc.onnx"}


def test_the_lock_file_is_not_content_and_leftovers_are_reported(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / mf.LOCK_NAME).write_text("123\n")
    assert mf.verify(folder).ok
    (folder / ".tmp.partial").write_bytes(b"x")
    assert mf.verify(folder).problems == [(".tmp.partial", mf.LEFTOVER_PROBLEM)]


def test_select_returns_only_artifacts_that_passed_parity(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    manifest = mf.read(folder)
    assert [a["path"] for a in mf.select(manifest, backend="onnx")] == ["onnx/dec.onnx"]
    assert mf.select(manifest, graph="encoder") == []
    (enc,) = mf.select(manifest, graph="encoder", require_parity=False)
    assert mf.check_artifact(folder, enc)
    (folder / "onnx" / "enc.onnx").write_bytes(b"other")
    assert not mf.check_artifact(folder, enc)


def test_tool_versions_name_the_libraries() -> None:
    versions = mf.tool_versions()
    assert {"edgesam-export", "python", "numpy", "onnx", "onnxruntime", "onnxslim"} <= set(versions)


def _artifact(folder: Path, name: str, payload: bytes) -> Artifact:
    path = folder / name
    path.write_bytes(payload)
    spec = [TensorSpec("x", "float32", (1,))]
    return Artifact(path, "onnx", "decoder", spec, spec, {"graph": "decoder"})


def test_write_manifest_never_merges_an_old_one(tmp_path: Path) -> None:
    """The stale-manifest bug: an old "parity: passed" next to newly overwritten files."""
    stale = {
        "artifacts": [{"path": "a.onnx", "sha256": "0" * 64, "parity": "passed"}],
        "parity": {"passed": True},
        "model": "edge_sam",
    }
    (tmp_path / mf.MANIFEST_NAME).write_text(json.dumps(stale))
    art = _artifact(tmp_path, "a.onnx", b"new bytes")
    write_manifest(tmp_path, [art], model="edge_sam")
    manifest = mf.read(tmp_path)
    assert "parity" not in manifest
    (entry,) = manifest["artifacts"]
    assert entry["parity"] == "unchecked" and entry["sha256"] == mf.file_sha256(art.path)
    assert mf.verify(tmp_path).ok


def test_record_parity_vouches_only_for_the_bytes_it_checked(tmp_path: Path) -> None:
    a = _artifact(tmp_path, "a.onnx", b"aaa")
    b = _artifact(tmp_path, "b.onnx", b"bbb")
    write_manifest(tmp_path, [a, b])
    b.path.write_bytes(b"changed after the manifest")  # b's entry no longer describes disk
    summary = [{"artifact": "a.onnx", "passed": True}, {"artifact": "b.onnx", "passed": True}]
    record_parity(tmp_path, {"passed": True, "summary": summary, "errors": []})
    manifest = mf.read(tmp_path)
    assert [(e["path"], e["parity"]) for e in manifest["artifacts"]] == [("a.onnx", "passed")]
    assert manifest["parity"]["checked"]["b.onnx"] == mf.file_sha256(b.path)
    assert mf.verify(tmp_path).ok


def test_record_parity_keeps_artifacts_with_data_files(tmp_path: Path) -> None:
    """Sidecars (.pte.json, .engine.json, ONNX external data) are part of the recorded hash:
    parity dropped every such entry, comparing the file's bare hash with the combined one."""
    prog = tmp_path / "m_decoder.pte"
    prog.write_bytes(b"program")
    side = tmp_path / "m_decoder.pte.json"
    side.write_text("{}")
    art = Artifact(prog, "executorch", "decoder", [], [], data_files=[side])
    write_manifest(tmp_path, [art])
    summary = [{"artifact": prog.name, "passed": True}]
    record_parity(tmp_path, {"passed": True, "summary": summary, "errors": []})
    assert [(e["path"], e["parity"]) for e in mf.read(tmp_path)["artifacts"]] == [
        (prog.name, "passed")
    ]
    side.write_text('{"changed": true}')  # the sidecar no longer matches: never vouched for
    record_parity(tmp_path, {"passed": True, "summary": summary, "errors": []})
    assert mf.read(tmp_path)["artifacts"] == []


@pytest.mark.parametrize("content", [{"format": "other/1"}, []])
def test_read_rejects_foreign_manifests(tmp_path: Path, content: object) -> None:
    (tmp_path / mf.MANIFEST_NAME).write_text(json.dumps(content))
    with pytest.raises(mf.ManifestError):
        mf.read(tmp_path)


def _mlpackage(folder: Path, ids: tuple[str, str]) -> Path:
    """A CoreML package as coremltools lays it out: items named by fresh UUIDs on each save."""
    pkg = folder / "enc.mlpackage"
    data = pkg / "Data" / "com.apple.CoreML"
    (data / "weights").mkdir(parents=True)
    (data / "model.mlmodel").write_bytes(b"spec")
    (data / "weights" / "weight.bin").write_bytes(b"weights")
    items = {
        ids[0]: {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel",
        },
        ids[1]: {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights",
        },
    }
    doc = {"fileFormatVersion": "1.0.0", "itemInfoEntries": items, "rootModelIdentifier": ids[0]}
    (pkg / "Manifest.json").write_text(json.dumps(doc, indent=2))
    return pkg


def test_mlpackage_uuids_are_normalised_before_hashing(tmp_path: Path) -> None:
    a = _mlpackage(
        tmp_path / "a",
        ("8F3C7E2A-0D2B-4F0E-9C51-6A0B1D2E3F40", "1A2B3C4D-5E6F-4A1B-8C9D-0E1F2A3B4C5D"),
    )
    b = _mlpackage(
        tmp_path / "b",
        ("C0FFEE00-1111-4222-8333-444455556666", "DEADBEEF-7777-4888-9999-AAAABBBBCCCC"),
    )
    assert (a / "Manifest.json").read_bytes() != (b / "Manifest.json").read_bytes()
    assert mf.path_sha256(a) == mf.path_sha256(b)
    assert mf.scan_files(a.parent) == mf.scan_files(b.parent)
    # what the file means still counts: another root item is another package
    doc = json.loads((b / "Manifest.json").read_text())
    doc["rootModelIdentifier"] = "DEADBEEF-7777-4888-9999-AAAABBBBCCCC"
    (b / "Manifest.json").write_text(json.dumps(doc, indent=2))
    assert mf.path_sha256(a) != mf.path_sha256(b)


def test_mlpackage_bundle_verifies_and_catches_a_changed_weight(tmp_path: Path) -> None:
    pkg = _mlpackage(
        tmp_path, ("8F3C7E2A-0D2B-4F0E-9C51-6A0B1D2E3F40", "1A2B3C4D-5E6F-4A1B-8C9D-0E1F2A3B4C5D")
    )
    art = {"path": pkg.name, "sha256": mf.path_sha256(pkg), "parity": "passed"}
    mf.write(tmp_path, mf.seal({"artifacts": [art], "files": mf.scan_files(tmp_path)}))
    assert mf.verify(tmp_path).ok
    (pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(b"weightz")
    problems = [f for f, _ in mf.verify(tmp_path).problems]
    assert problems == ["enc.mlpackage/Data/com.apple.CoreML/weights/weight.bin"]

"""The restricted unpickler never runs pickle content.

Each malicious file would run a command that creates a marker file when unpickled normally (a
positive control in a subprocess proves it does); through `read_checkpoint` / `load_model` and
through `safe_pickle` directly it is refused with an error naming the global, and the marker
never appears.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from edgesam_export.device.errors import CheckpointError
from edgesam_export.host.models import load_model
from edgesam_export.host.models.checkpoint import read_checkpoint
from edgesam_export.host.models.safe_pickle import (
    UnsafePickleError,
    load_pickle_restricted,
    read_module_checkpoint,
)


class _Reduce:
    """Pickles as `callable(*args)`: what an attacker's `__reduce__` produces."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    """kind -> (object whose unpickling runs `touch marker`, the global the error must name).

    Protocol 2 writes Python-2 module names (`__builtin__.eval`, `commands.check_call`), so the
    error is matched on the callable's own name.
    """
    cmd = f"touch {marker}"
    return {
        "os.system": (_Reduce(os.system, (cmd,)), r"\.system'"),
        "builtins.eval": (_Reduce(eval, (f"__import__('os').system({cmd!r})",)), r"\.eval'"),
        "builtins.exec": (_Reduce(exec, (f"import os; os.system({cmd!r})",)), r"\.exec'"),
        "subprocess.Popen": (_Reduce(subprocess.Popen, (["touch", str(marker)],)), r"\.Popen'"),
        "subprocess.check_call": (
            _Reduce(subprocess.check_call, (["touch", str(marker)],)),
            r"\.check_call'",
        ),
    }


def _torch_zip(obj: object, path: Path) -> Path:
    """`torch.save` format: the payload inside a weights-looking dict, tensors as storages."""
    torch.save({"payload": obj, "image_encoder.pos_embed": torch.zeros(2)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.mark.parametrize(
    "kind",
    ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "subprocess.check_call"],
)
def test_malicious_reduce_is_refused_and_never_runs(tmp_path: Path, marker: Path, kind: str):
    payload, named = _payloads(marker)[kind]
    path = _torch_zip(payload, tmp_path / f"{kind}.pth")

    with pytest.raises(CheckpointError, match=named) as info:
        read_checkpoint(path)
    assert "not loaded" in str(info.value) or "refused" in str(info.value)
    with pytest.raises(UnsafePickleError, match=named):
        load_pickle_restricted(path)
    with pytest.raises(CheckpointError):
        load_model(path, model="slimsam_77")
    assert not marker.exists(), "the pickle's command ran"

    # Positive control: a plain unpickler would have run it (in a throwaway process).
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    control = (
        "import pickle, sys\n"
        "class U(pickle.Unpickler):\n"
        "    def persistent_load(self, pid): return None\n"
        "try:\n    U(sys.stdin.buffer).load()\nexcept Exception:\n    pass\n"
    )
    subprocess.run([sys.executable, "-c", control], input=data, capture_output=True, timeout=60)
    if kind.startswith("subprocess.Popen"):  # Popen returns before the child finishes
        for _ in range(50):
            if marker.exists():
                break
            time.sleep(0.1)
    assert marker.exists(), "the test payload is not actually malicious"


def test_payload_inside_a_module_tree_is_refused(tmp_path: Path, marker: Path, monkeypatch):
    """A SlimSAM-looking module whose state hides a payload: refused, never run."""
    fake = type("Sam", (), {"__module__": "segment_anything_kd.modeling.sam"})
    for name in ("segment_anything_kd", "segment_anything_kd.modeling"):
        monkeypatch.setitem(sys.modules, name, type(sys)(name))
    sam_module = type(sys)("segment_anything_kd.modeling.sam")
    sam_module.Sam = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "segment_anything_kd.modeling.sam", sam_module)
    state = {
        "training": False,
        "_parameters": {"weight": torch.zeros(2)},
        "_buffers": {},
        "_modules": {},
        "evil": _Reduce(os.system, (f"touch {marker}",)),
    }
    obj = fake()
    obj.__dict__.update(state)
    path = tmp_path / "tree.pth"
    torch.save(obj, path)
    with pytest.raises(UnsafePickleError, match="system"):
        load_pickle_restricted(path)
    assert not marker.exists()


def _raw_pickle(ops: bytes) -> bytes:
    return b"\x80\x02" + ops + b"."


def _zip_with(data_pkl: bytes, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
    return path


def test_getattr_is_a_placeholder_never_the_builtin(tmp_path: Path, marker: Path):
    """getattr is allowed (SlimSAM pickles a bound method) but never resolved: calling what it
    returns fails instead of reaching os.system through an allowed object."""
    # getattr(OrderedDict, "__init__")("x"): a call on the getattr result.
    ops = (
        b"c__builtin__\ngetattr\n"
        b"ccollections\nOrderedDict\n"
        b"X\x08\x00\x00\x00__init__"
        b"\x86R"  # TUPLE2, REDUCE -> placeholder
        b"X\x01\x00\x00\x00x\x85R"  # ("x",) REDUCE on the placeholder -> refused
    )
    path = _zip_with(_raw_pickle(ops), tmp_path / "getattr.pth")
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_pickle_restricted(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("__builtin__", "exec"),
        ("subprocess", "Popen"),
        ("torch", "load"),
        ("torch.nn.modules.module", "Module.__init__"),  # a dotted name inside an allowed space
        ("torch.serialization", "_get_layout"),
        ("segment_anything_kd.modeling", "os"),  # lower-case: not a class
    ],
)
def test_each_unknown_global_is_refused_by_name(tmp_path: Path, module: str, name: str):
    ops = f"c{module}\n{name}\n".encode() + b")R"
    path = _zip_with(_raw_pickle(ops), tmp_path / "g.pth")
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}".replace(".", r"\.")):
        load_pickle_restricted(path)


def test_legacy_pickle_is_not_unpickled(tmp_path: Path, marker: Path):
    """A non-zip pickle (torch's legacy format or plain pickle.dump) is never unpickled."""
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2))
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a torch zip archive"):
        load_pickle_restricted(path)
    assert not marker.exists()


def test_malformed_tensor_records_are_errors(tmp_path: Path):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, buf)
    with zipfile.ZipFile(buf) as src:
        names = src.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        data = src.read(pkl)
        records = {n: src.read(n) for n in names}
    # truncate the storage: its byte count no longer matches numel
    records[prefix + "data/0"] = records[prefix + "data/0"][:8]
    path = tmp_path / "short.pth"
    with zipfile.ZipFile(path, "w") as dst:
        for n, d in records.items():
            dst.writestr(n, d if n != pkl else data)
    with pytest.raises(CheckpointError, match="bytes, expected 6"):
        load_pickle_restricted(path)


def test_module_checkpoint_is_read_without_the_fork(tmp_path: Path):
    """A whole pickled module tree under SlimSAM's class names: tensors and inert records."""
    helper = Path(__file__).parent / "make_slimsam_pickle.py"
    layouts = Path(__file__).resolve().parents[1] / "edgesam_export/device/data/layouts"
    layout = layouts / "slimsam_77.json"
    path = tmp_path / "SlimSAM-77.pth"
    subprocess.run([sys.executable, str(helper), str(layout), "0", str(path)], check=True)
    ckpt = read_module_checkpoint(path)
    assert ckpt.root_class == "segment_anything_kd.modeling.sam.Sam"
    assert ckpt.storage_locations == ["cuda:0"]
    assert ckpt.unwrapped == ["image_encoder.module"]
    assert "segment_anything_kd.modeling.sam.Sam" in ckpt.globals_seen
    assert "__builtin__.getattr" in ckpt.globals_seen  # the pickled bound method
    assert "torch.device" in ckpt.globals_seen
    assert len(ckpt.state_dict) == 362
    assert not any(k.startswith("image_encoder.module.") for k in ckpt.state_dict)
    assert "pixel_mean" not in ckpt.state_dict  # non-persistent buffer
    assert "segment_anything_kd" not in sys.modules  # nothing of the fork was imported
    # torch itself refuses it (weights_only), which is why the restricted reader exists
    with pytest.raises(pickle.UnpicklingError, match="segment_anything_kd"):
        torch.load(path, map_location="cpu", weights_only=True)

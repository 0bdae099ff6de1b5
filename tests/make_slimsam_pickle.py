"""Write a SlimSAM-style whole-module checkpoint (test helper; run in its own process).

    python make_slimsam_pickle.py LAYOUT.json SEED OUT.pth [--keys raw|stripped]

Builds the module tree the SlimSAM fixture README documents: a `Sam` object whose `image_encoder`
is an `nn.DataParallel` around an `ImageEncoderViT`, with blocks, attention (q, k, v layers), MLPs
and the SAM heads as stand-in classes registered under SlimSAM's module names
(`segment_anything_kd.modeling.*`); parameters carry the fixture rule's synthetic weights; the
encoder carries the bound-method `forward` instance attribute; `pixel_mean` / `pixel_std` are
non-persistent buffers. `torch.save` then pickles it as SlimSAM's training script does, and every
storage location tag is rewritten from `cpu` to `cuda:0`, as in the released files.

Weights are keyed by the raw names (`image_encoder.module.*`) as in the fixture's manifest, so the
golden outputs of ../shared/fixtures/slimsam apply to the file made from its layout and seed 0.
Running this in a separate process keeps the stand-in modules out of the test process.
"""

from __future__ import annotations

import io
import json
import sys
import types
import zipfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgesam_export.host.models.checkpoint import synth_tensor

_NAMESPACES = {
    "sam": "segment_anything_kd.modeling.sam",
    "image_encoder": "segment_anything_kd.modeling.image_encoder",
    "common": "segment_anything_kd.modeling.common",
    "prompt_encoder": "segment_anything_kd.modeling.prompt_encoder",
    "mask_decoder": "segment_anything_kd.modeling.mask_decoder",
    "transformer": "segment_anything_kd.modeling.transformer",
}
_CLASSES: dict[str, type] = {}


def _stand_in(namespace: str, name: str) -> type:
    module = _NAMESPACES[namespace]
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    key = f"{module}.{name}"
    if key not in _CLASSES:
        cls = type(name, (nn.Module,), {"__module__": module, "__qualname__": name})
        setattr(sys.modules[module], name, cls)
        _CLASSES[key] = cls
    return _CLASSES[key]


def _class_for(path: list[str]) -> type:
    """A plausible fork class for the module at `path` (names only matter for realism)."""
    last = path[-1] if path else ""
    parent = path[-2] if len(path) > 1 else ""
    if not path:
        return _stand_in("sam", "Sam")
    if path == ["image_encoder", "module"]:
        return _stand_in("image_encoder", "ImageEncoderViT")
    if parent == "blocks" and path[0] == "image_encoder":
        return _stand_in("image_encoder", "Block")
    if last == "attn" and path[0] == "image_encoder":
        return _stand_in("image_encoder", "Attention")
    if last == "mlp":
        return _stand_in("common", "MLPBlock")
    if last in ("q", "k", "v", "proj", "lin1", "lin2") or last.endswith("_proj"):
        return nn.Linear
    if last in ("norm1", "norm2", "norm3", "norm4", "norm_final_attn"):
        return nn.LayerNorm
    if last == "prompt_encoder":
        return _stand_in("prompt_encoder", "PromptEncoder")
    if last == "mask_decoder":
        return _stand_in("mask_decoder", "MaskDecoder")
    if last == "transformer":
        return _stand_in("transformer", "TwoWayTransformer")
    return _stand_in("common", "Node")


def _empty(cls: type) -> nn.Module:
    """An instance without running the class's __init__ (torch.nn classes need arguments)."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    return obj


def build(layout: dict, seed: int, raw_keys: bool) -> nn.Module:
    root = _empty(_class_for([]))
    nodes: dict[tuple[str, ...], nn.Module] = {(): root}

    def node(path: tuple[str, ...]) -> nn.Module:
        if path not in nodes:
            parent = node(path[:-1])
            child = _empty(_class_for(list(path)))
            parent.add_module(path[-1], child)
            nodes[path] = child
        return nodes[path]

    for key, t in layout["tensors"].items():
        raw = key.replace("image_encoder.", "image_encoder.module.", 1) if raw_keys else key
        value = torch.from_numpy(synth_tensor(raw, tuple(t["shape"]), t["dtype"], seed))
        parts = key.split(".")
        path = tuple(parts[:-1])
        if path[:1] == ("image_encoder",):
            path = ("image_encoder", "module", *path[1:])
        owner = node(path)
        if parts[-1] in ("positional_encoding_gaussian_matrix",):
            owner.register_buffer(parts[-1], value)
        else:
            owner.register_parameter(parts[-1], nn.Parameter(value, requires_grad=False))
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    root.register_buffer("pixel_mean", torch.tensor(mean).reshape(3, 1, 1), persistent=False)
    root.register_buffer("pixel_std", torch.tensor(std).reshape(3, 1, 1), persistent=False)
    encoder = nodes[("image_encoder", "module")]
    encoder.num_heads = 12
    encoder.global_attn_indexes = [2, 5, 8, 11]
    encoder.forward = encoder.forward  # SlimSAM saves a bound method as an instance attribute
    wrapped = nn.DataParallel(encoder) if not torch.cuda.is_available() else None
    assert wrapped is not None, "run on a CPU-only machine"
    # the attributes DataParallel has when built on a one-GPU machine
    wrapped.device_ids, wrapped.output_device = [0], 0
    wrapped.src_device_obj = torch.device("cuda", 0)
    root._modules["image_encoder"] = wrapped
    return root


def main(argv: list[str]) -> int:
    layout = json.loads(Path(argv[1]).read_text())
    seed, out = int(argv[2]), Path(argv[3])
    raw_keys = "--keys=stripped" not in argv
    model = build(layout, seed, raw_keys)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    # Released files were saved from CUDA: every storage carries the location tag 'cuda:0'.
    cpu = b"X\x03\x00\x00\x00cpu"
    cuda = b"X\x06\x00\x00\x00cuda:0"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            name = "vit_b_slim_step2_/" + info.filename.split("/", 1)[1]
            if name.endswith("/data.pkl"):
                assert cpu in data
                data = data.replace(cpu, cuda)
            dst.writestr(name, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Real-world checkpoint keys: what each official loader accepts, and the neighbours users confuse.

Files are built from the shipped layouts (which are the fixtures' manifests). Tensors that only
need the right shape are zero-stride views of one element (a few bytes on disk).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.errors import CheckpointError
from edgesam_export.device.models import load_layout
from edgesam_export.host.metadata import base_metadata
from edgesam_export.host.models import load_model, synth_state_dict
from edgesam_export.host.models.identify import identify


def _shapes_only(model: str) -> dict[str, torch.Tensor]:
    """The layout's keys with tensors of the right shape and no storage to speak of."""
    return {
        k: torch.zeros(1, dtype=getattr(torch, t["dtype"])).expand(t["shape"])
        if t["shape"]
        else torch.zeros((), dtype=getattr(torch, t["dtype"]))
        for k, t in load_layout(model)["tensors"].items()
    }


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def edge_state() -> dict[str, torch.Tensor]:
    return synth_state_dict("edge_sam", 2)


RPN_EXTRAS = {
    "fpn.lateral_convs.0.conv.weight": torch.zeros(256, 96, 1, 1),
    "fpn.fpn_convs.0.conv.weight": torch.zeros(256, 256, 3, 3),
    "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
    "rpn_head.rpn_cls.weight": torch.zeros(9, 256, 1, 1),
}


def test_edgesam_extra_rpn_keys_are_ignored_listed_and_recorded(tmp_path, edge_state):
    """EdgeSAM's official builder loads strict=False; files with a merged RPN carry fpn.* and
    rpn_head.*: warn, list, record, and load every expected tensor."""
    path = _save({**edge_state, **RPN_EXTRAS}, tmp_path / "edge_sam_3x_rpn.pth")
    lm = load_model(path)
    assert lm.ignored_keys == tuple(sorted(RPN_EXTRAS))
    got = lm.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in edge_state.items())
    meta = base_metadata(lm, "encoder", use_stability_score=False)
    assert json.loads(meta["ignored_checkpoint_keys"]) == sorted(RPN_EXTRAS)
    plain = load_model(_save(edge_state, tmp_path / "plain.pth"))
    assert "ignored_checkpoint_keys" not in base_metadata(plain, "encoder", False)


def test_strict_refuses_the_extra_keys(tmp_path, edge_state):
    path = _save({**edge_state, **RPN_EXTRAS}, tmp_path / "rpn.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: fpn\..*--strict"):
        load_model(path, strict=True)


def test_strict_on_the_cli_exits_3_before_exporting(tmp_path, edge_state):
    path = _save({**edge_state, **RPN_EXTRAS}, tmp_path / "rpn.pth")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["onnx", str(path), "--strict", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "unexpected keys" in result.output and not out.exists()


def test_missing_keys_and_wrong_shapes_always_stop(tmp_path, edge_state):
    broken = {**edge_state, **RPN_EXTRAS}
    broken.pop("mask_decoder.iou_token.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: mask_decoder\.iou_token\.weight"):
        load_model(_save(broken, tmp_path / "missing.pth"))
    wrong = {**edge_state, **RPN_EXTRAS, "mask_decoder.mask_tokens.weight": torch.zeros(3, 256)}
    with pytest.raises(CheckpointError, match=r"mask_tokens.weight \(3, 256\)"):
        load_model(_save(wrong, tmp_path / "shape.pth"))


def test_sam_loaders_are_strict(tmp_path):
    """Meta's and MobileSAM's builders load strictly: an extra key is refused, named."""
    state = synth_state_dict("mobile_sam", 0)
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys: mask_decoder\.extra\.weight"):
        load_model(_save(state, tmp_path / "extra.pth"), model="mobile_sam")


def test_absent_num_batches_tracked_is_accepted(tmp_path):
    """PyTorch's strict loading accepts files without BatchNorm's num_batches_tracked."""
    state = synth_state_dict("mobile_sam", 0)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 439 - 27
    lm = load_model(_save(state, tmp_path / "no_nbt.pth"), model="mobile_sam")
    assert torch.equal(
        lm.model.state_dict()["image_encoder.head.weight"], state["image_encoder.head.weight"]
    )


def _hq(base: str) -> dict[str, torch.Tensor]:
    state = _shapes_only(base)
    state.update(
        {
            "mask_decoder.hf_token.weight": torch.zeros(1, 256),
            "mask_decoder.hf_mlp.layers.0.weight": torch.zeros(256, 256),
            "mask_decoder.compress_vit_feat.0.weight": torch.zeros(768, 256, 2, 2),
            "mask_decoder.embedding_encoder.0.weight": torch.zeros(256, 32, 2, 2),
            "mask_decoder.embedding_maskfeature.0.weight": torch.zeros(32, 32, 3, 3),
        }
    )
    return state


def _sam2() -> dict[str, torch.Tensor]:
    return {
        "image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7),
        "image_encoder.neck.convs.0.conv.weight": torch.zeros(256, 768, 1, 1),
        "memory_attention.layers.0.self_attn.q_proj.weight": torch.zeros(256, 256),
        "memory_encoder.mask_downsampler.encoder.0.weight": torch.zeros(4, 1, 3, 3),
        "sam_mask_decoder.iou_token.weight": torch.zeros(1, 256),
        "sam_prompt_encoder.no_mask_embed.weight": torch.zeros(1, 256),
        "obj_ptr_proj.layers.0.weight": torch.zeros(256, 256),
    }


@pytest.mark.parametrize(
    "file_model,state_fn,asked,message",
    [
        ("sam_vit_h", None, "sam_vit_b", r"is a SAM \(ViT-H\) checkpoint.*Use --model sam_vit_h"),
        ("sam_vit_l", None, "sam_vit_h", r"is a SAM \(ViT-L\) checkpoint.*Use --model sam_vit_l"),
        ("sam_vit_b", None, "slimsam_77", r"is a SAM \(ViT-B\) checkpoint.*Use --model sam_vit_b"),
        ("slimsam_77", None, "sam_vit_b", r"is a SlimSAM .*Use --model slimsam_77"),
        ("mobile_sam", None, "sam_vit_b", r"is a MobileSAM checkpoint.*Use --model mobile_sam"),
        ("edge_sam", None, "mobile_sam", r"is a EdgeSAM checkpoint.*Use --model edge_sam"),
        ("sam_vit_b", _hq, "sam_vit_b", r"is a SAM-HQ \(HQ-SAM, ViT-B.*not supported"),
        ("sam_vit_l", _hq, "sam_vit_l", r"is a SAM-HQ \(HQ-SAM, ViT-L.*not supported"),
        ("-", _sam2, "sam_vit_b", r"is a SAM 2 \(Hiera.*not supported"),
        ("-", _sam2, "edge_sam", r"is a SAM 2 \(Hiera.*not supported"),
    ],
)
def test_neighbour_files_are_named(tmp_path, file_model, state_fn, asked, message):
    if state_fn is _sam2:
        state = {"model": _sam2()}  # SAM 2 releases wrap the weights under "model"
    elif state_fn is not None:
        state = state_fn(file_model)
    else:
        state = _shapes_only(file_model)
    path = _save(state, tmp_path / "neighbour.pth")
    with pytest.raises(CheckpointError, match=message):
        load_model(path, model=asked)


def test_identify_names_each_registered_layout():
    for model in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "slimsam_50", "slimsam_77", "mobile_sam"):
        found = identify(_shapes_only(model))
        assert found is not None and found.model == model, (model, found)
    assert identify({"fc.weight": torch.zeros(1)}) is None

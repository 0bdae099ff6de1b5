"""EdgeSAM re-implementation against the official outputs, and checkpoint loading errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam_export.device.errors import CheckpointError, InputError
from edgesam_export.device.models import load_layout
from edgesam_export.host.graphs import DecoderGraph, EncoderGraph
from edgesam_export.host.models import build_model, get_spec, load_model, synth_state_dict

# Tolerances from the fixture README (10x the float32-vs-float64 noise of the official code).
EMBED_TOL = 5e-3
DEC_LOGIT_TOL = 5e-5
DEC_IOU_TOL = 2e-5
DEC_STAB_TOL = 5e-5


def _enc(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.image_encoder(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_encoder_matches_golden(golden, mode, bilinear_model, bicubic_model):
    loaded = bilinear_model if mode == "bilinear" else bicubic_model
    emb = _enc(loaded.model, golden["input_tensor"])
    assert emb.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(emb, golden[f"embeddings_{mode}"], rtol=0, atol=EMBED_TOL)


def test_upsample_modes_really_differ(golden, bilinear_model, bicubic_model):
    """The two modes differ by up to 0.64: a test that used one for both would notice."""
    a = _enc(bilinear_model.model, golden["input_tensor"])
    b = _enc(bicubic_model.model, golden["input_tensor"])
    assert np.abs(a - b).max() > 0.1


@pytest.mark.parametrize("onnxruntime_layout", [False, True])
def test_export_friendly_encoder_is_the_same_function(golden, bilinear_model, onnxruntime_layout):
    """Split or pooled means, fused RepVGG blocks, the folded neck conv, channels-last neck
    norms: what is exported, still within the tolerance (and far closer than it, in fact)."""
    from edgesam_export.host.models.edgesam import (
        ChannelsLastLayerNorm2d,
        RepVGGDW,
        SqueezeExcite,
    )

    original = bilinear_model.model.image_encoder
    graph = EncoderGraph(original, optimized=True, onnxruntime_layout=onnxruntime_layout)
    x = torch.from_numpy(golden["input_tensor"])
    with torch.inference_mode():
        emb = graph(x).numpy()
        ref = original(x).numpy()
    np.testing.assert_allclose(emb, golden["embeddings_bilinear"], rtol=0, atol=EMBED_TOL)
    assert np.abs(emb - ref).max() < 1e-3
    rewritten = list(graph.modules())
    assert not any(isinstance(m, RepVGGDW) for m in rewritten)
    se = [m for m in rewritten if isinstance(m, SqueezeExcite)]
    assert se and all(m.mean == ("pooled" if onnxruntime_layout else "split") for m in se)
    assert all(m.broadcast_gate == onnxruntime_layout for m in se)
    neck = graph.image_encoder.neck
    assert isinstance(neck[0], torch.nn.Identity)
    assert isinstance(neck[1], ChannelsLastLayerNorm2d)
    assert isinstance(neck[3], ChannelsLastLayerNorm2d)
    # the reference model is left untouched
    assert sum(isinstance(m, RepVGGDW) for m in original.modules()) == 23
    assert all(m.mean == "mean" for m in original.modules() if isinstance(m, SqueezeExcite))
    assert isinstance(original.neck[0], torch.nn.Conv2d)


@pytest.mark.parametrize(
    ("stability", "form"),
    [(False, None), (True, None), (False, "folded"), (False, "transposed"), (False, "plain")],
)
def test_decoder_matches_golden_on_stored_embeddings(golden, bilinear_model, stability, form):
    """Every prompt set of the file, fed the official embeddings: the tight decoder check; also
    each exported attention form (`optimized`: folded, as fp32 ONNX and ExecuTorch export it;
    transposed, as CoreML does; plain, as int8 does)."""
    graph = DecoderGraph(
        bilinear_model.model,
        1024,
        use_stability_score=stability,
        optimized=form is not None,
        attention=form or "folded",
    )
    assert golden.dec_sets()
    for prompt in golden.dec_sets():
        with torch.inference_mode():
            scores, masks = graph(
                torch.from_numpy(golden["embeddings_bilinear"]),
                torch.from_numpy(golden[f"dec_{prompt}_point_coords"]),
                torch.from_numpy(golden[f"dec_{prompt}_point_labels"]),
            )
        np.testing.assert_allclose(
            masks.numpy(),
            golden[f"dec_{prompt}_masks"],
            rtol=0,
            atol=DEC_LOGIT_TOL,
            err_msg=f"prompt set {prompt}",
        )
        key = f"dec_{prompt}_scores_stability" if stability else f"dec_{prompt}_scores"
        tol = DEC_STAB_TOL if stability else DEC_IOU_TOL
        np.testing.assert_allclose(
            scores.numpy(), golden[key], rtol=0, atol=tol, err_msg=f"prompt set {prompt}"
        )


def test_folded_attention_halves_the_decoders_multiply_adds_at_one_point(bilinear_model):
    """The folded form never projects the 4096 image tokens: at one point the decoder does about
    half the plain form's multiply-adds; the saving shrinks with the point count and turns into
    a cost past 11 points (documented at `Attention`)."""
    from torch.utils.flop_counter import FlopCounterMode

    graphs = {
        form: DecoderGraph(bilinear_model.model, 1024, optimized=True, attention=form)
        for form in ("plain", "transposed", "folded")
    }
    emb = torch.zeros(1, 256, 64, 64)

    def multiply_adds(form: str, points: int) -> int:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            graphs[form](emb, torch.full((1, points, 2), 512.0), torch.ones(1, points))
        return counter.get_total_flops() // 2

    plain = {n: multiply_adds("plain", n) for n in (1, 5, 16)}
    assert multiply_adds("transposed", 1) == plain[1]
    ratios = {n: multiply_adds("folded", n) / plain[n] for n in plain}
    assert ratios[1] < 0.55 and ratios[5] < 0.75, ratios
    assert ratios[16] > 1.0, ratios  # the crossover the docs state


def test_end_to_end_from_input_tensor(golden, bilinear_model):
    graph = DecoderGraph(bilinear_model.model, 1024)
    emb = torch.from_numpy(_enc(bilinear_model.model, golden["input_tensor"]))
    for prompt in golden.dec_sets():
        with torch.inference_mode():
            scores, masks = graph(
                emb,
                torch.from_numpy(golden[f"dec_{prompt}_point_coords"]),
                torch.from_numpy(golden[f"dec_{prompt}_point_labels"]),
            )
        np.testing.assert_allclose(masks.numpy(), golden[f"dec_{prompt}_masks"], rtol=0, atol=5e-3)
        np.testing.assert_allclose(
            scores.numpy(), golden[f"dec_{prompt}_scores"], rtol=0, atol=2e-4
        )


def test_layout_matches_built_model():
    spec = get_spec("edge_sam")
    model = build_model(spec)
    layout = load_layout("edge_sam")["tensors"]
    state = model.state_dict()
    assert list(state) == list(layout)
    for key, t in layout.items():
        assert tuple(state[key].shape) == tuple(t["shape"]), key
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 9_582_112  # the fixture README's count


def test_synthetic_weights_depend_on_seed_and_key_only():
    a = synth_state_dict("edge_sam", 0)
    b = synth_state_dict("edge_sam", 0)
    c = synth_state_dict("edge_sam", 1)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


# --- checkpoint files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return synth_state_dict("edge_sam", 3)


def test_real_checkpoint_file_loads_strictly(tmp_path: Path, state_dict):
    path = tmp_path / "edge_sam_3x.pth"
    torch.save(state_dict, path)
    loaded = load_model(path)
    assert not loaded.synthetic and loaded.sha256 and loaded.upsample_mode == "bicubic"
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state_dict.items())


def test_wrapped_checkpoint_is_unwrapped(tmp_path: Path, state_dict):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": state_dict, "epoch": 3}, path)
    assert load_model(path).source == str(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


def test_directory(tmp_path: Path):
    with pytest.raises(CheckpointError, match="directory"):
        load_model(tmp_path)


def test_truncated_file(tmp_path: Path, state_dict):
    path = tmp_path / "full.pth"
    torch.save(state_dict, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(cut)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_not_a_checkpoint_pickle(tmp_path: Path):
    path = tmp_path / "obj.pth"
    with path.open("wb") as f:
        pickle.dump({"weights": Path("/x")}, f)
    with pytest.raises(CheckpointError, match=r"not a plain weights file|not a PyTorch"):
        load_model(path)


def test_text_file(tmp_path: Path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError):
        load_model(path)


def test_tensorless_dict(tmp_path: Path):
    path = tmp_path / "cfg.pth"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    with pytest.raises(CheckpointError, match="without tensors"):
        load_model(path)


@pytest.mark.parametrize(
    "family,prefix",
    [
        ("MobileSAM", "image_encoder.layers.0.blocks.0.attn.qkv.weight"),
        ("SAM \\(ViT", "image_encoder.blocks.0.attn.qkv.weight"),
        ("EfficientViT-SAM", "image_encoder.backbone.stages.0.op_list.0.conv.weight"),
    ],
)
def test_other_family_is_named(tmp_path: Path, state_dict, family, prefix):
    other = {k: v for k, v in state_dict.items() if not k.startswith("image_encoder.")}
    other[prefix] = torch.zeros(3)
    path = tmp_path / "other.pth"
    torch.save(other, path)
    with pytest.raises(CheckpointError, match=f"is a {family}.*not EdgeSAM"):
        load_model(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, state_dict):
    broken = dict(state_dict)
    broken.pop("mask_decoder.iou_token.weight")
    broken["mask_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: mask_decoder.extra.weight" in msg


def test_wrong_shape_is_reported(tmp_path: Path, state_dict):
    broken = dict(state_dict)
    broken["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    path = tmp_path / "shape.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"mask_tokens.weight \(3, 256\)"):
        load_model(path)


def test_non_sam_state_dict(tmp_path: Path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a Segment-Anything"):
        load_model(path)


def test_unknown_model_and_bad_upsample():
    with pytest.raises(InputError, match="unknown model"):
        load_model(None, model="nope")
    with pytest.raises(InputError, match="upsample"):
        load_model(None, upsample_mode="nearest")

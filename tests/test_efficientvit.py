"""EfficientViT-SAM re-implementation against the official outputs (fixtures l0 and xl0).

The golden files are reduced copies of ../shared/fixtures/efficientvit_sam_{l0,xl0}/ (see their
meta_json): the official predictor's input tensor as a sha256, embeddings subsampled 4x per
axis, low-res logits 2x, boolean masks bit-packed. Preprocessing differs from EdgeSAM's
(x/255 constants, 512 encoder input for L models) while prompts and masks stay in the 1024
frame; the official ONNX runner sends point prompts without SAM's padding point.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam_export.device import processing as P
from edgesam_export.device.errors import CheckpointError
from edgesam_export.device.models import load_layout
from edgesam_export.device.predictor import Predictor
from edgesam_export.device.runtime import Session
from edgesam_export.host.graphs import DecoderGraph
from edgesam_export.host.models import (
    LoadedModel,
    build_model,
    get_spec,
    load_model,
    synth_state_dict,
)
from edgesam_export.host.reference import reference_sessions

FIXTURES = Path(__file__).parent / "fixtures" / "efficientvit_sam"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
VARIANTS = ("l0", "xl0")

# Tolerances from the fixture READMEs (>= 8x the float32-vs-float64 noise of the official code).
EMBED_TOL = 1e-4
LOGIT_TOL = 2e-4
SCORE_TOL = 1e-5
MASK_MISMATCH = 1e-4  # fraction of pixels per mask array


@functools.cache
def golden(variant: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"golden_{variant}_seed0.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _wrapped_checkpoint(variant: str, directory: Path) -> Path:
    """The fixture rule's weights (seed 0) saved as the trainer does: {"state_dict": ...},
    without BatchNorm step counters (PyTorch's strict loading accepts that)."""
    state = synth_state_dict(f"efficientvit_sam_{variant}", 0)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = directory / f"efficientvit_sam_{variant}.pt"
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module", params=VARIANTS)
def evit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    variant = request.param
    path = _wrapped_checkpoint(variant, tmp_path_factory.mktemp(variant))
    loaded = load_model(path, model=f"efficientvit_sam_{variant}")
    path.unlink()
    g = golden(variant)
    tensor, info = P.preprocess(g["image"], params=loaded.spec.preprocessing)
    with torch.inference_mode():
        emb = loaded.model.image_encoder(torch.from_numpy(tensor)).numpy()
    return variant, loaded, g, tensor, info, emb


def test_preprocessing_is_bit_exact(evit):
    variant, _, g, tensor, info, _ = evit
    side = 512 if variant == "l0" else 1024
    assert tensor.shape == (1, 3, side, side)
    assert hashlib.sha256(tensor.tobytes()).hexdigest() == str(g["input_image_sha256"])
    # prompts and masks live in SAM's 1024 frame even when the encoder sees 512
    assert info.img_size == 1024 and info.input_size == tuple(g["input_size"])
    assert info.original_size == tuple(g["original_size"])


def test_encoder_matches_golden(evit):
    _, _, g, _, _, emb = evit
    assert emb.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(emb[..., ::4, ::4], g["embeddings_sub4"], rtol=0, atol=EMBED_TOL)
    # The export-friendly copy (matrix bicubic) is what ONNX exports: test_families checks it
    # against this reference on onnxruntime.


def _prompt(g: dict[str, np.ndarray], p: str) -> dict[str, np.ndarray]:
    out = {}
    if f"{p}_point_coords" in g:
        out["points"], out["labels"] = g[f"{p}_point_coords"], g[f"{p}_point_labels"]
    if f"{p}_box" in g:
        out["box"] = g[f"{p}_box"]
    return out


class _Cached(Session):
    """The reference encoder session, answering the fixture's one image from its cache (the
    encoder already ran on exactly this tensor); any other input runs the encoder."""

    backend = "torch"

    def __init__(self, inner: Session, tensor: np.ndarray, emb: np.ndarray) -> None:
        super().__init__(inner.graph, inner.inputs, inner.outputs, inner.metadata)
        self.inner, self.tensor, self.emb = inner, tensor, emb

    def _run(self, feeds):
        if np.array_equal(feeds["image"], self.tensor):
            return {"image_embeddings": self.emb}
        return self.inner.run(feeds)


def test_predictor_matches_golden_at_the_original_size(evit):
    """End to end through the device predictor: logits, scores and original-size masks."""
    _, loaded, g, tensor, _, emb = evit
    enc, decs = reference_sessions(loaded)
    predictor = Predictor(_Cached(enc, tensor, emb), decs[False])
    assert predictor.img_size == loaded.spec.img_size and predictor.frame == 1024
    predictor.set_image(g["image"])
    h, w = (int(v) for v in g["original_size"])
    for p in "abcd":
        for kind, n in (("single", 1), ("multi", 3)):
            pred = predictor.predict(**_prompt(g, p), num_multimask_outputs=n)
            where = f"prompt {p} {kind}"
            np.testing.assert_allclose(
                pred.low_res_logits[..., ::2, ::2], g[f"{p}_{kind}_low_res_sub2"], rtol=0,
                atol=LOGIT_TOL, err_msg=where,
            )  # fmt: skip
            np.testing.assert_allclose(
                pred.scores, g[f"{p}_{kind}_scores"], rtol=0, atol=SCORE_TOL, err_msg=where
            )
            masks = np.unpackbits(g[f"{p}_{kind}_masks_packed"], axis=-1, count=w).astype(bool)
            assert pred.masks.shape == masks.shape == (n, h, w)
            mismatch = (pred.masks != masks).reshape(n, -1).mean(axis=1)
            assert mismatch.max() <= MASK_MISMATCH, (where, mismatch)


def test_decoder_without_padding_matches_the_official_runner(evit):
    """The official ONNX runner sends points without SAM's padding point: pad=False here."""
    _, loaded, g, _, info, emb = evit
    graph = DecoderGraph(loaded.model, loaded.spec.frame)
    for p in "ab":
        coords, labels = P.build_prompts(
            g[f"{p}_point_coords"], g[f"{p}_point_labels"], original_size=info.original_size,
            img_size=info.img_size, pad=False,
        )  # fmt: skip
        np.testing.assert_array_equal(coords, g[f"onnx_{p}_point_coords"])
        with torch.inference_mode():
            scores, masks = graph(torch.from_numpy(emb), torch.from_numpy(coords),
                                  torch.from_numpy(labels))  # fmt: skip
        np.testing.assert_allclose(
            masks.numpy()[..., ::2, ::2], g[f"onnx_{p}_multi_low_res_sub2"], rtol=0, atol=LOGIT_TOL
        )
        np.testing.assert_allclose(
            scores.numpy(), g[f"onnx_{p}_multi_iou_predictions"], rtol=0, atol=SCORE_TOL
        )


def test_norm_eps_is_part_of_the_model_definition():
    """The zoo sets eps 1e-6 on every norm, the mask decoder's LayerNorms included."""
    model = build_model(get_spec("efficientvit_sam_l0"))
    eps = {type(m).__name__: m.eps for m in model.modules() if hasattr(m, "eps")}
    assert eps == {"BatchNorm2d": 1e-6, "LayerNorm2d": 1e-6, "LayerNorm": 1e-6}
    edge = build_model(get_spec("edge_sam"))
    assert {m.eps for m in edge.mask_decoder.modules() if type(m).__name__ == "LayerNorm"} == {1e-5}


# Parameter counts of model.parameters() (buffers excluded); l0/xl0's float32 totals including
# BatchNorm statistics are the fixture manifests' counts.
PARAMS = {
    "efficientvit_sam_l0": 34_792_784,
    "efficientvit_sam_l1": 47_650_128,
    "efficientvit_sam_l2": 61_328_592,
    "efficientvit_sam_xl0": 116_957_904,
    "efficientvit_sam_xl1": 203_346_128,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_layout_matches_built_model(name):
    model = build_model(get_spec(name))
    layout = load_layout(name)["tensors"]
    state = model.state_dict()
    assert set(state) == set(layout)
    assert all(list(state[k].shape) == layout[k]["shape"] for k in layout)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    short = name.rsplit("_", 1)[1]
    manifest = SHARED / f"efficientvit_sam_{short}" / "manifest.json"
    if manifest.exists():  # the official module order and shapes, where a fixture exists
        official = json.loads(manifest.read_text())["tensors"]
        assert {k: v["shape"] for k, v in official.items()} == {
            k: v["shape"] for k, v in layout.items()
        }
        floats = sum(int(np.prod(v["shape"])) for v in official.values() if v["dtype"] != "int64")
        assert floats == sum(t.numel() for t in state.values() if t.is_floating_point())


def test_bare_state_dict_loads_and_variants_are_told_apart(tmp_path):
    state = synth_state_dict("efficientvit_sam_l0", 1)
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    loaded = load_model(bare, model="efficientvit_sam_l0")
    key = "image_encoder.neck.output_ops.0.op_list.0.conv.weight"
    assert torch.equal(loaded.model.state_dict()[key], state[key])
    for other in ("efficientvit_sam_l1", "edge_sam"):
        with pytest.raises(CheckpointError, match="--model efficientvit_sam_l0"):
            load_model(bare, model=other)  # the variant is named, not just the family


def test_loaded_reference_is_the_official_checkpoint_layout(evit):
    _, loaded, *_ = evit
    assert isinstance(loaded, LoadedModel) and not loaded.synthetic and loaded.sha256

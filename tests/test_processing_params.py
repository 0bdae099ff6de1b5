"""Per-model processing parameters: normalisation, padding order, prompt frame, mask tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_export.device import processing as P
from edgesam_export.device.contract import MaskTokens, Preprocessing
from edgesam_export.device.parity import make_test_image
from edgesam_export.host.models import get_spec

IMAGE = make_test_image(120, 160, seed=3)


def test_unit_normalisation_is_torchvision_to_tensor_then_normalize():
    params = Preprocessing(encoder_size=160, frame=1024, normalize="unit")
    tensor, _ = P.preprocess(IMAGE, params=params)
    x = torch.from_numpy(IMAGE).permute(2, 0, 1).float().div(255)  # ToTensor
    mean = torch.tensor([v / 255 for v in params.pixel_mean], dtype=torch.float32)
    std = torch.tensor([v / 255 for v in params.pixel_std], dtype=torch.float32)
    expected = x.sub(mean[:, None, None]).div(std[:, None, None]).numpy()  # Normalize
    assert np.array_equal(tensor[0, :, :120, :160], expected)
    sam, _ = P.preprocess(IMAGE, 160)
    diff = np.abs(sam - tensor).max()
    assert 0 < diff < 1e-6  # the same maths, rounded differently: a real, tiny difference


def test_padding_order():
    after, _ = P.preprocess(IMAGE, params=Preprocessing(encoder_size=200, frame=200))
    before, _ = P.preprocess(
        IMAGE, params=Preprocessing(encoder_size=200, frame=200, pad="before-normalize")
    )
    h, w = P.get_preprocess_shape(120, 160, 200)
    assert np.array_equal(after[..., :h, :w], before[..., :h, :w])
    assert not after[..., h:, :].any()
    zero = (0.0 - np.float32(P.DEFAULT_PIXEL_MEAN[0])) / np.float32(P.DEFAULT_PIXEL_STD[0])
    assert np.all(before[0, 0, h:, :] == np.float32(zero))
    with pytest.raises(ValueError, match="pad"):
        Preprocessing(pad="centre")


def test_prompt_frame_is_separate_from_the_encoder_input():
    spec = get_spec("efficientvit_sam_l0")
    tensor, info = P.preprocess(IMAGE, params=spec.preprocessing)
    assert tensor.shape == (1, 3, 512, 512)
    assert info.img_size == 1024 and info.input_size == (768, 1024)
    coords, _ = P.build_prompts([[160, 120]], [1], original_size=(120, 160), img_size=info.img_size)
    assert coords[0, 0].tolist() == [1024.0, 768.0]
    # EdgeSAM: one frame for both
    tensor, info = P.preprocess(IMAGE, params=get_spec("edge_sam").preprocessing)
    assert tensor.shape == (1, 3, 1024, 1024) and info.img_size == 1024


def test_metadata_round_trip_and_old_artifacts():
    params = get_spec("efficientvit_sam_l0").preprocessing
    assert Preprocessing.from_metadata(params.to_metadata()) == params
    old = {"img_size": "1024", "pixel_mean": "[1.0, 2.0, 3.0]", "pixel_std": "[4.0, 5.0, 6.0]"}
    read = Preprocessing.from_metadata(old)  # artifacts from before the split
    assert (read.encoder_size, read.frame, read.normalize, read.pad) == (
        1024,
        1024,
        "sam",
        "after-normalize",
    )
    assert read.pixel_mean == (1.0, 2.0, 3.0)
    assert MaskTokens.from_metadata({"num_mask_tokens": "4"}) == MaskTokens()


def test_select_masks_follows_the_token_convention():
    scores = np.arange(4, dtype=np.float32)
    masks = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    s, _ = P.select_masks(scores, masks, 1)
    assert s.tolist() == [0.0]
    s, m = P.select_masks(scores, masks, 3)
    assert s.tolist() == [1.0, 2.0, 3.0] and m[:, 0, 0].tolist() == [1.0, 2.0, 3.0]
    other = MaskTokens(count=4, single=(3,), multi=(0, 1, 2))  # a family with another order
    s, m = P.select_masks(scores, masks, 1, other)
    assert s.tolist() == [3.0] and m.shape == (1, 2, 2)
    s, m = P.select_masks(np.stack([scores] * 2), np.stack([masks] * 2), 3, other)
    assert s.tolist() == [[0.0, 1.0, 2.0]] * 2 and m.shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        MaskTokens(count=3, single=(0,), multi=(1, 2, 3))


def test_spec_defaults_let_a_new_entry_give_only_its_own_values():
    from edgesam_export.device.models import ModelSpec

    spec = ModelSpec(
        name="x",
        family="X",
        description="",
        img_size=512,
        layout="x.json",
        signature_prefixes=("image_encoder.x.",),
        builder=lambda: None,  # type: ignore[arg-type,return-value]
    )
    assert spec.frame == 512 and spec.tokens == MaskTokens() and spec.num_mask_tokens == 4
    assert spec.preprocessing.normalize == "sam" and spec.embed_shape == (256, 64, 64)
    with pytest.raises(ValueError, match="normalize"):
        ModelSpec(**{**spec.__dict__, "normalize": "imagenet"})

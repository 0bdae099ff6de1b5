"""EdgeTAM video mode: memory modules, memory graphs and the torch-free tracker.

Goldens: tests/fixtures/edgetam/video_seed0.npz (the official code's video outputs on the
synthetic weights of seed 0, trimmed by tests/make_edgetam_video_fixture.py; the shared README
gives every convention and the tolerances used here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam_export.host.models.checkpoint import synth_tensor
from edgesam_export.host.models.edgetam.memory import EdgeTamMemory, split_object_pointers

FIXTURE = Path(__file__).parent / "fixtures" / "edgetam" / "video_seed0.npz"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def memory() -> EdgeTamMemory:
    """The memory modules with synthetic weights of seed 0 (they depend on key and shape)."""
    mod = EdgeTamMemory()
    state = {
        k: torch.from_numpy(synth_tensor(k, tuple(v.shape), "float32", 0))
        for k, v in mod.state_dict().items()
    }
    return mod.load_from(state).eval()


def test_memory_modules_load_their_keys_strictly(memory: EdgeTamMemory) -> None:
    state = memory.state_dict()
    assert all(EdgeTamMemory.owns(k) for k in state)
    with pytest.raises(RuntimeError, match="Missing key"):
        EdgeTamMemory().load_from({k: v for k, v in state.items() if "fuser.layers.1" not in k})


def test_memory_position_encoding_matches_golden(memory: EdgeTamMemory, golden) -> None:
    pos = memory.spatial_perceiver.latent_pos.numpy()
    np.testing.assert_array_equal(pos, golden["video_f0_maskmem_pos_enc"][0])


@pytest.mark.parametrize("obj", [1, 2])
def test_frame1_memory_tokens_match_golden(memory: EdgeTamMemory, golden, obj: int) -> None:
    """Bank (bf16 perceiver output) + frame-0 pointer split into 4 tokens; positions + tpos[6]."""
    feats = torch.from_numpy(golden[f"video_obj{obj}_f0_maskmem_features"])
    bank = feats.to(torch.bfloat16).float()
    np.testing.assert_array_equal(bank.numpy(), golden[f"video_obj{obj}_f0_maskmem_features_bank"])
    ptr = torch.from_numpy(golden[f"video_obj{obj}_obj_ptr"][:1])[None]  # (1, 1, 256)
    tokens = torch.cat([bank, split_object_pointers(ptr)], dim=1)
    np.testing.assert_array_equal(tokens[0].numpy(), golden[f"video_obj{obj}_f1_memory"][:, 0])
    with torch.no_grad():
        pos = memory.memory_pos(torch.tensor([6]))[0]
    expected = golden[f"video_obj{obj}_f1_memory_pos"][:, 0]
    np.testing.assert_allclose(pos.numpy(), expected[:512], atol=1e-7, rtol=0)
    assert not expected[512:].any()


def test_perceiver_batches_objects(memory: EdgeTamMemory) -> None:
    """Batch > 1 gives each row's own latents (the official `view` raises there)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 64, 64, generator=gen)
    with torch.no_grad():
        batched = memory.spatial_perceiver(x)
        single = torch.cat([memory.spatial_perceiver(x[i : i + 1]) for i in range(2)])
    assert batched.shape == (2, 512, 64)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 1e-2


@pytest.mark.heavy
def test_memory_attention_rotates_window_tokens_only(memory: EdgeTamMemory) -> None:
    """Pointer tokens and global latents carry no RoPE (order-free); window latents do."""
    gen = torch.Generator().manual_seed(2)
    curr = torch.randn(1, 256, 64, 64, generator=gen)
    mem = torch.randn(1, 2, 512, 64, generator=gen)
    pos = torch.randn(1, 2, 512, 64, generator=gen)
    ptr = torch.randn(1, 12, 64, generator=gen)
    att = memory.memory_attention
    with torch.no_grad():
        base = att(curr, mem, pos, ptr)
        g = torch.randperm(256, generator=gen)
        glob_perm = att(
            curr,
            torch.cat([mem[:, :, g], mem[:, :, 256:]], 2),
            torch.cat([pos[:, :, g], pos[:, :, 256:]], 2),
            ptr.flip(1),
        )
        w = 256 + torch.randperm(256, generator=gen)
        win_perm = att(
            curr,
            torch.cat([mem[:, :, :256], mem[:, :, w]], 2),
            torch.cat([pos[:, :, :256], pos[:, :, w]], 2),
            ptr,
        )
    torch.testing.assert_close(glob_perm, base, atol=1e-4, rtol=0)
    assert (win_perm - base).abs().max() > 1e-3

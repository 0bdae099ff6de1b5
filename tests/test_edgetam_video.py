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


@pytest.mark.extended
def test_cross_attention_in_memory_space_equals_the_plain_form(memory: EdgeTamMemory) -> None:
    """The 64-d cross-attention (values attended before v_proj, unrotated keys as (q Wk).m, the
    bias moved onto the rotated keys) is the plain form: every key and value projected to 256,
    window keys rotated, one softmax. float64, so only the algebra is compared; batch-1 queries
    broadcast against B memories (the memory_attention graph's form) give each row's own."""
    import copy

    import torch.nn.functional as F

    from edgesam_export.host.models.edgetam.memory import NUM_LATENTS, apply_rope

    att = copy.deepcopy(memory.memory_attention.layers[0].cross_attn_image).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4096, 256, generator=gen, dtype=torch.float64)
    sk, sv = (torch.randn(2, 1, 512, 64, generator=gen, dtype=torch.float64) for _ in "kv")
    ptr = torch.randn(2, 8, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        q = apply_rope(att.q_proj(x), att.cos_q, att.sin_q)
        k = att.k_proj(sk)
        rot = apply_rope(k[:, :, NUM_LATENTS:], att.cos_k, att.sin_k)
        k = torch.cat(
            [torch.cat([k[:, :, :NUM_LATENTS], rot], 2).reshape(2, -1, 256), att.k_proj(ptr)], 1
        )
        v = torch.cat([att.v_proj(sv).reshape(2, -1, 256), att.v_proj(ptr)], 1)
        plain = att.out_proj(F.scaled_dot_product_attention(q.expand(2, -1, -1), k, v))
        ours = att(x, sk, sv, ptr)
    assert ours.shape == (2, 4096, 256)
    torch.testing.assert_close(ours, plain, atol=1e-10, rtol=0)
    assert (ours[0] - ours[1]).abs().max() > 1e-3


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


# --------------------------------------------------------------------------- device side, cheap


def test_video_frames_bicubic_match_golden(golden) -> None:
    """Pillow BICUBIC on uint8 + ImageNet normalisation, in numpy: bit-exact (stored rows)."""
    from edgesam_export.video.frames import preprocess_frame

    step = int(golden["video_input_row_step"])
    for t in (0, 1):
        x = preprocess_frame(golden["video_frames"][t])
        assert x.shape == (1, 3, 1024, 1024) and x.dtype == np.float32
        np.testing.assert_array_equal(x[0, :, ::step], golden["video_input_frames01_rows"][t])


def test_bicubic_resize_matches_pillow_on_random_shapes() -> None:
    """Up- and downscaling, both pass orders of Pillow 13: bit-exact with Image.BICUBIC."""
    from PIL import Image

    from edgesam_export.device.processing import resize_uint8

    rng = np.random.default_rng(5)
    for _ in range(12):
        h, w = rng.integers(16, 200, 2)
        oh, ow = rng.integers(16, 260, 2)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = resize_uint8(img, (int(oh), int(ow)), resample="bicubic")
        ref = np.asarray(Image.fromarray(img).resize((int(ow), int(oh)), Image.BICUBIC))
        np.testing.assert_array_equal(ours, ref)


def test_numerics_match_torch() -> None:
    import torch.nn.functional as F

    from edgesam_export.video.numerics import resize_bilinear, stability, to_bfloat16

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((512, 64)) * 5).astype(np.float32)
    np.testing.assert_array_equal(to_bfloat16(x), torch.from_numpy(x).bfloat16().float().numpy())
    logits = (rng.standard_normal((256, 256)) * 10).astype(np.float32)
    for size in ((240, 320), (1024, 1024), (100, 700)):
        ref = F.interpolate(torch.from_numpy(logits)[None, None], size, mode="bilinear")
        np.testing.assert_allclose(resize_bilinear(logits, *size), ref[0, 0].numpy(), atol=1e-5)
    assert stability(np.full((4, 4), -5, np.float32), 0.05) == 1.0
    assert stability(np.array([[1.0, 0.01], [-1, -1]], np.float32), 0.05) == 0.5


class _FakeSession:
    """Shape-true stand-in for one video graph; records the feeds it gets."""

    def __init__(self, graph: str, calls: list) -> None:
        self.graph, self.calls = graph, calls

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((self.graph, {k: v.copy() for k, v in feeds.items()}))
        if self.graph == "video_encoder":
            z = np.zeros
            return {
                "pix_feat": z((1, 256, 64, 64), np.float32),
                "image_embed": z((1, 256, 64, 64), np.float32),
                "high_res_0": z((1, 32, 256, 256), np.float32),
                "high_res_1": z((1, 64, 128, 128), np.float32),
            }
        if self.graph == "video_decoder":
            b = feeds["image_embed"].shape[0]
            logits = np.zeros((b, 4, 256, 256), np.float32)
            logits[:, :, :128] = 1.0
            iou = np.tile(np.array([0.1, 0.2, 0.9, 0.3], np.float32), (b, 1))
            ptr = np.arange(4 * 256, dtype=np.float32).reshape(1, 4, 256).repeat(b, 0)
            return {
                "low_res_masks": logits,
                "iou_predictions": iou,
                "object_score_logits": np.ones((b, 1), np.float32),
                "obj_ptr": ptr,
            }
        if self.graph == "memory_encoder":
            b = feeds["mask_logits"].shape[0]
            return {"maskmem_features": np.full((b, 512, 64), 1.0 + 2**-10, np.float32)}
        b = feeds["memory"].shape[0]
        return {"image_embed": np.zeros((b, 256, 64, 64), np.float32)}


def test_tracker_memory_selection_follows_the_official_rule() -> None:
    """Memory frames, temporal indices and pointers per frame (README: f7 = 7 memories + 28
    pointer tokens), objects sharing a layout batched in one call, a late object on its own."""
    from edgesam_export.video import VideoTracker
    from edgesam_export.video.tracker import GRAPHS

    calls: list = []
    tracker = VideoTracker({g: _FakeSession(g, calls) for g in GRAPHS})
    frames = [np.zeros((48, 64, 3), np.uint8)] * 9
    prompts = {
        "a": {"frame": 0, "points": [[10, 20]], "labels": [1]},
        "b": {"frame": 0, "box": [1, 2, 30, 40]},
        "late": {"frame": 3, "points": [[5, 5], [9, 9]], "labels": [1, 0]},
    }
    out = tracker.track(frames, prompts)
    attn = [f for g, f in calls if g == "memory_attention"]
    by_b = {}
    for feeds in attn:
        by_b.setdefault(feeds["memory"].shape[0], []).append(feeds)
    early, late = by_b[2], by_b[1]
    assert len(early) == 8 and len(late) == 5  # frames 1..8 batched (a, b); 4..8 for "late"
    f7 = early[6]
    assert f7["memory"].shape == (2, 7, 512, 64) and f7["obj_ptrs"].shape == (2, 7, 256)
    assert f7["memory_tpos"].tolist() == [6, 5, 4, 3, 2, 1, 0]
    f8 = early[7]  # frame 1 drops out of the 6 most recent; pointers keep 8 frames
    assert f8["memory_tpos"].tolist() == [6, 5, 4, 3, 2, 1, 0] and f8["obj_ptrs"].shape[1] == 8
    # bank in bfloat16: 1 + 2^-10 rounds to 1
    assert np.all(f7["memory"] == 1.0)
    # "a" (1 click) takes the best multimask token's pointer (token 2), "b" (box) token 0's
    ptr_a, ptr_b = out["a"]["obj_ptr"][0], out["b"]["obj_ptr"][0]
    assert ptr_a[0] == 2 * 256 and ptr_b[0] == 0
    # frames before the late object's prompt are empty
    assert (out["late"]["low_res_logits"][:3] == -1024).all() and not out["late"]["masks"][:3].any()
    assert out["late"]["masks"][3:].any() and out["a"]["masks"].shape == (9, 48, 64)
    dec = [f for g, f in calls if g == "video_decoder"]
    cond0 = dec[0]  # frame 0: "a" (1 point) and "b" (box: 2 points) differ in size -> 2 calls
    assert cond0["point_coords"].shape == (1, 1, 2)
    np.testing.assert_allclose(cond0["point_coords"][0, 0], [10 / 64 * 1024, 20 / 48 * 1024])
    binarize = [f["binarize"].tolist() for g, f in calls if g == "memory_encoder"]
    assert len(binarize) == len(frames) - 1  # the last frame's memory is never read
    assert (
        binarize[0] == [1.0, 1.0] and binarize[1] == [0.0, 0.0] and binarize[3] == [0.0, 0.0, 1.0]
    )


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"frame": 9, "points": [[1, 1]], "labels": [1]}, "'frame' must be"),
        ({"frame": 0}, "give 'points'"),
        ({"frame": 0, "points": [[1, 1]], "labels": [7]}, "labels must be"),
        ({"frame": 0, "box": [1, 2, 3]}, "'box' must be"),
    ],
)
def test_tracker_rejects_bad_prompts(prompt, message) -> None:
    from edgesam_export.device.errors import InputError
    from edgesam_export.video import VideoTracker
    from edgesam_export.video.tracker import GRAPHS

    tracker = VideoTracker({g: _FakeSession(g, []) for g in GRAPHS})
    with pytest.raises(InputError, match=message):
        tracker.track([np.zeros((8, 8, 3), np.uint8)], {1: prompt})


# --------------------------------------------------------------------------- graphs (heavy)

TOL_LOGITS = 1e-3  # README: video low-res logits 1e-3, object scores 1e-4, obj_ptr 2e-4
TOL_SCORE = 1e-4
TOL_PTR = 2e-4
MAX_FLIPS = 10  # mask pixels per frame
TOL_MASKMEM = 1e-3
TOL_XATTN = 2e-3
TOL_PIXMEM = 5e-4
TESTS = Path(__file__).parent

_TRACK_SCRIPT = """
import sys, numpy as np
from edgesam_export.video import VideoTracker
g = np.load(sys.argv[2])
prompts = {
    1: {"frame": 0, "points": g["video_obj1_point_coords"].tolist(),
        "labels": g["video_obj1_point_labels"].tolist()},
    2: {"frame": 0, "box": g["video_obj2_box"].tolist()},
}
out = VideoTracker.open(sys.argv[1], backend=sys.argv[4]).track(list(g["video_frames"]), prompts)
assert not any(m in sys.modules for m in ("torch", "cv2", "PIL"))
np.savez(sys.argv[3], **{f"{o}_{k}": v for o, r in out.items() for k, v in r.items()})
"""


def _edgetam(calibrated: bool = False):
    import json

    from edgesam_export.host.models.edgetam import build_edgetam, load_state_dict_checked

    tensors = json.loads((FIXTURE.parent / "manifest.json").read_text())["tensors"]
    state = {
        k: torch.from_numpy(synth_tensor(k, tuple(v["shape"]), v["dtype"], 0))
        for k, v in tensors.items()
    }
    model = build_edgetam()
    load_state_dict_checked(model, state)
    return model


@pytest.fixture(scope="module")
def video_onnx(tmp_path_factory) -> Path:
    """`edgesam-export onnx --model edgetam` on the golden's weights (synthetic seed 0, as
    drawn): the one export path writes the image and the video graphs."""
    from edgesam_export.host.config import ModelOptions, OnnxOptions
    from edgesam_export.host.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("edgetam_video") / "export"
    export_artifacts(
        ModelOptions(model="edgetam", synthetic="untrained"), "onnx", OnnxOptions(output=out)
    )
    return out


@pytest.mark.heavy
def test_onnx_export_writes_every_graph_and_the_tracker_opens_it(video_onnx) -> None:
    """`onnx --model edgetam` (the pipeline) publishes the registry's six graphs, each with its
    contract, metadata and a manifest entry, and `VideoTracker.open` reads that folder."""
    import json

    from edgesam_export.device.backends import open_session
    from edgesam_export.device.models import get_spec
    from edgesam_export.video import VideoTracker

    spec = get_spec("edgetam")
    assert len(spec.graphs) == 6
    manifest = json.loads((video_onnx / "manifest.json").read_text())
    entries = {e["graph"]: e for e in manifest["artifacts"]}
    assert sorted(entries) == sorted(spec.graphs)
    assert manifest["reference_outputs"]["path"] in {p.name for p in video_onnx.iterdir()}
    for graph in spec.graphs:
        path = video_onnx / f"edgetam_{graph}.onnx"
        assert entries[graph]["path"] == path.name
        session = open_session(path)
        assert session.metadata["graph"] == graph and session.metadata["model"] == "edgetam"
        assert session.metadata["weights"] == "synthetic-untrained"
        inputs, outputs = spec.graph_io(graph)
        assert [t.name for t in session.inputs] == [t.name for t in inputs]
        assert [t.name for t in session.outputs] == [t.name for t in outputs]
    tracker = VideoTracker.open(video_onnx)
    assert {g: s.metadata["graph"] for g, s in tracker.sessions.items()} == {
        g: g for g in spec.graphs[2:]
    }


@pytest.mark.heavy
def test_parity_judges_every_video_graph_against_pytorch(video_onnx) -> None:
    """`parity` on the six-graph export: the image graphs and each video graph alone on the
    reference chain's calls (device/judge_video.py), measured sam2 rows, one report; the
    manifest records a verdict for all six artifacts. Against the shipped reference outputs
    (no video answers in them) the video graphs are listed as skipped, never passed."""
    import json

    from edgesam_export.device.contract import VIDEO_GRAPHS
    from edgesam_export.host.pipeline import verify_artifacts

    report = verify_artifacts(None, video_onnx, reference="torch")
    rows = {(r["artifact"], r["check"]): r for r in report.summary()}
    assert report.passed, [r for r in rows.values() if not r["passed"]]
    checks = {check for _, check in rows}
    for graph, outputs in {
        "video_encoder": ("pix_feat", "image_embed", "high_res_0", "high_res_1"),
        "video_decoder": ("low_res_masks", "iou_predictions", "object_score_logits", "obj_ptr"),
        "memory_encoder": ("maskmem_features",),
        "memory_attention": ("image_embed",),
    }.items():
        assert {f"{graph}.{o}" for o in outputs} <= checks, checks
    assert not any(r["estimate"] for r in rows.values())
    manifest = json.loads((video_onnx / "manifest.json").read_text())
    assert {e["parity"] for e in manifest["artifacts"]} == {"passed"}
    outputs = verify_artifacts(None, video_onnx, reference="outputs")
    assert outputs.passed
    skipped = {s["artifact"] for s in outputs.skipped}
    assert skipped == {f"edgetam_{g}.onnx" for g in VIDEO_GRAPHS}


def _masks(golden, obj: int) -> np.ndarray:
    packed = golden[f"video_obj{obj}_masks_packed"]
    return np.unpackbits(packed, axis=-1)[..., : golden["video_frames"].shape[2]].astype(bool)


@pytest.mark.heavy
def test_onnx_tracker_matches_golden_video_torch_blocked(video_onnx, golden, tmp_path) -> None:
    """Both objects, all 8 frames, one batched tracker, torch/cv2/PIL import-blocked."""
    check_tracked_video(video_onnx, "onnx", golden, tmp_path)


def check_tracked_video(folder: Path, backend: str, golden, tmp_path: Path) -> dict[str, float]:
    """`VideoTracker.open(folder, backend)` in a fresh interpreter with torch, cv2 and PIL
    blocked, on the golden video's frames and prompts; every frame of both objects judged with
    the README's tolerances (also tests/test_edgetam_coreml.py). Returns the worst values."""
    import os
    import subprocess
    import sys

    result = tmp_path / "track.npz"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "torch_blocker"), str(TESTS.parent)]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _TRACK_SCRIPT, str(folder), str(FIXTURE), str(result), backend],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst: dict[str, float] = {}
    with np.load(result) as r:
        for obj in (1, 2):
            logits = r[f"{obj}_low_res_logits"]
            assert logits.shape == (8, 256, 256) and logits.dtype == np.float32
            err = np.abs(logits - golden[f"video_obj{obj}_low_res_logits"]).max()
            assert err <= TOL_LOGITS, f"obj {obj} logits {err}"
            score = np.abs(
                r[f"{obj}_object_score_logits"] - golden[f"video_obj{obj}_object_score_logits"]
            )
            assert score.max() <= TOL_SCORE
            ptr = np.abs(r[f"{obj}_obj_ptr"] - golden[f"video_obj{obj}_obj_ptr"]).max()
            assert ptr <= TOL_PTR
            flips = (r[f"{obj}_masks"] != _masks(golden, obj)).sum(axis=(1, 2))
            assert flips.max() <= MAX_FLIPS, flips
            for key, value in (
                ("logits", err),
                ("object_score", score.max()),
                ("obj_ptr", ptr),
                ("flips", flips.max()),
            ):
                worst[key] = max(worst.get(key, 0.0), float(value))
    return worst


@pytest.mark.heavy
def test_onnx_memory_graphs_match_golden_intermediates(video_onnx, golden) -> None:
    """Memory encoder + perceiver (frame 0, both objects in one call) and the memory-conditioned
    features of frame 1 (both objects batched) from the ONNX graphs."""
    check_memory_intermediates(video_onnx, ".onnx", golden)


def check_memory_intermediates(folder: Path, suffix: str, golden) -> dict[str, float]:
    """The memory graphs `<folder>/edgetam_*<suffix>` against the golden intermediates (also
    tests/test_edgetam_coreml.py); returns the worst values."""
    from edgesam_export.device.backends import open_session
    from edgesam_export.video.frames import preprocess_frame
    from edgesam_export.video.numerics import to_bfloat16

    enc = open_session(folder / f"edgetam_video_encoder{suffix}")
    f0 = enc.run({"image": preprocess_frame(golden["video_frames"][0])})
    f1 = enc.run({"image": preprocess_frame(golden["video_frames"][1])})
    np.testing.assert_allclose(
        f1["pix_feat"][:, :, ::8], golden["video_f1_vision_feat_rows"], rtol=0, atol=2e-4 * 2.7e7
    )
    worst = {
        "pix_feat": float(
            np.abs(f1["pix_feat"][:, :, ::8] - golden["video_f1_vision_feat_rows"]).max()
        )
    }
    logits = np.stack([golden[f"video_obj{o}_low_res_logits"][0] for o in (1, 2)])[:, None]
    mem = open_session(folder / f"edgetam_memory_encoder{suffix}").run(
        {"pix_feat": f0["pix_feat"], "mask_logits": logits, "binarize": np.ones(2, np.float32)}
    )["maskmem_features"]
    banks = []
    for i, obj in enumerate((1, 2)):
        err = np.abs(mem[i] - golden[f"video_obj{obj}_f0_maskmem_features"][0]).max()
        assert err <= TOL_MASKMEM, err
        worst["maskmem_features"] = max(worst.get("maskmem_features", 0.0), float(err))
        bank = to_bfloat16(mem[i])
        gold = golden[f"video_obj{obj}_f0_maskmem_features_bank"][0]
        # bf16(a) - bf16(b) stays within |a - b| + one bf16 step of b; a step off only rarely
        upstream = np.abs(mem[i] - golden[f"video_obj{obj}_f0_maskmem_features"][0])
        assert np.all(np.abs(bank - gold) <= upstream + np.abs(gold) * 2**-7)
        assert (bank != gold).mean() < 0.01
        banks.append(gold)
    ptrs = np.stack([golden[f"video_obj{o}_obj_ptr"][:1] for o in (1, 2)])
    out = open_session(folder / f"edgetam_memory_attention{suffix}").run(
        {
            "pix_feat": f1["pix_feat"],
            "memory": np.stack(banks)[:, None],
            "memory_tpos": np.array([6]),
            "obj_ptrs": ptrs,
        }
    )["image_embed"]
    for i, obj in enumerate((1, 2)):
        gold = golden[f"video_obj{obj}_f1_pix_feat_with_mem_rows"]
        rows = out[i : i + 1, :, 0 : 8 * gold.shape[2] : 8]
        assert np.abs(rows - gold).max() <= TOL_PIXMEM
        worst["pix_feat_with_mem"] = max(
            worst.get("pix_feat_with_mem", 0.0), float(np.abs(rows - gold).max())
        )
    return worst


@pytest.mark.heavy
def test_cross_attention_rows_match_golden(golden) -> None:
    """RoPE + cross-attention, both layers, both objects in one batch (torch, with hooks)."""
    from edgesam_export.host.models.edgetam.video_graphs import MemoryAttentionGraph
    from edgesam_export.video.frames import preprocess_frame

    model = _edgetam()
    with torch.no_grad():
        pix1 = model.backbone_levels(torch.from_numpy(preprocess_frame(golden["video_frames"][1])))[
            2
        ]
        outs: list[torch.Tensor] = []
        hooks = [
            layer.cross_attn_image.register_forward_hook(lambda _m, _i, o: outs.append(o))
            for layer in model.memory_attention.layers
        ]
        banks = np.stack([golden[f"video_obj{o}_f0_maskmem_features_bank"] for o in (1, 2)])
        ptrs = np.stack([golden[f"video_obj{o}_obj_ptr"][:1] for o in (1, 2)])
        MemoryAttentionGraph(model)(
            pix1, torch.from_numpy(banks), torch.tensor([6]), torch.from_numpy(ptrs)
        )
        for h in hooks:
            h.remove()
    step = int(golden["video_cross_attn_token_step"])
    tokens = torch.arange(64 * 64).reshape(64, 64)[::8].flatten()[::step]
    for layer, out in enumerate(outs):
        for i, obj in enumerate((1, 2)):
            gold = golden[f"video_obj{obj}_f1_cross_attn_out_l{layer}_rows"][0]
            err = np.abs(out[i, tokens].numpy() - gold).max()
            assert err <= TOL_XATTN, (layer, obj, err)
    # the two objects differ only through their pointer tokens (README: by 0.02555)
    assert (outs[0][0] - outs[0][1]).abs().max() > 1e-2


# --------------------------------------------------------------------------- CLI


def _frames_dir(golden, folder: Path, count: int) -> Path:
    from edgesam_export.device.png import write_png

    folder.mkdir()
    for t in range(count):
        write_png(folder / f"{t:05d}.png", golden["video_frames"][t])
    return folder


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 3, "give the object with --point"),
        (["--point", "1,2,3,4"], 3, "expected x,y or x,y,label"),
        (["--box", "1,2"], 3, "expected x0,y0,x1,y1"),
        (["--point", "5,5", "--frame", "7"], 3, "--frame 7"),
        (["--point", "5,5"], 5, "no *_video_encoder artifact"),
        (["--point", "5,5", "--backend", "tensorrt"], 3, "allowed: onnx, coreml"),
        (["--point", "5,5", "-b", "CoreML"], 5, "no *_video_encoder artifact for coreml"),
    ],
)
def test_track_cli_refuses_bad_input(golden, tmp_path, args, code, message) -> None:
    from typer.testing import CliRunner

    from edgesam_export.cli.export import app

    frames = _frames_dir(golden, tmp_path / "frames", 2)
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["track", str(tmp_path / "empty"), str(frames), *args])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert not (Path.cwd() / "track_out").exists()


def test_track_help_lists_the_registry_backends(monkeypatch, tmp_path) -> None:
    """`track --help` and `--backend` name the backends from the registries (backends with
    artifact files that a video model is verified on), not a fixed word: a backend that gains
    EdgeTAM's video export is listed and opened without an edit to the tracker or the CLI."""
    import dataclasses

    from typer.testing import CliRunner

    from edgesam_export.cli.export import app
    from edgesam_export.device import backends, models
    from edgesam_export.device.errors import ArtifactError
    from edgesam_export.video import tracker

    assert tracker.tracker_backends() == ("onnx", "coreml")  # edgetam's verified targets
    help_text = " ".join(CliRunner().invoke(app, ["track", "--help"]).output.split())
    assert "edgesam-export onnx|coreml --model edgetam" in help_text
    assert "--backend" in help_text and "onnx, coreml" in help_text
    backends.register(backends.Backend(name="fakert", suffixes=(".fake",)))
    try:
        specs = [
            dataclasses.replace(s, verified_targets=(*s.verified_targets, "fakert"))
            if s.name == "edgetam"
            else s
            for s in models.list_specs()
        ]
        monkeypatch.setattr(tracker, "list_specs", lambda: specs)
        assert tracker.tracker_backends() == ("onnx", "coreml", "fakert")
        with pytest.raises(ArtifactError) as info:
            tracker.VideoTracker.open(tmp_path)  # empty: the hint names every exporter
        assert "edgesam-export onnx|coreml|fakert --model edgetam" in str(info.value)
    finally:
        backends.unregister("fakert")
    assert tracker.tracker_backends() == ("onnx", "coreml")


@pytest.mark.heavy
def test_track_cli_writes_masks_strip_and_json(video_onnx, golden, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from edgesam_export.cli.export import app
    from edgesam_export.device.png import read_image

    frames = _frames_dir(golden, tmp_path / "frames", 3)
    out, report = tmp_path / "out", tmp_path / "track.json"
    x, y = golden["video_obj1_point_coords"][0]
    result = CliRunner().invoke(
        app,
        [
            "track",
            str(video_onnx),
            str(frames),
            "--point",
            f"{x},{y}",
            "-o",
            str(out),
            "--json",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert (
        data["ok"] and len(data["frames"]) == 3 and set(data["stage_seconds"]) >= {"video_encoder"}
    )
    gold = _masks(golden, 1)
    for t, rec in enumerate(data["frames"]):
        mask = read_image(out / rec["mask"])[..., 0] > 127
        assert (mask != gold[t]).sum() <= MAX_FLIPS and rec["area"] == int(mask.sum())
    assert read_image(out / "overlay_strip.png").shape == (240, 3 * 320, 3)


def test_track_cli_refuses_bad_prompts_files(golden, tmp_path) -> None:
    """`--prompts FILE`: unreadable or misshapen JSON, or given with --point, exit 3 in one
    line before any artifact is opened."""
    from typer.testing import CliRunner

    from edgesam_export.cli.export import app

    frames = _frames_dir(golden, tmp_path / "frames", 2)
    (tmp_path / "empty").mkdir()
    bad, wrong, good = tmp_path / "bad.json", tmp_path / "wrong.json", tmp_path / "good.json"
    bad.write_text("{not json")
    wrong.write_text('[{"frame": 0}]')
    good.write_text('{"a": {"frame": 0, "points": [[5, 5]], "labels": [1]}}')
    for args, message in (
        (["--prompts", str(bad)], "not a readable JSON file"),
        (["--prompts", str(wrong)], 'expected {"ID"'),
        (["--prompts", str(good), "--point", "5,5"], "not both"),
    ):
        result = CliRunner().invoke(app, ["track", str(tmp_path / "empty"), str(frames), *args])
        assert result.exit_code == 3, result.output
        assert message in " ".join(result.output.split())


@pytest.mark.heavy
def test_track_cli_tracks_several_objects_in_one_call(video_onnx, golden, tmp_path) -> None:
    """`--prompts` with the golden's two objects (a point and a box): one batched run, each
    object's masks within the golden's flips, per-object files and JSON."""
    import json

    from typer.testing import CliRunner

    from edgesam_export.cli.export import app
    from edgesam_export.device.png import read_image

    frames = _frames_dir(golden, tmp_path / "frames", 3)
    x, y = (float(v) for v in golden["video_obj1_point_coords"][0])
    prompts = {
        "1": {"frame": 0, "points": [[x, y]], "labels": [1]},
        "2": {"frame": 0, "box": [float(v) for v in golden["video_obj2_box"]]},
    }
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out, report = tmp_path / "out", tmp_path / "track.json"
    args = ["track", str(video_onnx), str(frames), "--prompts", str(tmp_path / "prompts.json")]
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert set(data["objects"]) == {"1", "2"} and data["prompts"] == prompts
    for obj in (1, 2):
        gold = _masks(golden, obj)
        for t, rec in enumerate(data["objects"][str(obj)]):
            assert rec["mask"] == f"{t:05d}_obj{obj}_mask.png"
            mask = read_image(out / rec["mask"])[..., 0] > 127
            assert (mask != gold[t]).sum() <= MAX_FLIPS, (obj, t)
    assert read_image(out / "overlay_strip.png").shape == (240, 3 * 320, 3)


# --------------------------------------------------------------------------- calibrated weights


class _TorchSession:
    """A video graph as a torch module behind the session interface (encoder outputs cached)."""

    def __init__(self, graph: str, model, zero_memory: bool = False) -> None:
        from edgesam_export.device.models import get_spec
        from edgesam_export.host.models.edgetam.video_graphs import video_graph

        self.graph, self.module, self.zero = graph, video_graph(model, graph)[0], zero_memory
        inputs, outputs = get_spec("edgetam").graph_io(graph)
        self.inputs, self.outputs = [t.name for t in inputs], [t.name for t in outputs]
        self.cache: dict[bytes, dict[str, np.ndarray]] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = feeds["image"].tobytes() if self.graph == "video_encoder" else b""
        if key in self.cache:
            return self.cache[key]
        if self.zero:
            feeds = {**feeds, "memory": 0 * feeds["memory"], "obj_ptrs": 0 * feeds["obj_ptrs"]}
        with torch.no_grad():
            outs = self.module(*(torch.from_numpy(feeds[n]) for n in self.inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        result = {n: o.numpy() for n, o in zip(self.outputs, outs, strict=True)}
        if key:
            self.cache[key] = result
        return result


@pytest.mark.heavy
def test_memory_changes_tracked_masks_on_calibrated_weights(golden) -> None:
    """With raw synthetic weights the trunk's 3e7 activations swamp the memory (README); with
    BatchNorm statistics calibrated on an image not in the video, zeroing the memory bank and
    pointers changes the tracked masks of frames 1-2 by more than 5 % of the pixels."""
    from edgesam_export.device.contract import VIDEO_GRAPHS
    from edgesam_export.device.parity import make_test_image
    from edgesam_export.host.models.calibration import calibrate_batchnorm
    from edgesam_export.video import VideoTracker
    from edgesam_export.video.frames import preprocess_frame

    model = _edgetam()
    calibration = torch.from_numpy(preprocess_frame(make_test_image(seed=11)))
    assert calibrate_batchnorm(model, None, calibration) > 0
    sessions = {g: _TorchSession(g, model) for g in VIDEO_GRAPHS}
    zeroed = {**sessions, "memory_attention": _TorchSession("memory_attention", model, True)}
    frames = list(golden["video_frames"][:3])
    prompts = {1: {"frame": 0, "points": [[140, 125]], "labels": [1]}}
    with_memory = VideoTracker(sessions).track(frames, prompts)[1]["masks"]
    without = VideoTracker(zeroed).track(frames, prompts)[1]["masks"]
    assert (with_memory[0] == without[0]).all()  # the prompted frame uses no memory
    changed = (with_memory[1:] != without[1:]).mean(axis=(1, 2))
    assert changed.min() > 0.05, changed

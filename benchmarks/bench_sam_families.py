"""SAM-family ONNX graphs vs the official export style, side by side on onnxruntime.

For MobileSAM, SlimSAM-77 and SAM ViT-B (same seed-0 weights as the golden fixtures):

- encoder: ours (the pipeline's export: static shapes, matmul relative positions, onnxslim) vs a
  plain `torch.onnx.export` of an official-style encoder: the official forward reproduced here
  (decomposed relative positions with `einsum` and `get_rel_pos` computed in the graph, window
  padding derived from tensor shapes; TinyViT as is), TorchScript exporter, opset 17, no
  simplifier;
- decoder: ours with the official contract (`--decoder-contract official`) vs segment-anything's
  `SamOnnxModel` reproduced here and exported like its `scripts/export_onnx_model.py` (opset 17,
  dynamic point count, all four masks); our default (EdgeSAM-contract) decoder is timed too.

Fidelity: max |output - official golden| on the fixture image (encoder) and on the golden
embeddings (decoder), where tests/fixtures/<family>/ has them.

    python benchmarks/bench_sam_families.py [--families mobile_sam,slimsam_77,sam_vit_b]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
import torch
import torch.nn.functional as F

from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import Timing, set_threads, time_interleaved
from edgesam_export.device.official_contract import (
    OFFICIAL_DECODER_INPUTS,
    OFFICIAL_DECODER_OUTPUTS,
    official_feeds,
)
from edgesam_export.device.runtime import Session
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.graphs import EncoderGraph
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.models.vit import ViTAttention, ViTBlock
from edgesam_export.host.pipeline import export_artifacts

NAME = "bench_sam_families"
FAMILIES = ("mobile_sam", "slimsam_77", "sam_vit_b")
FIXTURE_DIR = {"mobile_sam": "mobile_sam", "slimsam_77": "slimsam", "sam_vit_b": "sam_vit_b"}
PLAN = {"encoder": (2, 10), "decoder": (3, 20)}  # (warm-up rounds, timed rounds)
ENCODER_PLAN = {"sam_vit_b": (1, 5)}  # ViT-B at 1024 is seconds per call on 2 cores
GAP_S = 0.05


# --- the official forward, reproduced for the side-by-side export (not part of the package) ---


def _official_get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative.long()]


def _official_attention(self: ViTAttention, x: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = x.shape
    if self.separate_qkv:
        q = self.q(x).reshape(b, h * w, self.num_heads, -1).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, h * w, self.num_heads, -1).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, h * w, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = (t.reshape(b * self.num_heads, h * w, -1) for t in (q, k, v))
    else:
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    rh = _official_get_rel_pos(h, h, self.rel_pos_h)
    rw = _official_get_rel_pos(w, w, self.rel_pos_w)
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = (
        attn.view(q.shape[0], h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    ).view(q.shape[0], h * w, h * w)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def _official_block(self: ViTBlock, x: torch.Tensor) -> torch.Tensor:
    shortcut = x
    x = self.norm1(x)
    if self.window > 0:
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        x = x.contiguous().view(-1, ws, ws, c)
        x = self.attn(x)
        bb = x.shape[0] // (hp * wp // ws // ws)
        x = x.view(bb, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
        x = x.contiguous().view(bb, hp, wp, -1)
        if hp > h or wp > w:
            x = x[:, :h, :w, :].contiguous()
    else:
        x = self.attn(x)
    x = shortcut + x
    return x + self.mlp(self.norm2(x))


def official_style_encoder(loaded: LoadedModel) -> torch.nn.Module:
    import copy

    enc = copy.deepcopy(loaded.model.image_encoder)
    for m in enc.modules():
        if isinstance(m, ViTAttention):
            m.forward = types.MethodType(_official_attention, m)  # type: ignore[method-assign]
        if isinstance(m, ViTBlock):
            m.forward = types.MethodType(_official_block, m)  # type: ignore[method-assign]
    return EncoderGraph(enc).eval()


class SamOnnxModelStyle(torch.nn.Module):
    """segment-anything's `SamOnnxModel` (return_single_mask=False), reproduced for the bench."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model
        self.img_size = loaded.spec.img_size

    def forward(
        self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size
    ):
        pe = self.model.prompt_encoder
        coords = (point_coords + 0.5) / self.img_size
        emb = pe.pe_layer.encode(coords)
        labels = point_labels.unsqueeze(-1).expand_as(emb)
        emb = emb * (labels != -1)
        emb = emb + pe.not_a_point_embed.weight * (labels == -1)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (labels == i)
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, scores = self.model.mask_decoder.predict(image_embeddings, pe.dense_pe(), emb, dense)
        up = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        size = orig_im_size.to(torch.float32)
        pre = torch.floor(self.img_size / torch.max(size) * size + 0.5).to(torch.int64)
        up = up[..., : pre[0], : pre[1]]
        hw = orig_im_size.to(torch.int64)
        up = F.interpolate(up, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        return up, scores, masks


# --- the run ------------------------------------------------------------------------------------


def _checkpoint(family: str, tmp: Path) -> Path | None:
    """SlimSAM's fixture weights come as a release-format pickle (made by the test helper)."""
    if family != "slimsam_77":
        return None
    root = _common.HERE.parent
    out = tmp / "SlimSAM-77.pth"
    subprocess.run(
        [
            sys.executable,
            str(root / "tests/make_slimsam_pickle.py"),
            str(root / "edgesam_export/device/data/layouts/slimsam_77.json"),
            "0",
            str(out),
        ],
        check=True,
    )
    return out


def bench_family(family: str, tmp: Path) -> dict[str, Any]:
    ckpt = _checkpoint(family, tmp)
    # the golden fixtures' weights: synthetic as drawn (the library default is "calibrated")
    weights = ModelOptions(model=family, checkpoint=ckpt, synthetic="untrained")
    out = tmp / family
    _common.log(f"{family}: exporting ours (encoder, decoder, official-contract decoder)")
    t0 = time.perf_counter()
    loaded, arts = export_artifacts(weights, "onnx", OnnxOptions(output=out))
    export_s = time.perf_counter() - t0
    arts += export_artifacts(
        weights,
        "onnx",
        OnnxOptions(output=out, graphs=("decoder",), decoder_contract="official"),
    )[1]
    paths = {
        ("ours", "encoder"): arts[0].path,
        ("ours", "decoder"): arts[1].path,
        ("ours", "decoder official"): arts[2].path,
    }
    spec = loaded.spec
    _common.log(f"{family}: exporting the official style (plain torch.onnx.export, opset 17)")
    gen = torch.Generator().manual_seed(0)
    paths[("official", "encoder")] = _common.plain_onnx_export(
        official_style_encoder(loaded),
        (torch.randn(1, 3, 1024, 1024, generator=gen),),
        tmp / f"{family}_official_encoder.onnx",
        ["image"],
        ["image_embeddings"],
    )
    paths[("official", "decoder official")] = _common.plain_onnx_export(
        SamOnnxModelStyle(loaded).eval(),
        (
            torch.randn(1, 256, 64, 64, generator=gen),
            torch.rand(1, 5, 2, generator=gen) * 1024,
            torch.ones(1, 5),
            torch.zeros(1, 1, 256, 256),
            torch.zeros(1),
            torch.tensor([480.0, 640.0]),
        ),
        tmp / f"{family}_official_decoder.onnx",
        OFFICIAL_DECODER_INPUTS,  # segment-anything's SamOnnxModel names, as our contract's
        OFFICIAL_DECODER_OUTPUTS,
        {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )
    sessions: dict[tuple[str, str], Session] = {
        k: open_session(p, threads=_common.THREADS) for k, p in paths.items()
    }
    golden_path = _common.HERE.parent / "tests/fixtures" / FIXTURE_DIR[family] / "golden_seed0.npz"
    with np.load(golden_path) as data:
        g = {k: data[k] for k in data.files}
    image, _ = P.preprocess(g["image"], spec.img_size, spec.pixel_mean, spec.pixel_std)
    emb = g["image_embeddings"]
    coords, labels = P.build_prompts(
        g["a_point_coords"],
        g["a_point_labels"],
        None,
        original_size=tuple(int(v) for v in g["original_size"]),
        img_size=1024,
    )
    off_feeds = official_feeds(emb, coords, labels, tuple(int(v) for v in g["original_size"]))
    edge_feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels}
    ref_low = np.concatenate([g["a_single_low_res_logits"], g["a_multi_low_res_logits"]])[None]
    fidelity: dict[str, dict[str, float]] = {}
    for who in ("ours", "official"):
        e = sessions[(who, "encoder")].run({"image": image})["image_embeddings"]
        d = sessions[(who, "decoder official")].run(off_feeds)
        fidelity[who] = {
            "image_embeddings": float(np.abs(e - emb).max()),
            "low_res_masks": float(np.abs(d["low_res_masks"] - ref_low).max()),
        }
    fidelity["ours"]["low_res_masks (edgesam contract)"] = float(
        np.abs(sessions[("ours", "decoder")].run(edge_feeds)["masks"] - ref_low).max()
    )
    timings: list[Timing] = []
    stages = [
        ("encoder", {"ours": "encoder", "official": "encoder"}, {"image": image}),
        (
            "decoder (official contract)",
            {"ours": "decoder official", "official": "decoder official"},
            off_feeds,
        ),
    ]
    for stage, which, feeds in stages:
        warmup, iters = (
            ENCODER_PLAN.get(family, PLAN["encoder"]) if stage == "encoder" else PLAN["decoder"]
        )
        _common.log(f"{family}: timing {stage}: {warmup} + {iters} interleaved rounds")
        samples = time_interleaved(
            {who: (lambda s=sessions[(who, g_)], f=feeds: s.run(f)) for who, g_ in which.items()},
            warmup=warmup,
            iters=iters,
            gap_s=GAP_S,
            max_seconds=600.0,
        )
        timings += [Timing(stage, who, samples[who]) for who in which]
    warmup, iters = PLAN["decoder"]
    samples = time_interleaved(
        {"ours": lambda: sessions[("ours", "decoder")].run(edge_feeds)},
        warmup=warmup,
        iters=iters,
        gap_s=GAP_S,
        max_seconds=120.0,
    )
    timings.append(Timing("decoder (edgesam contract)", "ours", samples["ours"]))
    params = sum(p.numel() for p in loaded.model.parameters())
    enc_params = sum(p.numel() for p in loaded.model.image_encoder.parameters())
    return {
        "family": family,
        "parameters": params,
        "encoder_parameters": enc_params,
        "export_seconds": round(export_s, 1),
        "fidelity_max_abs_vs_official_golden": fidelity,
        "timings": [t.to_json() for t in timings],
    }


def run(families: tuple[str, ...]) -> dict[str, Any]:
    set_threads(_common.THREADS)
    start = _common.RunStart()
    results: list[dict[str, Any]] = []

    def payload() -> dict[str, Any]:
        return {
            **start.header(NAME),
            "settings": {
                "threads": _common.THREADS,
                "plan_warmup_iters": {
                    **PLAN,
                    **{f"encoder {k}": v for k, v in ENCODER_PLAN.items()},
                },
                "gap_s": GAP_S,
                "weights": "the golden fixtures' (synthetic seed 0)",
            },
            "families": results,
        }

    with tempfile.TemporaryDirectory(prefix="edgesam-sam-families-") as tmp:
        for family in families:
            results.append(bench_family(family, Path(tmp)))
            partial = payload()  # each finished family is on disk even if a later one is cut
            _common.write_results(NAME, partial, render(partial))
    return payload()


def render(result: dict[str, Any]) -> str:
    rows, fid_rows = [], []
    for fam in result["families"]:
        t = {
            (x["name"], x["backend"]): Timing(x["name"], x["backend"], tuple(x["samples_ms"]))
            for x in fam["timings"]
        }
        for stage in ("encoder", "decoder (official contract)"):
            o, f = t[stage, "ours"], t[stage, "official"]
            ratio = f.p50 / o.p50
            rows.append(
                [
                    fam["family"],
                    stage,
                    f"{f.p50:.1f}",
                    f"{o.p50:.1f}",
                    str(len(o.samples_ms)),
                    f"{ratio:.2f}x",
                    _common.speed_verdict(f.samples_ms, o.samples_ms),
                ]
            )
        e = t["decoder (edgesam contract)", "ours"]
        rows.append(
            [
                fam["family"],
                "decoder (edgesam contract)",
                "-",
                f"{e.p50:.1f}",
                str(len(e.samples_ms)),
                "-",
                "-",
            ]
        )
        fo, ff = (
            fam["fidelity_max_abs_vs_official_golden"]["ours"],
            fam["fidelity_max_abs_vs_official_golden"]["official"],
        )
        fid_rows.append(
            [
                fam["family"],
                f"{fam['parameters']:,}",
                f"{fam['encoder_parameters']:,}",
                f"{fam['export_seconds']:.0f}",
                f"{ff['image_embeddings']:.1e}",
                f"{fo['image_embeddings']:.1e}",
                f"{ff['low_res_masks']:.1e}",
                f"{fo['low_res_masks']:.1e}",
            ]
        )
    speed = _common.md_table(
        ["family", "stage", "official p50 ms", "ours p50 ms", "n", "speed-up", "at least as fast"],
        rows,
        right=[False, False, True, True, True, True, False],
    )
    fid = _common.md_table(
        [
            "family",
            "params",
            "encoder params",
            "export s",
            "official emb err",
            "ours emb err",
            "official low-res err",
            "ours low-res err",
        ],
        fid_rows,
        right=[False] + [True] * 7,
    )
    header = _common.machine_md(result["machine"], result["date"], result["contention"])
    return (
        "# bench_sam_families: SAM-family ONNX graphs vs the official export style\n\n"
        f"{header}\n- official = official-style modules exported with a plain torch.onnx.export"
        " (opset 17, no simplifier); decoder: SamOnnxModel (all four masks)\n"
        f"- interleaved rounds, {GAP_S * 1e3:.0f} ms untimed gap before each call\n\n{speed}\n\n"
        "Fidelity: max abs against the official code's golden outputs (encoder: fixture image;"
        " decoder: golden embeddings, prompt a; float32 tolerances 1e-4 / 2e-4):\n\n"
        f"{fid}\n"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default=",".join(FAMILIES))
    chosen = tuple(parser.parse_args().families.split(","))
    raise SystemExit(_common.main(NAME, lambda: run(chosen), render))

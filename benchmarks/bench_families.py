"""Model families: our ONNX graphs vs each family's official-style ONNX export, side by side.

EfficientViT-SAM (L0, XL0: the variants with official fixtures). "Official-style" rebuilds the
graphs that `applications/efficientvit_sam/deployment/onnx/export_{encoder,decoder}.py` make,
from our PyTorch reference modules (the official architecture and arithmetic, bit-exact with
the official fixtures): the encoder traced as is (bicubic neck resizes -> ONNX cubic Resize,
dynamic batch axis), the decoder as their `DecoderOnnxModel` computes it (SAM's
`predict_masks`: embeddings repeated per prompt set, NCHW transposed-conv upscaling, dense
prompt expanded to the grid, return_single_mask=False, dynamic batch and point axes); legacy
TorchScript exporter, opset 17, constant folding, no simplifier. Their code is not vendored.

Ours: `export_artifacts` (the product path: export-friendly encoder, channels-last decoder,
onnxslim). Both from the same synthetic seed-0 weights of the fixture rule. Also recorded per
variant: parameter count and our export wall time.

    python benchmarks/bench_families.py [VARIANT ...]   # default: efficientvit_sam_l0 xl0
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
import torch
from torch import Tensor, nn

from edgesam_export.device import processing as P
from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import (
    Timing,
    decoder_feeds,
    encoder_input,
    set_threads,
    time_interleaved,
)
from edgesam_export.device.runtime import Session
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.graphs import EncoderGraph
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.pipeline import export_artifacts
from edgesam_export.host.reference import reference_sessions

NAME = "bench_families"
VARIANTS = ("efficientvit_sam_l0", "efficientvit_sam_xl0")
POINTS = (1, 5, 16)
PLAN = {"encoder": (2, 10), "decoder": (3, 30)}  # (warm-up rounds, timed rounds)
GAP_S = 0.05
GOLDEN = _common.HERE.parent / "tests" / "fixtures" / "efficientvit_sam"


class OfficialStyleDecoder(nn.Module):
    """The computation of EfficientViT-SAM's `DecoderOnnxModel` (return_single_mask=False)."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.prompt_encoder = loaded.model.prompt_encoder
        self.mask_decoder = loaded.model.mask_decoder
        self.frame = loaded.spec.frame

    def forward(
        self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        pe, dec = self.prompt_encoder, self.mask_decoder
        sparse = pe.embed_points(point_coords, point_labels, self.frame)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            image_embeddings.shape[0], -1, image_embeddings.shape[-2], image_embeddings.shape[-1]
        )
        # segment_anything MaskDecoder.predict_masks
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
        pos_src = torch.repeat_interleave(pe.dense_pe(), tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = dec.transformer(
            src.flatten(2).permute(0, 2, 1), pos_src.flatten(2).permute(0, 2, 1), tokens
        )
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
        src = src.transpose(1, 2).view(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, dec.iou_prediction_head(iou_token_out)


def export_official_style(loaded: LoadedModel, out: Path) -> dict[str, Path]:
    spec = loaded.spec
    jobs = {
        "encoder": (
            EncoderGraph(loaded.model.image_encoder),
            (torch.randn(1, 3, spec.img_size, spec.img_size),),
            ["input_image"],
            ["image_embeddings"],
            {"input_image": {0: "batch_size"}},
        ),
        "decoder": (
            OfficialStyleDecoder(loaded),
            (
                torch.randn(1, *spec.embed_shape),
                torch.randint(0, 1024, (16, 2, 2)).float(),
                torch.randint(0, 4, (16, 2)).float(),
            ),
            ["image_embeddings", "point_coords", "point_labels"],
            ["masks", "iou_predictions"],
            {
                "point_coords": {0: "batch_size", 1: "num_points"},
                "point_labels": {0: "batch_size", 1: "num_points"},
            },
        ),
    }
    torch.manual_seed(0)
    return {
        graph: _common.plain_onnx_export(
            module.eval(), args, out / f"official_style_{graph}.onnx", names_in, names_out, dynamic
        )
        for graph, (module, args, names_in, names_out, dynamic) in jobs.items()
    }


class Renamed(Session):
    """An official-style session under our contract's names (inputs and outputs)."""

    def __init__(self, inner: Session, inputs: dict[str, str], outputs: dict[str, str]) -> None:
        super().__init__(inner.graph, inner.inputs, inner.outputs, inner.metadata)
        self.backend = inner.backend
        self.inner, self.map_in, self.map_out = inner, inputs, outputs

    def run(self, feeds: Any) -> dict[str, np.ndarray]:
        return self._run(feeds)

    def _run(self, feeds: Any) -> dict[str, np.ndarray]:
        out = self.inner.run({self.map_in.get(k, k): v for k, v in feeds.items()})
        return {self.map_out.get(k, k): v for k, v in out.items()}


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.abs(a[k] - b[k]).max()) for k in b}


def bench_variant(name: str, tmp: Path) -> dict[str, Any]:
    _common.log(f"{name}: exporting our graphs (synthetic seed 0)")
    t0 = time.perf_counter()
    loaded, artifacts = export_artifacts(
        ModelOptions(model=name, seed=0, synthetic="untrained"),
        "onnx",
        OnnxOptions.model_validate({"output": tmp / name / "ours"}),
    )
    export_s = time.perf_counter() - t0
    ours_paths = {a.graph: a.path for a in artifacts}
    _common.log(f"{name}: exporting official-style graphs (opset 17, no simplifier)")
    t0 = time.perf_counter()
    official_paths = export_official_style(loaded, tmp / name)
    official_export_s = time.perf_counter() - t0
    ref_enc, ref_decs = reference_sessions(loaded)
    official = {g: open_session(p, threads=_common.THREADS) for g, p in official_paths.items()}
    sessions: dict[str, dict[str, Session]] = {
        "ours": {g: open_session(p, threads=_common.THREADS) for g, p in ours_paths.items()},
        "official-style": {
            "encoder": Renamed(official["encoder"], {"image": "input_image"}, {}),
            "decoder": Renamed(
                official["decoder"], {}, {"masks": "masks", "iou_predictions": "scores"}
            ),
        },
    }

    feeds = {"image": encoder_input(ref_enc)}
    ref_emb = ref_enc.run(feeds)
    fidelity: dict[str, dict[str, float]] = {}
    for who, graphs in sessions.items():
        emb = graphs["encoder"].run(feeds)
        dec_feeds = decoder_feeds(ref_emb["image_embeddings"], 5, img_size=loaded.spec.frame)
        got = graphs["decoder"].run(dec_feeds)
        want = ref_decs[False].run(dec_feeds)
        fidelity[who] = {
            "image_embeddings": _max_diff(emb, ref_emb)["image_embeddings"],
            **{f"decoder {k}": v for k, v in _max_diff(got, want).items()},
        }
    golden = GOLDEN / f"golden_{name.rsplit('_', 1)[1]}_seed0.npz"
    if golden.exists():  # the official code's own embeddings of the fixture image
        with np.load(golden) as g:
            image, expected = g["image"], g["embeddings_sub4"]
        x, _ = P.preprocess(image, params=loaded.spec.preprocessing)
        for who, graphs in sessions.items():
            emb = graphs["encoder"].run({"image": x})["image_embeddings"][..., ::4, ::4]
            fidelity[who]["golden embeddings (official code)"] = float(np.abs(emb - expected).max())

    timings: list[Timing] = []
    stages: list[tuple[str, str, dict[str, np.ndarray]]] = [("encoder", "encoder", feeds)]
    stages += [
        (
            f"decoder N={n}",
            "decoder",
            decoder_feeds(ref_emb["image_embeddings"], n, img_size=loaded.spec.frame),
        )
        for n in POINTS
    ]
    for stage, graph, stage_feeds in stages:
        warmup, iters = PLAN[graph]
        _common.log(f"{name}: timing {stage}: {warmup} + {iters} interleaved rounds")
        samples = time_interleaved(
            {who: (lambda s=g[graph], f=stage_feeds: s.run(f)) for who, g in sessions.items()},
            warmup=warmup,
            iters=iters,
            gap_s=GAP_S,
            max_seconds=240.0,
        )
        timings += [Timing(stage, who, samples[who]) for who in sessions]
    by_key = {(t.name, t.backend): t for t in timings}
    return {
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "encoder_input": loaded.spec.img_size,
        "prompt_frame": loaded.spec.frame,
        "export_s": {"ours": round(export_s, 1), "official-style": round(official_export_s, 1)},
        "onnx_mb": {
            "ours": round(sum(p.stat().st_size for p in ours_paths.values()) / 1e6, 1),
            "official-style": round(
                sum(p.stat().st_size for p in official_paths.values()) / 1e6, 1
            ),
        },
        "fidelity_max_abs_vs_torch": fidelity,
        "timings": [t.to_json() for t in timings],
        "speedups_official_over_ours": {
            s: by_key[s, "official-style"].p50 / by_key[s, "ours"].p50 for s, _, _ in stages
        },
    }


def run() -> dict[str, Any]:
    set_threads(_common.THREADS)
    start = _common.RunStart()
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgesam-families-") as tmp:
        for name in sys.argv[1:] or VARIANTS:
            results[name] = bench_variant(name, Path(tmp))
    return {
        **start.header(NAME),
        "settings": {
            "threads": _common.THREADS,
            "plan_warmup_iters": PLAN,
            "gap_s": GAP_S,
            "weights": "synthetic seed 0 (fixture rule)",
        },
        "variants": results,
    }


def render(result: dict[str, Any]) -> str:
    header = _common.machine_md(result["machine"], result["date"], result["contention"])
    parts = [
        "# bench_families: our ONNX graphs vs official-style exports, per family\n",
        f"{header}\n- weights: {result['settings']['weights']}; official-style = our reference"
        " modules exported as EfficientViT-SAM's deployment/onnx scripts do (trace, opset 17,"
        " no simplifier, SAM-style NCHW decoder)\n- interleaved rounds with a"
        f" {GAP_S * 1e3:.0f} ms untimed gap before each call\n",
    ]
    for name, r in result["variants"].items():
        timings = [Timing(t["name"], t["backend"], tuple(t["samples_ms"])) for t in r["timings"]]
        by_key = {(t.name, t.backend): t for t in timings}
        rows = []
        for stage, ratio in r["speedups_official_over_ours"].items():
            o, f = by_key[stage, "ours"], by_key[stage, "official-style"]
            rows.append(
                [
                    stage,
                    f"{f.p50:.1f}",
                    f"{o.p50:.1f}",
                    str(len(o.samples_ms)),
                    f"{ratio:.2f}x",
                    _common.speed_verdict(f.samples_ms, o.samples_ms),
                ]
            )
        speed = _common.md_table(
            ["stage", "official-style p50 ms", "ours p50 ms", "n", "speed-up", "at least as fast"],
            rows,
            right=[False, True, True, True, True, False],
        )
        fid = r["fidelity_max_abs_vs_torch"]
        fid_rows = [
            [c, f"{fid['official-style'][c]:.1e}", f"{fid['ours'][c]:.1e}"] for c in fid["ours"]
        ]
        fidelity = _common.md_table(
            ["output", "official-style max abs", "ours max abs"],
            fid_rows,
            right=[False, True, True],
        )
        parts.append(
            f"## {name}\n\n- {r['parameters']:,} parameters; encoder input {r['encoder_input']},"
            f" prompt/mask frame {r['prompt_frame']}\n- export wall time: ours"
            f" {r['export_s']['ours']} s (trace + onnxslim + checks), official-style"
            f" {r['export_s']['official-style']} s; ONNX size ours {r['onnx_mb']['ours']} MB,"
            f" official-style {r['onnx_mb']['official-style']} MB\n\n{speed}\n\n"
            "Fidelity (max abs) against the PyTorch reference on the structured test image"
            " (decoder on the reference embeddings, 5 points) and against the official code's"
            " embeddings of the fixture image (subsampled 4x; tolerance 1e-4):\n\n"
            f"{fidelity}\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(_common.main(NAME, run, render))

"""Our ONNX graphs vs official-style graphs, side by side on onnxruntime: speed and fidelity.

"Official-style": our PyTorch reference modules (the official architecture and arithmetic:
one spatial mean per squeeze-excite, three-branch RepVGG blocks, a Resize op in the neck, the
NCHW transposed-conv decoder) exported the way EdgeSAM's `scripts/export_onnx_model.py` does
it: TorchScript trace, opset 11, no simplifier, dynamic point count, batch 1. The official
code itself is not vendored; its graphs have the same ops (see the EdgeSAM fixture README).
Both use the bilinear neck, as the official exports do, and the same synthetic seed-0 weights.

    python benchmarks/bench_vs_official.py
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import _common  # sorts before numpy: pins thread pools before numpy/torch load
import numpy as np
import torch

from edgesam_export.device.backends import open_session
from edgesam_export.device.bench import (
    Timing,
    decoder_feeds,
    encoder_input,
    machine_info,
    set_threads,
    time_interleaved,
)
from edgesam_export.device.runtime import Session
from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.graphs import DecoderGraph, EncoderGraph
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.pipeline import export_artifacts
from edgesam_export.host.reference import reference_sessions

NAME = "bench_vs_official"
POINTS = (1, 5, 16)
PLAN = {"encoder": (2, 20), "decoder": (5, 50)}  # (warm-up rounds, timed rounds)
GAP_S = 0.05


def export_official_style(loaded: LoadedModel, out: Path) -> dict[str, Path]:
    """The reference modules traced with the official script's settings (see module doc)."""
    spec = loaded.spec
    gen = torch.Generator().manual_seed(0)
    jobs = {
        "encoder": (
            EncoderGraph(loaded.model.image_encoder),
            (torch.randn(1, 3, spec.img_size, spec.img_size, generator=gen),),
            ["image"],
            ["image_embeddings"],
            None,
        ),
        "decoder": (
            DecoderGraph(loaded.model, spec.img_size),
            (
                torch.randn(1, *spec.embed_shape, generator=gen),
                torch.rand(1, 5, 2, generator=gen) * spec.img_size,
                torch.ones(1, 5),
            ),
            ["image_embeddings", "point_coords", "point_labels"],
            ["scores", "masks"],
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        ),
    }
    paths = {}
    for graph, (module, args, names_in, names_out, dynamic) in jobs.items():
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                buffer,
                dynamo=False,
                opset_version=11,
                input_names=names_in,
                output_names=names_out,
                dynamic_axes=dynamic,
            )
        paths[graph] = out / f"official_style_{graph}.onnx"
        paths[graph].write_bytes(buffer.getvalue())
    return paths


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.abs(a[k] - b[k]).max()) for k in a}


def run() -> dict[str, Any]:
    set_threads(_common.THREADS)
    monitor = _common.CpuMonitor()
    date = _common.now_utc()
    with tempfile.TemporaryDirectory(prefix="edgesam-vs-official-") as tmp:
        _common.log("exporting our graphs (bilinear neck, synthetic seed 0)")
        loaded, artifacts = export_artifacts(
            ModelOptions(seed=0, upsample="bilinear", synthetic="untrained"),
            "onnx",
            OnnxOptions.model_validate({"output": Path(tmp) / "ours"}),
        )
        ours_paths = {a.graph: a.path for a in artifacts}
        _common.log("exporting official-style graphs (opset 11, no simplifier)")
        official_paths = export_official_style(loaded, Path(tmp))
        ref_enc, ref_decs = reference_sessions(loaded)
        sessions: dict[str, dict[str, Session]] = {
            "ours": {g: open_session(p, threads=_common.THREADS) for g, p in ours_paths.items()},
            "official-style": {
                g: open_session(p, threads=_common.THREADS) for g, p in official_paths.items()
            },
        }
        for s in sessions["official-style"].values():  # no metadata in the official graphs
            s.metadata.update(ref_enc.metadata)

        feeds = {"image": encoder_input(ref_enc)}
        ref_emb = ref_enc.run(feeds)
        fidelity: dict[str, dict[str, float]] = {}
        for name, graphs in sessions.items():
            emb = graphs["encoder"].run(feeds)
            dec_feeds = decoder_feeds(ref_emb["image_embeddings"], 5)
            fidelity[name] = {
                "image_embeddings": _max_diff(emb, ref_emb)["image_embeddings"],
                **{
                    f"decoder {k}": v
                    for k, v in _max_diff(
                        graphs["decoder"].run(dec_feeds), ref_decs[False].run(dec_feeds)
                    ).items()
                },
            }

        golden_path = _common.HERE.parent / "tests" / "fixtures" / "edge_sam" / "golden_seed0.npz"
        if golden_path.exists():  # the official code's own embeddings of the fixture image
            with np.load(golden_path) as golden:
                x, expected = golden["input_tensor"], golden["embeddings_bilinear"]
            for name, graphs in sessions.items():
                emb = graphs["encoder"].run({"image": x})["image_embeddings"]
                fidelity[name]["golden embeddings (official code)"] = float(
                    np.abs(emb - expected).max()
                )

        timings: list[Timing] = []
        stages: list[tuple[str, str, dict[str, np.ndarray]]] = [("encoder", "encoder", feeds)]
        stages += [
            (f"decoder N={n}", "decoder", decoder_feeds(ref_emb["image_embeddings"], n))
            for n in POINTS
        ]
        for stage, graph, stage_feeds in stages:
            warmup, iters = PLAN[graph]
            _common.log(f"timing {stage}: {warmup} + {iters} interleaved rounds")
            samples = time_interleaved(
                {
                    name: (lambda s=g[graph], f=stage_feeds: s.run(f))
                    for name, g in sessions.items()
                },
                warmup=warmup,
                iters=iters,
                gap_s=GAP_S,
                max_seconds=60.0,
            )
            timings += [Timing(stage, name, samples[name]) for name in sessions]
        del sessions
    by_key = {(t.name, t.backend): t for t in timings}
    ratios = {s: by_key[s, "official-style"].p50 / by_key[s, "ours"].p50 for s, _, _ in stages}
    return {
        "benchmark": NAME,
        "date": date,
        "machine": machine_info(),
        "contention": monitor.result(),
        "settings": {
            "threads": _common.THREADS,
            "plan_warmup_iters": PLAN,
            "gap_s": GAP_S,
            "weights": "synthetic seed 0, bilinear neck",
        },
        "fidelity_max_abs_vs_torch": fidelity,
        "timings": [t.to_json() for t in timings],
        "speedups_official_over_ours": ratios,
    }


def render(result: dict[str, Any]) -> str:
    timings = [Timing(t["name"], t["backend"], tuple(t["samples_ms"])) for t in result["timings"]]
    by_key = {(t.name, t.backend): t for t in timings}
    rows = []
    for stage, ratio in result["speedups_official_over_ours"].items():
        o, f = by_key[stage, "ours"], by_key[stage, "official-style"]
        rows.append(
            [
                stage,
                f"{f.p50:.1f}",
                f"{o.p50:.1f}",
                str(len(o.samples_ms)),
                f"{ratio:.2f}x",
                _common.met(ratio >= 1.0),
            ]
        )
    speed = _common.md_table(
        [
            "stage",
            "official-style p50 ms",
            "ours p50 ms",
            "n",
            "speed-up (official/ours)",
            "at least as fast",
        ],
        rows,
        right=[False, True, True, True, True, False],
    )
    fid = result["fidelity_max_abs_vs_torch"]
    checks = list(fid["ours"])
    fid_rows = [[c, f"{fid['official-style'][c]:.1e}", f"{fid['ours'][c]:.1e}"] for c in checks]
    fidelity = _common.md_table(
        ["output", "official-style max abs", "ours max abs"], fid_rows, right=[False, True, True]
    )
    header = _common.machine_md(result["machine"], result["date"], result["contention"])
    return (
        "# bench_vs_official: our ONNX graphs vs official-style graphs on onnxruntime\n\n"
        f"{header}\n- weights: {result['settings']['weights']}; official-style = our reference"
        " modules exported like EdgeSAM's export script (trace, opset 11, no simplifier)\n"
        f"- interleaved rounds with a {GAP_S * 1e3:.0f} ms untimed gap before each call\n\n"
        f"{speed}\n\nFidelity (max abs): against the PyTorch reference on the structured test image"
        " (decoder fed the reference embeddings, 5 points), and against the official code's"
        " embeddings of the golden fixture image (float32 tolerance 5e-3):\n\n"
        f"{fidelity}\n"
    )


if __name__ == "__main__":
    raise SystemExit(_common.main(NAME, run, render))

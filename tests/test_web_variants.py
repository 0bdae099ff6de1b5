"""The page's variants: `web --quantize int8` and `web --quantize int8-weights` (size bound,
agreement with Python on the same int8 files) and the WebGPU execution provider (Chromium's
SwiftShader adapter, correctness only).

Both browser runs are slow (an int8 export of both graphs; an encoder on emulated WebGPU took
181 s here), so they are `heavy`; the option checks run in the default suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from browser import (
    DOWNSCALED,
    UPSCALED,
    add_selftest_images,
    agreement_line,
    assert_page_agrees,
    needs_chromium,
)
from typer.testing import CliRunner

from edgesam_export.cli.export import app
from edgesam_export.device.parity import make_test_image
from edgesam_export.web.browser import Chromium
from edgesam_export.web.selftest import (
    FLIPPED_FRACTION_MAX,
    SCORE_ATOL,
    agreement,
    int8_rule,
    python_reference,
    run_selftest,
)
from edgesam_export.web.server import WebServer

runner = CliRunner()

#: issue 17: the int8 page's EdgeSAM models (encoder + decoder, what a browser downloads)
INT8_DOWNLOAD_MAX = 15_000_000
#: Chromium's software WebGPU adapter (SwiftShader over Vulkan): no GPU needed
SWIFTSHADER_WEBGPU = (
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-webgpu-adapter=swiftshader",
)
IMAGE = UPSCALED


@pytest.mark.parametrize(
    "option",
    [
        ["--quantize", "int8"],
        ["--accuracy-target", "miou=0.9,worst=0.8"],
        ["--search-budget", "60"],
        ["--encoder-quantize", "int8-weights"],
    ],
)
def test_quantize_is_refused_for_a_folder_of_graphs(tmp_path: Path, option: list[str]) -> None:
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    out = tmp_path / "site"
    result = runner.invoke(app, ["web", str(graphs), *option, "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "--quantize applies when exporting" in result.output
    assert not out.exists()


def test_an_unoptimised_session_computes_qdq_in_float(tmp_path: Path) -> None:
    """The int8 rule's second native run (`optimize=False`): onnxruntime's graph optimisation
    off, so a QDQ pair stays two float ops instead of a fused integer kernel."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgesam_export.device.backends import open_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [x], [y], [scale, zero])
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    levels = {
        flag: open_session(path, optimize=flag).session.get_session_options()
        for flag in (True, False)
    }
    assert levels[False].graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert levels[True].graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = np.array([[0.04, -0.26, 1.0, 3.0]], np.float32)
    out = open_session(path, optimize=False).run({"x": data})["y"]
    np.testing.assert_allclose(out, [[0.0, -0.3, 1.0, 3.0]], atol=1e-6)


def test_unknown_quantize_is_refused_before_any_export(tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = runner.invoke(app, ["web", "--quantize", "int4", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "quantize" in result.output
    assert not out.exists()
    # an int8-only option without --quantize int8, and a bar that does not parse: the same
    bad = [
        ["--accuracy-target", "miou=0.5,worst=0.5"],
        ["--quantize", "int8", "--accuracy-target", "x"],
    ]
    for args in bad:
        result = runner.invoke(app, ["web", *args, "-o", str(out)])
        assert result.exit_code == 3, result.output
        assert "accuracy" in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists()


# --------------------------------------------------------------------------------------
# int8 page
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`edgesam-export web --quantize int8 --encoder-quantize int8-weights --no-webgpu`: the
    static int8 decoder (int8 kernels per click) beside the weight-only encoder, each searched to
    the default mask bar (complete searches, about 4 CPU-minutes quiet), then built."""
    out = tmp_path_factory.mktemp("web_mixed") / "site"
    report = out.parent / "build.json"
    args = ["web", "--quantize", "int8", "--encoder-quantize", "int8-weights", "--no-webgpu"]
    result = runner.invoke(app, [*args, "-o", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    add_selftest_images(out, [UPSCALED, DOWNSCALED])
    return out, json.loads(report.read_text())


@pytest.mark.heavy  # two int8 searches (minutes of CPU), then the page in Chromium
@needs_chromium
def test_mixed_int8_page_meets_the_bar_and_agrees_within_the_int8_rule(mixed_site, browser):
    """Issue 17's int8 page: <= 15 MB, each graph at the mask bar (the export's own held-out
    judgement), both files together at the bar end to end, and the page within the int8 rule
    of Python on the same files: at most INT8_NOISE_FACTOR times what the files differ from
    themselves natively (integer kernels against Q/DQ in float), same tokens, same inputs."""
    from edgesam_export.device.backends import open_session
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize.heldout import heldout_mask_bar

    site, report = mixed_site
    card = report["card"]
    assert card["precision"] == "mixed"
    metas = {g: card["graphs"][g]["metadata"] for g in ("encoder", "decoder")}
    assert metas["encoder"]["precision"] == "int8-weights"
    assert metas["decoder"]["precision"] == "int8"
    assert metas["decoder"]["int8.method"] == "static-qdq"
    for graph, meta in metas.items():
        entry = card["graphs"][graph]
        print(f"{graph}: {entry['bytes'] / 1e6:.2f} MB, masks vs fp32 {meta['int8.mask_iou']}")
        assert meta["int8.bar"].endswith(" met"), meta["int8.bar"]
    download = card["download_bytes"]
    print(f"mixed int8 EdgeSAM download {download / 1e6:.2f} MB")
    assert download <= INT8_DOWNLOAD_MAX
    files = {g: site / card["graphs"][g]["file"] for g in ("encoder", "decoder")}
    sessions = {g: open_session(f) for g, f in files.items()}
    together = heldout_mask_bar(
        load_model(None, synthetic="calibrated"), sessions["encoder"], sessions["decoder"], 5
    )
    print(f"both files end to end: {together.to_json()}")
    assert together.passed, together.to_json()
    with WebServer(site) as server:
        for name, (h, w), prompts in (UPSCALED, DOWNSCALED):
            with browser.new_page() as page:
                js = run_selftest(page, server.url, f"selftest/{name}", prompts, rle=1, threads=2)
            assert js["backend"] == "wasm" and js["threads"] == 2
            image = make_test_image(h, w)
            py = python_reference(site / "models", image, prompts)
            noise = int8_rule(site / "models", image, prompts)
            agree = assert_page_agrees(
                js,
                py,
                h,
                w,
                score_atol=max(noise["score_atol"], SCORE_ATOL),
                flipped_max=max(noise["flipped_max"], FLIPPED_FRACTION_MAX),
                float_ties_only=False,
            )
            print(agreement_line(f"{name} mixed int8 wasm vs Python", agree, h * w))
            print(f"  the files' own kernel noise (native): {noise}")


@pytest.fixture(scope="module")
def int8_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`edgesam-export web --quantize int8 --accuracy-target miou=0,worst=0 --no-webgpu`: the
    calibrated demo weights exported through the one export path with every block int8 (the bar
    at 0 ends the block search at its first probe: bounded time; the default bar keeps most of
    the synthetic encoder float, docs/quantize.md), then built."""
    out = tmp_path_factory.mktemp("web_int8") / "site"
    report = out.parent / "build.json"
    args = ["web", "--quantize", "int8", "--accuracy-target", "miou=0,worst=0", "--no-webgpu"]
    result = runner.invoke(app, [*args, "-o", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    add_selftest_images(out, [IMAGE])
    return out, json.loads(report.read_text())


@pytest.mark.heavy  # exports both graphs in int8 (minutes of CPU) and runs them in Chromium
@needs_chromium
@pytest.mark.xfail(
    strict=True,
    reason="the all-int8 synthetic encoder disagrees with itself across kernels (docs/web.md):"
    " the page misses the documented tolerances; strict, so a page that meets them is noticed",
)
def test_int8_page_is_small_and_agrees_with_python_on_the_same_files(int8_site, browser) -> None:
    site, report = int8_site
    card = report["card"]
    assert card["precision"] == "int8"
    for graph in ("encoder", "decoder"):
        entry = card["graphs"][graph]
        meta = entry["metadata"]
        assert meta["precision"] == "int8" and meta["int8.method"] == "static-qdq"
        assert meta["int8.float_blocks"] == ""  # every block int8: the size is the weights'
        # the mask bar, judged by the export against fp32 PyTorch on held-out images: reported
        print(f"int8 {graph}: {entry['bytes'] / 1e6:.2f} MB, masks vs fp32 {meta['int8.mask_iou']}")
    download = sum(report["files"][card["graphs"][g]["file"]] for g in ("encoder", "decoder"))
    assert card["download_bytes"] == download
    print(f"int8 EdgeSAM download {download / 1e6:.2f} MB (bound {INT8_DOWNLOAD_MAX / 1e6:.0f})")
    assert download <= INT8_DOWNLOAD_MAX, f"{download / 1e6:.1f} MB of int8 models"
    name, (h, w), prompts = IMAGE
    with WebServer(site) as server, browser.new_page() as page:
        js = run_selftest(page, server.url, f"selftest/{name}", prompts, rle=1, threads=2)
    assert js["backend"] == "wasm" and js["threads"] == 2
    py = python_reference(site / "models", make_test_image(h, w), prompts)
    print(agreement_line("int8 wasm vs Python", agreement(js, py), h * w))
    # No int8 row could be derived: on these synthetic weights the all-int8 graphs disagree with
    # themselves across kernels (native onnxruntime with its QDQ fusion against the same file
    # with fusion off: encoder SQNR -1.8 dB). The page is held to the documented tolerances, and
    # fails them today (docs/web.md: up to 24% of a mask's pixels, scores 2.5e-2).
    assert_page_agrees(js, py, h, w, float_ties_only=False)


@pytest.fixture(scope="module")
def int8_weights_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`edgesam-export web --quantize int8-weights --no-webgpu` on the calibrated demo weights:
    weight-only int8 through the one export path (its parity judged by the export), then built."""
    out = tmp_path_factory.mktemp("web_int8w") / "site"
    report = out.parent / "build.json"
    # the default, complete weight search (97 encoder weights measured, ~1.3 s each quiet)
    args = ["web", "--quantize", "int8-weights", "--no-webgpu"]
    args += ["-o", str(out)]
    result = runner.invoke(app, [*args, "--json", str(report)])
    assert result.exit_code == 0, result.output
    add_selftest_images(out, [IMAGE])
    return out, json.loads(report.read_text())


@pytest.mark.heavy  # exports both graphs and runs them in Chromium (minutes of CPU)
@needs_chromium
def test_int8_weights_page_is_small_and_agrees_with_python(int8_weights_site, browser) -> None:
    site, report = int8_weights_site
    card = report["card"]
    assert card["precision"] == "int8-weights"
    for graph in ("encoder", "decoder"):
        entry = card["graphs"][graph]
        assert entry["metadata"]["int8.method"] == "weights"
        print(f"int8-weights {graph}: {entry['bytes'] / 1e6:.2f} MB")
    download = sum(report["files"][card["graphs"][g]["file"]] for g in ("encoder", "decoder"))
    assert card["download_bytes"] == download
    print(f"int8-weights download {download / 1e6:.2f} MB (bound {INT8_DOWNLOAD_MAX / 1e6:.0f})")
    assert download <= INT8_DOWNLOAD_MAX, f"{download / 1e6:.1f} MB of int8-weights models"
    name, (h, w), prompts = IMAGE
    with WebServer(site) as server, browser.new_page() as page:
        js = run_selftest(page, server.url, f"selftest/{name}", prompts, rle=1, threads=2)
    assert js["backend"] == "wasm" and js["threads"] == 2
    py = python_reference(site / "models", make_test_image(h, w), prompts)
    print(agreement_line("int8-weights wasm vs Python", agreement(js, py), h * w))
    # float kernels on both sides (the int8 weights are folded back to float at load): held to
    # the page's float tolerances, as the fp32 page is
    assert_page_agrees(js, py, h, w)


# --------------------------------------------------------------------------------------
# WebGPU under SwiftShader
# --------------------------------------------------------------------------------------


#: which graphs run on WebGPU: the decoder alone (the encoder on the same bundle's wasm kernels,
#: minutes faster), or both (the encoder took 181 s on an idle machine, over 15 min on a busy one)
WEBGPU_GRAPHS = {"decoder": ({"encoder_ep": "wasm"}, 600.0), "both": ({}, 1800.0)}


@pytest.mark.heavy  # SwiftShader emulates the GPU on the CPU: slow; correctness only
@needs_chromium
@pytest.mark.parametrize("graphs", list(WEBGPU_GRAPHS))
def test_webgpu_selftest_agrees_with_wasm_and_python(
    tmp_path: Path, default_artifacts: Path, graphs: str
) -> None:
    site = tmp_path / "site"
    result = runner.invoke(app, ["web", str(default_artifacts), "-o", str(site)])
    assert result.exit_code == 0, result.output
    add_selftest_images(site, [IMAGE])
    name, (h, w), prompts = IMAGE
    extra, timeout = WEBGPU_GRAPHS[graphs]
    with WebServer(site) as server, Chromium(extra_args=SWIFTSHADER_WEBGPU) as chromium:
        with chromium.new_page() as page:
            gpu = run_selftest(
                page, server.url, f"selftest/{name}", prompts, timeout, rle=1, ep="webgpu", **extra
            )
        with chromium.new_page() as page:
            cpu = run_selftest(page, server.url, f"selftest/{name}", prompts, rle=1, ep="wasm")
    assert gpu["encoder_backend"] == ("wasm" if graphs == "decoder" else "webgpu")
    assert (gpu["backend"], cpu["backend"]) == ("webgpu", "wasm")
    py = python_reference(site / "models", make_test_image(h, w), prompts)
    for js in (gpu, cpu):
        # a mask may differ from Python's only where float rounding ties the threshold (the
        # fp32 rule); WebGPU's kernels round differently, so masks need not be bit-identical
        agree = assert_page_agrees(js, py, h, w, float_ties_only=False)
        assert all(row["flipped_away_from_threshold"] == 0 for row in agree["masks"])
        print(agreement_line(f"{js['backend']} vs Python", agree, h * w))
    gpu_scores = np.array([m["score"] for m in gpu["masks"]])
    cpu_scores = np.array([m["score"] for m in cpu["masks"]])
    print(f"webgpu vs wasm: max score diff {np.abs(gpu_scores - cpu_scores).max():.1e}")
    assert np.abs(gpu_scores - cpu_scores).max() <= SCORE_ATOL

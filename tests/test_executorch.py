"""ExecuTorch target: `.pte` programs (XNNPACK) exported, run by `executorch.runtime`, judged.

The default run exports the calibrated synthetic EdgeSAM decoder once (a session fixture) and
checks it: parity, dynamic point count, sidecar, manifest. The encoder (its lowering takes over a
minute), its parity and a second export for byte reproducibility run with `-m heavy`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip(
    "executorch.runtime", reason="executorch is not installed: pip install '.[executorch]'"
)

from edgesam_export.device import backends
from edgesam_export.device.backends import open_session
from edgesam_export.device.errors import ArtifactError, InputError
from edgesam_export.host.config import ExecuTorchOptions, ModelOptions
from edgesam_export.host.executorch_session import ExecuTorchSession
from edgesam_export.host.graphs import DecoderGraph
from edgesam_export.host.models import LoadedModel
from edgesam_export.host.pipeline import ExportRun, export_and_check, verify_artifacts


@pytest.fixture(scope="session")
def executorch_run(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    """The decoder program alone (the default run), checked by parity before publication."""
    return export_and_check(
        ModelOptions(synthetic="calibrated"),
        "executorch",
        ExecuTorchOptions(output=tmp_path_factory.mktemp("executorch"), graphs=("decoder",)),
        verify=True,
    )


@pytest.fixture(scope="session")
def executorch_build(executorch_run: ExportRun) -> tuple[LoadedModel, Path]:
    assert executorch_run.published
    return executorch_run.loaded, executorch_run.output


@pytest.fixture(scope="session")
def executorch_full_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LoadedModel, Path]:
    """Encoder and decoder programs (heavy: the encoder lowering is the slow part)."""
    out = tmp_path_factory.mktemp("executorch_full")
    run = export_and_check(
        ModelOptions(synthetic="calibrated"), "executorch", ExecuTorchOptions(output=out)
    )
    assert run.published
    return run.loaded, out


def test_decoder_passes_parity_on_the_executorch_runtime(executorch_run: ExportRun) -> None:
    """The parity `export_and_check` ran on the staged program before publishing it."""
    report = executorch_run.report
    assert report is not None and report.passed, report and report.to_json()
    assert executorch_run.published, report.to_json()
    checked = {c.artifact for c in report.comparisons if c.backend == "executorch"}
    assert checked == {"edge_sam_decoder.pte"}
    # the program takes one prompt set; the session runs the 3-box batch as 3 calls: judged
    assert not report.to_json()["inputs"].get("skipped")
    assert any(c.case == "batch of 3 boxes" for c in report.comparisons), report.to_json()


@pytest.mark.heavy
def test_encoder_and_decoder_pass_parity_on_the_executorch_runtime(
    executorch_full_build: tuple[LoadedModel, Path],
) -> None:
    loaded, out = executorch_full_build
    report = verify_artifacts(None, out, loaded=loaded)
    assert report.passed, report.to_json()
    checked = {c.artifact for c in report.comparisons if c.backend == "executorch"}
    assert checked == {"edge_sam_encoder.pte", "edge_sam_decoder.pte"}
    # the 3-box batch runs as 3 calls of the one-prompt-set program, alone and end to end
    assert not report.to_json()["inputs"].get("skipped")
    assert any(c.case == "batch of 3 boxes" for c in report.comparisons), report.to_json()


@pytest.mark.heavy
def test_bench_all_shows_the_executorch_column_with_its_verdict(
    executorch_full_build: tuple[LoadedModel, Path],
) -> None:
    """`edgesam-bench --backend all` over a folder of programs: the ExecuTorch column is live,
    timed beside PyTorch stage by stage, and carries its parity verdict (table and JSON)."""
    from typer.testing import CliRunner

    from edgesam_export.cli.bench import app

    _, out = executorch_full_build
    tiny = ["--points", "1", "--box-batch", "1", "--iters", "1", "--warmup", "0"]
    result = CliRunner().invoke(
        app, ["--backend", "all", str(out), *tiny, "--everything-points", "0", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    by_name = {b["name"]: b for b in report["backends"]}
    column = by_name["executorch"]
    assert column["available"], column
    assert column["parity"]["passed"] is True, column["parity"]
    checks = {r["check"] for r in column["parity"]["summary"]}
    assert {"image_embeddings", "end_to_end.masks"} <= checks
    assert not by_name["onnx"]["available"]  # only programs in the folder
    timed = {t["name"] for t in report["timings"] if t["backend"] == "executorch"}
    assert {"encoder", "decoder N=1"} <= timed
    assert "executorch" in result.stderr and "pass" in result.stderr


def test_decoder_takes_a_dynamic_point_count(executorch_build: tuple[LoadedModel, Path]) -> None:
    loaded, out = executorch_build
    session = open_session(out / "edge_sam_decoder.pte")
    reference = DecoderGraph(loaded.model, loaded.spec.frame).eval()
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((1, *loaded.spec.embed_shape)).astype(np.float32)
    for n in (1, 5):
        coords = (rng.random((1, n, 2)) * 1000).astype(np.float32)
        labels = np.ones((1, n), np.float32)
        feeds = {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels}
        got = session.run(feeds)
        with torch.no_grad():
            scores, masks = reference(*(torch.from_numpy(feeds[k]) for k in feeds))
        assert got["masks"].shape == (1, 4, 256, 256)
        assert np.abs(got["masks"] - masks.numpy()).max() < 1e-3
        assert np.abs(got["scores"] - scores.numpy()).max() < 1e-4
    too_many = {"point_coords": np.zeros((1, 17, 2), np.float32)}
    assert "outside 1..16" in (session.accepts(too_many) or "")
    # a batch of prompt sets: B calls of the program, the outputs in order, bit for bit
    assert session.metadata["executorch.max_batch"] == "1"
    assert session.metadata["executorch.batch"] == "calls"
    coords = (rng.random((3, 2, 2)) * 1000).astype(np.float32)
    labels = np.array([[1, 0], [1, 1], [2, 3]], np.float32)
    batch = {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels}
    assert session.accepts(batch) is None
    got = session.run(batch)
    assert got["masks"].shape == (3, 4, 256, 256) and got["scores"].shape == (3, 4)
    for i in range(3):
        one = session.run(
            {"image_embeddings": embeddings, "point_coords": coords[i : i + 1],
             "point_labels": labels[i : i + 1]}
        )  # fmt: skip
        assert np.array_equal(one["masks"][0], got["masks"][i])
        assert np.array_equal(one["scores"][0], got["scores"][i])
    uneven = {"point_coords": np.zeros((3, 2, 2), np.float32), "point_labels": labels[:2]}
    assert "disagree on the batch" in (session.accepts(uneven) or "")
    huge = {"point_coords": np.zeros((65, 2, 2), np.float32)}
    assert "batch 65 is outside 1..64" in (session.accepts(huge) or "")
    with pytest.raises(InputError, match="--max-points"):
        session.run(
            {
                "image_embeddings": embeddings,
                "point_coords": np.zeros((1, 17, 2), np.float32),
                "point_labels": np.ones((1, 17), np.float32),
            }
        )


def test_a_sidecar_without_the_batched_list_refuses_a_batch(
    executorch_build: tuple[LoadedModel, Path], tmp_path: Path
) -> None:
    """Programs exported before the session ran batches as calls: a batch is refused, as then."""
    _, out = executorch_build
    pte = tmp_path / "edge_sam_decoder.pte"
    pte.write_bytes((out / "edge_sam_decoder.pte").read_bytes())
    payload = json.loads((out / "edge_sam_decoder.pte.json").read_text())
    for key in ("executorch.batch", "executorch.batched"):
        del payload["metadata"][key]
    (tmp_path / "edge_sam_decoder.pte.json").write_text(json.dumps(payload))
    session = open_session(pte)
    batch = {"point_coords": np.zeros((3, 2, 2), np.float32)}
    assert "batch 3 is outside 1..1" in (session.accepts(batch) or "")


# A stub program (no export): a sidecar like the decoder's, small shapes, and a `forward` that
# records each call's inputs and answers outputs computed from them.
STUB_INPUTS = [
    {"name": "image_embeddings", "dtype": "float32", "shape": [1, 2, 2, 2]},
    {"name": "point_coords", "dtype": "float32", "shape": [1, "num_points", 2]},
    {"name": "point_labels", "dtype": "float32", "shape": [1, "num_points"]},
]
STUB_OUTPUTS = [
    {"name": "scores", "dtype": "float32", "shape": [1, 4]},
    {"name": "masks", "dtype": "float32", "shape": [1, 4, 2, 2]},
]
STUB_BATCHED = {"inputs": ["point_coords", "point_labels"], "outputs": ["scores", "masks"]}


class _StubMethod:
    def __init__(self) -> None:
        self.calls: list[list[np.ndarray]] = []

    def execute(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        self.calls.append([a.numpy().copy() for a in args])
        embeddings, coords, labels = args
        scores = coords.sum() + 10 * labels.sum() + torch.arange(4.0).reshape(1, 4)
        masks = embeddings.sum() + coords[0, 0, 0] * torch.ones(1, 4, 2, 2)
        return [scores, masks]


def _stub_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata: dict[str, str] | None = None
) -> tuple[ExecuTorchSession, _StubMethod]:
    import executorch.runtime

    method = _StubMethod()

    class StubRuntime:
        @staticmethod
        def get() -> StubRuntime:
            return StubRuntime()

        def load_program(self, path: Path) -> StubRuntime:
            return self

        def load_method(self, name: str) -> _StubMethod:
            return method

    monkeypatch.setattr(executorch.runtime, "Runtime", StubRuntime)
    meta = {
        "graph": "decoder",
        "executorch.max_points": "4",
        "executorch.max_batch": "1",
        "executorch.batch": "calls",
        "executorch.batched": json.dumps(STUB_BATCHED),
    }
    if metadata is not None:
        meta = metadata
    pte = tmp_path / "stub_decoder.pte"
    pte.write_bytes(b"stub")
    payload = {"metadata": meta, "inputs": STUB_INPUTS, "outputs": STUB_OUTPUTS}
    (tmp_path / "stub_decoder.pte.json").write_text(json.dumps(payload))
    return ExecuTorchSession(pte), method


def _stub_feeds(b: int, n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(b)
    return {
        "image_embeddings": rng.standard_normal((1, 2, 2, 2)).astype(np.float32),
        "point_coords": (rng.random((b, n, 2)) * 1000).astype(np.float32),
        "point_labels": rng.integers(0, 4, (b, n)).astype(np.float32),
    }


def test_a_batch_runs_as_one_program_call_per_prompt_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B = 3 prompt sets: three calls of the B = 1 program, each with its prompt set and the
    whole image embeddings, the outputs concatenated along the batch axis in order."""
    session, method = _stub_session(tmp_path, monkeypatch)
    feeds = _stub_feeds(3)
    assert session.accepts(feeds) is None
    got = session.run(feeds)
    assert len(method.calls) == 3
    for i, (embeddings, coords, labels) in enumerate(method.calls):
        assert np.array_equal(embeddings, feeds["image_embeddings"])
        assert np.array_equal(coords, feeds["point_coords"][i : i + 1])
        assert np.array_equal(labels, feeds["point_labels"][i : i + 1])
    assert got["scores"].shape == (3, 4) and got["masks"].shape == (3, 4, 2, 2)
    for i in range(3):
        one = {k: v[i : i + 1] if k != "image_embeddings" else v for k, v in feeds.items()}
        alone = session.run(one)
        assert np.array_equal(alone["scores"][0], got["scores"][i])
        assert np.array_equal(alone["masks"][0], got["masks"][i])
    assert len(method.calls) == 6  # one call per single prompt set too
    # each call's shapes are still checked: 1..max_points points, whatever the batch
    assert "5 points, outside 1..4" in (session.accepts(_stub_feeds(3, n=5)) or "")


def test_a_batch_the_calls_cannot_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, method = _stub_session(tmp_path, monkeypatch)
    uneven = _stub_feeds(3)
    uneven["point_labels"] = uneven["point_labels"][:2]
    assert "disagree on the batch" in (session.accepts(uneven) or "")
    with pytest.raises(InputError, match="disagree on the batch"):
        session.run(uneven)
    with pytest.raises(InputError, match=r"batch 65 is outside 1\.\.64"):
        session.run(_stub_feeds(65))
    wide = _stub_feeds(3)  # the image embeddings carry no batch: one image per program call
    wide["image_embeddings"] = np.repeat(wide["image_embeddings"], 3, axis=0)
    assert "image_embeddings batch 3 is outside 1..1" in (session.accepts(wide) or "")
    assert method.calls == []
    # a program with an output that has no batch axis: nothing to concatenate it along
    meta = {
        "graph": "decoder",
        "executorch.max_points": "4",
        "executorch.max_batch": "1",
        "executorch.batched": json.dumps({**STUB_BATCHED, "outputs": ["masks"]}),
    }
    session, method = _stub_session(tmp_path, monkeypatch, meta)
    assert "['scores'] have no batch axis" in (session.accepts(_stub_feeds(3)) or "")
    assert session.accepts(_stub_feeds(1)) is None
    # a list naming what the program does not have with a first axis of 1: unreadable
    meta["executorch.batched"] = json.dumps({"inputs": ["image"], "outputs": ["masks"]})
    with pytest.raises(ArtifactError, match=r"executorch\.batched"):
        _stub_session(tmp_path, monkeypatch, meta)


def test_an_older_sidecar_without_the_batched_list_refuses_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `executorch.batched`: the session does not guess which axes are the batch."""
    meta = {"graph": "decoder", "executorch.max_points": "4", "executorch.max_batch": "1"}
    session, method = _stub_session(tmp_path, monkeypatch, meta)
    reason = "point_coords batch 3 is outside 1..1 (fixed at export)"
    assert session.accepts(_stub_feeds(3)) == reason
    with pytest.raises(InputError, match=r"batch 3 is outside 1\.\.1"):
        session.run(_stub_feeds(3))
    assert method.calls == []
    assert session.run(_stub_feeds(1))["scores"].shape == (1, 4)


def test_the_sidecar_lists_the_batched_inputs_and_outputs() -> None:
    """`batched_io`: the inputs and outputs whose contract first axis is the batch; none for a
    graph without a batch or with an output that has none."""
    from edgesam_export.device.contract import TensorSpec
    from edgesam_export.device.models import get_spec
    from edgesam_export.host.targets.executorch import batched_io

    assert batched_io(get_spec("edge_sam").graph_io("decoder")) == STUB_BATCHED
    tam = batched_io(get_spec("edgetam").graph_io("decoder"))
    assert tam == {
        "inputs": ["point_coords", "point_labels", "mask_input", "has_mask_input"],
        "outputs": ["scores", "masks", "object_score_logits"],
    }
    assert batched_io(get_spec("edge_sam").graph_io("encoder")) is None
    inputs, outputs = get_spec("edge_sam").graph_io("decoder")
    assert batched_io((inputs, [*outputs, TensorSpec("iou", "float32", (4,))])) is None


def test_sidecar_carries_the_metadata_and_the_manifest_hashes_it(
    executorch_build: tuple[LoadedModel, Path],
) -> None:
    _, out = executorch_build
    side = json.loads((out / "edge_sam_decoder.pte.json").read_text())
    meta = side["metadata"]
    assert meta["family"] == "EdgeSAM" and meta["graph"] == "decoder"
    assert meta["precision"] == "fp32" and meta["executorch.max_points"] == "16"
    assert meta["executorch.version"] == "1.5.1" and meta["torch.version"] == torch.__version__
    assert "checkpoint_sha256" in meta and "pixel_mean" in meta
    assert [t["name"] for t in side["inputs"]] == [
        "image_embeddings",
        "point_coords",
        "point_labels",
    ]
    assert side["inputs"][1]["shape"] == [1, "num_points", 2]
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["path"] == "edge_sam_decoder.pte")
    assert [d["path"] for d in entry["data_files"]] == ["edge_sam_decoder.pte.json"]


def test_a_program_without_its_sidecar_is_unreadable(
    executorch_build: tuple[LoadedModel, Path], tmp_path: Path
) -> None:
    _, out = executorch_build
    lone = tmp_path / "edge_sam_decoder.pte"
    lone.write_bytes((out / "edge_sam_decoder.pte").read_bytes())
    with pytest.raises(ArtifactError, match=r"sidecar edge_sam_decoder\.pte\.json"):
        open_session(lone)


@pytest.mark.heavy
def test_re_export_gives_the_same_bytes(
    executorch_build: tuple[LoadedModel, Path], tmp_path: Path
) -> None:
    from edgesam_export.host.targets.executorch import export

    loaded, out = executorch_build
    again = export(loaded, "decoder", ExecuTorchOptions(graphs=("decoder",), output=tmp_path))
    assert again.path.read_bytes() == (out / "edge_sam_decoder.pte").read_bytes()
    assert again.sha256() == backends_sha(out / "edge_sam_decoder.pte")


def backends_sha(pte: Path) -> str:
    """The artifact hash the manifest recorded for a program and its sidecar."""
    manifest = json.loads((pte.parent / "manifest.json").read_text())
    return str(next(a["sha256"] for a in manifest["artifacts"] if a["path"] == pte.name))


def test_tanh_gelu_runs_as_the_tanh_approximation_not_exact_gelu() -> None:
    """XNNPACK's GELU is exact (erf) whatever `approximate` says; the target spells the tanh
    form out (EfficientViT-SAM uses it everywhere). Without that, the two differ by 4.7e-4 here
    and EfficientViT-SAM-L0's embeddings were 5.3e-2 off."""
    from executorch.runtime import Runtime

    from edgesam_export.host.targets.executorch import _program

    class Both(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            gelu = torch.nn.functional.gelu
            return gelu(x, approximate="tanh") * 2.0, gelu(x) * 2.0

    x = torch.linspace(-6.0, 6.0, 2048).reshape(1, 2048)
    program = Runtime.get().load_program(_program(Both().eval(), (x,), None))
    got = program.load_method("forward").execute([x])
    want = Both()(x)
    for g, w in zip(got, want, strict=True):
        assert float((g - w).abs().max()) < 1e-5


class _ConvTanhGeluConv(torch.nn.Module):
    """EfficientViT-SAM's blocks in small: conv, tanh GELU, conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.b = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.gelu(self.a(x), approximate="tanh"))


def _run_program(program: bytes, x: torch.Tensor, out_shape: tuple[int, ...]) -> np.ndarray:
    """A one-input, one-output program run in `ExecuTorchSession` on `x`."""
    from edgesam_export.device.contract import TensorSpec

    io = {
        "metadata": {},
        "inputs": [TensorSpec("x", "float32", tuple(x.shape))],
        "outputs": [TensorSpec("y", "float32", tuple(out_shape))],
    }
    return np.asarray(ExecuTorchSession(program, sidecar=io).run({"x": x.numpy()})["y"])


def test_tanh_gelu_between_convolutions_runs_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """XNNPACK runs convolutions channels-last; ExecuTorch's layout pass gives both operands of
    a binary op one memory format, and a 0-d constant cannot be channels-last. With 0-d
    constants the spelled-out tanh GELU was computed channels-first: its activations converted
    to channels-first and back (EfficientViT-SAM-L0's encoder: 144 transposes, 29 % of its
    time). Its constants now have the activation's rank and are stored with the program
    (`lift_scalar_fulls`): the layout pass converts only them (one element each), the input
    and the output, and the program computes the same values."""
    import executorch.backends.xnnpack.xnnpack_preprocess as preprocess

    from edgesam_export.host.targets.executorch import _program

    laid_out: list[Any] = []

    class Capture(preprocess.XNNPACKPassManager):  # the delegate's graph after its passes
        def transform(self) -> Any:
            laid_out.append(super().transform())
            return laid_out[-1]

    monkeypatch.setattr(preprocess, "XNNPACKPassManager", Capture)
    torch.manual_seed(0)
    module, x = _ConvTanhGeluConv(8).eval(), torch.randn(1, 8, 16, 16)
    program = _program(module, (x,), None)
    (graph,) = [ep.graph_module.graph for ep in laid_out]
    converted = [n.args[0] for n in graph.nodes if "to_copy" in str(n.target)]
    activations = [n.name for n in converted if n.op == "call_function"]
    constants = [n for n in converted if n.op == "placeholder" and n.name != "x"]
    assert any("tanh" in str(n.target) for n in graph.nodes)  # the tanh form, delegated
    assert len(activations) == 1, activations  # the output, back to channels-first; no more
    assert len(constants) == 4 and all(n.meta["val"].numel() == 1 for n in constants)
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(_run_program(program, x, want.shape), want, rtol=1e-5, atol=1e-6)


def _per_call_int8_error(module: torch.nn.Module, x: torch.Tensor) -> float:
    """`module`'s per-call int8 program (every block int8) run on ExecuTorch's runtime: its
    largest difference from PyTorch on `x`, relative to PyTorch's largest output value (the
    run itself fails where XNNPACK's lowering breaks the program)."""
    from edgesam_export.host.quantize.pt2e import Int8Plan
    from edgesam_export.host.targets.executorch import exported_program, lower

    program = lower(exported_program(module, (x,), None, [(x,)], Int8Plan(dynamic=True)))
    with torch.no_grad():
        want = module(x).numpy()
    got = _run_program(program, x, want.shape)
    return float(np.abs(got - want).max()) / float(np.abs(want).max())


@pytest.mark.parametrize("size", [16, 128])
def test_a_per_call_int8_convolution_after_tanh_gelu_runs(size: int) -> None:
    """EfficientViT-SAM's blocks: conv, tanh GELU, conv. With per-call int8 convolutions the
    `0.5 * x * (1 + tanh(...))` spelling failed at run time; the target's spelling runs and
    stays within int8 noise of PyTorch."""
    torch.manual_seed(0)
    module = _ConvTanhGeluConv(32).eval()
    assert _per_call_int8_error(module, torch.randn(1, 32, size, size)) < 0.05


@pytest.mark.parametrize("norm", ["channels_last", "sam"])
def test_a_per_call_int8_program_with_a_delegated_layer_norm_2d_runs(norm: str) -> None:
    """EdgeSAM's neck: conv, LayerNorm2d, conv. The LayerNorm2d is delegated since 2026-12-05
    (`channel_layer_norms`, `channel_means`). With the affine written as a mul and an add of
    (C, 1, 1) columns, the per-call int8 program of EdgeSAM's channels-last form failed at
    run time ("Propagating input shapes failed"); as a depthwise 1 x 1 convolution it runs,
    within int8 noise of PyTorch, as SAM's form does."""
    from edgesam_export.host.models.edgesam import ChannelsLastLayerNorm2d
    from edgesam_export.host.models.sam_heads import LayerNorm2d

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(32, 32, 3, padding=1)
            plain = LayerNorm2d(32)
            self.norm = ChannelsLastLayerNorm2d(plain) if norm == "channels_last" else plain
            self.b = torch.nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.norm(self.a(x)))

    torch.manual_seed(0)
    assert _per_call_int8_error(Block().eval(), torch.randn(1, 32, 16, 16)) < 0.05


def test_a_per_call_int8_program_with_the_matrix_upsample_runs() -> None:
    """EdgeSAM's neck fuse: conv, resize as two constant matrices (`MatrixUpsample`), conv.
    `rows @ x` (2-D by 4-D) lowered to a portable `expand_copy` of `rows` per channel between
    two delegate calls; it is now one `mm` with `rows^T` between two transposes (`bmm_matmul`;
    `test_static_rewrites_leave_no_portable_operator_in_an_encoder_block` checks that it is
    delegated), and that form must run in a per-call int8 program too, within int8 noise of
    PyTorch."""
    from edgesam_export.host.models.edgesam import MatrixUpsample

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(32, 32, 1)
            self.up = MatrixUpsample((8, 8), "bicubic")
            self.b = torch.nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.up(self.a(x)))

    torch.manual_seed(0)
    assert _per_call_int8_error(Block().eval(), torch.randn(1, 32, 8, 8)) < 0.05


def test_the_decoder_graph_stays_within_six_dims(bicubic_model: LoadedModel) -> None:
    """XNNPACK refuses tensors of rank > 6 when the program loads (the pixel shuffle was 8-D:
    "Failed to define tensor ... xnn_status_unsupported_parameter")."""
    graph = DecoderGraph(bicubic_model.model, 1024, optimized=True).eval()
    args = (
        torch.randn(1, 256, 64, 64),
        torch.rand(1, 3, 2) * 1024,
        torch.tensor([[1.0, 0.0, 1.0]]),
    )
    exported = torch.export.export(graph, args, strict=False)
    ranks = {
        node.name: len(node.meta["val"].shape)
        for node in exported.graph.nodes
        if isinstance(node.meta.get("val"), torch.Tensor)
    }
    assert max(ranks.values()) <= 6, {k: r for k, r in ranks.items() if r > 6}
    reference = DecoderGraph(bicubic_model.model, 1024).eval()
    with torch.no_grad():
        for got, want in zip(graph(*args), reference(*args), strict=True):
            assert torch.allclose(got, want, atol=1e-4)


def test_the_backend_is_wired_by_its_registry_entry_alone() -> None:
    from edgesam_export.cli.bench import _wanted
    from edgesam_export.host.recipes import parse_recipe
    from edgesam_export.host.targets import get_target

    entry = backends.get_backend("executorch")
    assert backends.backend_for_path("m_encoder.pte") is entry
    assert get_target("executorch").name == "executorch"
    assert _wanted("executorch") == ["executorch"] and "executorch" in _wanted("all")
    assert backends.recipe_options("executorch") is ExecuTorchOptions
    (target,) = parse_recipe(
        "name: r\ntargets: [{name: phone, kind: executorch, options: {max_points: 8}}]\n"
    ).targets
    assert target.kind == "executorch" and isinstance(target.options, ExecuTorchOptions)
    assert target.options.max_points == 8 and "executorch" in target.packages()
    (int8,) = parse_recipe(
        "name: r\ntargets: [{name: p, kind: executorch, options: {precision: int8}}]"
    ).targets
    assert isinstance(int8.options, ExecuTorchOptions) and int8.options.precision == "int8"
    with pytest.raises(InputError, match=r"options\.precision"):
        parse_recipe("name: r\ntargets: [{name: p, kind: executorch, options: {precision: fp16}}]")
    assert backends.tolerance_row("executorch", "fp32", "EdgeSAM").measured
    for family in ("EdgeSAM", "MobileSAM"):  # int8 rows measured per family group
        row = backends.tolerance_row("executorch", "int8", family)
        assert row.measured and not row.is_estimate("image_embeddings", family)
    assert backends.tolerance_row("executorch", "int8", "SAM").estimate  # measured for neither


def test_cli_command_refuses_bad_precision_options_in_one_line_before_loading(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from edgesam_export.cli.export import app

    out = tmp_path / "o"
    for args, says in (
        (["--precision", "fp16"], "allowed: fp32, int8"),
        (["--calibration", str(tmp_path)], "--calibration applies to --precision int8"),
        (["--decoder", "--search-budget", "4"], "--search-budget applies to --precision int8"),
    ):
        result = CliRunner().invoke(app, ["executorch", *args, "--output", str(out)])
        assert result.exit_code == 3, result.output
        assert says in " ".join(result.output.split()) and "loading" not in result.output
        assert not out.exists()
    help_text = CliRunner().invoke(app, ["executorch", "--help"]).output
    assert "--max-points" in help_text and "--use-stability-score" in help_text
    assert "--calibration" in help_text and "int8" in help_text
    app_help = " ".join(CliRunner().invoke(app, ["--help"]).output.split())
    assert "every registered target (onnx, coreml, executorch, tensorrt)" in app_help


@pytest.fixture(scope="session")
def int8_decoder(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    return export_and_check(
        ModelOptions(synthetic="calibrated"),
        "executorch",
        ExecuTorchOptions(
            output=tmp_path_factory.mktemp("executorch_int8"), graphs=("decoder",), precision="int8"
        ),
        verify=True,
    )


@pytest.mark.heavy
def test_int8_decoder_meets_the_mask_bar_on_heldout_images(int8_decoder: ExportRun) -> None:
    """PT2E int8 (XNNPACK quantizer) calibrated on the synthetic calibration set; judged on
    the held-out images and prompts: mean mask IoU >= 0.97, worst >= 0.90 against fp32."""
    from edgesam_export.host.quantize.heldout import heldout_mask_bar

    assert int8_decoder.published and int8_decoder.report is not None
    assert int8_decoder.report.passed, int8_decoder.report.to_json()
    pte = int8_decoder.output / "edge_sam_decoder.pte"
    meta = json.loads((pte.parent / (pte.name + ".json")).read_text())["metadata"]
    assert meta["precision"] == "int8" and meta["executorch.calibration"] == "synthetic"
    session = open_session(pte)
    result = heldout_mask_bar(int8_decoder.loaded, decoder=session)
    assert result.count >= 20 and result.passed, result.to_json()
    # the bar can fail: a decoder fed the wrong embeddings misses it
    noise = np.random.default_rng(0).standard_normal
    wrong = _Shifted(session, noise)
    assert not heldout_mask_bar(int8_decoder.loaded, decoder=wrong, images=1).passed


class _Shifted:
    """A decoder session that sees noise instead of the embeddings (a broken program)."""

    def __init__(self, session: object, noise: object) -> None:
        self.session, self.noise = session, noise

    def accepts(self, feeds: dict[str, np.ndarray]) -> str | None:
        return self.session.accepts(feeds)  # type: ignore[attr-defined, no-any-return]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = feeds["image_embeddings"]
        noisy = self.noise(emb.shape).astype(np.float32)  # type: ignore[operator]
        return self.session.run(feeds | {"image_embeddings": noisy})  # type: ignore[attr-defined, no-any-return]


@pytest.mark.heavy
def test_int8_encoder_meets_the_mask_bar_end_to_end(
    int8_decoder: ExportRun, tmp_path: Path
) -> None:
    """The searched int8 encoder (per-call int8 activations, the fewest float blocks meeting
    the bar on the calibration images) + the int8 decoder, end to end against the fp32 PyTorch
    model on the held-out images. The PT2E encoder with calibrated activations and no float
    block missed it: 0.66 / 0.44."""
    from edgesam_export.host.quantize.heldout import heldout_mask_bar
    from edgesam_export.host.quantize.pt2e import encoder_blocks
    from edgesam_export.host.targets.executorch import program_graph

    run = export_and_check(
        ModelOptions(synthetic="calibrated"),
        "executorch",
        ExecuTorchOptions(graphs=("encoder",), output=tmp_path, precision="int8"),
        verify=True,
    )
    assert run.published and run.report is not None and run.report.passed, run.report
    meta = json.loads((tmp_path / "edge_sam_encoder.pte.json").read_text())["metadata"]
    assert "per-call (dynamic)" in meta["executorch.quantizer"]
    floats = meta["int8.float_blocks"].split(",")
    blocks = encoder_blocks(program_graph(int8_decoder.loaded, "encoder", False)[0])
    assert set(floats) < set(blocks)  # some blocks int8, the rest float
    report = json.loads(meta["int8.report"])
    assert report["bar_met"] and report["heldout"]["worst_iou"] >= 0.9
    assert not report["frontier"][0]["passed"]  # every block int8 misses: the search mattered
    result = heldout_mask_bar(
        int8_decoder.loaded,
        encoder=open_session(tmp_path / "edge_sam_encoder.pte"),
        decoder=open_session(int8_decoder.output / "edge_sam_decoder.pte"),
    )
    assert result.passed, result.to_json()


EXECUTORCH_RECIPE = """\
name: phone
weights: {synthetic: calibrated, seed: 0}
targets:
  - name: et
    kind: executorch
    options: {graphs: [GRAPHS], max_points: 8}
"""


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from edgesam_export.cli.export import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.heavy
@pytest.mark.parametrize("graphs", ["decoder", "encoder, decoder"])
def test_a_recipe_builds_verifies_and_reproduces_executorch_programs(
    tmp_path: Path, graphs: str
) -> None:
    """build -> verify -> parity (reference outputs and PyTorch), then the same recipe again
    into another folder gives the same bytes and the same manifest hash."""
    from edgesam_export.device import manifest as mf

    recipe = tmp_path / "phone.yaml"
    recipe.write_text(EXECUTORCH_RECIPE.replace("GRAPHS", graphs))
    code, out = _cli("build", str(recipe), "-o", str(tmp_path / "a"))
    assert code == 0, out
    folder = tmp_path / "a" / "phone"
    manifest = mf.read(folder)
    assert manifest["status"] == "passed" and "executorch" in manifest["tools"]
    programs = {a["path"] for a in manifest["artifacts"]}
    want = {f"et/edge_sam_{g.strip()}.pte" for g in graphs.split(",")}
    assert programs == want
    assert all(a["parity"] == "passed" for a in manifest["artifacts"])
    assert _cli("verify", str(folder))[0] == 0
    code, out = _cli("parity", "--reference", "outputs", str(folder / "et"))
    assert code == 0, out
    code, out = _cli("build", str(recipe), "-o", str(tmp_path / "b"))
    assert code == 0, out
    again = mf.read(tmp_path / "b" / "phone")
    assert again["content_sha256"] == manifest["content_sha256"]
    for rel in manifest["files"]:
        assert (folder / rel).read_bytes() == (tmp_path / "b" / "phone" / rel).read_bytes(), rel


# Families beyond EdgeSAM, fp32 encoder + decoder programs (synthetic weights of each layout).
# test_families.EXECUTORCH lists those whose row here ran and passed; only they claim
# "executorch" in verified_targets.
FAMILIES = (
    "mobile_sam",
    "efficientvit_sam_l0",
    "efficientvit_sam_l1",
    "efficientvit_sam_l2",
    "efficientvit_sam_xl0",
    "efficientvit_sam_xl1",
    "slimsam_50",
    "slimsam_77",
    "sam_vit_b",
    "sam_vit_l",
    "sam_vit_h",  # 2.6 GB encoder program; peak 14.3 GB on this 23 GB host (docs/executorch.md)
)


@pytest.mark.heavy
@pytest.mark.parametrize("name", FAMILIES)
def test_family_programs_pass_parity_on_the_executorch_runtime(name: str, tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    run = export_and_check(
        ModelOptions(model=name, synthetic="calibrated"),
        "executorch",
        ExecuTorchOptions(output=tmp_path),
        verify=True,
    )
    seconds = time.perf_counter() - t0
    assert run.published and run.report is not None, name
    assert run.report.passed, [r for r in run.report.summary() if not r["passed"]]
    checks = {r["check"] for r in run.report.summary()}
    assert {"image_embeddings", "decoder.masks", "end_to_end.masks"} <= checks
    spec = run.loaded.spec
    for graph in ("encoder", "decoder"):
        side = json.loads((tmp_path / f"{name}_{graph}.pte.json").read_text())
        assert side["metadata"]["family"] == spec.family
        assert side["metadata"]["img_size"] == str(spec.img_size)
    sizes = {a["path"]: a["size"] for a in run.described}
    worst = {
        c: max(float(r["max_abs"]) for r in run.report.summary() if r["check"] == c)
        for c in sorted(checks)
    }
    print(f"{name}: export + parity {seconds:.0f} s, sizes {sizes}, max abs {worst}")


# EdgeTAM (SAM 2 layout): the encoder also returns the two high-resolution features, the
# decoder takes them with a mask prompt and also returns the object-score logits; the program's
# I/O is the registry's (`spec.graph_io`), judged by the one judge like its ONNX and CoreML files.
TAM_IMAGE_CHECKS = {
    "image_embeddings",
    "high_res_feats_0",
    "high_res_feats_1",
    "decoder.masks",
    "decoder.scores",
    "decoder.object_scores",
    "end_to_end.masks",
    "end_to_end.object_scores",
}


@pytest.mark.heavy
def test_edgetam_programs_pass_parity_on_the_executorch_runtime(tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    run = export_and_check(
        ModelOptions(model="edgetam", synthetic="calibrated"),
        "executorch",
        ExecuTorchOptions(output=tmp_path, graphs=("encoder", "decoder")),
        verify=True,
    )
    seconds = time.perf_counter() - t0
    assert run.published and run.report is not None
    summary = run.report.summary()
    assert run.report.passed, [r for r in summary if not r["passed"]]
    checks = {r["check"] for r in summary}
    assert TAM_IMAGE_CHECKS <= checks, TAM_IMAGE_CHECKS - checks
    spec = run.loaded.spec
    for graph in ("encoder", "decoder"):
        side = json.loads((tmp_path / f"edgetam_{graph}.pte.json").read_text())
        inputs, outputs = spec.graph_io(graph)
        assert [t["name"] for t in side["inputs"]] == [t.name for t in inputs]
        assert [t["name"] for t in side["outputs"]] == [t.name for t in outputs]
    decoder = open_session(tmp_path / "edgetam_decoder.pte")
    rng = np.random.default_rng(0)
    feeds = {
        t.name: rng.standard_normal([2 if d == "num_points" else d for d in t.shape]).astype(
            np.float32
        )
        for t in decoder.inputs
    }
    feeds["has_mask_input"] = np.zeros((1,), np.float32)
    got = decoder.run(feeds)
    assert set(got) == {"scores", "masks", "object_score_logits"}
    assert got["object_score_logits"].shape == (1, 1) and got["masks"].shape == (1, 4, 256, 256)
    sizes = {a["path"]: a["size"] for a in run.described}
    worst = {
        c: [
            f"{max(float(r[k]) for r in summary if r['check'] == c):.2e}"
            for k in ("max_abs", "rel")
        ]
        for c in sorted(checks)
    }
    print(f"edgetam: export + parity {seconds:.0f} s, sizes {sizes}, max abs / rel {worst}")


def test_a_non_contiguous_non_persistent_buffer_lowers() -> None:
    """ExecuTorch's constant dim-order pass failed on EdgeTAM's perceiver position table (a
    transposed non-persistent buffer): "Missing input spec for lifted tensor". The target makes
    constants contiguous first; the program computes what the module does."""
    from executorch.runtime import Runtime

    from edgesam_export.host.targets.executorch import _program

    class Table(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            table = torch.arange(12.0).reshape(3, 4).t()  # (4, 3), not contiguous
            self.register_buffer("table", table, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.table

    x = torch.linspace(-1.0, 1.0, 8).reshape(2, 4)
    method = Runtime.get().load_program(_program(Table().eval(), (x,), None)).load_method("forward")
    (got,) = method.execute([x])
    assert torch.allclose(got, Table()(x))


def test_program_io_follows_the_registry_with_batch_one() -> None:
    """Every layout's I/O is `spec.graph_io` (EdgeTAM's high-res features, mask prompt and
    object-score logits included), with the batch axes fixed at 1 and the point, memory-frame
    and pointer axes dynamic."""
    from edgesam_export.device.models import get_spec
    from edgesam_export.host.targets.executorch import _dynamic_shapes, _io

    spec = get_spec("edgetam")
    inputs, outputs = _io(spec, "decoder")
    assert [t.name for t in outputs] == ["scores", "masks", "object_score_logits"]
    names = [t.name for t in inputs]
    assert names[:3] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    assert {"mask_input", "has_mask_input"} <= set(names)
    assert all("batch" not in t.shape for t in (*inputs, *outputs))
    dynamic = _dynamic_shapes(inputs, 8)
    assert dynamic is not None
    by_name = dict(zip(names, dynamic, strict=True))
    assert by_name["image_embeddings"] is None and by_name["mask_input"] is None
    points = by_name["point_coords"]
    assert points is not None and points[1] is (by_name["point_labels"] or {}).get(1)
    attention, _ = _io(spec, "memory_attention")
    shapes = dict(
        zip([t.name for t in attention], _dynamic_shapes(attention, 8) or (), strict=True)
    )
    assert shapes["memory"] is not None and shapes["memory"][1] is (shapes["memory_tpos"] or {})[0]
    assert shapes["obj_ptrs"] is not None and 1 in shapes["obj_ptrs"]
    assert _dynamic_shapes(_io(spec, "encoder")[0], 8) is None


def test_edgetam_exports_its_image_graphs_by_default() -> None:
    """The programs take one object per call, so `executorch --model edgetam` writes the image
    graphs (the registry entry's video_graphs=False); ONNX writes all six."""
    from edgesam_export.device.models import get_spec
    from edgesam_export.host.config import OnnxOptions
    from edgesam_export.host.pipeline import graphs_to_export

    spec = get_spec("edgetam")
    assert "executorch" in spec.verified_targets
    assert graphs_to_export(spec, "executorch", ExecuTorchOptions()) == ("encoder", "decoder")
    assert graphs_to_export(spec, "onnx", OnnxOptions()) == spec.graphs
    chosen = ExecuTorchOptions(graphs=("memory_encoder",))
    assert graphs_to_export(spec, "executorch", chosen) == ("memory_encoder",)


class _Stages(torch.nn.Module):
    """A toy encoder: a wrapper over a stem, a stage list and a parameter-free neck."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.stages = torch.nn.Sequential(
            torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GELU()),
            torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.GELU()),
        )
        self.neck = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.stages(self.stem(x)))


class _Wrapped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = _Stages()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(x)


def _quantized_convs(plan: object) -> dict[str, bool]:
    """Which convolutions of `_Wrapped` PT2E quantized under `plan` (a dequantized weight)."""
    from edgesam_export.host.quantize.pt2e import in_block, quantize

    x = torch.linspace(-1.0, 1.0, 3 * 16 * 16).reshape(1, 3, 16, 16)
    exported = torch.export.export(_Wrapped().eval(), (x,), strict=False)
    converted = quantize(exported, [(x,)], plan)  # type: ignore[arg-type]
    blocks = ("image_encoder.stem", "image_encoder.stages.0", "image_encoder.stages.1")
    found = dict.fromkeys(blocks, False)
    for node in converted.graph.nodes:
        if node.op == "call_function" and "conv" in str(node.target):
            weight = node.args[1]
            dequantized = weight.op == "call_function" and "dequantize" in str(weight.target)
            for block in blocks:
                if in_block(node, block):
                    found[block] = dequantized
    return found


def test_int8_plans_quantize_the_blocks_they_name_and_leave_the_float_ones() -> None:
    """The encoder search's candidates: every block but the float ones, or one block alone
    (sensitivity). The quantizer's filter also sees the weights (no module stack): a filter
    that refused them quantized nothing, and every block measured the same."""
    from edgesam_export.host.quantize.pt2e import Int8Plan

    assert all(_quantized_convs(Int8Plan(dynamic=True)).values())
    floats = _quantized_convs(Int8Plan(dynamic=True, float_blocks=("image_encoder.stages.0",)))
    assert floats == {
        "image_encoder.stem": True,
        "image_encoder.stages.0": False,
        "image_encoder.stages.1": True,
    }
    only = _quantized_convs(Int8Plan(dynamic=True, only="image_encoder.stages.1"))
    assert only == {
        "image_encoder.stem": False,
        "image_encoder.stages.0": False,
        "image_encoder.stages.1": True,
    }
    assert all(_quantized_convs(Int8Plan()).values())  # calibrated activations: the decoder's


class _TokensToMap(torch.nn.Module):
    """A ViT's tokens (rank 3) reshaped to a map for a convolution, then a conv after it."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = torch.nn.Linear(8, 8)
        self.conv = torch.nn.Conv2d(8, 16, 1)
        self.out = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = (tokens + self.mlp(tokens)).view(1, 8, 8, 8).permute(0, 3, 1, 2)
        return self.out(torch.nn.functional.gelu(self.conv(x)))


def test_per_call_int8_leaves_float_the_convs_fed_by_tokens_and_lowers() -> None:
    """XNNPACK's ChannelsLastTaggedReshapePass (ExecuTorch 1.5) walks back from a per-call
    int8 conv's input to the end of its chain and makes that tensor channels-last: fed by
    rank-3 tokens, the lowering failed ("required rank 4 tensor"; MobileSAM's PatchMerging and
    neck). Those convs stay float (`reshaped_conv`); the rest stay int8, and the program lowers
    and runs close to float."""
    from executorch.runtime import Runtime

    from edgesam_export.host.quantize.pt2e import Int8Plan, quantize, reshaped_conv
    from edgesam_export.host.targets import executorch as et

    module = _TokensToMap().eval()
    tokens = torch.linspace(-2.0, 2.0, 64 * 8).reshape(1, 64, 8)
    exported = torch.export.export(module, (tokens,), strict=False)
    convs = [n for n in exported.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert [reshaped_conv(n) for n in convs] == [True, False]
    converted = quantize(exported, [(tokens,)], Int8Plan(dynamic=True))
    weights = [
        n.args[1]
        for n in converted.graph.nodes
        if n.op == "call_function" and "conv" in str(n.target)
    ]
    assert ["dequantize" in str(getattr(w, "target", "")) for w in weights] == [False, True]
    program = et.lower(et.exported_program(module, (tokens,), None, [(tokens,)], Int8Plan(True)))
    loaded = Runtime.get().load_program(program)  # holds the bytes the method reads
    (got, *_) = loaded.load_method("forward").execute((tokens,))
    with torch.no_grad():
        want = module(tokens)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < 0.1 * float(want.abs().max())


class _LinearAttention(torch.nn.Module):
    """EfficientViT's `LiteMLA` in small: q, k, v by a conv, a multi-scale branch, their `cat`
    reshaped to heads, two matrix products, reshaped back to a map for the projection."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Conv2d(8, 24, 1)
        self.aggreg = torch.nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.proj = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        heads = torch.cat([qkv, self.aggreg(qkv)], dim=1).reshape(1, 2, 24, -1)
        q, k, v = heads[:, :, :8], heads[:, :, 8:16], heads[:, :, 16:]
        out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
        return self.proj(out.reshape(1, 16, x.shape[2], x.shape[3]))


def test_per_call_int8_leaves_float_a_conv_after_linear_attention_and_runs() -> None:
    """XNNPACK's layout pass walks from `proj`'s per-call int8 input back to the `cat` and makes
    it channels-last, under the reshape to heads: EfficientViT-SAM's int8 encoder lowered but
    failed at run time ("Propagating input shapes failed"), and this toy ran with every value
    wrong (off by 125 where the output peaks at 94). `proj` stays float (its chain passes a
    reshape and ends at a `cat`); the other convs stay int8, and the program runs close to
    float."""
    from edgesam_export.host.quantize.pt2e import reshaped_conv

    torch.manual_seed(0)
    module, x = _LinearAttention().eval(), torch.randn(1, 8, 16, 16)
    exported = torch.export.export(module, (x,), strict=False)
    convs = [n for n in exported.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert [reshaped_conv(n) for n in convs] == [False, False, True]
    assert _per_call_int8_error(module, x) < 0.1


class _Backbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = torch.nn.ModuleList([torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)])


class _Neck(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_ops = torch.nn.ModuleList([torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)])
        self.middle = torch.nn.Conv2d(3, 3, 1)
        self.output_ops = torch.nn.ModuleList([torch.nn.Conv2d(3, 3, 1), torch.nn.Identity()])


class _Nested(torch.nn.Module):
    """EfficientViT-SAM's layout: the stage lists one level below the encoder's children."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.neck = _Backbone(), _Neck()
        self.norm = torch.nn.LayerNorm(3)


def test_encoder_blocks_look_into_a_child_that_holds_a_stage_list() -> None:
    from edgesam_export.host.quantize.pt2e import encoder_blocks

    assert encoder_blocks(_Nested()) == [
        "backbone.stages.0",
        "backbone.stages.1",
        "neck.input_ops.0",
        "neck.input_ops.1",
        "neck.middle",
        "neck.output_ops.0",
    ]


def test_encoder_blocks_are_the_stages_children_with_a_layer_to_quantize(
    bicubic_model: LoadedModel,
) -> None:
    from edgesam_export.host.quantize.pt2e import encoder_blocks
    from edgesam_export.host.targets.executorch import program_graph

    assert encoder_blocks(_Wrapped()) == [
        "image_encoder.stem",
        "image_encoder.stages.0",
        "image_encoder.stages.1",
    ]  # the wrapper is looked through; the neck has nothing to quantize
    module, _ = program_graph(bicubic_model, "encoder", False)
    blocks = encoder_blocks(module)
    assert blocks[:2] == ["image_encoder.features.0", "image_encoder.features.1"]
    assert blocks[-3:] == [
        "image_encoder.fuse_stage2",
        "image_encoder.fuse_stage3",
        "image_encoder.neck.2",
    ]
    assert len(blocks) == 30


def test_a_lowering_that_breaks_inside_the_int8_search_fails_the_export_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder search lowers a program per probe: an error there is the export's failure
    (ExportFailedError naming the graph), and nothing is written."""
    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.host.models import load_model
    from edgesam_export.host.targets import executorch as et

    def broken(exported: object) -> bytes:
        raise RuntimeError("XNNPACK lowering broke\nsecond line")

    monkeypatch.setattr(et, "lower", broken)
    loaded = load_model(None, synthetic="calibrated")
    options = ExecuTorchOptions(
        graphs=("encoder",), precision="int8", calibration_images=1, output=tmp_path
    )
    with pytest.raises(ExportFailedError, match=r"encoder failed: XNNPACK lowering broke$"):
        et.export(loaded, "encoder", options)
    assert list(tmp_path.iterdir()) == []


_LAYER0 = "mask_decoder.transformer.layers.0"


class _Blind(torch.nn.Module):
    """A decoder whose masks ignore the prompts (the decoder's I/O): no mask bar is met."""

    def forward(
        self, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks = torch.nn.functional.interpolate(emb[:, :4], scale_factor=4.0)
        zero = (coords.sum() + labels.sum()) * 0
        return masks.mean(dim=(2, 3)) + zero, masks + zero


def test_an_int8_decoder_is_searched_and_judged_on_the_heldout_images_and_a_miss_writes_nothing(
    executorch_build: tuple[LoadedModel, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every int8 program meets `--accuracy-target` on the calibration images with the fewest
    float blocks the search finds, then on the held-out images, before it is written. Here a
    lowering gives the fp32 program of seed-0 weights for a plan with 2 or more float blocks
    and a blind decoder otherwise: every block int8 misses, the search measures sensitivity
    (PT2E's simulated int8 of the real decoder) and bisects to the float blocks, and the
    held-out judgement of that program meets the bar; the sidecar says so. Against other
    weights (seed 1) every probe misses: the export fails in one line, nothing written."""
    import dataclasses

    from edgesam_export.device.errors import ExportFailedError
    from edgesam_export.device.mask_bar import MaskBar, MaskBarResult
    from edgesam_export.host.models import load_model
    from edgesam_export.host.quantize import pt2e
    from edgesam_export.host.quantize.pt2e import GRAPH_START, node_blocks
    from edgesam_export.host.targets import executorch as et

    loaded, folder = executorch_build
    good = (folder / "edge_sam_decoder.pte").read_bytes()
    module, args = et.program_graph(loaded, "decoder", False, "projected")
    inputs = et._io(loaded.spec, "decoder")[0]
    dynamic = et._dynamic_shapes(inputs, 16)
    blind = et._program(_Blind(), args, dynamic)
    blocks = node_blocks(et.traced_program(module, args, dynamic))
    stand_in = torch.nn.Sequential(torch.nn.AvgPool2d(16), torch.nn.Conv2d(3, 256, 1)).eval()
    image = torch.zeros(1, 3, 1024, 1024)
    stand_in_pte = et.lower(torch.export.export(stand_in, (image,), strict=False))
    plans: list[et.Int8Plan] = []

    def lower(plan: et.Int8Plan) -> bytes:
        plans.append(plan)
        return good if len(plan.float_blocks) >= 2 else blind

    monkeypatch.setattr(et, "exported_program", lambda *args: args[4])  # the plan
    monkeypatch.setattr(et, "lower", lower)
    options = dict(graphs=("decoder",), precision="int8", calibration_images=1, search_budget=6)
    art = et.export(loaded, "decoder", ExecuTorchOptions(output=tmp_path / "own", **options))
    meta = json.loads(et.sidecar_path(art.path).read_text())["metadata"]
    report = json.loads(meta["int8.report"])
    # every node in one block: the attentions, MLPs and head layers, and the ops between them
    assert blocks[:3] == [GRAPH_START, f"{_LAYER0}.self_attn", _LAYER0] and len(blocks) == 32
    assert [len(p["float_blocks"]) for p in report["frontier"]] == [0, 16, 8, 4]
    assert not report["frontier"][0]["passed"] and report["frontier"][-1]["passed"]
    assert len(report["sensitivity"]) == 2 and not report["converged"]
    assert all(np.isfinite(s["sqnr_db"]) for s in report["sensitivity"])
    floats = meta["int8.float_blocks"].split(",")
    assert 2 <= len(floats) < len(blocks) and set(floats) < set(blocks)
    assert not plans[-1].dynamic and plans[-1].float_blocks == tuple(floats)
    assert meta["int8.bar"] == "miou=0.97,worst=0.9 met", meta
    assert float(meta["int8.mask_iou"].split()[1]) > 0.99
    assert (
        meta["executorch.calibration_inputs"] == "10"
        and "calibrated" in meta["executorch.quantizer"]
    )
    # the held-out judgement is kept per image too: the parity image and two synthetic ones
    images = report["heldout"]["images"]
    assert len(images) == 3 and all(i["passed"] for i in images), images
    assert sum(i["masks"] for i in images) == report["heldout"]["masks"]
    # a held-out miss names the image that missed (judgement replaced: image 0 loses)
    bar = MaskBar()
    per_image = (MaskBarResult(bar, 0.85, 0.5, 10), *[MaskBarResult(bar, 1.0, 1.0, 10)] * 2)
    missed = MaskBarResult(bar, 0.95, 0.5, 30, per_image)
    with monkeypatch.context() as patch:
        patch.setattr(pt2e, "heldout_mask_bar", lambda *_: missed)
        with pytest.raises(
            ExportFailedError,
            match=r"held-out images give mean IoU 0\.9500 / worst 0\.5000 over 30 masks \(image 0"
            r" \(the parity test image\) 0\.8500 / 0\.5000 misses; image 1 \(synthetic seed 0\)"
            r" 1\.0000 / 1\.0000; image 2 \(synthetic seed 1\) 1\.0000 / 1\.0000\)",
        ):
            et.export(loaded, "decoder", ExecuTorchOptions(output=tmp_path / "missed", **options))
    assert not (tmp_path / "missed").exists() or list((tmp_path / "missed").iterdir()) == []
    other = load_model(None, synthetic="calibrated", seed=1)
    few = options | {"search_budget": 2}
    with pytest.raises(ExportFailedError, match=r"^int8 decoder: no partly quantized graph meets"):
        et.export(other, "decoder", ExecuTorchOptions(output=tmp_path / "other", **few))
    assert not (tmp_path / "other").exists() or list((tmp_path / "other").iterdir()) == []
    # exported with the encoder, the decoder is searched and judged behind that int8 program
    # (the pair a user runs): a stand-in encoder that ignores the image makes it miss
    both = ExecuTorchOptions(output=tmp_path / "both", **(few | {"graphs": ("encoder", "decoder")}))
    encoder_pte = et.artifact_path(loaded, "encoder", both, "executorch")
    encoder_pte.parent.mkdir(parents=True)
    encoder_pte.write_bytes(stand_in_pte)
    ins, outs = loaded.spec.graph_io("encoder")
    sidecar = {
        "metadata": {"graph": "encoder", "precision": "int8"},
        "inputs": [dataclasses.asdict(t) for t in ins],
        "outputs": [dataclasses.asdict(t) for t in outs],
    }
    et.sidecar_path(encoder_pte).write_text(json.dumps(sidecar))
    with pytest.raises(ExportFailedError, match=r"^int8 decoder: .*fp32 with --decoder\)$"):
        et.export(loaded, "decoder", both)
    assert not et.artifact_path(loaded, "decoder", both, "executorch").exists()


def test_a_session_from_bytes_keeps_its_program_alive(
    executorch_build: tuple[LoadedModel, Path],
) -> None:
    """A program given as bytes (the int8 judgements run programs before they are written)
    computes what the same file computes, after its bytes have no other reference and the
    memory was reused: the runtime reads the buffer in place (a session that kept only the
    method ran on freed memory: "Attempted to resize a static tensor")."""
    import gc

    _, folder = executorch_build
    pte = folder / "edge_sam_decoder.pte"
    on_disk = ExecuTorchSession(pte)
    sidecar = {"metadata": on_disk.metadata, "inputs": on_disk.inputs, "outputs": on_disk.outputs}
    in_memory = ExecuTorchSession(pte.read_bytes(), sidecar=sidecar)
    gc.collect()
    reuse = [bytes(pte.stat().st_size) for _ in range(4)]
    feeds = _stub_feeds(1, 3) | {
        "image_embeddings": np.random.default_rng(0).standard_normal((1, 256, 64, 64), np.float32)
    }
    want, got = on_disk.run(feeds), in_memory.run(feeds)
    assert reuse and want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(TypeError, match="needs its sidecar"):
        ExecuTorchSession(b"not a program")

"""Version-scoped coremltools patches: which versions get which patch, that each is undone, and
that each fixes what it names on the version it covers.

`make test-coreml71` runs this module in `.venv-ct71` (coremltools 7.1, EdgeSAM's version): there
the mean-dtype tests run against the real bug. In the main environment (coremltools 9) the
tests check that the stock converter no longer needs that patch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

from edgesam_export.host.targets import coreml_patches as cp  # noqa: E402

CT_VERSION = cp.coremltools_version()
NUMPY_24 = cp.parse_version(np.__version__) >= (2, 4, 0)


class MeanWithDtype(torch.nn.Module):
    """The construct EdgeSAM's scripts trip on: a traced mean that records its dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True, dtype=torch.float32) * 2.0


def _convert(module: torch.nn.Module, shape: tuple[int, ...]) -> object:
    traced = torch.jit.trace(module.eval(), (torch.randn(*shape),))
    return ct.convert(
        traced,
        inputs=[ct.TensorType("x", shape=shape, dtype=np.float32)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )


def test_version_parsing() -> None:
    assert cp.parse_version("7.1") == (7, 1, 0)
    assert cp.parse_version("8.3.0+local") == (8, 3, 0)


def test_each_patch_names_its_versions_and_why() -> None:
    for patch in cp.PATCHES:
        assert patch.since < patch.until
        assert len(patch.why) > 80, patch.name


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((7, 1, 0), {"mean-dtype"} | ({"cast-one-element-const"} if NUMPY_24 else set())),
        ((7, 2, 0), {"mean-dtype"} | ({"cast-one-element-const"} if NUMPY_24 else set())),
        ((8, 0, 0), {"cast-one-element-const"} if NUMPY_24 else set()),
        ((9, 0, 0), {"cast-one-element-const"} if NUMPY_24 else set()),
        ((9, 1, 0), set()),
    ],
)
def test_patches_are_scoped_to_versions(version: tuple[int, ...], expected: set[str]) -> None:
    assert {p.name for p in cp.applicable(version)} == expected


def test_patches_are_undone_even_on_error() -> None:
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    mapping = _TORCH_OPS_REGISTRY.name_to_func_mapping
    before = dict(mapping)
    cast_before = ops._cast
    with pytest.raises(RuntimeError, match="inside"):
        with cp.patched_coremltools((7, 1, 0)) as names:  # every patch, whatever is installed
            assert "mean-dtype" in names
            assert mapping["mean"] is not before["mean"]
            raise RuntimeError("inside")
    assert mapping == before
    assert ops._cast is cast_before


@pytest.mark.skipif(CT_VERSION >= (8, 0, 0), reason="the mean-dtype bug is in coremltools 7.x")
def test_mean_dtype_fails_stock_and_converts_patched_on_7x(tmp_path) -> None:
    with pytest.raises(AssertionError):
        _convert(MeanWithDtype(), (1, 4, 8, 8))
    with cp.patched_coremltools() as names:
        assert "mean-dtype" in names
        model = _convert(MeanWithDtype(), (1, 4, 8, 8))
    ops = [op.op_type for op in model._mil_program.functions["main"].operations]
    assert "reduce_mean" in ops
    # the package as saved computes the mean (run by our executor)
    from edgesam_export.device.runtime.mil import MilProgram

    path = tmp_path / "mean.mlpackage"
    model.save(str(path))
    x = np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)
    out = next(iter(MilProgram.load(path).run({"x": x}).values()))
    np.testing.assert_allclose(out, 2 * x.mean(axis=(2, 3), keepdims=True), rtol=1e-5)


@pytest.mark.skipif(CT_VERSION < (8, 0, 0), reason="checks the versions past the mean-dtype patch")
def test_mean_dtype_converts_without_patch_from_8() -> None:
    """The patch's upper bound is right: coremltools >= 8 converts the construct unpatched."""
    assert "mean-dtype" not in {p.name for p in cp.applicable()}
    model = _convert(MeanWithDtype(), (1, 4, 8, 8))
    ops = [op.op_type for op in model._mil_program.functions["main"].operations]
    assert "reduce_mean" in ops


class ShapeArithmetic(torch.nn.Module):
    """Traced `c // heads` shape arithmetic: an int() of a one-element constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, 2, c // 2).transpose(1, 2)


@pytest.mark.skipif(not NUMPY_24, reason="the one-element int() cast only fails on numpy >= 2.4")
def test_cast_patch_is_needed_and_sufficient() -> None:
    if CT_VERSION < (9, 1, 0):
        with pytest.raises(TypeError, match="0-dimensional"):
            _convert(ShapeArithmetic(), (1, 3, 8))
    with cp.patched_coremltools():
        model = _convert(ShapeArithmetic(), (1, 3, 8))
    assert "transpose" in [op.op_type for op in model._mil_program.functions["main"].operations]


@pytest.mark.skipif(CT_VERSION >= (8, 0, 0), reason="the main suite converts on current versions")
def test_our_decoder_converts_and_runs_on_7x(tmp_path) -> None:
    """EdgeSAM's coremltools (7.1) with torch 2.13: our decoder graph converts (range shapes,
    patches applied as its version needs) and the saved package matches PyTorch."""
    from edgesam_export.device.backends import open_session
    from edgesam_export.host.config import CoreMLOptions
    from edgesam_export.host.models import load_model
    from edgesam_export.host.reference import reference_sessions
    from edgesam_export.host.targets.coreml import export

    loaded = load_model(None, synthetic="calibrated")
    art = export(loaded, "decoder", CoreMLOptions(output=tmp_path, point_shapes="range"))
    assert art.metadata["coreml.coremltools_version"].startswith("7.")
    session = open_session(art.path, runtime="mil")
    rng = np.random.default_rng(1)
    feeds = {
        "image_embeddings": rng.normal(size=(1, 256, 64, 64)).astype(np.float32),
        "point_coords": (rng.random((1, 3, 2)) * 1024).astype(np.float32),
        "point_labels": np.array([[1.0, 0.0, 2.0]], np.float32),
    }
    out, ref = session.run(feeds), reference_sessions(loaded)[1][False].run(feeds)
    assert np.abs(out["masks"] - ref["masks"]).max() < 1e-4
    assert np.abs(out["scores"] - ref["scores"]).max() < 5e-5

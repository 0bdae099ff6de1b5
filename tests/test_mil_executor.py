"""The numpy MIL executor, op by op against numpy/torch references (no conversion needed), plus
the loader's refusal of an op it does not implement.

Every op in `mil_ops.OPS` must have a case here: `test_every_op_has_a_case` keeps it that way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgesam_export.device.fp16 import TensorRange
from edgesam_export.device.runtime import mil, mil_ops

RNG = np.random.default_rng(0)


def r(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


X, Y = r(2, 3, 4), r(2, 3, 4)
W, B = r(5, 4), r(5)
IMG = r(1, 6, 9, 9)
W4T, W3T = r(6, 3, 2, 2), r(6, 4, 3, 3)  # transposed-conv weights (Cin, Cout, kh, kw)
QUERY, KEY, VAL = r(2, 3, 5, 8), r(2, 3, 7, 8), r(2, 3, 7, 6)
MASK = np.arange(35).reshape(5, 7) % 3 != 1  # bool: True attends


def _conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, **kw: Any) -> np.ndarray:
    return F.conv2d(t(x), t(w), None if b is None else t(b), **kw).numpy()


# op -> list of (kwargs for the op, reference value)
CASES: dict[str, list[tuple[dict[str, Any], Callable[[], np.ndarray]]]] = {
    "add": [({"x": X, "y": Y}, lambda: X + Y)],
    "sub": [({"x": X, "y": Y[:, :1]}, lambda: X - Y[:, :1])],
    "mul": [({"x": X, "y": np.float32(3)}, lambda: X * 3)],
    "real_div": [({"x": X, "y": Y + 5}, lambda: X / (Y + 5))],
    "pow": [({"x": np.abs(X), "y": np.float32(2)}, lambda: np.abs(X) ** 2)],
    "maximum": [({"x": X, "y": Y}, lambda: np.maximum(X, Y))],
    "minimum": [({"x": X, "y": Y}, lambda: np.minimum(X, Y))],
    "equal": [({"x": np.round(X), "y": np.float32(0)}, lambda: np.round(X) == 0)],
    "not_equal": [({"x": np.round(X), "y": np.float32(-1)}, lambda: np.round(X) != -1)],
    "greater": [({"x": X, "y": np.float32(0.5)}, lambda: X > 0.5)],
    "greater_equal": [({"x": X, "y": Y}, lambda: X >= Y)],
    "less": [({"x": X, "y": Y}, lambda: X < Y)],
    "less_equal": [({"x": X, "y": Y}, lambda: X <= Y)],
    "relu": [({"x": X}, lambda: torch.relu(t(X)).numpy())],
    "sin": [({"x": X}, lambda: np.sin(X))],
    "cos": [({"x": X}, lambda: np.cos(X))],
    "exp": [({"x": X}, lambda: np.exp(X))],
    "tanh": [({"x": X}, lambda: np.tanh(X))],
    "sqrt": [({"x": np.abs(X)}, lambda: np.sqrt(np.abs(X)))],
    "rsqrt": [({"x": np.abs(X), "epsilon": 1e-3}, lambda: 1 / np.sqrt(np.abs(X) + 1e-3))],
    "identity": [({"x": X}, lambda: X)],
    "sigmoid": [({"x": X * 30}, lambda: torch.sigmoid(t(X * 30)).numpy())],
    "gelu": [
        ({"x": X * 4, "mode": "EXACT"}, lambda: F.gelu(t(X * 4)).numpy()),
        (
            {"x": X * 4, "mode": "TANH_APPROXIMATION"},
            lambda: F.gelu(t(X * 4), approximate="tanh").numpy(),
        ),
        (
            {"x": X, "mode": "SIGMOID_APPROXIMATION"},
            lambda: (t(X) * torch.sigmoid(1.702 * t(X))).numpy(),
        ),
    ],
    "softmax": [({"x": X * 10, "axis": -1}, lambda: torch.softmax(t(X * 10), -1).numpy())],
    "linear": [
        ({"x": X, "weight": W, "bias": B}, lambda: F.linear(t(X), t(W), t(B)).numpy()),
        ({"x": X, "weight": W}, lambda: F.linear(t(X), t(W)).numpy()),
    ],
    "matmul": [
        ({"x": X, "y": np.swapaxes(Y, 1, 2)}, lambda: X @ np.swapaxes(Y, 1, 2)),
        ({"x": X, "y": Y, "transpose_y": True}, lambda: X @ np.swapaxes(Y, 1, 2)),
        ({"x": X, "y": X, "transpose_x": True}, lambda: np.swapaxes(X, 1, 2) @ X),
    ],
    "layer_norm": [
        (
            {"x": X, "axes": np.array([-1]), "gamma": B[:4], "beta": W[0], "epsilon": 1e-6},
            lambda: F.layer_norm(t(X), (4,), t(B[:4]), t(W[0]), 1e-6).numpy(),
        )
    ],
    "batch_norm": [
        (
            {
                "x": IMG,
                "mean": IMG[0, :, 0, 0],
                "variance": np.abs(IMG[0, :, 1, 1]) + 0.5,
                "gamma": IMG[0, :, 2, 2],
                "beta": IMG[0, :, 3, 3],
                "epsilon": 1e-5,
            },
            lambda: F.batch_norm(
                t(IMG),
                t(IMG[0, :, 0, 0]),
                t(np.abs(IMG[0, :, 1, 1]) + 0.5),
                t(IMG[0, :, 2, 2]),
                t(IMG[0, :, 3, 3]),
                eps=1e-5,
            ).numpy(),
        )
    ],
    "reduce_mean": [
        (
            {"x": IMG, "axes": np.array([2, 3]), "keep_dims": True},
            lambda: IMG.mean((2, 3), keepdims=True),
        )
    ],
    "reduce_sum": [({"x": IMG, "axes": np.array([-1, -2])}, lambda: IMG.sum((2, 3)))],
    "reduce_max": [({"x": X, "axes": np.array([1])}, lambda: X.max(1))],
    "reshape": [({"x": X, "shape": np.array([4, -1])}, lambda: X.reshape(4, 6))],
    "transpose": [({"x": X, "perm": np.array([2, 0, 1])}, lambda: X.transpose(2, 0, 1))],
    "expand_dims": [({"x": X, "axes": np.array([0, -1])}, lambda: X[None, ..., None])],
    "squeeze": [({"x": X[:, :1], "axes": np.array([1])}, lambda: X[:, 0])],
    "concat": [
        ({"values": [X, Y], "axis": 1}, lambda: np.concatenate([X, Y], 1)),
        (  # shape arithmetic: a gathered scalar joins a shape vector
            {"values": [np.int32(2), np.array([3, 4], np.int32)], "axis": 0},
            lambda: np.array([2, 3, 4], np.int32),
        ),
    ],
    "stack": [({"values": [X, Y], "axis": 1}, lambda: np.stack([X, Y], 1))],
    "slice_by_index": [
        (
            {
                "x": X,
                "begin": np.array([0, 1, 0]),
                "end": np.array([0, 3, 0]),
                "stride": np.array([1, 1, 2]),
                "begin_mask": np.array([True, False, True]),
                "end_mask": np.array([True, False, True]),
                "squeeze_mask": np.array([False, False, False]),
            },
            lambda: X[:, 1:3, ::2],
        ),
        (
            {
                "x": X,
                "begin": np.array([0, 2, 0]),
                "end": np.array([0, 3, 0]),
                "begin_mask": np.array([True, False, True]),
                "end_mask": np.array([True, False, True]),
                "squeeze_mask": np.array([False, True, False]),
            },
            lambda: X[:, 2],
        ),
    ],
    "pad": [
        (  # EfficientViT's LiteMLA: a row of ones after the values (last 3 axes given)
            {
                "x": X,
                "pad": np.array([0, 0, 0, 1, 0, 0]),
                "mode": "constant",
                "constant_val": np.float32(1.0),
            },
            lambda: F.pad(t(X), (0, 0, 0, 1), value=1.0).numpy(),
        ),
        (  # window padding (TinyViT, ViT): bottom/right zeros on the two spatial axes
            {
                "x": IMG,
                "pad": np.array([0, 2, 0, 3]),
                "mode": "constant",
                "constant_val": np.float32(0.0),
            },
            lambda: F.pad(t(IMG), (0, 3, 0, 2)).numpy(),
        ),
        (
            {"x": IMG, "pad": np.array([1, 2, 2, 1]), "mode": "reflect"},
            lambda: F.pad(t(IMG), (2, 1, 1, 2), mode="reflect").numpy(),
        ),
        (
            {"x": IMG, "pad": np.array([1, 0, 0, 2]), "mode": "replicate"},
            lambda: F.pad(t(IMG), (0, 2, 1, 0), mode="replicate").numpy(),
        ),
    ],
    "split": [
        (  # TinyViT's q, k, v of unequal widths
            {"x": X, "split_sizes": np.array([1, 3]), "axis": -1},
            lambda: tuple(p.numpy() for p in torch.split(t(X), [1, 3], dim=-1)),
        ),
        (
            {"x": X, "num_splits": 3, "axis": 1},
            lambda: tuple(p.numpy() for p in torch.chunk(t(X), 3, dim=1)),
        ),
    ],
    "cast": [
        ({"x": X * 1000, "dtype": "fp16"}, lambda: (X * 1000).astype(np.float16)),
        ({"x": X > 0, "dtype": "fp32"}, lambda: (X > 0).astype(np.float32)),
    ],
    "conv": [
        (  # dense 3x3, stride 2, padded (the stem)
            {
                "x": IMG,
                "weight": r(8, 6, 3, 3),
                "bias": None,
                "strides": np.array([2, 2]),
                "pad_type": "custom",
                "pad": np.array([1, 1, 1, 1]),
                "dilations": np.array([1, 1]),
                "groups": 1,
            },
            None,
        ),
        (  # depthwise 3x3 with bias (re-parameterised RepVGG blocks)
            {
                "x": IMG,
                "weight": r(6, 1, 3, 3),
                "bias": r(6),
                "strides": np.array([1, 1]),
                "pad_type": "custom",
                "pad": np.array([1, 1, 1, 1]),
                "dilations": np.array([1, 1]),
                "groups": 6,
            },
            None,
        ),
        (  # 1x1 (channel mixers)
            {"x": IMG, "weight": r(4, 6, 1, 1), "bias": r(4), "pad_type": "valid", "groups": 1},
            None,
        ),
        (  # grouped, "same" padding
            {"x": IMG, "weight": r(4, 3, 3, 3), "pad_type": "same", "groups": 2},
            None,
        ),
    ],
    "select": [({"cond": X > 0, "a": X, "b": Y}, lambda: np.where(X > 0, X, Y))],
    "constexpr_blockwise_shift_scale": [
        (
            {
                "data": np.arange(-8, 8, dtype=np.int8).reshape(4, 4),
                "scale": np.array([[0.5], [0.25], [2.0], [1.0]], np.float32),
            },
            lambda: np.arange(-8, 8).reshape(4, 4) * np.array([[0.5], [0.25], [2.0], [1.0]]),
        ),
        (
            {
                "data": np.arange(0, 16, dtype=np.uint8).reshape(4, 4),
                "scale": np.array([[0.5, 2.0]], np.float32),
                "offset": np.array([[8, 4]], np.uint8),
            },
            lambda: (
                (np.arange(0, 16).reshape(4, 4) - np.array([8, 8, 4, 4]))
                * np.array([0.5, 0.5, 2.0, 2.0])
            ),
        ),
    ],
    "constexpr_affine_dequantize": [
        (
            {
                "quantized_data": np.arange(-8, 8, dtype=np.int8).reshape(4, 4),
                "zero_point": np.int8(0),
                "scale": np.array([0.5, 0.25, 2.0, 1.0], np.float32),
                "axis": 0,
            },
            lambda: np.arange(-8, 8).reshape(4, 4) * np.array([[0.5], [0.25], [2.0], [1.0]]),
        )
    ],
    # SAM 2 / EdgeTAM graphs (the mask decoder's upscaling, the memory attention, index tables)
    "conv_transpose": [
        (
            {"x": IMG, "weight": W4T, "bias": B[:3], "strides": [2, 2], "pad_type": "valid"},
            lambda: F.conv_transpose2d(t(IMG), t(W4T), t(B[:3]), stride=2).numpy(),
        ),
        (
            {"x": IMG, "weight": W3T, "strides": [2, 2], "pad_type": "custom", "pad": [1, 1, 1, 1]},
            lambda: F.conv_transpose2d(t(IMG), t(W3T), stride=2, padding=1).numpy(),
        ),
    ],
    "scaled_dot_product_attention": [
        (
            {"query": QUERY, "key": KEY, "value": VAL},
            lambda: F.scaled_dot_product_attention(t(QUERY), t(KEY), t(VAL)).numpy(),
        ),
        (
            {"query": QUERY, "key": KEY, "value": VAL, "attn_mask": MASK},
            lambda: F.scaled_dot_product_attention(
                t(QUERY), t(KEY), t(VAL), attn_mask=torch.from_numpy(MASK)
            ).numpy(),
        ),
    ],
    "gather": [
        (
            {"x": X, "indices": np.array([2, 0, 2], np.int32), "axis": 1},
            lambda: X[:, [2, 0, 2]],
        )
    ],
    "shape": [({"x": X}, lambda: np.array([2, 3, 4], np.int32))],
    "tile": [({"x": X, "reps": np.array([1, 2, 1])}, lambda: np.tile(X, (1, 2, 1)))],
    "fill": [
        ({"shape": np.array([2, 3]), "value": np.float32(-1024)}, lambda: np.full((2, 3), -1024.0))
    ],
    "upsample_bilinear": [
        (
            {"x": IMG, "scale_factor_height": 4.0, "scale_factor_width": 2.0},
            lambda: F.interpolate(t(IMG), scale_factor=(4, 2), mode="bilinear").numpy(),
        ),
        (
            {
                "x": IMG,
                "scale_factor_height": 2.0,
                "scale_factor_width": 2.0,
                "align_corners": True,
            },
            lambda: F.interpolate(
                t(IMG), scale_factor=2, mode="bilinear", align_corners=True
            ).numpy(),
        ),
    ],
    "upsample_nearest_neighbor": [
        (
            {"x": IMG, "scale_factor_height": 2, "scale_factor_width": 3},
            lambda: F.interpolate(t(IMG), scale_factor=(2, 3), mode="nearest").numpy(),
        )
    ],
    "fill_like": [({"ref_tensor": X, "value": np.float32(2)}, lambda: np.full(X.shape, 2.0))],
}


def _reference(op: str, kwargs: dict[str, Any], ref: Callable[[], np.ndarray] | None) -> Any:
    if ref is not None:
        return ref()
    if op == "conv":  # torch's conv2d, with the executor's padding rule made explicit
        w = kwargs["weight"]
        if kwargs["pad_type"] == "same":
            return F.conv2d(t(kwargs["x"]), t(w), padding="same", groups=kwargs["groups"]).numpy()
        pad = kwargs.get("pad")
        padding = 0 if pad is None else int(pad[0])
        stride = 1 if kwargs.get("strides") is None else int(kwargs["strides"][0])
        b = kwargs.get("bias")
        return F.conv2d(
            t(kwargs["x"]), t(w), None if b is None else t(b), stride, padding, 1, kwargs["groups"]
        ).numpy()
    raise AssertionError(op)


def test_every_op_has_a_case() -> None:
    assert set(CASES) == set(mil_ops.OPS)


@pytest.mark.parametrize(
    ("op", "index"), [(op, i) for op, cases in CASES.items() for i in range(len(cases))]
)
def test_op_matches_reference(op: str, index: int) -> None:
    kwargs, ref = CASES[op][index]
    result = mil_ops.OPS[op](**kwargs)
    expected = _reference(op, kwargs, ref)
    if isinstance(expected, tuple):  # multi-output ops (split): one array per output
        assert isinstance(result, tuple) and len(result) == len(expected)
        pairs = list(zip(result, expected, strict=True))
    else:
        pairs = [(result, expected)]
    for got_, want_ in pairs:
        got, want = np.asarray(got_), np.asarray(want_)
        assert got.shape == want.shape
        if want.dtype == np.bool_:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_erf_accuracy() -> None:
    x = np.linspace(-6, 6, 10001)
    want = np.array([math.erf(v) for v in x])
    assert np.abs(mil_ops.erf(x) - want).max() < 2e-7


def test_fp16_results_are_rounded_where_declared() -> None:
    """A step declared fp16 rounds its float32 result; an fp32 step keeps it."""
    x = np.array([1.0 + 2.0**-13, 70000.0], np.float32)
    prog = mil.MilProgram(
        inputs=["x"],
        outputs=["h", "f"],
        steps=[
            mil.Step(
                "add", "to_half", mil_ops.OPS["add"], {"x": "x", "y": "zero"}, [("h", np.float16)]
            ),
            mil.Step(
                "add", "full", mil_ops.OPS["add"], {"x": "x", "y": "zero"}, [("f", np.float32)]
            ),
        ],
        constants={"zero": np.float32(0)},
    )
    record: dict[str, TensorRange] = {}
    out = prog.run({"x": x}, record=record)
    assert out["h"].dtype == np.float16 and out["h"][0] == 1.0 and np.isinf(out["h"][1])
    assert out["f"][0] == np.float32(1.0 + 2.0**-13)
    assert record["h"].max_abs == 70000.0  # the range is recorded before rounding


def test_values_are_freed_after_their_last_read() -> None:
    """A run keeps only live values (ViT global attention: ~0.8 GB per intermediate): each
    computed variable is dropped after the step that reads it last; inputs read later,
    constants and the outputs stay; a value nobody reads is dropped at once."""
    x = r(2, 3)
    steps = [
        mil.Step("relu", "a", mil_ops.OPS["relu"], {"x": "x"}, [("y", np.float32)]),
        mil.Step("exp", "dead", mil_ops.OPS["exp"], {"x": "x"}, [("unused", np.float32)]),
        mil.Step("add", "b", mil_ops.OPS["add"], {"x": "y", "y": "y"}, [("z", np.float32)]),
        mil.Step("mul", "c", mil_ops.OPS["mul"], {"x": "z", "y": "two"}, [("w", np.float32)]),
        mil.Step("add", "d", mil_ops.OPS["add"], {"x": "w", "y": "x"}, [("out", np.float32)]),
    ]
    prog = mil.MilProgram(
        inputs=["x"], outputs=["z", "out"], steps=steps, constants={"two": np.float32(2)}
    )
    assert {i: sorted(v) for i, v in prog.last_reads.items()} == {
        1: ["unused"],
        2: ["y"],
        4: ["w", "x"],
    }
    out = prog.run({"x": x})
    relu = np.maximum(x, 0)
    np.testing.assert_allclose(out["z"], 2 * relu)
    np.testing.assert_allclose(out["out"], 4 * relu + x)
    assert prog.run({"x": x})["out"].shape == (2, 3)  # constants survive a run


def test_unknown_op_is_a_clear_error(tmp_path) -> None:
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(x):  # type: ignore[no-untyped-def]
        return mb.erf(x=x, name="y")

    model = ct.convert(prog, convert_to="mlprogram", skip_model_load=True)
    path = tmp_path / "erf.mlpackage"
    model.save(str(path))
    with pytest.raises(mil.UnsupportedOpError, match="'erf'"):
        mil.MilProgram.load(path)


def test_not_a_package_is_an_artifact_error(tmp_path) -> None:
    from edgesam_export.device.errors import ArtifactError

    (tmp_path / "x.mlpackage").mkdir()
    with pytest.raises(ArtifactError, match=r"Manifest\.json"):
        mil.read_spec(tmp_path / "x.mlpackage")

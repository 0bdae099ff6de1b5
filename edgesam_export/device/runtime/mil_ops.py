"""The numpy implementations of the MIL ops our graphs produce, and the op table (device side).

`runtime.mil` reads a package's program and walks it; this module owns what each op computes.
Every op takes its inputs by their MIL names and computes in float32 from its inputs as stored
(fp16 inputs are widened exactly); rounding to the dtype the program declares happens in the
program walker, not here. An op our graphs do not produce is absent from `OPS`, and the walker
reports it as an `UnsupportedOpError`.

Needs numpy only; never torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edgesam_export.device.errors import ArtifactError


class UnsupportedOpError(ArtifactError):
    """The program holds an op (or an op option) the MIL executor does not implement."""


def _f32(x: Any) -> Any:
    """Compute floating-point values in float32 (fp16 inputs are widened exactly)."""
    if isinstance(x, np.ndarray) and x.dtype == np.float16:
        return x.astype(np.float32)
    if isinstance(x, np.floating) and x.dtype == np.float16:
        return np.float32(x)
    return x


def _axes(axes: Any, ndim: int) -> tuple[int, ...] | None:
    if axes is None:
        return None
    return tuple(int(a) % ndim for a in np.atleast_1d(axes))


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7; numpy has no erf)."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    y = 1.0 - poly * np.exp(-z * z)
    return np.sign(x) * y


def gelu(x: np.ndarray, mode: str = "EXACT") -> np.ndarray:
    x = _f32(x)
    if mode == "EXACT":
        return (0.5 * x.astype(np.float64) * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)
    if mode == "TANH_APPROXIMATION":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid(np.float32(1.702) * x)
    raise UnsupportedOpError(f"gelu mode {mode!r} is not implemented")


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = _f32(x)
    out: np.ndarray = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """In place on one fresh array (ViT global attention: 12 x 4096 x 4096 values per call)."""
    x = _f32(x)
    e = np.subtract(x, x.max(axis=int(axis), keepdims=True))
    np.exp(e, out=e)
    e /= e.sum(axis=int(axis), keepdims=True)
    return e


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """One GEMM over all leading axes (numpy loops over stacked 2-D products otherwise)."""
    x, weight = _f32(x), _f32(weight)
    out = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        out += _f32(bias)
    return out


def matmul(
    x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False
) -> np.ndarray:
    x, y = _f32(x), _f32(y)
    if transpose_x:
        x = np.swapaxes(x, -1, -2)
    if transpose_y:
        y = np.swapaxes(y, -1, -2)
    # Stacked products of strided views (transposes) leave BLAS: 25x slower on ViT windows.
    return np.matmul(np.ascontiguousarray(x), np.ascontiguousarray(y))


def layer_norm(
    x: np.ndarray,
    axes: Any = None,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    epsilon: float = 1e-5,
) -> np.ndarray:
    x = _f32(x)
    ax = _axes(axes, x.ndim) or tuple(range(x.ndim))
    mean = x.mean(axis=ax, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=ax, keepdims=True)
    out = (x - mean) / np.sqrt(var + np.float32(epsilon))
    if gamma is not None:
        out = out * _f32(gamma)
    if beta is not None:
        out = out + _f32(beta)
    return out


def batch_norm(
    x: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    epsilon: float = 1e-5,
) -> np.ndarray:
    """Normalise over axis 1 (channels) with the given statistics."""
    x = _f32(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = (x - _f32(mean).reshape(shape)) / np.sqrt(_f32(variance).reshape(shape) + epsilon)
    if gamma is not None:
        out = out * _f32(gamma).reshape(shape)
    if beta is not None:
        out = out + _f32(beta).reshape(shape)
    return out


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def reduce(x: np.ndarray, axes: Any = None, keep_dims: bool = False) -> np.ndarray:
        x = _f32(x)
        return np.asarray(fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims)))

    return reduce


def reshape(x: np.ndarray, shape: Any) -> np.ndarray:
    return x.reshape(tuple(int(s) for s in np.atleast_1d(shape)))


def transpose(x: np.ndarray, perm: Any) -> np.ndarray:
    return np.transpose(x, tuple(int(p) for p in perm))


def expand_dims(x: np.ndarray, axes: Any) -> np.ndarray:
    out = np.asarray(x)
    rank = out.ndim + len(np.atleast_1d(axes))
    for a in sorted(int(a) % rank for a in np.atleast_1d(axes)):
        out = np.expand_dims(out, a)
    return out


def squeeze(x: np.ndarray, axes: Any = None) -> np.ndarray:
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))


def concat(values: list[np.ndarray], axis: int, interleave: bool = False) -> np.ndarray:
    if interleave:
        raise UnsupportedOpError("concat with interleave=True is not implemented")
    arrays = [np.asarray(v) for v in values]
    if any(a.ndim == 0 for a in arrays):  # shape arithmetic: scalars join 1-D shape vectors
        arrays = [np.atleast_1d(a) for a in arrays]
    return np.concatenate(arrays, axis=int(axis))


def stack(values: list[np.ndarray], axis: int) -> np.ndarray:
    return np.stack([np.asarray(v) for v in values], axis=int(axis))


def slice_by_index(
    x: np.ndarray,
    begin: Any,
    end: Any,
    stride: Any = None,
    begin_mask: Any = None,
    end_mask: Any = None,
    squeeze_mask: Any = None,
) -> np.ndarray:
    rank = x.ndim
    stride = np.ones(rank, int) if stride is None else np.atleast_1d(stride)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.atleast_1d(begin_mask)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.atleast_1d(end_mask)
    squeeze_mask = np.zeros(rank, bool) if squeeze_mask is None else np.atleast_1d(squeeze_mask)
    index: list[Any] = []
    for i in range(rank):
        b = None if begin_mask[i] else int(np.atleast_1d(begin)[i])
        e = None if end_mask[i] else int(np.atleast_1d(end)[i])
        if squeeze_mask[i]:
            index.append(int(np.atleast_1d(begin)[i]))
        else:
            index.append(slice(b, e, int(stride[i])))
    return np.asarray(x[tuple(index)])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def pad(x: np.ndarray, pad: Any, mode: str = "constant", constant_val: Any = 0.0) -> np.ndarray:
    """MIL pad: `pad` holds (before, after) pairs for the LAST len(pad) / 2 axes."""
    x = np.asarray(x)
    pairs = np.asarray(pad, dtype=np.int64).reshape(-1, 2)
    if pairs.shape[0] > x.ndim:
        raise UnsupportedOpError(f"pad of {pairs.shape[0]} axes on a rank-{x.ndim} input")
    if mode not in _PAD_MODES:
        raise UnsupportedOpError(f"pad mode {mode!r} is not implemented")
    if (pairs < 0).any():
        raise UnsupportedOpError("pad with negative amounts (cropping) is not implemented")
    widths = [(0, 0)] * (x.ndim - pairs.shape[0]) + [(int(a), int(b)) for a, b in pairs]
    if mode == "constant":
        value = _f32(np.asarray(constant_val)).reshape(()).item()
        return np.pad(x, widths, mode="constant", constant_values=value)
    return np.pad(x, widths, mode=_PAD_MODES[mode])  # type: ignore[call-overload]


def split(
    x: np.ndarray, axis: int, num_splits: Any = None, split_sizes: Any = None
) -> tuple[np.ndarray, ...]:
    """MIL split: equal parts (`num_splits`) or the given `split_sizes` along `axis`."""
    x = np.asarray(x)
    axis = int(axis) % x.ndim
    if split_sizes is not None:
        sizes = [int(s) for s in np.atleast_1d(split_sizes)]
    elif num_splits is not None:
        n = int(num_splits)
        if x.shape[axis] % n:
            raise UnsupportedOpError(f"split of {x.shape[axis]} into {n} unequal parts")
        sizes = [x.shape[axis] // n] * n
    else:
        raise UnsupportedOpError("split needs num_splits or split_sizes")
    if sum(sizes) != x.shape[axis]:
        raise UnsupportedOpError(f"split sizes {sizes} do not add up to {x.shape[axis]}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


_CAST_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in _CAST_DTYPES:
        raise UnsupportedOpError(f"cast to {dtype!r} is not implemented")
    return np.asarray(x).astype(_CAST_DTYPES[dtype])


def _pads(
    pad_type: str, pad: Any, size: tuple[int, int], kernel: tuple[int, int], strides: Any, dil: Any
) -> list[int]:
    if pad_type == "custom":
        return [int(p) for p in pad]
    if pad_type == "valid":
        return [0, 0, 0, 0]
    if pad_type in ("same", "same_lower"):
        out = []
        for n, k, s, d in zip(size, kernel, strides, dil, strict=True):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            out += [big, small] if pad_type == "same_lower" else [small, big]
        return out
    raise UnsupportedOpError(f"conv pad_type {pad_type!r} is not implemented")


def conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: Any = None,
    pad_type: str = "valid",
    pad: Any = None,
    dilations: Any = None,
    groups: int = 1,
) -> np.ndarray:
    """2-D convolution (NCHW, weight (Cout, Cin/groups, kh, kw)) as shifted products / GEMMs."""
    x, weight = _f32(x), _f32(weight)
    if x.ndim != 4:
        raise UnsupportedOpError(f"conv on a rank-{x.ndim} input is not implemented (2-D only)")
    n, c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    sh, sw = (1, 1) if strides is None else (int(strides[0]), int(strides[1]))
    dh, dw = (1, 1) if dilations is None else (int(dilations[0]), int(dilations[1]))
    groups = int(groups)
    top, bottom, left, right = _pads(pad_type, pad, (h, w), (kh, kw), (sh, sw), (dh, dw))
    xp = (
        np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        if top + bottom + left + right
        else x
    )
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1

    def tap(i: int, j: int) -> np.ndarray:
        r0, c0 = i * dh, j * dw
        return xp[:, :, r0 : r0 + sh * (ho - 1) + 1 : sh, c0 : c0 + sw * (wo - 1) + 1 : sw]

    if groups == c and cin_g == 1 and cout == c:  # depthwise: one multiply-add per tap
        out = np.zeros((n, c, ho, wo), np.float32)
        for i in range(kh):
            for j in range(kw):
                out += tap(i, j) * weight[:, 0, i, j][None, :, None, None]
    else:
        cols = np.stack([tap(i, j) for i in range(kh) for j in range(kw)], axis=2)
        # cols: (n, c, kh*kw, ho, wo) -> per group (n, cin_g*kh*kw, ho*wo)
        cols = cols.reshape(n, groups, cin_g * kh * kw, ho * wo)
        wg = weight.reshape(groups, cout // groups, cin_g * kh * kw)
        out = np.einsum("gok,ngkp->ngop", wg, cols, optimize=True).reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + _f32(bias)[None, :, None, None]
    return out.astype(np.float32, copy=False)


def conv_transpose(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: Any = None,
    pad_type: str = "valid",
    pad: Any = None,
    dilations: Any = None,
    groups: int = 1,
    output_shape: Any = None,
) -> np.ndarray:
    """2-D transposed convolution (NCHW, weight (Cin, Cout, kh, kw)): each input pixel spreads
    its kernel-weighted values to a stride-spaced output window, then the padding is cropped."""
    x, weight = _f32(x), _f32(weight)
    if x.ndim != 4 or int(groups) != 1:
        raise UnsupportedOpError("conv_transpose: only 2-D with groups=1 is implemented")
    if pad_type not in ("valid", "custom"):
        raise UnsupportedOpError(f"conv_transpose pad_type {pad_type!r} is not implemented")
    n, _, h, w = x.shape
    _, cout, kh, kw = weight.shape
    sh, sw = (1, 1) if strides is None else (int(strides[0]), int(strides[1]))
    dh, dw = (1, 1) if dilations is None else (int(dilations[0]), int(dilations[1]))
    full = np.zeros((n, cout, (h - 1) * sh + dh * (kh - 1) + 1, (w - 1) * sw + dw * (kw - 1) + 1))
    for i in range(kh):
        for j in range(kw):
            tap = np.einsum("nchw,co->nohw", x, weight[:, :, i, j], optimize=True)
            full[
                :,
                :,
                i * dh : i * dh + (h - 1) * sh + 1 : sh,
                j * dw : j * dw + (w - 1) * sw + 1 : sw,
            ] += tap
    top, bottom, left, right = [0, 0, 0, 0] if pad_type == "valid" else [int(p) for p in pad]
    out = full[:, :, top : full.shape[2] - bottom, left : full.shape[3] - right]
    if output_shape is not None:
        out = out[:, :, : int(output_shape[-2]), : int(output_shape[-1])]
    if bias is not None:
        out = out + _f32(bias)[None, :, None, None]
    return out.astype(np.float32)


def scaled_dot_product_attention(
    query: np.ndarray, key: np.ndarray, value: np.ndarray, attn_mask: np.ndarray | None = None
) -> np.ndarray:
    """softmax(Q K^T / sqrt(d) + mask) V over the last two axes (a bool mask keeps True)."""
    q, k, v = _f32(query), _f32(key), _f32(value)
    scores = matmul(q, k, transpose_y=True) * np.float32(1.0 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        scores = (
            np.where(mask, scores, np.float32(-np.inf))
            if mask.dtype == np.bool_
            else scores + _f32(mask)
        )
    return matmul(softmax(scores, axis=-1), v)


def gather(
    x: np.ndarray, indices: Any, axis: int = 0, batch_dims: int = 0, validate_indices: bool = False
) -> np.ndarray:
    if int(batch_dims) != 0:
        raise UnsupportedOpError("gather with batch_dims is not implemented")
    idx = np.asarray(indices).astype(np.int64)
    axis = int(axis) % np.ndim(x)
    if np.any(idx >= np.shape(x)[axis]) or np.any(idx < -np.shape(x)[axis]):
        raise ArtifactError(f"gather: indices outside 0..{np.shape(x)[axis] - 1}")
    return np.take(x, idx, axis=axis)


def fill(shape: Any, value: Any = 0.0) -> np.ndarray:
    return np.full([int(d) for d in np.atleast_1d(shape)], value)


def fill_like(ref_tensor: np.ndarray, value: Any = 0.0) -> np.ndarray:
    return np.full(np.shape(ref_tensor), value)


def _interp_matrix(n_in: int, scale: float, align_corners: bool) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights along one axis (PyTorch's sampling rule)."""
    n_out = math.floor(n_in * scale)
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(dst)
    else:  # half-pixel centres, clamped at the first pixel
        src = np.maximum((dst + 0.5) / scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def upsample_bilinear(
    x: np.ndarray,
    scale_factor_height: Any = 1.0,
    scale_factor_width: Any = 1.0,
    align_corners: bool = False,
    half_pixel_centers: Any = None,
) -> np.ndarray:
    """Bilinear upsampling of the last two axes as two interpolation-matrix products."""
    if half_pixel_centers is not None and bool(half_pixel_centers) == bool(align_corners):
        raise UnsupportedOpError("upsample_bilinear: half_pixel_centers must be not align_corners")
    x = _f32(x)
    rows = _interp_matrix(x.shape[-2], float(scale_factor_height), bool(align_corners))
    cols = _interp_matrix(x.shape[-1], float(scale_factor_width), bool(align_corners))
    return matmul(matmul(rows, x), cols.T)


def upsample_nearest_neighbor(
    x: np.ndarray, scale_factor_height: Any = 1, scale_factor_width: Any = 1
) -> np.ndarray:
    """Nearest upsampling of the last two axes: output pixel i reads input floor(i / scale)."""
    h, w = np.shape(x)[-2:]
    sh, sw = float(scale_factor_height), float(scale_factor_width)
    rows = np.minimum(np.floor(np.arange(int(h * sh)) / sh).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(int(w * sw)) / sw).astype(np.int64), w - 1)
    return np.asarray(x)[..., rows[:, None], cols[None, :]]


def constexpr_blockwise_shift_scale(
    data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None
) -> np.ndarray:
    """(data - offset) * scale, each scale/offset entry covering a block of `data`."""
    d = data.astype(np.float32)
    s, o = _f32(scale).astype(np.float32), None if offset is None else offset.astype(np.float32)
    reps = [ds // ss for ds, ss in zip(d.shape, s.shape, strict=True)]
    if o is not None:
        d = d - np.kron(o, np.ones(reps, np.float32)) if o.shape != d.shape else d - o
    return d * (np.kron(s, np.ones(reps, np.float32)) if s.shape != d.shape else s)


def constexpr_affine_dequantize(
    quantized_data: np.ndarray, zero_point: Any, scale: Any, axis: int
) -> np.ndarray:
    d = quantized_data.astype(np.float32)
    shape = [1] * d.ndim
    zp, sc = np.asarray(zero_point, np.float32), np.asarray(_f32(scale), np.float32)
    if zp.ndim:
        shape[int(axis)] = -1
        zp = zp.reshape(shape)
    if sc.ndim:
        shape = [1] * d.ndim
        shape[int(axis)] = -1
        sc = sc.reshape(shape)
    return (d - zp) * sc


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[..., np.ndarray]:
    def op(x: Any, y: Any) -> np.ndarray:
        return np.asarray(fn(_f32(x), _f32(y)))

    return op


def _unary(fn: Callable[[Any], Any]) -> Callable[..., np.ndarray]:
    def op(x: Any) -> np.ndarray:
        return np.asarray(fn(_f32(x)))

    return op


OPS: dict[str, Callable[..., Any]] = {
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "pow": _binary(np.power),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "sin": _unary(np.sin),
    "cos": _unary(np.cos),
    "exp": _unary(np.exp),
    "tanh": _unary(np.tanh),
    "sqrt": _unary(np.sqrt),
    "identity": _unary(lambda x: x),
    "rsqrt": lambda x, epsilon=1e-12: 1.0 / np.sqrt(_f32(x) + np.float32(epsilon)),
    "sigmoid": sigmoid,
    "gelu": gelu,
    "softmax": softmax,
    "linear": linear,
    "matmul": matmul,
    "layer_norm": layer_norm,
    "batch_norm": batch_norm,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reshape": reshape,
    "transpose": transpose,
    "expand_dims": expand_dims,
    "squeeze": squeeze,
    "concat": concat,
    "stack": stack,
    "slice_by_index": slice_by_index,
    "pad": pad,
    "split": split,
    "cast": cast,
    "conv": conv,
    "conv_transpose": conv_transpose,
    "scaled_dot_product_attention": scaled_dot_product_attention,
    "gather": gather,
    "shape": lambda x: np.asarray(np.shape(x), np.int32),
    "tile": lambda x, reps: np.tile(x, [int(r) for r in np.atleast_1d(reps)]),
    "fill": fill,
    "fill_like": fill_like,
    "upsample_bilinear": upsample_bilinear,
    "upsample_nearest_neighbor": upsample_nearest_neighbor,
    "select": lambda cond, a, b: np.where(np.asarray(cond), _f32(a), _f32(b)),
    "constexpr_blockwise_shift_scale": constexpr_blockwise_shift_scale,
    "constexpr_affine_dequantize": constexpr_affine_dequantize,
}

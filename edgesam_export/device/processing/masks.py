"""Mask post-processing: low-res logits -> original-size logits, masks, scores, selection."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edgesam_export.device.contract import MaskTokens
from edgesam_export.device.processing._common import ImageInfo, ProcessingError, _describe


def _torch_bilinear_taps(
    in_size: int, out_size: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Per output index: lower and upper source index and their weights, as torch computes them.

    ``F.interpolate(mode="bilinear", align_corners=False)``: half-pixel centres, source =
    (dst + 0.5) * in / out - 0.5, clamped below at 0; the upper neighbour is clamped to
    ``in - 1`` (no antialiasing, as torch's default). The source position is computed the way
    torch does for float32 tensors (float32 ratio, one float32 rounding of
    ``ratio * (dst + 0.5) - 0.5`` as a fused multiply-add gives): at ~1000 px a float32 ulp is
    ~6e-5 px, which on steep logits is worth ~1e-3, so exact float64 positions would disagree
    with torch far more than the matmul does.
    """
    ratio = np.float32(in_size) / np.float32(out_size)
    half_dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(ratio) * half_dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = np.clip(src - lower.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return lower, upper, (np.float32(1.0) - frac).astype(np.float64), frac.astype(np.float64)


def _torch_bilinear_matrix(in_size: int, out_size: int) -> NDArray[np.float64]:
    """``(out, in)`` matrix of ``F.interpolate(mode="bilinear", align_corners=False)``."""
    lower, upper, w_lower, w_upper = _torch_bilinear_taps(in_size, out_size)
    rows = np.arange(out_size)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (rows, lower), w_lower)
    np.add.at(matrix, (rows, upper), w_upper)
    return matrix


_Band = tuple[tuple[int, int, int, int, NDArray[np.float32]], ...]
_BAND_ROWS = 64


def _banded(matrix: NDArray[np.float64], block: int = _BAND_ROWS) -> _Band:
    """Split an (out, in) resampling matrix into row blocks with their non-zero column span.

    A bilinear-of-bilinear operator has a handful of non-zeros per row, so each block of 64
    output rows reads a narrow window of the input: block matmuls do a few percent of the
    dense product's work while keeping BLAS efficiency.
    """
    blocks = []
    for r0 in range(0, matrix.shape[0], block):
        r1 = min(r0 + block, matrix.shape[0])
        cols = np.flatnonzero(np.any(matrix[r0:r1] != 0.0, axis=0))
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        sub = np.ascontiguousarray(matrix[r0:r1, c0:c1], dtype=np.float32)
        sub.setflags(write=False)
        blocks.append((r0, r1, c0, c1, sub))
    return tuple(blocks)


def _apply_rows(band: _Band, x: NDArray[np.float32], n_out: int) -> NDArray[np.float32]:
    """``M @ x`` over the second-to-last axis of x, for a banded M of ``n_out`` rows."""
    y = np.empty((*x.shape[:-2], n_out, x.shape[-1]), dtype=np.float32)
    for r0, r1, c0, c1, sub in band:
        np.matmul(sub, x[..., c0:c1, :], out=y[..., r0:r1, :])
    return y


@functools.lru_cache(maxsize=32)
def _postprocess_bands(
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    img_size: int,
    low_res_size: tuple[int, int],
) -> tuple[_Band, _Band]:
    """Banded composite operators per axis (rows, then columns) for upscale -> crop -> resize.

    Both resizes and the crop are linear per axis, so they collapse into one small matrix
    per axis (composed in float64, applied in float32). Cached because a device typically
    decodes many prompts for the same image.
    """
    bands = []
    if input_size == (0, 0):  # stretch: one resize, low-res -> original
        for axis in (0, 1):
            bands.append(_banded(_torch_bilinear_matrix(low_res_size[axis], original_size[axis])))
        return bands[0], bands[1]
    for axis in (0, 1):
        up = _torch_bilinear_matrix(low_res_size[axis], img_size)[: input_size[axis]]
        # down @ up, using that each row of `down` has two taps: O(out * low_res) work.
        lower, upper, w_lower, w_upper = _torch_bilinear_taps(input_size[axis], original_size[axis])
        bands.append(_banded(w_lower[:, None] * up[lower] + w_upper[:, None] * up[upper]))
    return bands[0], bands[1]


def postprocess_masks(low_res_logits: ArrayLike, info: ImageInfo) -> NDArray[np.float32]:
    """Upscale decoder logits ``(K, Lh, Lw)`` / ``(B, K, Lh, Lw)`` to the original image.

    Same semantics as SAM's ``postprocess_masks`` (bilinear to ``S x S``, crop to
    ``input_size``, bilinear to ``original_size``, all with ``align_corners=False``; for a
    ``resize="stretch"`` image SAM 2's single bilinear resize to ``original_size``), but
    computed as ``Mh @ X @ Mw^T`` with precomputed, banded per-axis operators, which is much
    faster than two full-size resizes. Returns float32 logits ``(..., H, W)``; threshold them
    with :func:`threshold_masks`.
    """
    if not isinstance(info, ImageInfo):
        raise ProcessingError(f"info must be an ImageInfo (from preprocess), got {_describe(info)}")
    logits = np.asarray(low_res_logits)
    if logits.dtype.kind not in "iuf":
        raise ProcessingError(f"low_res_logits must be real numbers, got dtype {logits.dtype}")
    if logits.ndim not in (3, 4) or logits.shape[-1] == 0 or logits.shape[-2] == 0:
        raise ProcessingError(
            f"low_res_logits must have shape (K, 256, 256) or (B, K, 256, 256), got {logits.shape}"
        )
    x = logits.astype(np.float32, copy=False)
    low_h, low_w = int(x.shape[-2]), int(x.shape[-1])
    direct = info.resize == "stretch"
    rows, cols = _postprocess_bands(
        info.original_size, (0, 0) if direct else info.input_size, info.img_size, (low_h, low_w)
    )
    out_h, out_w = info.original_size
    # Columns first on the small input (as rows of the transposed view), then rows.
    x_cols = _apply_rows(cols, x.swapaxes(-1, -2), out_w)
    return _apply_rows(rows, x_cols.swapaxes(-1, -2), out_h)


def threshold_masks(logits: ArrayLike, threshold: float = 0.0) -> NDArray[np.bool_]:
    """Binary masks ``logits > threshold`` (strict, as SAM's ``mask_threshold``)."""
    return np.asarray(np.asarray(logits) > threshold, dtype=np.bool_)


def stability_score(
    logits: ArrayLike, threshold: float = 0.0, offset: float = 1.0
) -> NDArray[np.float32]:
    """SAM's stability score over the last two axes.

    ``count(logits > threshold + offset) / count(logits > threshold - offset)``: the IoU of
    the masks obtained with a stricter and a looser threshold (the first is a subset of the
    second, so the value lies in [0, 1]). Counts are integers and the division is float32,
    like the official torch code. A mask with no pixel above ``threshold - offset`` gives
    0 / 0 = NaN, as in the official code; the resulting numpy warning is suppressed.
    """
    arr = np.asarray(logits)
    if arr.ndim < 2:
        raise ProcessingError(
            f"stability_score needs logits with at least 2 dims (..., H, W), got {arr.shape}"
        )
    intersections = np.count_nonzero(arr > (threshold + offset), axis=(-2, -1))
    unions = np.count_nonzero(arr > (threshold - offset), axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.asarray(intersections, dtype=np.float32) / np.asarray(unions, np.float32)
    return np.asarray(score, dtype=np.float32)


def select_masks(
    scores: ArrayLike,
    masks: ArrayLike,
    num_multimask_outputs: int,
    tokens: MaskTokens | None = None,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Pick the decoder's mask tokens following the model's convention (``tokens``).

    The decoder emits ``tokens.count`` tokens (axis -1 of ``scores``, axis -3 of ``masks``).
    ``num_multimask_outputs`` 1 -> the single-mask slots, ``len(tokens.multi)`` -> the
    multimask slots, ``tokens.count`` -> all. The default convention (EdgeSAM, SAM,
    MobileSAM, EfficientViT-SAM): 4 tokens, token 0 single, tokens 1..3 multimask, so 1, 3
    and 4 are accepted. Works for ``(K,)`` / ``(K, h, w)`` and batched ``(B, K)`` /
    ``(B, K, h, w)`` inputs.
    """
    conv = MaskTokens() if tokens is None else tokens
    choices: dict[int, tuple[int, ...]] = {conv.count: tuple(range(conv.count))}
    choices[len(conv.multi)] = conv.multi
    choices[len(conv.single)] = conv.single
    if isinstance(num_multimask_outputs, bool) or num_multimask_outputs not in choices:
        raise ProcessingError(
            f"num_multimask_outputs must be one of {sorted(choices)}, got {num_multimask_outputs!r}"
        )
    score_arr = np.asarray(scores)
    mask_arr = np.asarray(masks)
    k = conv.count
    if score_arr.ndim < 1 or mask_arr.ndim < 3:
        raise ProcessingError(
            f"select_masks expects scores (..., {k}) and masks (..., {k}, h, w), got shapes "
            f"{score_arr.shape} and {mask_arr.shape}"
        )
    if score_arr.shape[-1] != k or mask_arr.shape[-3] != k:
        raise ProcessingError(
            f"select_masks expects all {k} decoder tokens: scores (..., {k}) and masks "
            f"(..., {k}, h, w), got shapes {score_arr.shape} and {mask_arr.shape}"
        )
    if score_arr.shape[:-1] != mask_arr.shape[:-3]:
        raise ProcessingError(
            f"scores {score_arr.shape} and masks {mask_arr.shape} have different leading dims"
        )
    if num_multimask_outputs == len(conv.single) and conv.stable_threshold is not None:
        return _stable_or_best(score_arr, mask_arr, conv)
    chosen = choices[num_multimask_outputs]
    first, last = chosen[0], chosen[-1]
    if chosen == tuple(range(first, last + 1)):  # contiguous: a view, as before
        return score_arr[..., first : last + 1], mask_arr[..., first : last + 1, :, :]
    idx = np.asarray(chosen)
    return score_arr[..., idx], mask_arr[..., idx, :, :]


def _stable_or_best(
    scores: NDArray[Any], masks: NDArray[Any], conv: MaskTokens
) -> tuple[NDArray[Any], NDArray[Any]]:
    """SAM 2's single-mask answer: the single token where its stability reaches the threshold,
    else the multimask token with the best score (first on ties, as argmax)."""
    assert conv.stable_threshold is not None
    single = conv.single[0]
    logits = masks[..., single, :, :]
    high = np.count_nonzero(logits > conv.stable_delta, axis=(-2, -1))
    low = np.count_nonzero(logits > -conv.stable_delta, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            low > 0,
            high.astype(np.float32) / np.maximum(low, 1).astype(np.float32),
            np.float32(1.0),
        )
    multi = np.asarray(conv.multi)
    best = multi[np.argmax(scores[..., multi], axis=-1)]
    pick = np.where(ratio >= conv.stable_threshold, single, best)[..., None]
    chosen_scores = np.take_along_axis(scores, pick, axis=-1)
    chosen_masks = np.take_along_axis(masks, pick[..., None, None], axis=-3)
    return chosen_scores, chosen_masks

// Pre- and post-processing in the browser: a step-by-step port of edgesam_export/processing,
// driven by the model's recorded preprocessing (model.json), so the page feeds the graphs the
// same tensors as Python for every family.
//
// - resize: Pillow's uint8 bilinear resize (22-bit fixed-point taps, two separable passes
//   with a uint8 intermediate, Pillow 13's pass order), implemented here because canvas
//   resizing is not specified to the bit. JavaScript numbers are float64, so the tap
//   computation follows numpy's float64 operations in the same order. The long side becomes
//   the encoder size (1024 for EdgeSAM/SAM, 512 for EfficientViT-SAM-L).
// - normalisation in float32 (Math.fround after each operation, as numpy's float32
//   arithmetic rounds): "sam" = (x - mean) / std on 0..255; "unit" = x / 255, then
//   (x - mean/255) / (std/255) with the constants divided in float64 (torchvision's ToTensor +
//   Normalize). Zero padding to S x S at the bottom/right "after-normalize" (0 in normalised
//   space) or "before-normalize" (the normalised value of a 0 pixel).
// - prompts: (x, y) * (new / old) in float64, rounded to float32, in the prompt frame (SAM's
//   1024, also when the encoder sees 512); EdgeSAM's padding point.
// - masks: F.interpolate(bilinear, align_corners=False) to the frame, crop, bilinear to the
//   original size, composed per axis in float64 and applied in float32; logits > 0.
// - mask tokens: the model's convention (single-mask and multimask slots).
// Pure functions of typed arrays: no DOM, no onnxruntime.

export const DEFAULT_IMG_SIZE = 1024;
const PRECISION_BITS = 22;
const FIXED_ONE = 2 ** PRECISION_BITS;
const FIXED_HALF = 2 ** (PRECISION_BITS - 1);
const f32 = Math.fround;

export class ProcessingError extends Error {}

/** [h, w] of an h x w image resized so its long side is `longSide` (SAM's rounding). */
export function getPreprocessShape(height, width, longSide) {
  const scale = (longSide * 1.0) / Math.max(height, width);
  return [
    Math.max(1, Math.trunc(height * scale + 0.5)),
    Math.max(1, Math.trunc(width * scale + 0.5)),
  ];
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: tap starts, counts, weights. */
export function pillowTaps(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const invFilterscale = 1.0 / filterscale;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    const n = Math.min(Math.max(xmax - xmin, 0), ksize);
    let total = 0.0;
    for (let k = 0; k < ksize; k++) {
      const arg = (xmin + k - center + 0.5) * invFilterscale;
      w[k] = k < n ? Math.max(1.0 - Math.abs(arg), 0.0) : 0.0;
      total += w[k]; // left to right, as Pillow (and the numpy cumsum) accumulate
    }
    for (let k = 0; k < ksize; k++) {
      const v = total !== 0.0 ? w[k] / total : w[k];
      const scaled = v * FIXED_ONE;
      weights[o * ksize + k] = scaled < 0 ? Math.trunc(-0.5 + scaled) : Math.trunc(0.5 + scaled);
    }
    start[o] = xmin;
    count[o] = n;
  }
  return { start, count, weights, ksize };
}

// One 8-bit resampling pass over `planes` (C planes of rows x cols, row-major) along the
// rows axis (vertical) or the columns axis (horizontal). Integer arithmetic is exact in
// float64, so the accumulation order does not matter.
function resamplePass(planes, rows, cols, outSize, vertical) {
  const inSize = vertical ? rows : cols;
  const { start, count, weights, ksize } = pillowTaps(inSize, outSize);
  const outRows = vertical ? outSize : rows;
  const outCols = vertical ? cols : outSize;
  return planes.map((src) => {
    const dst = new Uint8Array(outRows * outCols);
    if (vertical) {
      const acc = new Float64Array(cols);
      for (let o = 0; o < outSize; o++) {
        acc.fill(FIXED_HALF);
        for (let k = 0; k < count[o]; k++) {
          const wk = weights[o * ksize + k];
          const base = (start[o] + k) * cols;
          for (let x = 0; x < cols; x++) acc[x] += src[base + x] * wk;
        }
        const rowOut = o * cols;
        for (let x = 0; x < cols; x++) {
          const v = Math.floor(acc[x] / FIXED_ONE);
          dst[rowOut + x] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
      }
    } else {
      for (let y = 0; y < rows; y++) {
        const rowIn = y * cols;
        const rowOut = y * outCols;
        for (let o = 0; o < outSize; o++) {
          let acc = FIXED_HALF;
          const s = rowIn + start[o];
          const wb = o * ksize;
          for (let k = 0; k < count[o]; k++) acc += src[s + k] * weights[wb + k];
          const v = Math.floor(acc / FIXED_ONE);
          dst[rowOut + o] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
      }
    }
    return dst;
  });
}

/** Whether Pillow >= 13 runs the vertical pass first (see processing._pillow_vertical_first). */
export function pillowVerticalFirst(inH, inW, outH, outW) {
  return outH < inH && inH - outH > 2 * (inW - outW);
}

/**
 * Resize C uint8 planes (each inH x inW) to outH x outW exactly like Pillow's BILINEAR.
 * Returns new planes; a pass is skipped when its axis keeps its size.
 */
export function resizePlanes(planes, inH, inW, outH, outW) {
  const needsH = inW !== outW;
  const needsV = inH !== outH;
  const verticalFirst = pillowVerticalFirst(inH, inW, outH, outW);
  let p = planes;
  if (needsH && !(verticalFirst && needsV)) {
    p = resamplePass(p, inH, inW, outW, false);
    if (needsV) p = resamplePass(p, inH, outW, outH, true);
    return p;
  }
  if (needsV) p = resamplePass(p, inH, inW, outH, true);
  if (needsH) p = resamplePass(p, outH, inW, outW, false);
  return needsH || needsV ? p : p.map((x) => x.slice());
}

/** RGBA bytes (ImageData.data) -> three RGB planes; alpha is dropped, as in processing. */
export function rgbaToPlanes(rgba, width, height) {
  const n = width * height;
  const planes = [new Uint8Array(n), new Uint8Array(n), new Uint8Array(n)];
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    planes[0][i] = rgba[j];
    planes[1][i] = rgba[j + 1];
    planes[2][i] = rgba[j + 2];
  }
  return planes;
}

/** EdgeSAM's preprocessing at side `imgSize` (what artifacts without the newer keys used). */
export function defaultPreprocessing(imgSize = DEFAULT_IMG_SIZE) {
  return {
    encoderSize: imgSize,
    frame: imgSize,
    pixelMean: [123.675, 116.28, 103.53],
    pixelStd: [58.395, 57.12, 57.375],
    normalize: "sam",
    pad: "after-normalize",
  };
}

/** The preprocessing recorded in a model card (model.json), with the old cards' defaults. */
export function preprocessingFromCard(card) {
  const p = defaultPreprocessing(card.img_size);
  return {
    encoderSize: card.img_size,
    frame: card.prompt_frame ?? card.img_size,
    pixelMean: card.pixel_mean ?? p.pixelMean,
    pixelStd: card.pixel_std ?? p.pixelStd,
    normalize: card.normalize ?? p.normalize,
    pad: card.pad ?? p.pad,
  };
}

/** The mask-token convention of a model card; old cards: 4 tokens, 0 single, 1..3 multi. */
export function tokensFromCard(card) {
  return card.mask_tokens ?? { count: 4, single: [0], multi: [1, 2, 3] };
}

/** uint8 level -> normalised float32 value, per channel (processing.normalization_table). */
export function normalizationTable(pixelMean, pixelStd, normalize = "sam") {
  const tables = [];
  for (let c = 0; c < 3; c++) {
    const table = new Float32Array(256);
    if (normalize === "sam") {
      const mean = f32(pixelMean[c]);
      const std = f32(pixelStd[c]);
      for (let v = 0; v < 256; v++) table[v] = f32(f32(v - mean) / std);
    } else if (normalize === "unit") {
      const mean = f32(pixelMean[c] / 255.0); // float64 division, stored as float32
      const std = f32(pixelStd[c] / 255.0);
      const inv = f32(255.0);
      for (let v = 0; v < 256; v++) table[v] = f32(f32(f32(v / inv) - mean) / std);
    } else {
      throw new ProcessingError(`normalize must be "sam" or "unit", got ${JSON.stringify(normalize)}`);
    }
    tables.push(table);
  }
  return tables;
}

/**
 * The (1, 3, S, S) float32 encoder input and the geometry to undo it (processing.preprocess).
 * `rgba`: ImageData.data of a width x height image. `params`: the model's preprocessing
 * ({encoderSize, frame, pixelMean, pixelStd, normalize, pad}, see preprocessingFromCard), or,
 * as before, an encoder size followed by pixelMean and pixelStd (EdgeSAM's recipe).
 * `info` describes the prompt/mask frame (its imgSize is the frame, inputSize the image's
 * extent in it).
 */
export function preprocess(rgba, width, height, params, pixelMean, pixelStd) {
  const pre =
    typeof params === "number"
      ? { ...defaultPreprocessing(params), pixelMean, pixelStd }
      : { ...defaultPreprocessing(params.encoderSize), ...params };
  const size = pre.encoderSize;
  const frame = pre.frame ?? size;
  if (!(width >= 1 && height >= 1)) throw new ProcessingError(`empty image ${width}x${height}`);
  if (rgba.length !== width * height * 4) {
    throw new ProcessingError(`expected ${width * height * 4} RGBA bytes, got ${rgba.length}`);
  }
  if (pre.pad !== "after-normalize" && pre.pad !== "before-normalize") {
    throw new ProcessingError(`pad must be "after-normalize" or "before-normalize", got ${pre.pad}`);
  }
  const tables = normalizationTable(pre.pixelMean, pre.pixelStd, pre.normalize);
  const [newH, newW] = getPreprocessShape(height, width, size);
  const planes = resizePlanes(rgbaToPlanes(rgba, width, height), height, width, newH, newW);
  const tensor = new Float32Array(3 * size * size); // zeros: the padding after normalisation
  for (let c = 0; c < 3; c++) {
    const table = tables[c];
    const plane = planes[c];
    const base = c * size * size;
    if (pre.pad === "before-normalize") tensor.fill(table[0], base, base + size * size);
    for (let y = 0; y < newH; y++) {
      const row = base + y * size;
      const src = y * newW;
      for (let x = 0; x < newW; x++) tensor[row + x] = table[plane[src + x]];
    }
  }
  const inputSize = frame === size ? [newH, newW] : getPreprocessShape(height, width, frame);
  const info = { originalSize: [height, width], inputSize, imgSize: frame };
  return { tensor, info };
}

/** (x, y) in original pixels -> the prompt frame, float32 (processing.transform_coords). */
export function transformCoords(x, y, originalSize, imgSize) {
  const [oldH, oldW] = originalSize;
  const [newH, newW] = getPreprocessShape(oldH, oldW, imgSize);
  return [f32(x * (newW / oldW)), f32(y * (newH / oldH))];
}

/**
 * Decoder inputs for points [{x, y, label: 0|1}] and an optional box {x0, y0, x1, y1}
 * (processing.build_prompts): points, then box corners labelled 2 and 3; without a box and
 * with `pad`, EdgeSAM's padding point (0, 0) labelled -1.
 */
export function buildPrompts(points, box, originalSize, imgSize, pad = true) {
  if (points.length === 0 && !box) {
    throw new ProcessingError("no prompt given: click a point or drag a box");
  }
  const rows = [];
  for (const p of points) {
    if (p.label !== 0 && p.label !== 1) {
      throw new ProcessingError(`point labels must be 0 or 1, got ${p.label}`);
    }
    rows.push([...transformCoords(p.x, p.y, originalSize, imgSize), p.label]);
  }
  if (box) {
    if (box.x1 < box.x0 || box.y1 < box.y0) throw new ProcessingError("box corners are inverted");
    rows.push([...transformCoords(box.x0, box.y0, originalSize, imgSize), 2]);
    rows.push([...transformCoords(box.x1, box.y1, originalSize, imgSize), 3]);
  } else if (pad) {
    rows.push([0, 0, -1]);
  }
  const coords = new Float32Array(rows.length * 2);
  const labels = new Float32Array(rows.length);
  rows.forEach(([x, y, l], i) => {
    coords[2 * i] = x;
    coords[2 * i + 1] = y;
    labels[i] = l;
  });
  return { coords, labels, count: rows.length };
}

// F.interpolate(bilinear, align_corners=False) taps for one axis, with torch's float32
// source positions (processing._torch_bilinear_taps).
export function torchTaps(inSize, outSize) {
  const ratio = f32(f32(inSize) / f32(outSize));
  const lower = new Int32Array(outSize);
  const upper = new Int32Array(outSize);
  const wLower = new Float64Array(outSize);
  const wUpper = new Float64Array(outSize);
  for (let d = 0; d < outSize; d++) {
    let src = f32(ratio * f32(d + 0.5) - 0.5);
    if (src < 0) src = 0;
    const lo = Math.min(Math.floor(src), inSize - 1);
    const frac = Math.min(Math.max(f32(src - lo), 0), 1);
    lower[d] = lo;
    upper[d] = Math.min(lo + 1, inSize - 1);
    wLower[d] = f32(1 - frac);
    wUpper[d] = frac;
  }
  return { lower, upper, wLower, wUpper };
}

// The composite operator (upscale to S, crop to inputSize, resize to outSize) for one axis,
// as sparse float32 rows in CSR form (row o's taps are start[o] .. start[o + 1] - 1 of index
// and weight): computed in float64 with the same operations as the numpy matrices.
function compositeAxis(lowRes, imgSize, inputSize, outSize) {
  const up = torchTaps(lowRes, imgSize);
  const upRow = (r) => {
    const m = new Map();
    m.set(up.lower[r], (m.get(up.lower[r]) ?? 0) + up.wLower[r]);
    m.set(up.upper[r], (m.get(up.upper[r]) ?? 0) + up.wUpper[r]);
    return m;
  };
  const down = torchTaps(inputSize, outSize);
  const start = new Int32Array(outSize + 1);
  const index = [];
  const weight = [];
  for (let o = 0; o < outSize; o++) {
    const a = upRow(down.lower[o]);
    const b = upRow(down.upper[o]);
    const cols = [...new Set([...a.keys(), ...b.keys()])].sort((x, y) => x - y);
    for (const c of cols) {
      const v = down.wLower[o] * (a.get(c) ?? 0) + down.wUpper[o] * (b.get(c) ?? 0);
      if (v !== 0) {
        index.push(c);
        weight.push(f32(v));
      }
    }
    start[o + 1] = index.length;
  }
  return { start, index: Int32Array.from(index), weight: Float32Array.from(weight) };
}

const operatorCache = new Map();

function compositeOperators(info, lowH, lowW) {
  const key = JSON.stringify([info.originalSize, info.inputSize, info.imgSize, lowH, lowW]);
  let ops = operatorCache.get(key);
  if (!ops) {
    const rows = compositeAxis(lowH, info.imgSize, info.inputSize[0], info.originalSize[0]);
    // The low-resolution rows any output row reads (the crop drops the others).
    const used = new Uint8Array(lowH);
    for (const r of rows.index) used[r] = 1;
    const usedRows = [];
    for (let r = 0; r < lowH; r++) if (used[r]) usedRows.push(r);
    ops = {
      rows,
      cols: compositeAxis(lowW, info.imgSize, info.inputSize[1], info.originalSize[1]),
      usedRows: Int32Array.from(usedRows),
    };
    operatorCache.set(key, ops);
  }
  return ops;
}

// Both passes of the composite resize: the columns of the low-resolution rows the output
// reads into `mid` (lowH x outW, float32), then for output row y the float64 sums over its
// taps, tap by tap across the row (contiguous reads; each pixel's terms in tap order, as a
// per-pixel loop adds them), handed to `emit(y, acc)`.
function resample(lowRes, lowH, lowW, info, emit) {
  const outW = info.originalSize[1];
  const { rows, cols, usedRows } = compositeOperators(info, lowH, lowW);
  const mid = new Float32Array(lowH * outW);
  for (const y of usedRows) {
    const base = y * lowW;
    const row = y * outW;
    for (let x = 0; x < outW; x++) {
      let acc = 0;
      for (let k = cols.start[x]; k < cols.start[x + 1]; k++) {
        acc += cols.weight[k] * lowRes[base + cols.index[k]];
      }
      mid[row + x] = acc;
    }
  }
  const acc = new Float64Array(outW);
  for (let y = 0; y < info.originalSize[0]; y++) {
    acc.fill(0);
    for (let k = rows.start[y]; k < rows.start[y + 1]; k++) {
      const w = rows.weight[k];
      const src = rows.index[k] * outW;
      for (let x = 0; x < outW; x++) acc[x] += w * mid[src + x];
    }
    emit(y, acc);
  }
}

/**
 * One low-resolution logit map (lowH x lowW, Float32Array) -> logits at the original size
 * (processing.postprocess_masks): columns first on the small map, then rows, float32 storage.
 */
export function postprocessMask(lowRes, lowH, lowW, info) {
  const [outH, outW] = info.originalSize;
  const out = new Float32Array(outH * outW);
  resample(lowRes, lowH, lowW, info, (y, acc) => out.set(acc, y * outW));
  return out;
}

/**
 * thresholdMask(postprocessMask(...)) in one pass, byte for byte (each sum rounded to float32
 * before the comparison, as stored logits are), without the float32 logits at the image's
 * size: what a click needs.
 */
export function maskFromLowRes(lowRes, lowH, lowW, info, threshold = 0.0) {
  const [outH, outW] = info.originalSize;
  const mask = new Uint8Array(outH * outW);
  resample(lowRes, lowH, lowW, info, (y, acc) => {
    const row = y * outW;
    for (let x = 0; x < outW; x++) mask[row + x] = Math.fround(acc[x]) > threshold ? 1 : 0;
  });
  return mask;
}

/** Binary mask logits > threshold (strict, SAM's mask_threshold), as 0/1 bytes. */
export function thresholdMask(logits, threshold = 0.0) {
  const mask = new Uint8Array(logits.length);
  for (let i = 0; i < logits.length; i++) mask[i] = logits[i] > threshold ? 1 : 0;
  return mask;
}

/** Area and inclusive bounding box [x0, y0, x1, y1] (null when empty) of a 0/1 mask. */
export function maskStats(mask, width, height) {
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      if (mask[row + x]) {
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return { area, bbox: area ? [x0, y0, x1, y1] : null };
}

/**
 * Decoder token indices for a number of outputs (processing.select_masks): the single-mask
 * slots, the multimask slots or all tokens, following the model's convention `tokens`
 * ({count, single, multi}; default EdgeSAM/SAM's 4 tokens: 1 -> 0, 3 -> 1..3, 4 -> 0..3).
 */
export function selectTokens(numOutputs, tokens = { count: 4, single: [0], multi: [1, 2, 3] }) {
  const choices = new Map();
  choices.set(tokens.count, [...Array(tokens.count).keys()]);
  choices.set(tokens.multi.length, [...tokens.multi]);
  choices.set(tokens.single.length, [...tokens.single]);
  if (!choices.has(numOutputs)) {
    const allowed = [...choices.keys()].sort((a, b) => a - b).join(", ");
    throw new ProcessingError(`number of masks must be one of ${allowed}, got ${numOutputs}`);
  }
  return choices.get(numOutputs);
}

/** Hex sha256 of bytes (Web Crypto: available on http://127.0.0.1 and https). */
export async function sha256Hex(bytes) {
  const view =
    bytes instanceof Uint8Array
      ? bytes
      : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const digest = await crypto.subtle.digest("SHA-256", view);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

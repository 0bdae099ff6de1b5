// The page: model card, image loading (picker, drop, paste, ?image=URL), one encoder run per
// image, prompts (click, shift-click, dragged box, hover preview), mask choice, undo,
// PNG download, and the headless self-test (?selftest=IMAGE_URL&prompts=x,y,label;...).
// State is mirrored on <body data-state=... data-masks=N> so tests can wait on it.

import * as P from "./processing.js";
import { createSession, fetchBytes, loadRuntime, runDecoder, runEncoder } from "./runtime.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const OVERLAY = [30, 144, 255]; // mask colour (dodger blue), drawn at OVERLAY_ALPHA
const OVERLAY_ALPHA = 0.55;
const PREVIEW = [255, 200, 0];
const PREVIEW_ALPHA = 0.35;

const state = {
  card: null,
  pre: null, // the model's preprocessing (encoder size, prompt frame, normalisation, padding)
  tokens: null, // the model's mask-token convention {count, single, multi}
  rt: null, // { ort, backend, threads }
  encoder: null,
  decoder: null,
  image: null, // { rgba, width, height }
  info: null,
  embeddings: null,
  prompts: [], // {type: "point", x, y, label} | {type: "box", x0, y0, x1, y1}
  result: null, // { scores, masks, lowH, lowW, tokens, chosen, cache: Map(token -> mask) }
  busy: false,
  timings: {},
};
window.edgesam = state; // for the console and tests

function setState(name) {
  document.body.dataset.state = name;
}

function showError(err) {
  const message = err && err.message ? err.message : String(err);
  const box = $("error");
  box.textContent = `Error: ${message}`;
  box.hidden = false;
  $("status").textContent = "Failed.";
  setState("error");
  console.error(err);
  if (params.has("selftest")) writeSelfTest({ ok: false, error: message });
}

function writeSelfTest(payload) {
  const el = $("selftest");
  el.textContent = JSON.stringify(payload);
  el.hidden = false;
  document.body.dataset.selftest = payload.ok ? "done" : "error";
}

// ---------------------------------------------------------------------------------------
// start-up: card, runtime, models
// ---------------------------------------------------------------------------------------

function renderCard(card) {
  const fields = {
    Model: card.model,
    Family: card.family,
    Weights: card.synthetic
      ? `${card.weights}: synthetic, untrained (masks do not follow the image)`
      : card.weights,
    Source: card.weights_source,
    "Input size": `${card.img_size} x ${card.img_size}`,
    "Prompt frame": `${card.prompt_frame ?? card.img_size} x ${card.prompt_frame ?? card.img_size}`,
    Normalisation: `${card.normalize ?? "sam"}, padding ${card.pad ?? "after-normalize"}`,
    Scores: card.use_stability_score ? "stability score" : "predicted IoU",
    "onnxruntime-web": card.onnxruntime_web.version,
  };
  for (const g of ["encoder", "decoder"]) {
    const info = card.graphs[g];
    fields[g[0].toUpperCase() + g.slice(1)] =
      `${info.file} (${(info.bytes / 1e6).toFixed(1)} MB, sha256 ${info.sha256.slice(0, 12)})`;
  }
  const dl = $("card-fields");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(fields)) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    if (k === "Weights" && card.synthetic) dd.className = "synthetic";
    dl.append(dt, dd);
  }
  $("card-metadata").textContent = JSON.stringify(
    { encoder: card.graphs.encoder.metadata, decoder: card.graphs.decoder.metadata },
    null,
    2,
  );
}

// The card first (it names the files), then everything that waits on the network or on the
// browser at once: the runtime's module, both graphs' bytes (each session is created as soon
// as its bytes and the runtime are in) and `whileLoading`, the caller's work on the main
// thread (the ?image= / ?selftest= image read and pre-processed), instead of one after another.
async function loadModels(whileLoading = null) {
  const response = await fetch("model.json");
  if (!response.ok) throw new Error(`model.json: HTTP ${response.status}: is this a web build?`);
  state.card = await response.json();
  state.pre = P.preprocessingFromCard(state.card);
  state.tokens = P.tokensFromCard(state.card);
  renderCard(state.card);
  const threads = Number(params.get("threads")) || 0;
  const runtime = loadRuntime(params.get("ep") || "auto", state.card.onnxruntime_web.variants, threads);
  const graphs = state.card.graphs;
  const sizes = { encoder: graphs.encoder.bytes, decoder: graphs.decoder.bytes };
  const total = sizes.encoder + sizes.decoder;
  const loaded = { encoder: 0, decoder: 0 };
  const progress = $("progress");
  $("status").textContent = "Downloading the models…";
  const bytes = {};
  for (const g of ["encoder", "decoder"]) {
    bytes[g] = fetchBytes(graphs[g].file, (n) => {
      loaded[g] = n;
      progress.value = (loaded.encoder + loaded.decoder) / total;
    });
  }
  // awaited below; until then a failure must not also surface as an unhandled rejection
  for (const pending of [runtime, bytes.encoder, bytes.decoder]) pending.catch(() => {});
  const prepared = whileLoading ? await whileLoading() : null;
  state.rt = await runtime;
  const { backend, threads: n } = state.rt;
  $("runtime").textContent =
    backend === "webgpu"
      ? "Running on WebGPU (wasm for unsupported operators)."
      : `Running on WebAssembly (CPU), ${n} thread${n > 1 ? "s" : ""}` +
        (self.crossOriginIsolated ? "." : " (not cross-origin isolated: serve with --serve for threads).");
  document.body.dataset.backend = backend;
  // ?encoder_ep=wasm keeps the encoder on wasm whatever runs the decoder (the WebGPU build
  // carries the wasm kernels too): on an emulated adapter the encoder alone takes minutes.
  state.encoderBackend = params.get("encoder_ep") === "wasm" ? "wasm" : backend;
  $("status").textContent = "Preparing the encoder…";
  state.encoder = await createSession(state.rt.ort, await bytes.encoder, state.encoderBackend, graphs.encoder.file);
  $("status").textContent = "Preparing the decoder…";
  state.decoder = await createSession(state.rt.ort, await bytes.decoder, backend, graphs.decoder.file);
  state.timings.models_ready_ms = performance.now();
  return prepared;
}

// ---------------------------------------------------------------------------------------
// images
// ---------------------------------------------------------------------------------------

async function decodeImage(blob) {
  // No colour management and no premultiplication: the pixels are the file's own bytes,
  // which is what Pillow (and so the Python predictor) reads.
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  return { rgba: data, width: bitmap.width, height: bitmap.height, bitmap };
}

/** An image URL read and decoded (HTTP errors throw). */
async function readImage(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return decodeImage(await response.blob());
}

/** A decoded image and its encoder input: { image, tensor, info } (pure work, no model). */
function prepareImage(image) {
  const t = performance.now();
  const { tensor, info } = P.preprocess(image.rgba, image.width, image.height, state.pre);
  state.timings.image_ready_ms = performance.now();
  state.timings.preprocess_ms = state.timings.image_ready_ms - t;
  return { image, tensor, info };
}

/** Show an image and encode it: `source` is a file (picker, drop, paste) or what
 * `prepareImage` gave. Returns the encoder input. */
async function setImage(source) {
  setState("busy");
  $("status").textContent = "Reading the image…";
  const { image, tensor, info } = source instanceof Blob ? prepareImage(await decodeImage(source)) : source;
  for (const id of ["image", "overlay", "preview"]) {
    $(id).width = image.width;
    $(id).height = image.height;
  }
  $("image").getContext("2d").drawImage(image.bitmap, 0, 0);
  state.image = image;
  state.prompts = [];
  state.result = null;
  drawMask();
  $("status").textContent = "Encoding the image (runs once per image)…";
  $("progress").removeAttribute("value"); // indeterminate while the encoder runs
  const t = performance.now();
  state.embeddings = await runEncoder(state.rt.ort, state.encoder, tensor, state.pre.encoderSize);
  state.timings.encoder_ms = performance.now() - t;
  state.info = info;
  document.body.dataset.encoded = String(Number(document.body.dataset.encoded || 0) + 1);
  $("progress").value = 1;
  $("status").textContent = `Ready: encoder ${state.timings.encoder_ms.toFixed(0)} ms. Click the image.`;
  setState("ready");
  return tensor;
}

// ---------------------------------------------------------------------------------------
// prompts and masks
// ---------------------------------------------------------------------------------------

function promptSet(prompts) {
  const points = prompts.filter((p) => p.type === "point");
  const boxes = prompts.filter((p) => p.type === "box");
  return { points, box: boxes.length ? boxes[boxes.length - 1] : null };
}

// One decoder run at a time: hover previews and clicks share the session.
let decoderQueue = Promise.resolve();
function exclusive(fn) {
  const run = decoderQueue.then(fn);
  decoderQueue = run.catch(() => {});
  return run;
}

async function decode(prompts) {
  const { points, box } = promptSet(prompts);
  const built = P.buildPrompts(points, box, state.info.originalSize, state.info.imgSize, true);
  const embeddings = state.embeddings;
  const out = await exclusive(() => runDecoder(state.rt.ort, state.decoder, embeddings, built));
  const [, , lowH, lowW] = out.dims;
  // SAM's convention: one point alone is ambiguous, so offer the multimask answers (the
  // model's multimask tokens, best first); with more prompts its single-mask token.
  const ambiguous = points.length === 1 && !box;
  const tokens = ambiguous ? state.tokens.multi : state.tokens.single;
  const best = tokens.reduce((a, b) => (out.scores[b] > out.scores[a] ? b : a));
  return { scores: out.scores, masks: out.masks, lowH, lowW, chosen: best, cache: new Map(), built };
}

function maskFor(result, token) {
  let mask = result.cache.get(token);
  if (!mask) {
    const plane = result.lowH * result.lowW;
    const low = result.masks.subarray(token * plane, (token + 1) * plane);
    mask = P.maskFromLowRes(low, result.lowH, result.lowW, state.info);
    result.cache.set(token, mask);
  }
  return mask;
}

const paintBuffers = new Map(); // canvas id -> ImageData of its size, reused between draws

function paint(canvasId, mask, colour, alpha) {
  const canvas = $(canvasId);
  const ctx = canvas.getContext("2d");
  if (!mask) {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  let img = paintBuffers.get(canvasId);
  if (!img || img.width !== canvas.width || img.height !== canvas.height) {
    img = ctx.createImageData(canvas.width, canvas.height);
    paintBuffers.set(canvasId, img);
  }
  // One 32-bit store per pixel (RGBA bytes in the platform's order), every pixel written.
  const px = new Uint32Array(img.data.buffer);
  const bytes = new Uint8ClampedArray([colour[0], colour[1], colour[2], Math.round(alpha * 255)]);
  const on = new Uint32Array(bytes.buffer)[0];
  for (let i = 0; i < mask.length; i++) px[i] = mask[i] ? on : 0;
  ctx.putImageData(img, 0, 0);
}

function drawPrompts(ctx) {
  for (const p of state.prompts) {
    if (p.type === "point") {
      ctx.beginPath();
      ctx.arc(p.x, p.y, 4, 0, 2 * Math.PI);
      ctx.fillStyle = p.label ? "#00c853" : "#d50000";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    } else {
      ctx.strokeStyle = "#00c853";
      ctx.lineWidth = 2;
      ctx.strokeRect(p.x0, p.y0, p.x1 - p.x0, p.y1 - p.y0);
    }
  }
}

function drawMask() {
  const r = state.result;
  paint("overlay", r ? maskFor(r, r.chosen) : null, OVERLAY, OVERLAY_ALPHA);
  if (r && !params.has("nomarkers")) drawPrompts($("overlay").getContext("2d"));
  const choices = $("choices");
  choices.replaceChildren();
  if (r) {
    for (let k = 0; k < r.scores.length; k++) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${state.tokens.single.includes(k) ? "single" : `mask ${k}`} (${r.scores[k].toFixed(3)})`;
      if (k === r.chosen) b.className = "chosen";
      b.onclick = () => {
        r.chosen = k;
        drawMask();
      };
      choices.append(b);
    }
  }
  $("undo").disabled = state.prompts.length === 0;
  $("clear").disabled = state.prompts.length === 0;
  $("download").disabled = !r;
}

async function commit(prompts) {
  state.prompts = prompts;
  if (prompts.length === 0) {
    state.result = null;
    drawMask();
    return;
  }
  state.busy = true;
  setState("busy");
  try {
    const t = performance.now();
    state.result = await decode(prompts);
    drawMask();
    state.timings.last_click_ms = performance.now() - t;
    $("status").textContent = `Mask in ${state.timings.last_click_ms.toFixed(0)} ms.`;
    document.body.dataset.masks = String(Number(document.body.dataset.masks) + 1);
  } finally {
    state.busy = false;
    setState("ready");
  }
}

// ---------------------------------------------------------------------------------------
// interaction
// ---------------------------------------------------------------------------------------

function imagePoint(event) {
  const rect = $("image").getBoundingClientRect();
  const sx = state.image.width / rect.width;
  const sy = state.image.height / rect.height;
  return { x: (event.clientX - rect.left) * sx, y: (event.clientY - rect.top) * sy };
}

let drag = null;
let hoverPending = false;
let hoverAt = null;

async function hover(at) {
  hoverAt = at;
  if (hoverPending || state.busy || !state.embeddings) return;
  hoverPending = true;
  try {
    while (hoverAt) {
      const here = hoverAt;
      const result = await decode([...state.prompts, { type: "point", x: here.x, y: here.y, label: 1 }]);
      if (hoverAt === here && !state.busy && !drag) {
        paint("preview", maskFor(result, result.chosen), PREVIEW, PREVIEW_ALPHA);
        break;
      }
      if (!hoverAt || drag || state.busy) break;
    }
  } catch (err) {
    console.warn("hover preview failed", err);
  } finally {
    hoverPending = false;
  }
}

function clearPreview() {
  hoverAt = null;
  paint("preview", null);
}

function wireInteraction() {
  const stage = $("stage");
  const image = $("image");
  image.addEventListener("pointerdown", (e) => {
    if (!state.embeddings || state.busy) return;
    drag = { start: imagePoint(e), shift: e.shiftKey, moved: false };
    image.setPointerCapture(e.pointerId);
  });
  image.addEventListener("pointermove", (e) => {
    if (!state.embeddings) return;
    const at = imagePoint(e);
    if (drag) {
      const dx = at.x - drag.start.x;
      const dy = at.y - drag.start.y;
      if (Math.hypot(dx, dy) > 4) drag.moved = true;
      if (drag.moved) {
        hoverAt = null;
        const ctx = $("preview").getContext("2d");
        ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
        ctx.strokeStyle = "#ffc800";
        ctx.lineWidth = 2;
        ctx.strokeRect(drag.start.x, drag.start.y, dx, dy);
      }
      return;
    }
    hover(at);
  });
  image.addEventListener("pointerleave", clearPreview);
  image.addEventListener("pointerup", (e) => {
    if (!drag) return;
    const end = imagePoint(e);
    const d = drag;
    drag = null;
    clearPreview();
    let prompt;
    if (d.moved) {
      prompt = {
        type: "box",
        x0: Math.min(d.start.x, end.x),
        y0: Math.min(d.start.y, end.y),
        x1: Math.max(d.start.x, end.x),
        y1: Math.max(d.start.y, end.y),
      };
    } else {
      prompt = { type: "point", x: end.x, y: end.y, label: d.shift ? 0 : 1 };
    }
    commit([...state.prompts, prompt]).catch(showError);
  });
  $("undo").onclick = () => commit(state.prompts.slice(0, -1)).catch(showError);
  $("clear").onclick = () => commit([]).catch(showError);
  $("download").onclick = downloadMask;
  $("file").addEventListener("change", (e) => {
    const f = e.target.files && e.target.files[0];
    if (f) setImage(f).catch(showError);
  });
  stage.addEventListener("dragover", (e) => {
    e.preventDefault();
    stage.classList.add("dragging");
  });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("dragging");
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) setImage(f).catch(showError);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
    if (item) setImage(item.getAsFile()).catch(showError);
  });
}

function downloadMask() {
  const r = state.result;
  if (!r) return;
  const mask = maskFor(r, r.chosen);
  const canvas = document.createElement("canvas");
  canvas.width = state.image.width;
  canvas.height = state.image.height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  for (let i = 0, j = 0; i < mask.length; i++, j += 4) {
    const v = mask[i] ? 255 : 0;
    img.data[j] = v;
    img.data[j + 1] = v;
    img.data[j + 2] = v;
    img.data[j + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "mask.png";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, "image/png");
}

// ---------------------------------------------------------------------------------------
// self-test: ?selftest=IMAGE_URL&prompts=x,y,label;...[&masks=1|3|4][&pad=0][&repeat=N]
// (masks: the model's single-mask, multimask or all tokens; default all)
// ---------------------------------------------------------------------------------------

function parsePrompts(text) {
  const points = [];
  const corners = {};
  for (const part of (text || "").split(";").filter((s) => s.trim())) {
    const v = part.split(",").map(Number);
    if (v.length !== 3 || v.some((n) => !Number.isFinite(n))) {
      throw new Error(`bad prompt "${part}": expected x,y,label`);
    }
    const [x, y, label] = v;
    if (label === 0 || label === 1) points.push({ type: "point", x, y, label });
    else if (label === 2 || label === 3) corners[label] = [x, y];
    else throw new Error(`bad label ${label} in "${part}": use 0, 1 (points), 2, 3 (box corners)`);
  }
  if ((2 in corners) !== (3 in corners)) throw new Error("a box needs both corners (labels 2 and 3)");
  const box = 2 in corners ? { x0: corners[2][0], y0: corners[2][1], x1: corners[3][0], y1: corners[3][1] } : null;
  return { points, box };
}

/** Run lengths of a 0/1 mask in row-major order, starting with a run of zeros (maybe empty). */
function runLengths(mask) {
  const runs = [];
  let current = 0;
  let length = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] !== current) {
      runs.push(length);
      current = mask[i];
      length = 0;
    }
    length++;
  }
  runs.push(length);
  return runs;
}

/** The q-quantile of `values` (nearest rank, as numpy's "lower"), or null when empty. */
function quantile(values, q) {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) * q)] : null;
}

async function selfTest(prepared) {
  const { points, box } = parsePrompts(params.get("prompts"));
  const numMasks = Number(params.get("masks") || state.tokens.count);
  const selected = P.selectTokens(numMasks, state.tokens);
  const pad = params.get("pad") !== "0";
  const repeat = Math.max(1, Number(params.get("repeat") || 1));
  const tensor = await setImage(prepared);
  setState("busy");
  const info = state.info;
  const prompts = P.buildPrompts(points, box, info.originalSize, info.imgSize, pad);
  let t = performance.now();
  const out = await runDecoder(state.rt.ort, state.decoder, state.embeddings, prompts);
  const decoderMs = performance.now() - t;
  const [, , lowH, lowW] = out.dims;
  const plane = lowH * lowW;
  const [height, width] = info.originalSize;
  const masks = [];
  for (const token of selected) {
    const mask = P.maskFromLowRes(out.masks.subarray(token * plane, (token + 1) * plane), lowH, lowW, info);
    if (masks.length === 0) state.timings.first_mask_ms = performance.now();
    const { area, bbox } = P.maskStats(mask, width, height);
    const entry = { token, score: out.scores[token], area, bbox, sha256: await P.sha256Hex(mask) };
    if (params.get("rle") === "1") entry.rle = runLengths(mask);
    masks.push(entry);
  }
  // Per-click latency, split as a click spends it: the decoder, post-processing of the one
  // mask a click shows (upscale to the image, threshold), and drawing it on the overlay.
  const split = { click: [], decoder: [], postprocess: [], draw: [] };
  for (let i = 0; i < repeat; i++) {
    const t0 = performance.now();
    const o = await runDecoder(state.rt.ort, state.decoder, state.embeddings, prompts);
    const t1 = performance.now();
    const mask = P.maskFromLowRes(o.masks.subarray(0, plane), lowH, lowW, info);
    const t2 = performance.now();
    paint("overlay", mask, OVERLAY, OVERLAY_ALPHA);
    const t3 = performance.now();
    split.click.push(t3 - t0);
    split.decoder.push(t1 - t0);
    split.postprocess.push(t2 - t1);
    split.draw.push(t3 - t2);
  }
  state.result = { scores: out.scores, masks: out.masks, lowH, lowW, chosen: selected[0], cache: new Map() };
  state.prompts = [...points, ...(box ? [{ type: "box", ...box }] : [])];
  drawMask();
  writeSelfTest({
    ok: true,
    backend: state.rt.backend,
    encoder_backend: state.encoderBackend,
    threads: state.rt.threads,
    cross_origin_isolated: self.crossOriginIsolated,
    user_agent: navigator.userAgent,
    image: { width, height },
    img_size: state.pre.encoderSize,
    prompt_frame: info.imgSize,
    input_size: info.inputSize,
    input_sha256: await P.sha256Hex(tensor),
    point_coords: Array.from(prompts.coords),
    point_labels: Array.from(prompts.labels),
    masks,
    timings_ms: {
      models_ready: state.timings.models_ready_ms,
      image_ready: state.timings.image_ready_ms,
      preprocess: state.timings.preprocess_ms,
      encoder: state.timings.encoder_ms,
      decoder_first: decoderMs,
      first_mask: state.timings.first_mask_ms,
      ...Object.fromEntries(
        Object.entries(split).flatMap(([k, v]) => [
          [`${k}_p50`, quantile(v, 0.5)],
          [`${k}_p90`, quantile(v, 0.9)],
        ]),
      ),
      repeat,
    },
  });
  setState("ready");
}

async function main() {
  wireInteraction();
  // ?selftest= / ?image=: the image is fetched and decoded from the start and pre-processed
  // while the models download (loadModels), so its encoder run starts once they are ready. An
  // image that fails is reported once the models are ready, so the page stays usable.
  const url = params.get("selftest") || params.get("image");
  const reading = url ? readImage(url) : null;
  if (reading) reading.catch(() => {}); // handled in prepare: not an unhandled rejection
  const prepare = async () => {
    try {
      return prepareImage(await reading);
    } catch (error) {
      return { error };
    }
  };
  const prepared = await loadModels(reading ? prepare : null);
  $("loading").hidden = false;
  setState("ready");
  $("status").textContent = "Models ready. Open, drop or paste an image.";
  $("progress").value = 1;
  if (prepared && prepared.error) throw prepared.error;
  if (params.has("selftest")) {
    await selfTest(prepared);
  } else if (prepared) {
    await setImage(prepared);
  }
}

window.addEventListener("unhandledrejection", (e) => showError(e.reason));
main().catch(showError);

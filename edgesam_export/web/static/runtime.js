// onnxruntime-web for the page: pick WebGPU when the browser has an adapter, wasm otherwise;
// fetch the two graphs with byte progress; run the encoder and decoder with our contract.
// Everything is loaded from this folder (./ort/, ./models/): no CDN.

/** Fetch a URL to bytes, reporting (loaded, total) as it arrives; HTTP errors throw. */
export async function fetchBytes(url, onProgress = () => {}) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  const total = Number(response.headers.get("Content-Length")) || 0;
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  // One buffer of the announced size, filled as chunks arrive: the file is held once, where
  // keeping the chunks and joining them at the end held it twice. Grown if more arrives than
  // announced (a compressed response announces its encoded size).
  let bytes = new Uint8Array(total);
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > bytes.length) {
      const grown = new Uint8Array(Math.max(2 * bytes.length, loaded + value.length));
      grown.set(bytes.subarray(0, loaded));
      bytes = grown;
    }
    bytes.set(value, loaded);
    loaded += value.length;
    onProgress(loaded, total);
  }
  return loaded === bytes.length ? bytes : bytes.slice(0, loaded);
}

async function hasWebGpu() {
  if (!("gpu" in navigator)) return false;
  try {
    return Boolean(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

/**
 * Load onnxruntime-web. `want`: "auto" | "wasm" | "webgpu"; `variants`: what the build shipped.
 * Returns { ort, backend, threads }.
 */
export async function loadRuntime(want, variants, threads) {
  const gpu = variants.includes("webgpu") && want !== "wasm" && (await hasWebGpu());
  if (want === "webgpu" && !gpu) {
    throw new Error("WebGPU was requested (?ep=webgpu) but this browser has no WebGPU adapter");
  }
  const file = gpu ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs";
  const ort = await import(file);
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  // Threads need a cross-origin isolated page (COOP/COEP headers: `edgesam-export web --serve`).
  const maxThreads = self.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  const n = Math.max(1, Math.min(threads || Math.min(4, maxThreads), maxThreads));
  ort.env.wasm.numThreads = n;
  ort.env.logLevel = "error";
  return { ort, backend: gpu ? "webgpu" : "wasm", threads: n };
}

/** Create an inference session from bytes; errors name the file. */
export async function createSession(ort, bytes, backend, name) {
  const providers = backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"];
  try {
    return await ort.InferenceSession.create(bytes, {
      executionProviders: providers,
      graphOptimizationLevel: "all",
    });
  } catch (err) {
    throw new Error(`cannot load ${name}: ${err && err.message ? err.message : err}`);
  }
}

/** image tensor (Float32Array 3*S*S) -> image_embeddings tensor (kept for the decoder). */
export async function runEncoder(ort, session, tensor, imgSize) {
  const feeds = { image: new ort.Tensor("float32", tensor, [1, 3, imgSize, imgSize]) };
  const out = await session.run(feeds);
  return out.image_embeddings;
}

/** Decoder on one prompt set: returns { scores: Float32Array(K), masks: Float32Array, dims }. */
export async function runDecoder(ort, session, embeddings, prompts) {
  const feeds = {
    image_embeddings: embeddings,
    point_coords: new ort.Tensor("float32", prompts.coords, [1, prompts.count, 2]),
    point_labels: new ort.Tensor("float32", prompts.labels, [1, prompts.count]),
  };
  const out = await session.run(feeds);
  return { scores: out.scores.data, masks: out.masks.data, dims: out.masks.dims };
}

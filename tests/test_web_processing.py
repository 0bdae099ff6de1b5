"""The page's JavaScript in a real (headless) Chromium, without models, and the driver itself.

`processing.js` and `selectTokens` are checked against `processing` (numpy) on the package's own
static folder, served as `edgesam-export web --serve` serves a site; no export or web build is
needed. The driver (`edgesam_export/web/browser.py`, Playwright over the system's Chromium) is
held to what the tests rely on: real-time waits, downloads, and a clear error without Playwright.
The browser tests skip only when Chromium or Playwright is absent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from browser import needs_chromium

from edgesam_export.web.browser import Chromium
from edgesam_export.web.server import WebServer

STATIC = Path(__file__).resolve().parents[1] / "edgesam_export" / "web" / "static"


@pytest.fixture(scope="module")
def static_server():
    with WebServer(STATIC) as server:
        yield server


# Shared by the processing.js tests: the module, base64 -> bytes and bytes -> base64.
JS_PRELUDE = """
  const P = await import('/processing.js');
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const b64 = (u8) => {
    let s = '';
    for (let i = 0; i < u8.length; i += 0x8000) {
      s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
    }
    return btoa(s);
  };
"""


def _evaluate_js(static_server, browser, body: str, values: dict[str, str]) -> dict:
    """Run `body` after JS_PRELUDE in an async page function, placeholders filled in order
    (base64 has no underscores, so no value can contain a later placeholder)."""
    script = "(async () => {" + JS_PRELUDE + body + "})()"
    for key, value in values.items():
        script = script.replace(key, value)
    with browser.new_page() as page:
        page.goto(static_server.url + "style.css")
        return page.evaluate(script, timeout=120)


PROCESSING_JS = """
  const {tensor, info} = P.preprocess(bytes(__RGBA__), __W__, __H__, 1024, __MEAN__, __STD__);
  const low = new Float32Array(bytes(__LOW__).buffer);
  const logits = P.postprocessMask(low, 256, 256, info);
  const mask = P.maskFromLowRes(low, 256, 256, info);
  return {input: b64(new Uint8Array(tensor.buffer)), inputSize: info.inputSize,
          logits: b64(new Uint8Array(logits.buffer)), mask: b64(mask),
          twoStep: b64(P.thresholdMask(logits))};
"""


@needs_chromium
@pytest.mark.parametrize(
    "shape",
    [(240, 320), (1300, 600), (600, 1300), (3000, 41), (7, 5)],
)
def test_processing_js_matches_numpy(static_server, browser, shape) -> None:
    """processing.js against processing.py on one image and random logits, without the graphs:
    the encoder input bit for bit (up, down, both Pillow pass orders, no resize, extreme aspect
    ratios), the upscaled logits to float32 rounding, and the threshold wherever it is not
    within that rounding of zero."""
    import base64

    from edgesam_export.device import processing as P

    h, w = shape
    rng = np.random.default_rng(h * 7919 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgba = np.concatenate([image, np.full((h, w, 1), 255, np.uint8)], axis=-1)
    low = (rng.standard_normal((256, 256)) * 8).astype(np.float32)
    values = {
        "__W__": str(w),
        "__H__": str(h),
        "__MEAN__": str(list(P.DEFAULT_PIXEL_MEAN)),
        "__STD__": str(list(P.DEFAULT_PIXEL_STD)),
        "__RGBA__": repr(base64.b64encode(rgba.tobytes()).decode()),
        "__LOW__": repr(base64.b64encode(low.tobytes()).decode()),
    }
    out = _evaluate_js(static_server, browser, PROCESSING_JS, values)
    tensor, info = P.preprocess(image)
    js_tensor = np.frombuffer(base64.b64decode(out["input"]), np.float32).reshape(tensor.shape)
    assert out["inputSize"] == list(info.input_size)
    assert np.array_equal(js_tensor, tensor), f"encoder input differs for {shape}"
    ref = P.postprocess_masks(low[None], info)[0]
    js = np.frombuffer(base64.b64decode(out["logits"]), np.float32).reshape(h, w)
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    assert np.abs(js - ref).max() <= tol
    decided = np.abs(ref) > tol
    assert np.array_equal((js > 0)[decided], (ref > 0)[decided])
    # The click's one-pass mask is the two steps' mask byte for byte, and it decides the
    # numpy threshold wherever that is decided.
    fused = np.frombuffer(base64.b64decode(out["mask"]), np.uint8).reshape(h, w)
    two_step = np.frombuffer(base64.b64decode(out["twoStep"]), np.uint8).reshape(h, w)
    assert np.array_equal(fused, two_step)
    assert np.array_equal(fused.astype(bool)[decided], (ref > 0)[decided])
    assert 0 < fused.sum() < fused.size


PROCESSING_PARAMS_JS = """
  const pre = P.preprocessingFromCard(__CARD__);
  const {tensor, info} = P.preprocess(bytes(__RGBA__), __W__, __H__, pre);
  const low = new Float32Array(bytes(__LOW__).buffer);
  const logits = P.postprocessMask(low, 256, 256, info);
  const prompts = P.buildPrompts([{x: 5.5, y: 3.25, label: 1}], null, info.originalSize,
                                 info.imgSize, true);
  return {input: b64(new Uint8Array(tensor.buffer)), inputSize: info.inputSize,
          frame: info.imgSize, coords: Array.from(prompts.coords),
          logits: b64(new Uint8Array(logits.buffer))};
"""


@needs_chromium
@pytest.mark.parametrize(
    ("size", "frame", "normalize", "pad"),
    [
        (512, 1024, "unit", "after-normalize"),  # EfficientViT-SAM-L
        (1024, 1024, "unit", "after-normalize"),  # EfficientViT-SAM-XL
        (512, 1024, "sam", "before-normalize"),
        (1024, 1024, "unit", "before-normalize"),
    ],
)
def test_processing_js_follows_the_card(
    static_server, browser, size, frame, normalize, pad
) -> None:
    """processing.js driven by a model card's preprocessing, against processing.preprocess
    with the same `Preprocessing`: encoder input bit for bit, prompts in the frame exactly,
    logits upscaled through the frame to float32 rounding."""
    import base64

    from edgesam_export.device import processing as P

    h, w = (300, 200) if pad == "before-normalize" else (130, 600)
    rng = np.random.default_rng(size + h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgba = np.concatenate([image, np.full((h, w, 1), 255, np.uint8)], axis=-1)
    low = (rng.standard_normal((256, 256)) * 8).astype(np.float32)
    params = P.Preprocessing(encoder_size=size, frame=frame, normalize=normalize, pad=pad)
    card = {
        "img_size": size,
        "prompt_frame": frame,
        "pixel_mean": list(params.pixel_mean),
        "pixel_std": list(params.pixel_std),
        "normalize": normalize,
        "pad": pad,
    }
    values = {
        "__CARD__": json.dumps(card),
        "__W__": str(w),
        "__H__": str(h),
        "__RGBA__": repr(base64.b64encode(rgba.tobytes()).decode()),
        "__LOW__": repr(base64.b64encode(low.tobytes()).decode()),
    }
    out = _evaluate_js(static_server, browser, PROCESSING_PARAMS_JS, values)
    tensor, info = P.preprocess(image, params=params)
    js_tensor = np.frombuffer(base64.b64decode(out["input"]), np.float32).reshape(tensor.shape)
    assert np.array_equal(js_tensor, tensor), (size, frame, normalize, pad)
    assert out["inputSize"] == list(info.input_size) and out["frame"] == frame
    coords, _ = P.build_prompts(
        np.array([[5.5, 3.25]]), np.array([1.0]), original_size=(h, w), img_size=frame
    )
    assert out["coords"] == coords.ravel().tolist()
    ref = P.postprocess_masks(low[None], info)[0]
    js = np.frombuffer(base64.b64decode(out["logits"]), np.float32).reshape(h, w)
    assert np.abs(js - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


@needs_chromium
def test_select_tokens_js_matches_select_masks(static_server, browser) -> None:
    from edgesam_export.device import processing as P

    conventions = [
        P.MaskTokens(),
        P.MaskTokens(count=4, single=(3,), multi=(0, 1, 2)),
        P.MaskTokens(count=3, single=(0,), multi=(0, 1, 2)),
    ]
    cards = [
        {"count": t.count, "single": list(t.single), "multi": list(t.multi)} for t in conventions
    ]
    script = (
        "(async () => { const P = await import('/processing.js'); const out = [];"
        f" for (const t of {json.dumps(cards)})"
        "  for (const n of [1, 2, 3, 4]) {"
        "   try { out.push(P.selectTokens(n, t)); } catch (e) { out.push(null); } }"
        " return out; })()"
    )
    with browser.new_page() as page:
        page.goto(static_server.url + "style.css")
        js = page.evaluate(script, timeout=60)
    expected = []
    for tokens in conventions:
        for n in (1, 2, 3, 4):
            try:
                slots, _ = P.select_masks(
                    np.arange(tokens.count), np.zeros((tokens.count, 1, 1)), n, tokens
                )
                expected.append(slots.tolist())
            except P.ProcessingError:
                expected.append(None)
    assert js == expected
    assert js[:4] == [[0], None, [1, 2, 3], [0, 1, 2, 3]]


# --------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------


FETCH_BYTES_JS = """
  const { fetchBytes } = await import('/runtime.js');
  const data = new Uint8Array(200003).map((_, i) => (i * 7919) % 251);
  const chunked = (headers) => {
    const body = new ReadableStream({
      start(c) {
        for (let i = 0; i < data.length; i += 65536) c.enqueue(data.slice(i, i + 65536));
        c.close();
      },
    });
    return new Response(body, { headers });
  };
  const served = new Uint8Array(await (await fetch('/processing.js')).arrayBuffer());
  const real = window.fetch;
  const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
  const out = { served: same(await fetchBytes('/processing.js'), served), progress: [] };
  for (const [name, headers] of [
    ['exact', { 'Content-Length': String(data.length) }],
    ['none', {}],
    ['short', { 'Content-Length': '1000' }],
    ['long', { 'Content-Length': String(data.length + 5) }],
  ]) {
    window.fetch = async () => chunked(headers);
    const seen = [];
    const got = await fetchBytes('x', (n, total) => seen.push([n, total]));
    out[name] = same(got, data);
    out.progress.push(seen[seen.length - 1]);
  }
  window.fetch = real;
  try {
    await fetchBytes('/missing.onnx');
    out.missing = 'no error';
  } catch (e) {
    out.missing = e.message;
  }
  return out;
"""


@needs_chromium
def test_fetch_bytes_returns_exactly_the_body_whatever_length_is_announced(
    static_server, browser
) -> None:
    """runtime.js's `fetchBytes` fills one buffer of the announced Content-Length: a body that
    matches it, announces none, or is longer (a compressed response announces its encoded
    size) or shorter than announced comes back byte for byte, with progress up to its end."""
    with browser.new_page() as page:
        page.goto(static_server.url + "style.css")
        out = page.evaluate("(async () => {" + FETCH_BYTES_JS + "})()", timeout=60)
    assert out["served"] is True
    assert all(out[case] is True for case in ("exact", "none", "short", "long")), out
    assert [n for n, _ in out["progress"]] == [200003] * 4
    assert [total for _, total in out["progress"]] == [200003, 0, 1000, 200008]
    assert out["missing"].startswith("/missing.onnx: HTTP 404"), out["missing"]


def test_driver_without_playwright_names_the_install(monkeypatch) -> None:
    """Playwright is optional ([web]): starting a browser without it says what to install."""
    from edgesam_export.device.errors import BackendUnavailableError, ExitCode
    from edgesam_export.web import browser as driver

    monkeypatch.setattr(driver, "_PLAYWRIGHT", None)
    monkeypatch.setitem(sys.modules, "playwright", None)
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)
    assert "edgesam-export[web]" in str(driver.browser_unavailable())
    with pytest.raises(BackendUnavailableError, match=r"edgesam-export\[web\]") as err:
        Chromium(executable="/bin/true")
    assert err.value.exit_code == ExitCode.BACKEND_UNAVAILABLE


@needs_chromium
def test_driver_waits_in_real_time_and_saves_downloads(browser, tmp_path) -> None:
    """The page's work runs on its own clock (timers after load, a file made in script): the
    driver waits for the condition in real time and saves the download the page starts."""
    page_file = tmp_path / "late.html"
    page_file.write_text(
        "<html><body><a id='d' download='late.txt'>x</a><script>"
        "const t0 = performance.now();"
        "setTimeout(() => { const a = document.getElementById('d');"
        " a.href = URL.createObjectURL(new Blob(['made late']));"
        " document.body.dataset.ready = String(performance.now() - t0); }, 800);"
        "</script></body></html>"
    )
    with browser.new_page(320, 240) as page:
        t0 = time.monotonic()
        page.goto(page_file.as_uri())
        assert not page.evaluate("document.body.dataset.ready")  # not done at the load event
        waited_ms = float(page.wait_for("document.body.dataset.ready", timeout=30))
        assert waited_ms >= 800 and time.monotonic() - t0 >= 0.8
        saved = page.download("document.getElementById('d').click()", tmp_path)
    assert saved.name == "late.txt" and saved.read_text() == "made late"

"""EdgeSAM in the browser: a static page (HTML, ES-module JavaScript, onnxruntime-web) built
from our ONNX artifacts, a tiny COOP/COEP server, and a headless-Chromium driver for tests.

`build.build_web` writes the folder, `server.WebServer` serves it on 127.0.0.1, and
`browser.Chromium` drives the system's Chromium through Playwright (optional: `[web]`). The
page's pre- and post-processing (`static/processing.js`) mirrors
`edgesam_export.device.processing` step by step.
"""

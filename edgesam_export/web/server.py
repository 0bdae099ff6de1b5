"""Serve a built web folder on 127.0.0.1 with the headers that enable wasm threads.

onnxruntime-web runs its wasm kernels on several threads only when the page is cross-origin
isolated (`crossOriginIsolated`), which needs the COOP/COEP response headers; a plain
`python -m http.server` does not send them, so the page would fall back to one thread.
Standard library only: this is what `edgesam-export web --serve` and the browser tests use.

Only regular files inside the served folder are sent: a symlink that leads out of it (one once
served /etc/passwd), a directory listing, or anything else is a 404.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 - the stdlib's own attribute, extended
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".json": "application/json",
    }

    def translate_path(self, path: str) -> str:
        """The real file for a URL path, or "" when it is not a regular file in the folder.

        A folder URL maps to its index.html; its target's real path (symlinks resolved) must
        stay inside the served folder's real path.
        """
        candidate = super().translate_path(path)
        if os.path.isdir(candidate):
            candidate = os.path.join(candidate, "index.html")
        real = os.path.realpath(candidate)
        root = os.path.realpath(self.directory)
        if os.path.commonpath([root, real]) != root or not os.path.isfile(real):
            return ""
        return real

    def send_head(self) -> Any:
        if not self.translate_path(self.path):
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def end_headers(self) -> None:
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    verbose = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closes a page mid-download resets its connection: not our error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class WebServer:
    """A threaded static server for `root` on 127.0.0.1 (port 0 picks a free port)."""

    def __init__(self, root: Path, port: int = 0, verbose: bool = False) -> None:
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.verbose = verbose
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> WebServer:
        """Serve in a background thread (tests, benchmarks)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

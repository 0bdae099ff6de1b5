"""Headless Chromium for the browser tests, the web benchmark and the report screenshots.

Playwright drives the system's Chromium (Debian's `chromium`, found on PATH or named by
$CHROMIUM) through `executable_path`, so no browser is downloaded. Playwright waits in real
time: a page that loads models, runs wasm or downloads a file is awaited until the condition
holds, where Chromium's own `--screenshot` / `--virtual-time-budget` advance a virtual clock and
can capture a page before its work is done. Playwright is optional (`pip install
'edgesam-export[web]'`) and imported only when a browser is started.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgesam_export.device.errors import BackendUnavailableError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "pip install 'edgesam-export[web]' (Playwright) and apt-get install chromium"


class BrowserError(RuntimeError):
    """The browser died, a page script failed, or a wait timed out."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable: $CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_version(executable: str | None = None) -> str:
    exe = executable or find_chromium()
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "unknown"


def browser_unavailable() -> str | None:
    """Why no browser can start here (Playwright or Chromium missing), or None when one can."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return f"Playwright is not installed: {INSTALL_HINT}"
    if find_chromium() is None:
        return "Chromium is not installed (Debian: apt-get install chromium; or set $CHROMIUM)"
    return None


_PLAYWRIGHT: Any = None


def _playwright() -> Any:
    """One Playwright driver per process: its sync API refuses a second one started while the
    first runs, and the tests hold a browser (session fixture) while others open their own."""
    global _PLAYWRIGHT
    if _PLAYWRIGHT is None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise BackendUnavailableError(
                f"the browser driver needs Playwright, which is not installed: {INSTALL_HINT}"
            ) from None
        _PLAYWRIGHT = sync_playwright().start()
        atexit.register(_PLAYWRIGHT.stop)
    return _PLAYWRIGHT


def _first_line(exc: Exception) -> str:
    """Playwright's messages carry a call log and a stack: the first line says what failed."""
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _errors() -> tuple[type[Exception], type[Exception]]:
    from playwright.sync_api import Error, TimeoutError

    return Error, TimeoutError


class Chromium:
    """One headless Chromium process (Playwright over the system's executable)."""

    def __init__(self, executable: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise BackendUnavailableError(
                "Chromium not found: install it (Debian: apt-get install chromium) or set $CHROMIUM"
            )
        driver = _playwright()
        error, _ = _errors()
        try:
            self._browser = driver.chromium.launch(
                executable_path=exe, headless=True, args=["--mute-audio", *extra_args]
            )
        except error as exc:
            raise BrowserError(f"Chromium ({exe}) did not start: {_first_line(exc)}") from None

    def new_page(self, width: int = 1280, height: int = 900) -> Page:
        """A tab of its own context (no shared storage), viewport width x height, downloads on."""
        context = self._browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        return Page(context)

    def close(self) -> None:
        self._browser.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, mouse, file input,
    screenshot."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._page = context.new_page()
        self._messages: list[str] = []
        self._page.on("console", lambda message: self._messages.append(message.text))
        self._page.on("pageerror", lambda error: self._messages.append(str(error)))

    def close(self) -> None:
        self._context.close()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def goto(self, url: str, timeout: float = 120.0) -> None:
        """Navigate and wait for the load event."""
        error, _ = _errors()
        try:
            self._page.goto(url, timeout=timeout * 1000)
        except error as exc:
            raise BrowserError(f"navigation to {url} failed: {_first_line(exc)}") from None

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """Value of a JavaScript expression (promises are awaited), as JSON-compatible data.

        Playwright's evaluate has no deadline of its own: the expression races a timer."""
        script = (
            f"Promise.race([Promise.resolve().then(() => ({expression})),"
            " new Promise((_, reject) => setTimeout(() => reject(new Error("
            f"{json.dumps(f'timed out after {timeout:g} s')})), {int(timeout * 1000)}))])"
        )
        error, _ = _errors()
        try:
            return self._page.evaluate(script)
        except error as exc:
            where = expression[:200]
            raise BrowserError(f"JavaScript error in {where}: {_first_line(exc)}") from None

    def wait_for(self, expression: str, timeout: float = 120.0, poll: float = 0.1) -> Any:
        """Wait until `expression` is truthy and return its value; an expression that throws
        (the document is still being replaced, an object not created yet) is not ready yet."""
        predicate = f"() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }}"
        error, timeout_error = _errors()
        try:
            handle = self._page.wait_for_function(
                predicate, timeout=timeout * 1000, polling=poll * 1000
            )
            return handle.json_value()
        except timeout_error:
            raise BrowserError(
                f"timed out after {timeout:.0f} s waiting for: {expression}"
            ) from None
        except error as exc:
            raise BrowserError(f"waiting for {expression}: {_first_line(exc)}") from None

    def move(self, x: float, y: float) -> None:
        """Move the mouse to viewport (x, y), dragging if a button is held."""
        self._page.mouse.move(x, y)

    def press(self, x: float, y: float) -> None:
        self._page.mouse.move(x, y)
        self._page.mouse.down()

    def release(self, x: float, y: float) -> None:
        self._page.mouse.move(x, y)
        self._page.mouse.up()

    def click(self, x: float, y: float, shift: bool = False) -> None:
        """A left click at viewport (x, y), with Shift held when `shift`."""
        if not shift:
            self._page.mouse.click(x, y)
            return
        self._page.keyboard.down("Shift")
        try:
            self._page.mouse.click(x, y)
        finally:
            self._page.keyboard.up("Shift")

    def download(self, expression: str, directory: Path, timeout: float = 30.0) -> Path:
        """Evaluate `expression` (e.g. a click on a download link), wait for the download it
        starts and save it under `directory` by its suggested name."""
        error, _ = _errors()
        try:
            with self._page.expect_download(timeout=timeout * 1000) as started:
                self.evaluate(expression)
            download = started.value
            target = Path(directory) / download.suggested_filename
            download.save_as(target)
        except error as exc:
            raise BrowserError(f"no download from {expression}: {_first_line(exc)}") from None
        return target

    def choose_file(self, selector: str, path: Path) -> None:
        """Choose `path` in the file input `selector`, as the file picker does."""
        error, _ = _errors()
        try:
            self._page.set_input_files(selector, str(path))
        except error as exc:
            raise BrowserError(f"cannot choose {path} in {selector}: {_first_line(exc)}") from None

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        data: bytes = self._page.screenshot(type="png")
        return data

    def console_messages(self) -> list[str]:
        """Console output and uncaught exceptions seen so far on this page (for diagnostics)."""
        return list(self._messages)

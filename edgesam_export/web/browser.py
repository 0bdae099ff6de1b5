"""A minimal headless-Chromium driver over the DevTools protocol on a pipe (no extra packages).

Chromium's `--remote-debugging-pipe` speaks the DevTools protocol as NUL-separated JSON on file
descriptors 3 (commands in) and 4 (replies and events out), so the browser tests and the web
benchmark need only the standard library and Debian's `chromium`: no websocket client, no
webdriver, no npm test runner. The driver owns one browser process and opens pages (targets)
in it with flattened sessions.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from edgesam_export.device.errors import BackendUnavailableError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """The browser died, a protocol command failed, or a wait timed out."""


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


class Chromium:
    """One headless Chromium process driven over `--remote-debugging-pipe`."""

    def __init__(
        self,
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
        window: tuple[int, int] = (1280, 900),
    ) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise BackendUnavailableError(
                "Chromium not found: install it (Debian: apt-get install chromium) or set $CHROMIUM"
            )
        self._profile = tempfile.mkdtemp(prefix="edgesam-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands; chromium reads fd 3
        self._out_r, out_w = os.pipe()  # chromium writes fd 4; we read
        args = [
            exe,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            f"--window-size={window[0]},{window[1]}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
            *extra_args,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        args.append("about:blank")

        def _wire() -> None:
            # In the child, before exec: expose our pipe ends as fds 3 and 4. Move them above
            # 10 first, in case either already sits on 3 or 4. dup2 makes 3 and 4 inheritable;
            # every other descriptor Python opened is close-on-exec.
            high_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
            high_w = fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_wire,  # fd wiring before exec: what preexec_fn is for
            close_fds=False,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # -- protocol ---------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._out_r], [], [], min(left, 1.0))
            if not ready:
                if self._proc.poll() is not None:
                    raise BrowserError(f"Chromium exited with code {self._proc.returncode}")
                continue
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply; events seen meanwhile go to `events`."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session, target)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (BrowserError, OSError):
                    pass
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
        finally:
            for fd in (self._cmd_w, self._out_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, click, screenshot."""

    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str) -> None:
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {reply['errorText']}")

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """Value of a JavaScript expression (promises are awaited), as JSON-compatible data."""
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return reply.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 120.0, poll: float = 0.1) -> Any:
        """Poll until `expression` is truthy; return its value (errors count as not yet)."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError as exc:  # e.g. the document is still being replaced
                value, last_error = None, str(exc)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"timed out after {timeout:.0f} s waiting for: {expression}"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            time.sleep(poll)

    def mouse(self, kind: str, x: float, y: float, modifiers: int = 0, buttons: int = 0) -> None:
        self.send(
            "Input.dispatchMouseEvent",
            {
                "type": kind,
                "x": x,
                "y": y,
                "modifiers": modifiers,
                "button": "left" if kind != "mouseMoved" or buttons else "none",
                "buttons": buttons,
                "clickCount": 1 if kind in ("mousePressed", "mouseReleased") else 0,
            },
        )

    def click(self, x: float, y: float, shift: bool = False) -> None:
        """A left click at viewport (x, y); shift adds the Shift modifier (8 in CDP)."""
        mods = 8 if shift else 0
        self.mouse("mouseMoved", x, y, mods)
        self.mouse("mousePressed", x, y, mods, buttons=1)
        self.mouse("mouseReleased", x, y, mods)

    def screenshot(self) -> bytes:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        return base64.b64decode(data)

    def console_messages(self) -> list[str]:
        """Console output and uncaught exceptions seen so far on this page (for diagnostics)."""
        out = []
        for ev in self.browser.events:
            if ev.get("sessionId") != self.session:
                continue
            if ev["method"] == "Runtime.consoleAPICalled":
                args = ev["params"].get("args", [])
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif ev["method"] == "Runtime.exceptionThrown":
                d = ev["params"]["exceptionDetails"]
                out.append(str(d.get("exception", {}).get("description") or d.get("text")))
        return out

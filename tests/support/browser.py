"""Headless Chromium driven over the DevTools protocol on a pipe: load a page, run script in it, click, screenshot.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL byte) on its file
descriptor 3 and write its answers and events on descriptor 4: no port to open, no websocket library, only
the standard library. Chromium is started with os.posix_spawn, which puts our two pipe ends on exactly those
descriptors. Debian's /usr/bin/chromium, nothing downloaded; every wait polls with a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(*args: str, timeout: float = 90) -> str:
    """One headless Chromium run with ARGS (e.g. --dump-dom URL) in a throw-away profile; what it printed."""
    with tempfile.TemporaryDirectory(prefix="webmodels-chromium-") as profile:
        res = subprocess.run([chromium() or "chromium", *FLAGS, f"--user-data-dir={profile}", *args],
                             capture_output=True, text=True, timeout=timeout)
    return res.stdout


class Browser:
    """One headless Chromium with one page, WIDTH × HEIGHT; a context manager that always stops it."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        binary = chromium()
        if binary is None:
            raise RuntimeError("no chromium on PATH")
        self.profile = tempfile.mkdtemp(prefix="webmodels-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        argv = [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank"]
        self.pid = os.posix_spawn(binary, argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                                                (os.POSIX_SPAWN_DUP2, devnull, 2),
                                                (os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
                                                (os.POSIX_SPAWN_DUP2, from_chrome_w, 4)],
                                  setsid=True)  # its own group: the close sweeps its renderers too
        for fd in (to_chrome_r, from_chrome_w, devnull):
            os.close(fd)
        self._buf = b""
        self._next = 0
        self.session = ""
        try:
            # the first answer waits for Chromium's start: 90 s, as run_chromium (CI beside another run: > 30 s)
            target = self.call("Target.createTarget", {"url": "about:blank"}, timeout=90)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                              "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()  # no `with` block owns it yet: stop it here
            raise

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the protocol ------------------------------------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send one command (to the page's session once attached) and wait for its answer; events are skipped."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, _, self._buf = self._buf.partition(b"\0")
                answer = json.loads(raw)
                if answer.get("id") == self._next:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"no answer to {method} within {timeout:g} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self._buf += chunk

    # -- what a test does with a page --------------------------------------------------------------------------------
    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete'", 30, "the page to load")

    def js(self, expression: str) -> Any:
        """Evaluate EXPRESSION in the page (promises awaited); its value."""
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails'].get('text')} "
                               f"{res['exceptionDetails'].get('exception', {}).get('description', '')}")
        return res.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float, what: str, interval: float = 0.25) -> Any:
        """Poll EXPRESSION until it is truthy; its value. Fails after TIMEOUT seconds naming WHAT."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.js(expression)
            except RuntimeError as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")

    def click(self, selector: str) -> None:
        found = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                        "if (!e || e.disabled) return false; e.scrollIntoView({block: 'center'}); e.click(); return true; })()")
        if not found:
            raise AssertionError(f"nothing clickable at {selector}")

    def screenshot(self, path: str, selector: str | None = None, pad: int = 8) -> None:
        """Save a PNG of the page (its full height), or of the element at SELECTOR."""
        if selector is None:
            height = self.js("document.documentElement.scrollHeight")
            width = self.js("document.documentElement.scrollWidth")
            clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        else:
            box = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect(); "
                          "return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")
            clip = {"x": max(0, box["x"] - pad), "y": max(0, box["y"] - pad), "width": box["width"] + 2 * pad,
                    "height": box["height"] + 2 * pad, "scale": 1}
        shot = self.call("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """SIGTERM, up to 5 s, then SIGKILL to its whole group (renderer, zygote); reap it; drop its profile."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline, reaped = time.monotonic() + 5, False
        while not reaped and time.monotonic() < deadline:
            try:
                reaped = os.waitpid(self.pid, os.WNOHANG)[0] != 0
            except ChildProcessError:
                reaped = True
            if not reaped:
                time.sleep(0.05)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not reaped:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

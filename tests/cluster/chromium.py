"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (stdlib + ``websockets``).

``find_chromium()`` finds the browser (``GENAUG_CHROMIUM``, then ``chromium`` & co. on PATH) or installs
Debian's ``chromium`` package with apt-get when running as root; it returns ``(path, None)`` or
``(None, reason)`` for a clear skip. ``Chromium`` launches it; ``Page`` evaluates JavaScript, waits for
conditions, clicks and types with real input events, and saves screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
APT_TIMEOUT_S = 600


def _which() -> str | None:
    env = os.environ.get("GENAUG_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    return next(filter(None, map(shutil.which, NAMES)), None)


def find_chromium(install: bool = True) -> tuple[str | None, str | None]:
    """``(path, None)`` for a usable Chromium, else ``(None, why not)``; installs it with apt when root."""
    found = _which()
    if found:
        return found, None
    if os.environ.get("GENAUG_CHROMIUM"):
        return None, f"GENAUG_CHROMIUM={os.environ['GENAUG_CHROMIUM']!r} is not an executable"
    if not install:
        return None, "no chromium on PATH (set GENAUG_CHROMIUM or `apt-get install chromium`)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return (
            None,
            "no chromium on PATH and not root, so it cannot be installed (`apt-get install chromium`)",
        )
    if not shutil.which("apt-get"):
        return None, "no chromium on PATH and no apt-get to install Debian's chromium package"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    log = []
    deadline = time.monotonic() + APT_TIMEOUT_S
    for cmd in (install_cmd, ["apt-get", "update", "-q"], install_cmd):
        try:
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=max(1, deadline - time.monotonic())
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"installing chromium with apt-get failed: {e}"
        log.append(f"$ {' '.join(cmd)} -> {done.returncode}: {done.stderr.strip()[-300:]}")
        if cmd is install_cmd and done.returncode == 0 and _which():
            return _which(), None
    return None, "installing Debian's chromium package failed:\n" + "\n".join(log)


class CdpError(RuntimeError):
    pass


class Page:
    """One browser tab over its DevTools websocket."""

    def __init__(self, ws_url: str, artifacts: Path):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30, ping_interval=None)
        self.artifacts = artifacts
        self.next_id = 0
        self.exceptions: list[str] = []  # uncaught JavaScript errors (incl. unhandled rejections)
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if msg.get("method") == "Runtime.exceptionThrown":
                d = msg["params"]["exceptionDetails"]
                self.exceptions.append((d.get("exception") or {}).get("description") or d.get("text", ""))

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises awaited); return its JSON value."""
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CdpError(
                f"{expression!r}: {(d.get('exception') or {}).get('description') or d.get('text')}"
            )
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 30, what: str | None = None) -> Any:
        """Poll ``expression`` until truthy; on timeout save a screenshot and fail with its last value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        shot = self.screenshot(f"timeout-{int(time.time())}")
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what or expression} (last {value!r}); {shot}"
        )

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'", what="page load")

    def _center(self, selector: str) -> tuple[float, float]:
        rect = self.wait(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
                if (!e || e.offsetParent === null && e.tagName !== 'DIALOG') return null;
                e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
                if (!r.width || !r.height) return null;
                const x = r.x + r.width / 2, y = r.y + r.height / 2, hit = document.elementFromPoint(x, y);
                return hit && (hit === e || e.contains(hit)) ? [x, y] : null; }})()""",
            what=f"{selector} visible",
        )
        return rect[0], rect[1]

    def click(self, selector: str) -> None:
        """A real left click (mouse events) at the element's centre."""
        x, y = self._center(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Click the field, clear it and type ``text`` (real key/insert events)."""
        self.click(selector)
        self.js(f"document.querySelector({json.dumps(selector)}).value = ''")
        self.call("Input.insertText", text=text)

    def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        self.call("Input.dispatchKeyEvent", type="keyUp", **key)

    def text(self, selector: str) -> str:
        return self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")

    def screenshot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path = self.artifacts / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


class Chromium:
    """A headless Chromium process with its own throw-away profile; ``new_page()`` opens a tab."""

    def __init__(self, binary: str, artifacts: Path, width: int = 1280, height: int = 1000):
        self.artifacts = artifacts
        self.profile = tempfile.mkdtemp(prefix="genaug-chromium-")
        self.log = open(Path(self.profile) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        args = [
            binary,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--password-store=basic",
            "--use-mock-keychain",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        env = {**os.environ, "TMPDIR": self.profile}  # its own temp folders go with the profile, not /tmp
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = self._port()

    def _port(self, timeout: float = 60) -> int:
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(active.read_text().splitlines()[0])
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port in {timeout} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        self.log.flush()
        return (Path(self.profile) / "chromium.log").read_bytes()[-2000:].decode(errors="replace")

    def version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=10) as r:
            return json.loads(r.read())["Browser"]

    def new_page(self) -> Page:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        return Page(targets[0]["webSocketDebuggerUrl"], self.artifacts)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

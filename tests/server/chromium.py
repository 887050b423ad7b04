"""Headless Chromium driven over the Chrome DevTools protocol, for the live page's tests.

``Browser()`` starts ``chromium --headless`` with a DevTools port and connects to its one tab;
``goto``, ``evaluate`` (JavaScript, its value back as JSON), ``wait_for`` (until an expression
is truthy), ``type_into`` (keystrokes as a user's) and ``screenshot`` are all the tests need.
``find_chromium()`` is ``None`` where no browser is installed (Debian: ``apt-get install -y
chromium``), so the tests that need one can skip and say why.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


class PageError(AssertionError):
    """JavaScript threw, in an evaluated expression or in the page itself."""


class Browser:
    def __init__(self, width: int = 1200, height: int = 900, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        binary = find_chromium()
        if binary is None:
            raise RuntimeError(f"no Chromium on PATH (tried {', '.join(NAMES)})")
        self.profile = tempfile.mkdtemp(prefix="altoflow-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own group, so close() can end its helpers too
        self.log: list[str] = []
        port = self._devtools_port(timeout)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                     if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout))
        self.ids = itertools.count(1)
        self.errors: list[str] = []  # exceptions the page's own scripts threw
        self.timeout = timeout
        self.call("Runtime.enable")
        self.call("Page.enable")

    def _devtools_port(self, timeout: float) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if m := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                return int(m.group(1))
        self.close()
        raise RuntimeError("Chromium did not open its DevTools port:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result; events seen meanwhile are noted."""
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description")
                                   or details["text"])
            if message.get("id") == ident:
                if "error" in message:
                    raise PageError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(f"{expression}: "
                            f"{details.get('exception', {}).get('description') or details['text']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, seconds: float = 15.0) -> Any:
        deadline = time.monotonic() + seconds
        while not (value := self.evaluate(expression)):
            if self.errors:
                raise PageError(f"the page threw while waiting for {what}: {self.errors}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} ({expression})")
            time.sleep(0.05)
        return value

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body.dataset.run === 'idle'",
                      f"the page at {url} to load")

    def type_into(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` into it, as keystrokes would."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def screenshot(self, path: str) -> None:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """End Chromium and every helper process it started, then remove its profile.

        Chromium's zygote and renderer processes outlive the main one by a moment and go on
        writing to the profile, so the whole process group is ended, and the profile removed
        once nothing is left to write to it."""
        if getattr(self, "stack", None) is not None:
            self.stack.close()
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                shutil.rmtree(self.profile)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # a helper not yet reaped wrote one more file

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shoot(target: str, fields_file: str, out: str) -> None:
    """Serve ``target`` with ``altoflow serve``, run the request in ``fields_file`` from the
    page, and save a screenshot of the page once it is done."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "from altoflow.cli import main; main()",
                               "serve", target, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"altoflow serve {target} did not come up")
            time.sleep(0.2)
        fields = json.loads(open(fields_file).read())
        with Browser(width=1200, height=900, timeout=120) as browser:
            browser.goto(url + "/")
            for name, value in fields.items():
                browser.type_into(f"#field-{name}", str(value))
            browser.evaluate("document.getElementById('run').click()")
            browser.wait_for("document.body.dataset.run !== 'running'", "the run", 120)
            browser.evaluate("const m = [...document.querySelectorAll('.mark.output')].at(-1);"
                             "if (m) m.click()")
            time.sleep(1.5)  # a poll of /metrics after the end
            browser.screenshot(out)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    # python tests/server/chromium.py examples/claimverify/app.py \
    #     examples/claimverify/input.json docs/images/live-page.png
    import sys

    _shoot(*sys.argv[1:4])

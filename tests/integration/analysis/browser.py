"""A page in headless Chromium driven over the DevTools protocol, for what ``--dump-dom``
cannot show: form field values (properties, not attributes), clicks and the navigation they
cause, and the requests the page made."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.integration.analysis.test_waterfall_browser import chromium


class Page:
    """One Chromium tab; use as a context manager (the browser is closed at the end)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._closing = ExitStack()
        self._next_id = 0

    def __enter__(self) -> Page:
        self.profile.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                chromium(),
                "--headless",
                "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",  # Chromium picks a free port, written to the profile
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = self._devtools_port()
            deadline = time.monotonic() + 30
            while True:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
                assert time.monotonic() < deadline, "Chromium opened no page"
                time.sleep(0.05)
            self._ws = self._closing.enter_context(
                connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
            )
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _devtools_port(self) -> int:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while True:
            assert self._proc is not None
            assert self._proc.poll() is None, f"chromium exited with {self._proc.returncode}"
            lines = active.read_text().splitlines() if active.exists() else []
            if lines and lines[0].isdigit():
                return int(lines[0])
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port within 30 s"
            time.sleep(0.05)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events arriving meanwhile are dropped)."""
        assert self._ws is not None
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._next_id:
                assert "error" not in message, message["error"]
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_ready(self) -> None:
        """Until a new document (not the one :meth:`_mark` marked) finished rendering: the
        page's script sets ``body[data-ready]`` when it is done."""
        deadline = time.monotonic() + 30
        while True:
            try:
                state = self.evaluate(
                    "[Boolean(window.__left), location.href, document.readyState,"
                    " document.body ? document.body.dataset.ready : null]"
                )
            except AssertionError as exc:
                # asked while the document was being replaced (a busy machine): ask again
                if "navigated or closed" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            if not state[0] and state[1] != "about:blank" and state[2:] == ["complete", "true"]:
                return
            assert time.monotonic() < deadline, f"the page did not finish rendering: {state}"
            time.sleep(0.05)

    def _mark(self) -> None:
        self.evaluate("window.__left = true")  # gone with the document once the next one loads

    def open(self, url: str) -> None:
        self._mark()
        self.call("Page.navigate", url=url)
        self.wait_ready()

    def click_and_wait(self, selector: str) -> None:
        """Clicks the element, then waits for the document it navigates to."""
        self._mark()
        try:
            self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        except AssertionError as exc:  # (the click navigated before its evaluation answered)
            if "navigated or closed" not in str(exc):
                raise
        self.wait_ready()

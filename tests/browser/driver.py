"""The Python end of ``driver.mjs``: a browser the tests drive step by step.

:class:`Browser` runs ``node tests/browser/driver.mjs`` as a child process and
sends it one JSON request per line; each :meth:`Browser.call` returns a
Deferred of the answer's value (or a :class:`BrowserError`). The tests keep
every assertion; the driver only acts and reads.

Screenshots go to :func:`screenshot_path`: ``$MSGP_SCREENSHOTS`` or
``screenshots/`` beside trial's working directory (``_trial_temp``), kept after
the run as the tests' artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.servers import missing

R: Any = reactor
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "browser", "driver.mjs")
PLAYWRIGHT = os.path.join(ROOT, "frontend", "node_modules", "playwright-core")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

#: Longer than the driver's own 15 s waits, so that its error arrives first.
CALL_TIMEOUT = 30


class BrowserError(Exception):
    """The driver could not do what it was asked (its message says why)."""


def require_browser() -> str:
    """The ``node`` executable, or skip (fail in CI) saying what is missing."""
    node = shutil.which("node")
    if node is None:
        missing("no Node.js (node) on PATH: the browser tests need it")
    if not os.path.isdir(PLAYWRIGHT):
        missing("no playwright-core in frontend/node_modules: run `cd frontend && npm ci`")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"no Chromium at {CHROMIUM}: install Debian's chromium package (or set CHROMIUM)")
    assert node is not None
    return node


def screenshot_path(name: str) -> str:
    folder = os.environ.get("MSGP_SCREENSHOTS") or os.path.abspath(
        os.path.join("..", "screenshots") if os.path.basename(os.getcwd()).startswith("_trial_temp")
        else "screenshots")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}.png")


class Browser(ProcessProtocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._next = 0
        self._waiting: dict[int, Deferred[Any]] = {}
        self.ready: Deferred[Any] = Deferred()
        self._waiting[0] = self.ready
        self.ended: Deferred[None] = Deferred()
        self.stderr: list[bytes] = []

    @classmethod
    async def start(cls, test: Any) -> Browser:
        node = require_browser()
        browser = cls()
        env = dict(os.environ)
        R.spawnProcess(browser, node, [node, DRIVER], env=env, path=ROOT)
        test.addCleanup(browser.stop)
        await browser.ready.addTimeout(CALL_TIMEOUT, R)
        return browser

    def call(self, op: str, **arguments: Any) -> Deferred[Any]:
        self._next += 1
        d: Deferred[Any] = Deferred()
        self._waiting[self._next] = d
        request = {"id": self._next, "op": op, **arguments}
        assert self.transport is not None
        self.transport.write(json.dumps(request).encode() + b"\n")
        return d.addTimeout(CALL_TIMEOUT, R)

    async def screenshot(self, page: str, name: str) -> str:
        path: str = await self.call("screenshot", page=page, path=screenshot_path(name))
        return path

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            answer = json.loads(line)
            d = self._waiting.pop(answer["id"], None)
            if d is None:
                continue
            if answer["ok"]:
                d.callback(answer["value"])
            else:
                d.errback(BrowserError(answer["error"]))

    def errReceived(self, data: bytes) -> None:
        self.stderr.append(data)

    def processEnded(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, {}
        why = b"".join(self.stderr).decode(errors="replace")[-2000:]
        for d in waiting.values():
            d.errback(BrowserError(f"the browser driver ended: {why}"))
        self.ended.callback(None)

    async def stop(self) -> None:
        if self.ended.called:
            return
        assert self.transport is not None
        self.transport.closeStdin()  # the driver closes Chromium and exits
        try:
            await self.ended.addTimeout(CALL_TIMEOUT, R)
        except Exception:
            self.transport.signalProcess("KILL")
            await self.ended

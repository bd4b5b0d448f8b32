# -*- test-case-name: tests.bench.test_bench,tests.bench.test_tls -*-
"""One load-generator process: ``python -m daojia_msg.bench.worker``.

Talks to the parent (:mod:`daojia_msg.bench.runner`) in JSON lines. Stdin: the
spec (first line), then ``go`` and ``stop``. Stdout, one object a line:
``{"ev": "progress", "n": k}`` (units done since the last one), ``{"ev":
"ready", "setup": {...}, "cpu": {...}}`` after the untimed setup, ``{"ev": "result",
"result": {...}, "cpu": {...}}`` after the run, ``{"ev": "error", "error":
"..."}``. ``cpu`` is this process's own CPU time (``resource.getrusage``)
over the setup or the run, so the parent can tell whether the generator was saturated.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall

from daojia_msg.bench.base import Scenario
from daojia_msg.bench.scenarios import SCENARIOS
from daojia_msg.bench.stats import cpu_share
from daojia_msg.bench.wire import TLSRefused
from daojia_msg.bench.wswire import WSRefused


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_report(cpu0: float, cpu1: float, wall0: float, wall1: float) -> dict[str, Any]:
    return {"pid": os.getpid(), "cpu_s": round(cpu1 - cpu0, 3), "wall_s": round(wall1 - wall0, 3),
            "cpu_pct": cpu_share(cpu1 - cpu0, wall1 - wall0)}


#: Seconds a finished worker waits at most for its stdout to take the result.
EXIT_BOUND_S = 60.0


class WorkerProtocol(Protocol):
    """The parent's side of stdin/stdout."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.buffer = b""
        self.scenario: Scenario | None = None
        self.go: Deferred[None] = Deferred()
        self.reported = 0
        self.finished = False

    def emit(self, **event: Any) -> None:
        self.transport.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.line(line.decode().strip())

    def line(self, line: str) -> None:
        if self.scenario is None and line.startswith("{"):
            spec = json.loads(line)
            self.scenario = SCENARIOS[spec["scenario"]](self.reactor, spec)
            Deferred.fromCoroutine(self.main()).addErrback(self.failed)
        elif line == "go" and not self.go.called:
            self.go.callback(None)
        elif line == "stop" and self.scenario is not None:
            self.scenario.stop()

    def connectionLost(self, reason: Any = None) -> None:
        """Stdout flushed and closed after the result (exit now), or the
        parent went away (stop holding connections, exit shortly)."""
        if self.scenario is not None:
            self.scenario.stop()
        if self.finished:
            self._exit()
        else:
            self.finished = True
            self.reactor.callLater(0.5, self._exit)

    def report_progress(self) -> None:
        if self.scenario is not None and self.scenario.progress != self.reported:
            self.emit(ev="progress", n=self.scenario.progress - self.reported)
            self.reported = self.scenario.progress

    async def main(self) -> None:
        scenario = self.scenario
        assert scenario is not None
        ticker = LoopingCall(self.report_progress)
        ticker.clock = self.reactor
        ticker.start(0.25, now=False)
        try:
            await scenario.check_target()
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            setup = await scenario.setup()
            cpu1, wall1 = cpu_seconds(), time.monotonic()
            self.report_progress()
            self.reported = scenario.progress = 0
            self.emit(ev="ready", setup=setup, pid=os.getpid(),
                      cpu=cpu_report(cpu0, cpu1, wall0, wall1))
            await self.go
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            result = await scenario.run()
            cpu1, wall1 = cpu_seconds(), time.monotonic()
            self.report_progress()
            self.emit(ev="result", result=result, pid=os.getpid(),
                      cpu=cpu_report(cpu0, cpu1, wall0, wall1))
        finally:
            ticker.stop()
            scenario.close()
            self.finished = True
            # Exit once the result is written: a timer alone lost a result of
            # several hundred KB that the pipe had not taken yet (the parent
            # then saw "the workers exited early"). The timer stays as a bound
            # for a parent that stopped reading.
            assert self.transport is not None
            self.transport.loseConnection()
            self.reactor.callLater(EXIT_BOUND_S, self._exit)

    def failed(self, failure: Any) -> None:
        self.emit(ev="error", error=failure.getErrorMessage() or repr(failure.value))
        if not failure.check(TLSRefused, WSRefused):  # said in full by the parent's one line
            sys.stderr.write(failure.getTraceback())

    def _exit(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main() -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio

    stdio.StandardIO(WorkerProtocol(reactor), reactor=reactor)
    reactor.run()


if __name__ == "__main__":
    main()

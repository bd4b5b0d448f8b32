# -*- test-case-name: tests.bench.test_bench,tests.bench.test_tls -*-
"""What every scenario shares: the :class:`Scenario` base and the open-loop scheduler.

A worker process runs its share of one scenario: ``setup()`` (connect and log in,
seed data: not timed), ``run()`` (the measured part; returns a JSON-able dict) and
``close()``. ``progress`` counts units of work for the parent's progress bar.
Every wait is bounded: connections time out, and the drain after a run stops
after ``drain_s`` even when answers are missing (they are then counted as missing).

Times are ``time.monotonic()`` seconds: one clock for all processes of the
machine, so the parent can merge the windows of several workers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.task import LoopingCall, deferLater

from daojia_msg.auth import mint_token
from daojia_msg.bench.wire import BenchClient, TLSRefused, connect, source_address
from daojia_msg.bench.wswire import PATH, Dial, WSRefused, dialer
from daojia_msg.tls import client_options

#: A connection to log in: (connection index, uid, token, client or None).
Job = tuple[int, int, str, "BenchClient | None"]
#: The open-loop scheduler's tick: sends due within a tick go out together.
TICK_S = 0.002


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def now_us() -> int:
    return time.monotonic_ns() // 1000


async def open_loop(reactor: Any, rate: float, duration: float, targets: list[Any],
                    send: Callable[[Any, int], None], lags: list[int] | None = None) -> None:
    """Call ``send(target, intended_us)`` at ``rate`` per second for ``duration``
    s, round robin over ``targets``. Each send carries its *intended* time, so
    a late generator or a slow node shows as latency (no coordinated omission).
    ``lags`` gets how late each send left (µs after its intended time): the
    generator's own lateness, to tell apart from the node's in the latency."""
    t0_us = now_us()
    total = int(rate * duration)
    done = 0
    n = len(targets)

    def tick() -> None:
        nonlocal done
        now = now_us()
        due = min(total, int((now - t0_us) * rate / 1e6) + 1)
        while done < due:
            intended = t0_us + int(done * 1e6 / rate)
            if lags is not None:
                lags.append(max(0, now_us() - intended))
            send(targets[done % n], intended)
            done += 1
        if done >= total:
            loop.stop()

    loop = LoopingCall(tick)
    loop.clock = reactor
    await loop.start(TICK_S, now=True)


class Scenario:
    """Base: the spec, the reactor, identities and bounded log-ins."""

    def __init__(self, reactor: Any, spec: dict[str, Any]) -> None:
        self.reactor = reactor
        self.spec = spec
        self.progress = 0
        self.clients: list[BenchClient] = []
        self.login_failures: dict[str, int] = {}
        self.stopped: Deferred[None] = Deferred()
        #: With ``tls``: the gate's TLS context (the node's certificate
        #: verified against ``ca`` and ``server_name``), built once.
        self.tls = (client_options(spec.get("server_name") or spec["gate_host"],
                                   ca=spec.get("ca"))
                    if spec.get("tls") else None)
        #: ``transport`` ``ws``: the clients speak WebSocket to ``gate_host:gate_port``.
        self.websocket = spec.get("transport") == "ws"
        self.dial: Dial = (dialer(reactor, spec["gate_host"], spec["gate_port"],
                                  secure=self.tls is not None,
                                  timeout=spec.get("connect_timeout", 30))
                           if self.websocket else connect)

    # -- helpers ---------------------------------------------------------------

    def token(self, uid: int) -> str:
        spec = self.spec
        return mint_token(spec["secret"], spec["appcode"], uid, int(time.time()) + 3600)

    def source(self, index: int) -> str:
        return source_address(index, self.spec["per_address"], self.spec["source_first"])

    async def check_target(self) -> None:
        """With ``tls`` or over WebSocket, one connection before anything: a
        certificate that does not verify, or a WebSocket upgrade the target
        refuses, stops the run with one line instead of failing every login."""
        if self.tls is None and not self.websocket:
            return
        spec = self.spec
        where = f"{spec['gate_host']}:{spec['gate_port']}"
        probe = BenchClient(0, spec["appcode"])
        try:
            await self.dial(self.reactor, spec["gate_host"], spec["gate_port"], probe,
                            timeout=spec.get("connect_timeout", 30), tls=self.tls)
            if self.tls is not None:
                await probe.handshake.addTimeout(spec.get("connect_timeout", 30), self.reactor)
        except TLSRefused as e:
            hint = (" (is --ca the CA that signed the node's certificate?)"
                    if "verify failed" in str(e) else "")
            raise TLSRefused(f"TLS handshake with {where} failed: {e}{hint}") from None
        except WSRefused as e:
            raise WSRefused(f"no WebSocket gate at {where}{PATH}: {e}") from None
        finally:
            if probe.transport is not None:
                probe.transport.loseConnection()

    async def login_one(self, index: int, uid: int, token: str,
                        client: BenchClient | None = None) -> BenchClient | None:
        """Connect connection number ``index`` (it picks the source address)
        as ``uid`` and log in; ``None`` (counted) when that fails."""
        spec = self.spec
        client = client or BenchClient(uid, spec["appcode"])
        try:
            await self.dial(self.reactor, spec["gate_host"], spec["gate_port"], client,
                            self.source(index), timeout=spec.get("connect_timeout", 30),
                            tls=self.tls)
            response = await client.login(token).addTimeout(
                spec.get("connect_timeout", 30), self.reactor)
        except Exception as e:  # counted, the run goes on
            name = type(e).__name__
            self.login_failures[name] = self.login_failures.get(name, 0) + 1
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]
            return None
        if response.code != 0:
            name = f"code {response.code}"
            self.login_failures[name] = self.login_failures.get(name, 0) + 1
            client.transport.loseConnection()  # type: ignore[union-attr]
            return None
        self.clients.append(client)
        self.progress += 1
        return client

    async def login_many(self, jobs: Sequence[Job]) -> list[BenchClient | None]:
        """Log in ``(index, uid, token, client)`` jobs, at most
        ``concurrency`` connecting at once."""
        sem = DeferredSemaphore(max(1, self.spec.get("concurrency", 64)))
        ds = [sem.run(self._login_job, j) for j in jobs]
        results = await DeferredList(ds, consumeErrors=True)
        return [value if ok else None for ok, value in results]

    def _login_job(self, job: Job) -> Deferred[BenchClient | None]:
        return Deferred.fromCoroutine(self.login_one(*job))

    def failures(self) -> dict[str, int]:
        return dict(self.login_failures)

    # -- the three phases ------------------------------------------------------

    async def setup(self) -> dict[str, Any]:
        return {}

    async def run(self) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        """The parent said stop (``connect`` holds its connections until then)."""
        if not self.stopped.called:
            self.stopped.callback(None)

    def close(self) -> None:
        """Reset every connection (RST): a polite close leaves each 4-tuple in
        TIME_WAIT for a minute, and the next run, from the same source
        addresses and ports, then meets some of them: its SYN is answered with
        an ACK for the old connection and retried a second later."""
        for client in self.clients:
            if client.transport is not None and client.connected:
                client.transport.abortConnection()  # type: ignore[attr-defined]
        self.clients = []

    async def _drain(self, done: Any) -> None:
        """Wait until ``done()`` or ``drain_s`` passed (checked every 20 ms)."""
        deadline = time.monotonic() + self.spec.get("drain_s", 10)
        while not done() and time.monotonic() < deadline:
            await deferLater(self.reactor, 0.02, lambda: None)

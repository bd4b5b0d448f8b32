# -*- test-case-name: tests.gate.test_protocol -*-
"""Accepting gate connections: the per-IP cap and the table of open connections.

Behind HAProxy the gate listens on a ``haproxy:tcp:...`` endpoint (PROXY
protocol): a connection first looks like it comes from the proxy, and shows its
real client address once the PROXY header is parsed. So a connection is counted
against its peer host at connect time and moved to the real host on its first
data (:meth:`GateFactory.admit`); the cap applies to real client addresses.

Admission control: the connections call the node's logic through
:class:`AdmittedLogic`, which lets at most ``limits.node_max_inflight`` C2C
and C2S requests be in work at once over the whole node and answers the rest
RATE_LIMITED at once ("over capacity, retry after a backoff"). Offered more
than it can take (open loop), the node keeps its throughput and a bounded
latency for what it admits, instead of queueing until everything times out.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IReactorTime, ISSLTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.config import Limits
from daojia_msg.core.admission import Admission
from daojia_msg.gate.limits import OVER_CAPACITY, PeerCounter
from daojia_msg.gate.protocol import GateProtocol
from daojia_msg.logic.answers import each_answer
from daojia_msg.logic.inbox import Inbox
from daojia_msg.logic.service import LogicService
from daojia_msg.metrics.counters import TRANSPORTS, GateCounters
from daojia_msg.protocol.codes import CLIENT_REQUESTS, Cmd, Code, KickReason
from daojia_msg.protocol.errors import RateLimited


class AdmittedLogic:
    """``logic`` as the connections see it: C2C and C2S pass
    :class:`~daojia_msg.core.admission.Admission` first (refused: a failed
    Deferred with :class:`RateLimited`, answered RATE_LIMITED); everything
    else is the logic's own."""

    def __init__(self, logic: LogicService, admission: Admission) -> None:
        self._logic = logic
        self._admission = admission

    def __getattr__(self, name: str) -> Any:
        # Only for names this class does not define (ack, login, now_ms...):
        # a method is kept on the instance, so the next call finds it at once
        # (an ACK goes through here for every message).
        found = getattr(self._logic, name)
        if inspect.ismethod(found):
            setattr(self, name, found)
        return found

    def c2c(self, *args: Any) -> Deferred[Any]:
        return self._admit(self._logic.c2c, args)

    def c2s(self, *args: Any) -> Deferred[Any]:
        return self._admit(self._logic.c2s, args)

    def c2c_frames(self, session: Any, items: list[Any]) -> Deferred[list[Any]]:
        """The C2C frames of a read, each admitted (else its answer is
        RateLimited, at once), the admitted ones to the logic as one batch;
        each leaves admission control when its own answer is known."""
        admission = self._admission
        admitted = [admission.enter() for _ in items]
        count = sum(admitted)
        if not count:
            return succeed([RateLimited(OVER_CAPACITY) for _ in items])
        refused = count < len(items)
        if refused:
            items = [item for item, entered in zip(items, admitted, strict=True) if entered]
        started = admission.now()
        try:
            d: Deferred[list[Any]] = self._logic.c2c_frames(session, items)
        except BaseException:
            for _ in range(count):
                admission.leave()
            raise
        d.addBoth(self._each_left, started, count)
        if not refused:
            return d
        # Over capacity (rare): the refusals go at once, each admitted frame's
        # answer when the batch has it.
        return each_answer(d, [None if entered else RateLimited(OVER_CAPACITY)
                               for entered in admitted])

    def _each_left(self, result: Any, started: float, count: int) -> Any:
        if isinstance(result, Failure):
            for _ in range(count):
                self._admission.leave(started)
            return result
        for answer in result:
            if isinstance(answer, Deferred):
                answer.addBoth(self._left, started)
            else:
                self._admission.leave(started)
        return result

    def _admit(self, call: Any, args: tuple[Any, ...]) -> Deferred[Any]:
        admission = self._admission
        if not admission.enter():
            return fail(RateLimited(OVER_CAPACITY))
        started = admission.now()
        try:
            d: Deferred[Any] = call(*args)
        except BaseException:
            admission.leave()
            raise
        d.addBoth(self._left, started)
        return d

    def _left(self, result: Any, started: float) -> Any:
        self._admission.leave(started)
        return result


def transport_name(transport: object) -> str:
    """``websocket`` for a connection over the WebSocket gate (its transport
    says so), ``tls`` over TLS, else ``tcp``."""
    if getattr(transport, "websocket", False):
        return "websocket"
    return "tls" if ISSLTransport.providedBy(transport) else "tcp"


class GateFactory(ServerFactory):
    log = Logger()
    noisy = False

    def __init__(self, logic: LogicService, inbox: Inbox, limits: Limits, clock: IReactorTime) -> None:
        #: At most ``limits.node_max_inflight`` C2C and C2S in work at once.
        self.admission = Admission(limits.node_max_inflight, limits.admission_target_ms / 1000,
                                   clock.seconds)
        #: What the connections call: ``logic`` behind admission control.
        self.logic = cast(LogicService, AdmittedLogic(logic, self.admission))
        self.inbox = inbox
        self.limits = limits
        self.clock = clock
        self.peers = PeerCounter(limits.max_conn_per_ip)
        #: Per appcode, the msgtypes whose pushes take the priority lane of a
        #: congested connection (``[apps.<appcode>] priority_msgtypes``).
        self.priority_msgtypes = {appcode: app.priority_msgtypes
                                  for appcode, app in logic.config.apps.items()
                                  if app.priority_msgtypes}
        self.connections: set[GateProtocol] = set()
        #: LOGINs by result, KICKOUTs by reason, refusals by code (``/metrics``).
        self.counters = GateCounters([c.name for c in Code], [r.name for r in KickReason],
                                     [Cmd(c).name for c in CLIENT_REQUESTS])
        self.refused = 0
        self._empty_waiters: list[Deferred[None]] = []
        #: The C2S buses lag: no connection reads its socket until this clears.
        self.pressure = False
        self._pressure_from: set[str] = set()

    def buildProtocol(self, addr: IAddress | None) -> GateProtocol:
        return GateProtocol(self)

    def admit(self, conn: GateProtocol, host: str) -> bool:
        """Count ``conn`` against ``host``'s cap (moving it from the host it was
        counted on, if any); False, and not counted, when ``host`` is at its cap."""
        if conn.host is not None:
            self.peers.release(conn.host)
            conn.host = None
        if not self.peers.acquire(host):
            self.refused += 1
            self.log.debug("refused a connection from {host}: per-IP cap {cap}",
                           host=host, cap=self.peers.cap)
            return False
        conn.host = host
        return True

    def transports(self) -> dict[str, int]:
        """Open connections by transport: tcp, tls, websocket (plain or TLS)."""
        counts = dict.fromkeys(TRANSPORTS, 0)
        for conn in self.connections:
            counts[transport_name(conn.transport)] += 1
        return counts

    def connection_made(self, conn: GateProtocol) -> None:
        self.connections.add(conn)

    def connection_lost(self, conn: GateProtocol) -> None:
        self.connections.discard(conn)
        if conn.host is not None:
            self.peers.release(conn.host)
            conn.host = None
        if not self.connections:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def set_pressure(self, on: bool, source: str = "bus") -> None:
        """Stop (True) or resume (False) reading every client socket, for
        ``source`` (the C2S buses, the message store): reading resumes once
        no source is under pressure."""
        if on:
            self._pressure_from.add(source)
        else:
            self._pressure_from.discard(source)
        pressure = bool(self._pressure_from)
        if pressure == self.pressure:
            return
        self.pressure = pressure
        for conn in list(self.connections):
            conn.throttle()

    def when_empty(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._empty_waiters.append(d)
        return d

# -*- test-case-name: tests.gate.test_protocol -*-
"""Accepting gate connections: the per-IP cap and the table of open connections."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from daojia_msg.config import Limits
from daojia_msg.gate.limits import PeerCounter
from daojia_msg.gate.protocol import GateProtocol
from daojia_msg.logic.inbox import Inbox
from daojia_msg.logic.service import LogicService


class GateFactory(ServerFactory):
    log = Logger()
    noisy = False

    def __init__(self, logic: LogicService, inbox: Inbox, limits: Limits, clock: IReactorTime) -> None:
        self.logic = logic
        self.inbox = inbox
        self.limits = limits
        self.clock = clock
        self.peers = PeerCounter(limits.max_conn_per_ip)
        self.connections: set[GateProtocol] = set()
        self.refused = 0
        self._empty_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> GateProtocol | None:  # type: ignore[override]
        a: Any = addr
        host = str(getattr(a, "host", addr))
        if not self.peers.acquire(host):
            self.refused += 1
            self.log.debug("refused a connection from {host}: per-IP cap {cap}",
                           host=host, cap=self.peers.cap)
            return None
        return GateProtocol(self, host, f"{host}:{getattr(a, 'port', '')}")

    def connection_made(self, conn: GateProtocol) -> None:
        self.connections.add(conn)

    def connection_lost(self, conn: GateProtocol) -> None:
        self.connections.discard(conn)
        self.peers.release(conn.host)
        if not self.connections:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_empty(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._empty_waiters.append(d)
        return d

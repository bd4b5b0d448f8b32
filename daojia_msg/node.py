# -*- test-case-name: tests.test_node -*-
"""One node: builds the parts from a :class:`Config` and runs them in order.

Start: open every backend, raise the msgid floor past what is stored, then bind
the listeners (gate, HTTP), so an open port means ready. Stop (SIGTERM): turn
``/healthz`` to 503, KICKOUT SHUTDOWN every connection, stop listening, close
the backends. Un-ACKed pushes stay pending in the store.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf.internal import api_implementation
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from daojia_msg.bus.memory import MemoryBus
from daojia_msg.config import Config
from daojia_msg.gate.factory import GateFactory
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.inbox import Inbox
from daojia_msg.logic.service import LogicService
from daojia_msg.logic.stats import Stats
from daojia_msg.protocol.codes import KickReason
from daojia_msg.store.memory import MemorySessionStore
from daojia_msg.store.sqlite import SQLiteMessageStore
from daojia_msg.web.api import make_site
from daojia_msg.web.metrics import make_registry


class Node(MultiService):
    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.node_id = config.node_id if config.node_id is not None else 0
        os.makedirs(config.data_dir, exist_ok=True)
        self.store = SQLiteMessageStore(os.path.join(config.data_dir, "messages.db"), reactor)
        self.sessions = MemorySessionStore()
        self.bus = MemoryBus()
        self.stats = Stats()
        self.ids = IdGenerator(self.node_id, reactor.seconds)
        self.logic = LogicService(config, reactor, self.sessions, self.store, self.bus, self.ids,
                                  self.stats)
        self.logic.setServiceParent(self)
        self.inbox = Inbox(self.store, config.limits, self.stats)
        self.gate = GateFactory(self.logic, self.inbox, config.limits, reactor)
        self.registry = make_registry(
            self.stats, lambda: len(self.gate.connections), lambda: len(self.logic.local)
        )
        self.site = make_site(
            self.logic, config, serving=self.serving, dispatch=self.dispatch, registry=self.registry,
            reactor=reactor,
        )
        self.site.noisy = False
        self.ports: dict[str, IListeningPort] = {}
        self.draining = False
        #: Fires with None once serving, or fails with why the node could not start.
        self.ready: Deferred[None] = Deferred()

    def serving(self) -> bool:
        return bool(self.running) and not self.draining and "gate" in self.ports

    def dispatch(self) -> tuple[str, int]:
        """The public gate address (one node: this one)."""
        if self.config.listen.public_gate:
            host, _, port = self.config.listen.public_gate.rpartition(":")
            return host, int(port)
        address: Any = self.ports["gate"].getHost()
        return address.host, address.port

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.chainDeferred(self.ready)

    async def _start(self) -> None:
        backend = api_implementation.Type()
        self.log.info("protobuf backend: {backend}", backend=backend)
        if backend != "upb":
            self.log.warn("protobuf runs its slow {backend} backend, not upb", backend=backend)
        if self.config.demo:
            self.log.warn("running the development-only demo apps 1001 and 1002: "
                          "do not expose this node")
        await self.store.start()
        await self.bus.start()
        self.ids.advance_past(await self.store.max_msgid())
        self.ports["gate"] = await serverFromString(self.reactor, self.config.listen.gate).listen(
            self.gate)
        self.ports["http"] = await serverFromString(self.reactor, self.config.listen.http).listen(
            self.site)
        for name, port in self.ports.items():
            address: Any = port.getHost()
            self.log.info("{name} listening on {host}:{port}", name=name, host=address.host,
                          port=address.port)
        gate_host = self.dispatch()[0]
        if gate_host in ("0.0.0.0", "::"):
            self.log.warn("the gate listens on every interface: GET /v1/dispatch will answer "
                          "{host}; set listen.public_gate to the address phones use",
                          host=gate_host)
        self.log.info("node {node_id} serving", node_id=self.node_id)

    def stopService(self) -> Deferred[None]:
        self.draining = True
        kicked = self.logic.kick_all(KickReason.SHUTDOWN, "server shutting down")
        self.log.info("stopping: kicked {count} sessions", count=kicked)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await DeferredList([Deferred.fromCoroutine(_stop_port(p)) for p in self.ports.values()])
        self.ports.clear()
        # Kicked connections close politely; the rest (not logged in) are closed
        # now. Each aborts by itself after close_grace_s if its peer lingers.
        for conn in list(self.gate.connections):
            conn.close()
        await self.gate.when_empty()
        stopped: Any = super().stopService()
        if stopped is not None:
            await stopped
        await self.bus.stop()
        await self.store.stop()


async def _stop_port(port: IListeningPort) -> None:
    stopped: Any = port.stopListening()
    if stopped is not None:
        await stopped

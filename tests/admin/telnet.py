"""A telnet client for the admin manhole's tests, a fake node behind its
namespace, and :class:`ManholeTestCase`, which connects the two through
:mod:`twisted.test.iosim` on a :class:`Clock` (deterministic)."""

from __future__ import annotations

import re
from typing import Any

from twisted.conch import telnet
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.admin.manhole import (
    MANHOLE_USERNAME,
    AdminNamespace,
    ManholeFactory,
    make_manhole_factory,
)
from daojia_msg.core.model import NodeInfo, SessionRecord
from daojia_msg.protocol.codes import KickReason

PASSWORD = "corr3ct-h0rse-battery"
WRONG = "wr0ng-passw0rd-guess"
SERVER = IPv4Address("TCP", "127.0.0.1", 7300)
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
_ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z@]|[()][A-Za-z0-9]|[A-Za-z0-9=<>])")


def text_of(output: bytes) -> str:
    """What a terminal shows, roughly: escapes dropped, CR LF as LF."""
    return _ESCAPES.sub(b"", output).replace(b"\r\n", b"\n").decode("latin-1")


class FakeNode:
    """What the namespace asks of a node: sessions, kickout, stats, nodes, trace."""

    def __init__(self) -> None:
        self.sessions = {5: [SessionRecord(5, 1001, 3, "s-1", 1_700_000_000_123)]}
        self.kicked: list[tuple[int, int, KickReason]] = []
        #: When set, lookups answer with this (a pending or failed Deferred).
        self.answer: Deferred[list[SessionRecord]] | None = None
        self.cluster: list[NodeInfo] | None = None

    def lookup_uid(self, uid: int) -> Deferred[list[SessionRecord]]:
        if self.answer is not None:
            return self.answer
        return succeed(self.sessions.get(uid, []))

    def kickout(self, uid: int, appcode: int, reason: KickReason) -> Deferred[int]:
        self.kicked.append((uid, appcode, reason))
        return succeed(1)

    def stats(self) -> dict[str, Any]:
        return {"totals": {"accepted": 7, "acked": 6}, "by_route": [], "delivery_rate": 0.75}

    def this_node(self) -> dict[str, Any]:
        return {"node_id": 3, "gate_host": "127.0.0.1", "gate_port": 7000, "connections": 1}

    def live_nodes(self) -> Deferred[list[NodeInfo]]:
        assert self.cluster is not None
        return succeed(self.cluster)

    def trace(self, logid: str) -> list[dict[str, Any]]:
        if logid == "x":
            return [{"log_format": "c2c stored {msgid}", "msgid": 77, "logid": "x"}]
        return []

    def namespace(self, clustered: bool = False) -> dict[str, Any]:
        return AdminNamespace(
            lookup_uid=self.lookup_uid,
            kickout=self.kickout,
            stats=self.stats,
            this_node=self.this_node,
            live_nodes=self.live_nodes if clustered else None,
            trace=self.trace,
        ).namespace()


class TelnetClient(telnet.Telnet):
    """A terminal user's telnet client: lets the server echo and suppress
    go-ahead, refuses every other option (LINEMODE, NAWS)."""

    def __init__(self) -> None:
        super().__init__()
        self.output = b""
        self.lost = False
        self.on_lost: Deferred[None] = Deferred()
        self._waiting: list[tuple[str, Deferred[None]]] = []

    def enableRemote(self, option: bytes) -> bool:
        return option in (telnet.ECHO, telnet.SGA)

    def disableRemote(self, option: bytes) -> None:
        pass

    def applicationDataReceived(self, data: bytes) -> None:
        self.output += data
        for item in list(self._waiting):
            if item[0] in self.text:
                self._waiting.remove(item)
                item[1].callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost = True
        self.on_lost.callback(None)

    @property
    def text(self) -> str:
        return text_of(self.output)

    def type(self, line: str) -> None:
        assert self.transport is not None
        self.transport.write(line.encode() + b"\r\n")

    def when_shown(self, text: str) -> Deferred[None]:
        if text in self.text:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        return d


class RawClient(Protocol):
    """``nc``: sends lines, answers no telnet negotiation."""

    def __init__(self) -> None:
        self.output = b""

    def dataReceived(self, data: bytes) -> None:
        self.output += data


class ManholeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.node = FakeNode()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def factory(self, clustered: bool = False) -> ManholeFactory:
        return make_manhole_factory(self.node.namespace(clustered), PASSWORD, self.clock)

    def connect(self, client: Protocol | None = None, clustered: bool = False
                ) -> tuple[Any, iosim.IOPump]:
        server = self.factory(clustered).buildProtocol(PEER)
        client = client if client is not None else TelnetClient()
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, hostAddress=SERVER, peerAddress=PEER),
            client, iosim.FakeTransport(client, False, hostAddress=PEER, peerAddress=SERVER),
            clock=self.clock)
        self.addCleanup(self._disconnect, client, pump)
        return client, pump

    def _disconnect(self, client: Protocol, pump: iosim.IOPump) -> None:
        transport: Any = client.transport
        if not transport.disconnecting:
            transport.loseConnection()
        pump.flush()
        # Nothing left behind: the login timeout and the pause are cancelled.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def login(self, clustered: bool = False) -> tuple[TelnetClient, iosim.IOPump]:
        client, pump = self.connect(clustered=clustered)
        assert isinstance(client, TelnetClient)
        client.type(MANHOLE_USERNAME)
        pump.flush()
        client.type(PASSWORD)
        pump.flush()
        self.assertIn(">>> ", client.text)
        return client, pump

    def evaluate(self, client: TelnetClient, pump: iosim.IOPump, line: str) -> str:
        """Type ``line`` at the prompt: what the terminal shows after it."""
        client.output = b""
        client.type(line)
        pump.flush()
        return client.text

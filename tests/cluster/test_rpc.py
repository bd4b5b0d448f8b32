"""The internal RPC (AMP): Deliver and Kick between nodes, Auth, timeouts, failures."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from daojia_msg.cluster.rpc import (
    AUTH_TIMEOUT_S,
    Auth,
    BadMessage,
    Deliver,
    InternalError,
    Kick,
    RpcPeers,
    RpcServerFactory,
    Unauthorized,
    auth_mac,
    registry_addresses,
)
from daojia_msg.cluster.rpc.links import BACKOFF_MIN_S
from daojia_msg.core.convert import from_pb, message_to_wire
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import Kind, NodeInfo, SessionRecord, StoredMessage
from daojia_msg.logic.interfaces import IPeers
from daojia_msg.protocol.codes import Cmd, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import T0, Stack

SECRET = "a-cluster-secret-of-some-length"
RPC_PORT = 7100
BIG = bytes(range(256)) * 253 + b"\xff\xfe" * 116  # 65,000 bytes, not UTF-8
assert len(BIG) == 65000


def message(msgid: int = 2**63 + 5, content: bytes = b"hi \xff", logid: str = "trace-7",
            kind: Kind = Kind.C2C) -> StoredMessage:
    return StoredMessage(msgid, 2**40 + 1, 1001, 2**50 + 2, 1002, 2**32 - 1, kind, content,
                         1795700000123, logid)


RECORD = SessionRecord(uid=2**50 + 2, appcode=1002, node_id=2, session_id="s-42", since_ms=1)


class FakeLogic:
    """Records what the RPC listener asks of logic."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, StoredMessage]] = []
        self.kicked: list[tuple[int, int, str, int, str]] = []
        self.answer = True
        self.error: Exception | None = None

    def deliver_local(self, session_id: str, msg: StoredMessage) -> bool:
        if self.error is not None:
            raise self.error
        self.delivered.append((session_id, msg))
        return self.answer

    def kick_local(self, uid: int, appcode: int, session_id: str, reason_code: int,
                   reason: str) -> bool:
        if self.error is not None:
            raise self.error
        self.kicked.append((uid, appcode, session_id, reason_code, reason))
        return self.answer


class Cluster:
    """Node 1's RpcPeers and node 2's listener on one MemoryReactorClock.

    Connections are completed by hand (``connect``), so a test decides when a
    connection attempt succeeds, fails or never answers.
    """

    def __init__(self, secret: str = SECRET, server_secret: str | None = None,
                 timeout: float = 3.0, max_content: int = 65000) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(T0)
        self.logic = FakeLogic()
        self.server = RpcServerFactory(
            self.logic, self.reactor, secret if server_secret is None else server_secret,
            max_content=max_content,
        )
        self.reactor.listenTCP(RPC_PORT, self.server)
        self.addresses: dict[int, tuple[str, int]] = {2: ("10.0.0.2", RPC_PORT)}
        self.looked_up: list[int] = []
        self.peers = RpcPeers(self.reactor, self.address_of, node_id=1, secret=secret,
                              timeout=timeout)
        self.completer = ConnectionCompleter(self.reactor)
        self.pumps: list[IOPump] = []

    async def address_of(self, node_id: int) -> tuple[str, int] | None:
        self.looked_up.append(node_id)
        return self.addresses.get(node_id)

    def attempts(self) -> list[tuple[str, int]]:
        """The connection attempts not completed yet."""
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def connect(self) -> IOPump:
        """Complete the pending connection attempt and run the exchange to its end."""
        pump = self.completer.succeedOnce()
        assert pump is not None, "no connection attempt"
        self.pumps.append(pump)
        pump.flush()
        return pump

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def deliver(self, record: SessionRecord, msg: StoredMessage) -> Deferred[bool]:
        """A push, and the end of the reactor turn (when the pushes of the turn go)."""
        d = self.peers.deliver(record, msg)
        self.reactor.advance(0)
        return d


class DeliverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.c = Cluster()

    def test_interface(self) -> None:
        verifyObject(IPeers, self.c.peers)

    def test_deliver(self) -> None:
        msg = message(content=BIG)
        d = self.c.deliver(RECORD, msg)
        self.assertNoResult(d)
        self.assertEqual(self.c.attempts(), [("10.0.0.2", RPC_PORT)])
        self.c.connect()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.c.logic.delivered, [("s-42", msg)])
        self.assertEqual(self.c.looked_up, [2])

    def test_not_there(self) -> None:
        self.c.logic.answer = False
        d = self.c.deliver(RECORD, message())
        self.c.connect()
        self.assertIs(self.successResultOf(d), False)

    def test_kick(self) -> None:
        d = self.c.peers.kick(RECORD, KickReason.LOGIN_ELSEWHERE, "logged in elsewhere")
        self.c.connect()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.c.logic.kicked, [
            (RECORD.uid, RECORD.appcode, "s-42", int(KickReason.LOGIN_ELSEWHERE),
             "logged in elsewhere"),
        ])

    def test_one_connection_per_node(self) -> None:
        """Calls made while connecting wait for that one attempt; later calls reuse it."""
        first = self.c.deliver(RECORD, message(1))
        second = self.c.peers.kick(RECORD, 1, "x")
        self.assertEqual(len(self.c.attempts()), 1)
        self.c.connect()
        self.assertIs(self.successResultOf(first), True)
        self.assertIs(self.successResultOf(second), True)
        third = self.c.deliver(RECORD, message(3))
        self.assertEqual(self.c.attempts(), [])
        self.c.flush()
        self.assertIs(self.successResultOf(third), True)
        self.assertEqual([m.msgid for _, m in self.c.logic.delivered], [1, 3])
        self.assertEqual(len(self.c.server.connections), 1)

    def test_lost_connection_reconnects(self) -> None:
        d = self.c.deliver(RECORD, message(1))
        pump = self.c.connect()
        self.successResultOf(d)
        pump.serverIO.loseConnection()
        self.c.flush()
        self.assertEqual(self.c.server.connections, set())
        d = self.c.deliver(RECORD, message(2))
        self.assertEqual(len(self.c.attempts()), 1)
        self.c.connect()
        self.assertIs(self.successResultOf(d), True)

    def test_lost_during_call(self) -> None:
        d = self.c.deliver(RECORD, message(1))
        pump = self.c.connect()
        self.successResultOf(d)
        d = self.c.deliver(RECORD, message(2))
        pump.serverIO.abortConnection()  # the answer never comes back
        self.c.flush()
        self.failureResultOf(d, PeerUnavailable)

    def test_address_changed(self) -> None:
        """A node that came back at another address is reconnected to."""
        other = RpcServerFactory(self.c.logic, self.c.reactor, SECRET)
        self.c.reactor.listenTCP(7200, other)
        d = self.c.deliver(RECORD, message(1))
        self.c.connect()
        self.successResultOf(d)
        self.c.addresses[2] = ("10.0.0.2", 7200)
        d = self.c.deliver(RECORD, message(2))
        self.assertEqual(self.c.attempts(), [("10.0.0.2", 7200)])
        self.c.flush()  # the old connection closes
        self.assertEqual(self.c.server.connections, set())
        # Both listeners are on one MemoryReactor: complete toward the new port.
        self.c.reactor.tcpServers.pop(0)
        self.c.connect()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(len(other.connections), 1)

    def test_unknown_node(self) -> None:
        d = self.c.deliver(SessionRecord(1, 1001, 9, "s", 0), message())
        f = self.failureResultOf(d, PeerUnavailable)
        self.assertIn("node 9", f.getErrorMessage())
        self.assertEqual(self.c.attempts(), [])

    def test_address_lookup_fails(self) -> None:
        async def broken(node_id: int) -> tuple[str, int] | None:
            raise PeerUnavailable("redis down")

        peers = RpcPeers(self.c.reactor, broken, node_id=1, secret=SECRET, timeout=3)
        d = peers.deliver(RECORD, message())
        self.c.reactor.advance(0)
        self.failureResultOf(d, PeerUnavailable)

    def test_refused(self) -> None:
        d = self.c.deliver(RECORD, message())
        self.c.completer.failOnce(Failure(ConnectionRefusedError()))
        self.failureResultOf(d, PeerUnavailable)
        # Not cached: the next call tries again.
        self.c.deliver(RECORD, message())
        self.assertEqual(len(self.c.attempts()), 1)

    def test_timeout_while_connecting(self) -> None:
        first = self.c.deliver(RECORD, message(1))
        self.c.reactor.advance(1)
        second = self.c.deliver(RECORD, message(2))
        self.c.reactor.advance(2)
        f = self.failureResultOf(first, PeerUnavailable)
        self.assertIn("3 s", f.getErrorMessage())
        self.failureResultOf(second, PeerUnavailable)  # the shared attempt gave up too
        self.assertEqual(self.c.reactor.getDelayedCalls(), [])
        # The next call starts a new attempt.
        self.c.reactor.tcpClients.clear()
        self.c.reactor.connectors.clear()
        third = self.c.deliver(RECORD, message(3))
        self.c.connect()
        self.assertIs(self.successResultOf(third), True)

    def test_timeout_of_a_call(self) -> None:
        """A call with no answer in time fails, and its connection is dropped."""
        d = self.c.deliver(RECORD, message(1))
        self.c.connect()
        self.successResultOf(d)
        d = self.c.deliver(RECORD, message(2))  # the pump is not run: no answer
        self.c.reactor.advance(2.9)
        self.assertNoResult(d)
        self.c.reactor.advance(0.1)
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(self.c.reactor.getDelayedCalls(), [])
        self.c.flush()
        self.assertEqual(self.c.server.connections, set())
        d = self.c.deliver(RECORD, message(3))
        self.assertEqual(len(self.c.attempts()), 1)
        self.c.connect()
        self.assertIs(self.successResultOf(d), True)
        peer = str(RECORD.node_id)
        self.assertEqual(self.c.peers.calls, {(peer, "ok"): 2, (peer, "timeout"): 1})
        self.assertEqual(sum(self.c.peers.latency.counts[peer]), 2)  # the answered ones

    def test_timeout_on_a_slow_peer_keeps_the_connection(self) -> None:
        """A call that times out while the peer still answers other calls
        fails alone: the connection stays (an overloaded peer is not dead)."""
        d = self.c.deliver(RECORD, message(1))
        pump = self.c.connect()
        self.successResultOf(d)
        lost = self.c.deliver(RECORD, message(2))
        pump.clientIO.getOutBuffer()  # its request never reaches the peer
        self.c.reactor.advance(2.0)
        answered = self.c.deliver(RECORD, message(3))
        pump.flush(advanceClock=False)
        self.assertIs(self.successResultOf(answered), True)
        self.c.reactor.advance(1.0)  # 2 waited 3 s; the peer answered 1 s ago
        self.failureResultOf(lost, PeerUnavailable)
        self.assertEqual(len(self.c.server.connections), 1)
        self.assertEqual(self.c.attempts(), [])
        # Calls to the slow peer fail at once for BACKOFF_MIN_S, then go again.
        f = self.failureResultOf(self.c.deliver(RECORD, message(4)), PeerUnavailable)
        self.assertIn("backing off", f.getErrorMessage())
        self.c.reactor.advance(BACKOFF_MIN_S)
        later = self.c.deliver(RECORD, message(4))
        pump.flush(advanceClock=False)
        self.assertIs(self.successResultOf(later), True)

    def test_content_over_limit(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        c = Cluster(max_content=100)
        d = c.deliver(RECORD, message(5, content=b"x" * 101, logid="trace-5"))
        c.connect()
        self.failureResultOf(d, PeerUnavailable)
        # Both sides' warnings name the message.
        warned = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warned), 2)
        for event in warned:
            self.assertEqual((event["msgid"], event["logid"]), (5, "trace-5"))
        d = c.deliver(RECORD, message(content=b"x" * 100))
        c.flush()
        self.assertIs(self.successResultOf(d), True)  # the connection still serves

    def test_content_over_amp_value(self) -> None:
        d = self.c.deliver(RECORD, message(content=b"x" * 65536))
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(self.c.attempts(), [])

    def test_server_exception(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.c.logic.error = RuntimeError("boom")
        d = self.c.deliver(RECORD, message(7, logid="trace-x"))
        self.c.connect()
        f = self.failureResultOf(d, PeerUnavailable)
        self.assertIsInstance(f.value.__cause__, InternalError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [failure] = [e for e in events if "log_failure" in e]
        self.assertEqual((failure["msgid"], failure["logid"], failure["peer_node"]), (7, "trace-x", 1))
        # The same connection serves the next call.
        self.c.logic.error = None
        d = self.c.deliver(RECORD, message(8))
        self.c.flush()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.c.attempts(), [])
        d = self.c.peers.kick(RECORD, 1, "x")
        self.c.logic.error = ValueError("kick boom")
        self.c.flush()
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_close(self) -> None:
        d = self.c.deliver(RECORD, message())
        self.c.connect()
        self.successResultOf(d)
        closed = self.c.peers.close()
        self.assertNoResult(closed)
        self.c.flush()
        self.successResultOf(closed)
        self.assertEqual(self.c.server.connections, set())
        self.failureResultOf(self.c.deliver(RECORD, message()), PeerUnavailable)

    def test_close_while_connecting(self) -> None:
        d = self.c.deliver(RECORD, message())
        self.successResultOf(self.c.peers.close())
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(self.c.reactor.getDelayedCalls(), [])

    def test_registry_addresses(self) -> None:
        class Registry:
            def node(self, node_id: int) -> Deferred[NodeInfo | None]:
                if node_id != 2:
                    return succeed(None)
                return succeed(NodeInfo(2, "10.0.0.2", 7000, "10.0.1.2", 7100, 0, 0, 0))

        address_of = registry_addresses(Registry())  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(address_of(2))),  # type: ignore[arg-type]
                         ("10.0.1.2", 7100))
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(address_of(3))))  # type: ignore[arg-type]


class WithLogicTests(SynchronousTestCase):
    def test_push_reaches_the_session(self) -> None:
        """Through the real LogicService: the session on node 2 gets the push."""
        stack = Stack(node_id=2)
        conn = stack.login(2, 1001)
        record = stack.logic.local[(2, 1001)].record
        reactor = MemoryReactorClock()
        reactor.listenTCP(RPC_PORT, RpcServerFactory(stack.logic, stack.clock, SECRET))
        reactor.advance(stack.clock.seconds())

        async def address_of(node_id: int) -> tuple[str, int]:
            return ("10.0.0.2", RPC_PORT)

        peers = RpcPeers(reactor, address_of, node_id=1, secret=SECRET, timeout=3)
        msg = StoredMessage(123, 1, 1002, 2, 1001, 5, Kind.C2C, b"\xffbytes", 1, "trace-9")
        d = peers.deliver(record, msg)
        reactor.advance(0)  # the end of the turn: the pushes of the turn go
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        self.assertIs(self.successResultOf(d), True)
        [push] = conn.received()
        self.assertEqual((push.cmd, push.msgtype), (Cmd.C2C, 5))
        got = pb.Message()
        got.ParseFromString(push.body)
        self.assertEqual(from_pb(got), msg)
        # Another session id (an older login): not there.
        d = peers.deliver(SessionRecord(2, 1001, 2, "old", 0), msg)
        pump.flush()
        self.assertIs(self.successResultOf(d), False)
        d = peers.kick(record, KickReason.LOGIN_ELSEWHERE, "logged in elsewhere")
        pump.flush()
        self.assertIs(self.successResultOf(d), True)
        self.assertNotIn((2, 1001), stack.logic.local)


class AuthTests(SynchronousTestCase):
    """The listener's side of Auth, driven by a bare AMP client."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        self.logic = FakeLogic()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.connect(SECRET)

    def connect(self, secret: str) -> None:
        self.factory = RpcServerFactory(self.logic, self.clock, secret)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), amp.AMP, clock=self.clock,
        )

    def call(self, command: type[amp.Command], **args: Any) -> Any:
        """The answer to one command: a dict, or a Failure."""
        answers: list[Any] = []
        # Taken before the answer arrives: AMP logs errors nobody waited for.
        self.client.callRemote(command, **args).addBoth(answers.append)
        self.pump.flush()
        [answer] = answers
        return answer

    def refused(self, answer: Any, error: type[Exception]) -> Failure:
        self.assertIsInstance(answer, Failure)
        answer.trap(error)
        return answer

    def deliver(self) -> Any:
        meta, content = message_to_wire(message())
        return self.call(Deliver, session_id="s", message=meta, content=content)

    def auth(self, ts: float | None = None, mac: bytes | None = None, node: int = 1) -> Any:
        ts = int(self.clock.seconds() if ts is None else ts)
        return self.call(Auth, node_id=node, ts=ts, mac=auth_mac(SECRET, node, ts) if mac is None else mac)

    def assertClosed(self) -> None:
        self.assertTrue(self.pump.serverIO.disconnected)
        self.assertEqual(self.factory.connections, set())

    def assertNothingLeaked(self) -> None:
        for event in self.events:
            text = repr(event)
            self.assertNotIn(SECRET, text)
            self.assertNotIn("mac=", text)

    def test_command_before_auth(self) -> None:
        self.refused(self.deliver(), Unauthorized)
        self.assertClosed()
        self.assertEqual(self.logic.delivered, [])

    def test_kick_before_auth(self) -> None:
        self.refused(self.call(Kick, uid=1, appcode=1, session_id="s", reason_code=1,
                               reason="x"), Unauthorized)
        self.assertClosed()
        self.assertEqual(self.logic.kicked, [])

    def test_wrong_mac(self) -> None:
        f = self.refused(self.auth(mac=auth_mac("another-secret-entirely", 1, int(T0))),
                         Unauthorized)
        self.assertIn("wrong mac", f.getErrorMessage())
        self.assertClosed()
        self.assertNothingLeaked()

    def test_mac_for_another_node(self) -> None:
        self.refused(self.auth(mac=auth_mac(SECRET, 2, int(T0)), node=1), Unauthorized)

    def test_stale_ts(self) -> None:
        f = self.refused(self.auth(ts=T0 - 61), Unauthorized)
        self.assertIn("timestamp", f.getErrorMessage())
        self.assertClosed()

    def test_future_ts(self) -> None:
        self.refused(self.auth(ts=T0 + 61), Unauthorized)

    def test_right_auth(self) -> None:
        self.assertEqual(self.auth(ts=T0 - 59), {})
        self.assertIs(self.deliver()["pushed"], True)
        self.assertEqual(len(self.logic.delivered), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the Auth timer is gone
        self.assertNothingLeaked()

    def test_no_secret_no_auth(self) -> None:
        timers = len(self.clock.getDelayedCalls())
        self.connect("")
        self.assertIs(self.deliver()["pushed"], True)
        self.assertEqual(len(self.clock.getDelayedCalls()), timers)  # no Auth timer

    def test_auth_timeout(self) -> None:
        self.clock.advance(AUTH_TIMEOUT_S - 0.1)
        self.assertFalse(self.pump.serverIO.disconnecting)
        self.clock.advance(0.2)
        self.pump.flush()
        self.assertClosed()

    def test_bad_input_keeps_serving(self) -> None:
        self.assertEqual(self.auth(), {})
        f = self.refused(self.call(Deliver, session_id="s", message=b"\xff\xff\xff", content=b""),
                         BadMessage)
        self.assertIn("does not parse", f.getErrorMessage())
        self.assertIs(self.deliver()["pushed"], True)
        self.assertFalse(self.pump.serverIO.disconnecting)

    def test_peers_with_wrong_secret(self) -> None:
        c = Cluster(secret="not-the-cluster-secret", server_secret=SECRET)
        d = c.deliver(RECORD, message())
        c.connect()
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(c.logic.delivered, [])
        self.assertEqual(c.server.connections, set())
        self.assertNothingLeaked()
        self.assertTrue(any(e["log_level"].name == "error" and e.get("peer_node") == 2
                            for e in self.events))

    def test_peers_without_secret(self) -> None:
        c = Cluster(secret="", server_secret=SECRET)
        d = c.deliver(RECORD, message())
        c.connect()
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(c.logic.delivered, [])

    def test_peers_both_without_secret(self) -> None:
        c = Cluster(secret="")
        d = c.deliver(RECORD, message())
        c.connect()
        self.assertIs(self.successResultOf(d), True)


class RealSocketTests(TestCase):
    """One listener on loopback with the real reactor."""

    timeout = 20  # the client's own timeout is longer: a failure must not be a timeout

    async def _listen(self) -> tuple[Any, RpcServerFactory, FakeLogic]:
        logic = FakeLogic()
        factory = RpcServerFactory(logic, global_reactor, SECRET)
        port = await serverFromString(global_reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        return port, factory, logic

    def _peers(self, port_number: int) -> RpcPeers:
        async def address_of(node_id: int) -> tuple[str, int]:
            return ("127.0.0.1", port_number)

        peers = RpcPeers(global_reactor, address_of, node_id=1, secret=SECRET, timeout=60)
        self.addCleanup(peers.close)
        return peers

    def test_deliver_then_server_gone(self) -> Deferred[None]:
        async def run() -> None:
            port, factory, logic = await self._listen()
            peers = self._peers(port.getHost().port)
            msg = message(content=BIG)
            self.assertIs(await peers.deliver(RECORD, msg), True)
            self.assertIs(await peers.kick(RECORD, 1, "x"), True)
            self.assertEqual(logic.delivered, [("s-42", msg)])
            await port.stopListening()
            await factory.disconnect_all()
            # The cached connection is gone (or goes as this call is sent), and
            # reconnecting is refused: both fail at once, not by the timeout.
            for _ in range(2):
                with self.assertRaises(PeerUnavailable):
                    await peers.deliver(RECORD, message())
            self.assertEqual(len(logic.delivered), 1)

        return Deferred.fromCoroutine(run())

    def test_refused(self) -> Deferred[None]:
        async def run() -> None:
            port, _, _ = await self._listen()
            number = port.getHost().port
            await port.stopListening()
            peers = self._peers(number)
            with self.assertRaises(PeerUnavailable):
                await peers.deliver(RECORD, message())

        return Deferred.fromCoroutine(run())

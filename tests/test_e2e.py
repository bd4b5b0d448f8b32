"""End to end: a real node on tcp:0, real sockets, the client library, treq.

These use the real reactor and wait only on Deferreds that the events
themselves fire (no sleeps, no polling).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from daojia_msg.config import ConfigError, ListenConfig, default_config
from daojia_msg.node import Node
from daojia_msg.protocol.codes import Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.nodes import NodeTestCase

R: Any = reactor


class ChatTests(NodeTestCase):
    async def asyncSetUp(self) -> None:
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)

    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def test_two_users_chat(self) -> None:
        alice, _ = await self.client(1)
        bob, bob_inbox = await self.client(2)
        result = await alice.c2c(2, 1001, 7, b"hello bob", logid="e2e-1")
        self.assertEqual((result.code, result.logid), (Code.OK, "e2e-1"))
        [msg] = await bob_inbox.wait(1)
        self.assertEqual((msg.msgid, msg.from_uid, msg.content, msg.kind),
                         (result.msgid, 1, b"hello bob", pb.C2C))
        # The client library ACKed it; once an explicit ACK is answered the
        # message is no longer pending.
        await bob.ack([msg.msgid])
        page = await bob.pull()
        self.assertEqual(list(page.messages), [])
        history = await alice.history()
        self.assertEqual([m.msgid for m in history.messages], [result.msgid])

    async def test_http_push_reaches_online_user(self) -> None:
        _, inbox = await self.client(2)
        code, answer = await self.http("POST", "/v1/push", {
            "to_uid": "2", "to_appcode": 1001, "msgtype": 5, "content": "order 42 assigned"})
        self.assertEqual(code, 200)
        self.assertTrue(answer["online"])
        self.assertIsInstance(answer["msgid"], str)
        [msg] = await inbox.wait(1)
        self.assertEqual((str(msg.msgid), msg.kind, msg.content),
                         (answer["msgid"], pb.S2C, b"order 42 assigned"))

    async def test_malformed_http_push_changes_nothing(self) -> None:
        code, answer = await self.http("POST", "/v1/push", {"to_uid": 2, "to_appcode": 1001})
        self.assertEqual(code, 400)
        self.assertIn("error", answer)
        code, _ = await self.http("POST", "/v1/push", {
            "to_uid": 2, "to_appcode": 1001, "msgtype": 5, "content": "x"}, key="wrong")
        self.assertEqual(code, 401)
        self.assertEqual(await self.node.store.count_pending(2, 1001), 0)
        code, stats = await self.http("GET", "/v1/stats")
        self.assertEqual((code, stats["totals"]["accepted"]), (200, 0))

    async def test_second_login_kicks_first(self) -> None:
        _, first = await self.client(5)
        await self.client(5)
        self.assertEqual(await first.kicked.addTimeout(10, R), KickReason.LOGIN_ELSEWHERE)

    async def test_c2s_to_topic(self) -> None:
        alice, _ = await self.client(1)
        got: Deferred[tuple[str, bytes, str]] = Deferred()
        self.node.bus.subscribe("gps", lambda *e: got.callback(e))
        result = await alice.c2s(1, b"31.2,121.4", logid="gps-e2e")
        topic, payload, logid = await got
        self.assertEqual((topic, logid, result.logid), ("gps", "gps-e2e", "gps-e2e"))


    async def test_both_ends_turn_nagle_off(self) -> None:
        """Small frames go out at once on both ends (TCP_NODELAY): with Nagle a
        second answer waits for the peer's delayed ACK, up to 40 ms."""
        client, _ = await self.client(1)
        proto = await client.when_ready()
        [server] = self.node.gate.connections
        for transport in (proto.transport, server.transport):
            sock = transport.getHandle()
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)


class StorePressureTests(NodeTestCase):
    async def test_a_lagging_store_pauses_client_reads(self) -> None:
        """The message store's write queue is wired to the gate: while it lags
        the node reads no client socket (as when the C2S buses lag)."""
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)
        client, _ = await self.client(1)
        await client.when_ready()
        [server] = node.gate.connections
        committer = node.store.committer  # type: ignore[attr-defined]
        committer.on_pressure(True)
        self.assertTrue(node.gate.pressure)
        self.assertTrue(server._paused)
        node.gate.set_pressure(False)  # the buses catching up does not resume it
        self.assertTrue(node.gate.pressure)
        committer.on_pressure(False)
        self.assertFalse(node.gate.pressure)
        self.assertFalse(server._paused)


class ListenFailureTests(NodeTestCase):
    async def test_a_port_in_use_stops_start_up_naming_the_key(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            config = default_config().replace(
                data_dir=os.path.abspath(self.mktemp()),
                listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                    http=f"tcp:{port}:interface=127.0.0.1"),
            )
            node = Node(config, R)
            node.startService()
            error = await self.assertFailure(node.ready, ConfigError)
            self.assertEqual(error.path, ("listen", "http"))
            self.assertIn(f"cannot listen on 'tcp:{port}:interface=127.0.0.1'", str(error))
            self.assertTrue(str(error).startswith("listen.http: "))
            await node.stopService()


class DataDirectoryTests(NodeTestCase):
    async def test_a_relative_data_dir_is_logged_as_an_absolute_path(self) -> None:
        """A node started from another folder says where its data went."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        relative = os.path.relpath(os.path.abspath(self.mktemp()))
        node = await self.start_node(relative)
        self.addCleanup(self.stop_node, node)
        lines = [formatEvent(e) for e in events if "data directory" in (e.get("log_format") or "")]
        self.assertEqual(lines, [f"data directory {os.path.abspath(relative)} (node.data_dir)"])
        self.assertTrue(os.path.isfile(os.path.join(relative, "messages.db")))


class RestartTests(NodeTestCase):
    async def test_pending_survive_restart(self) -> None:
        node = await self.start_node()
        alice, _ = await self.client(1)
        sent = [(await alice.c2c(3, 1001, 7, b"m%d" % i)).msgid for i in range(5)]
        await alice.stopService()
        await self.stop_node(node)

        node = await self.start_node(self.data_dir)
        self.addCleanup(self.stop_node, node)
        # The new node never reuses an id, even on the same node id.
        self.assertGreater(node.ids.next_id(), max(sent))
        _, inbox = await self.client(3)  # logs in and drains with PULL
        messages = await inbox.wait(5)
        self.assertEqual([m.msgid for m in messages], sent)


class ManholeNodeTests(NodeTestCase):
    async def test_manhole_served_and_closed_at_stop(self) -> None:
        from twisted.internet.endpoints import connectProtocol
        from twisted.internet.protocol import Protocol

        from daojia_msg.config import AdminConfig

        data_dir = os.path.abspath(self.mktemp())
        config = default_config().replace(
            data_dir=data_dir,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1", http="tcp:0:interface=127.0.0.1",
                                manhole="tcp:0:interface=127.0.0.1"),
            admin=AdminConfig(manhole_password="an admin password"),
        )
        node = Node(config, R)
        node.startService()
        await node.ready

        class Telnet(Protocol):
            def __init__(self) -> None:
                self.data = b""
                self.prompt: Deferred[None] = Deferred()
                self.closed: Deferred[None] = Deferred()

            def dataReceived(self, data: bytes) -> None:
                self.data += data
                if b"Username" in self.data and not self.prompt.called:
                    self.prompt.callback(None)

            def connectionLost(self, reason: object = None) -> None:
                self.closed.callback(None)

        client = Telnet()
        port = node.ports["manhole"].getHost().port  # type: ignore[attr-defined]
        await connectProtocol(TCP4ClientEndpoint(R, "127.0.0.1", port), client)
        await client.prompt.addTimeout(10, R)
        await node.stopService()
        await client.closed.addTimeout(10, R)

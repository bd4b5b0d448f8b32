"""The gate over WebSocket (docs/protocol.md §7.3), on real loopback sockets:
the handshake's checks, one frame per binary message, the close codes, and one
session across the TCP and WebSocket transports."""

from __future__ import annotations

import os
import struct

from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import Config, ConfigError, Limits
from daojia_msg.gate.websocket import FrameTransport, frame_error, origin_allowed
from daojia_msg.protocol.codec import encode
from daojia_msg.protocol.codes import MAGIC, RESPONSE_BIT, Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.tap import Options, build_config
from tests.gate.wshelpers import ALLOWED, TIMEOUT, WSNodeTestCase, drop_ws, presented
from tests.nodes import R
from tests.tlscerts import CA
from tests.tlsnodes import ssl_description


class FramingTests(SynchronousTestCase):
    def test_one_whole_frame_passes(self) -> None:
        self.assertIsNone(frame_error(encode(Cmd.KEEPALIVE, 1, 0, 2, 3, b"body")))

    def test_short_mismatched_or_bad_magic(self) -> None:
        frame = encode(Cmd.KEEPALIVE, 1, 0, 2, 3, b"body")
        self.assertEqual(frame_error(frame[:31]), "shorter than a header")
        self.assertEqual(frame_error(frame[:-1]), "length is not 32 + bodylength")
        self.assertEqual(frame_error(frame + b"x"), "length is not 32 + bodylength")
        self.assertEqual(frame_error(struct.pack("!H", MAGIC ^ 1) + frame[2:]), "bad magic")


class FakeSocket:
    """What a FrameTransport needs of its WebSocket: the messages and the close."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.messages: list[tuple[bytes, bool]] = []
        self.closes: list[int] = []

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        self.messages.append((payload, isBinary))

    def sendClose(self, code: int) -> None:
        self.closes.append(code)


class FrameTransportTests(SynchronousTestCase):
    def test_each_write_is_one_binary_message(self) -> None:
        ws = FakeSocket()
        transport = FrameTransport(ws)  # type: ignore[arg-type]
        transport.write(b"one")
        transport.writeSequence([b"two", b"three"])
        self.assertEqual(ws.messages, [(b"one", True), (b"two", True), (b"three", True)])

    def test_back_pressure_and_close_reach_the_socket(self) -> None:
        ws = FakeSocket()
        transport = FrameTransport(ws)  # type: ignore[arg-type]
        producer = object()
        transport.registerProducer(producer, True)  # type: ignore[arg-type]
        self.assertIs(ws.transport.producer, producer)
        transport.pauseProducing()
        self.assertEqual(ws.transport.producerState, "paused")
        transport.resumeProducing()
        self.assertEqual(ws.transport.producerState, "producing")
        self.assertEqual(transport.getPeer(), ws.transport.getPeer())
        transport.loseConnection()
        self.assertIsNone(ws.transport.producer)
        self.assertEqual(ws.closes, [1000])
        transport.abortConnection()
        self.assertTrue(ws.transport.disconnecting)


class OriginTests(SynchronousTestCase):
    def test_no_origin_is_a_native_client(self) -> None:
        self.assertTrue(origin_allowed("", "http://127.0.0.1:7070", ()))

    def test_own_and_allowed_origins(self) -> None:
        own = "http://127.0.0.1:7070"
        self.assertTrue(origin_allowed("http://127.0.0.1:7070", own, ()))
        self.assertTrue(origin_allowed("HTTPS://Console.example/", own, ("https://console.example",)))
        self.assertFalse(origin_allowed("https://127.0.0.1:7070", own, ()))
        self.assertFalse(origin_allowed("http://evil.example", own, ("https://console.example",)))


class HandshakeTests(WSNodeTestCase):
    async def test_the_node_logs_where_ws_listens(self) -> None:
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.start_node()
        lines = [formatEvent(e) for e in events]
        self.assertIn(f"ws listening on {self.host()}", lines)
        self.assertIn(f"console page at http://{self.host()}/console/", lines)
        self.assertIn(f"ops page at http://127.0.0.1:{self.port('http')}/ops/", lines)

    async def test_missing_subprotocol_is_400(self) -> None:
        await self.start_node()
        self.assertEqual(await self.handshake_status({}), 400)
        self.assertEqual(
            await self.handshake_status({"Sec-WebSocket-Protocol": "chat"}), 400)

    async def test_foreign_origin_is_403(self) -> None:
        await self.start_node()
        status = await self.handshake_status({"Sec-WebSocket-Protocol": "msgplatform.v1",
                                              "Origin": "http://evil.example"})
        self.assertEqual(status, 403)

    async def test_own_allowed_and_no_origin_are_accepted(self) -> None:
        await self.start_node()
        for origin in (None, f"http://{self.host()}", ALLOWED):
            client = await self.ws(origin=origin)
            self.assertEqual(client.websocket_protocol_in_use, "msgplatform.v1")

    async def test_other_paths_are_refused(self) -> None:
        await self.start_node()
        status = await self.handshake_status({"Sec-WebSocket-Protocol": "msgplatform.v1"},
                                             path="/console/")
        self.assertEqual(status, 404)


class FrameTests(WSNodeTestCase):
    async def test_login_and_c2c_over_websocket(self) -> None:
        await self.start_node()
        alice, bob = await self.ws(), await self.ws()
        self.assertEqual((await alice.login(1)).code, Code.OK)
        self.assertEqual((await bob.login(2)).code, Code.OK)
        pushed = bob.wait_for(Cmd.C2C)
        body = pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"hi", client_msg_id="m1")
        answer = await alice.request(Cmd.C2C, 1001, 1, body.SerializeToString(), msgtype=10)
        self.assertEqual(pb.Result.FromString(answer.body).code, Code.OK)
        message = pb.Message.FromString((await pushed).body)
        self.assertEqual((message.from_uid, message.content), (1, b"hi"))

    async def test_frames_log_nothing(self) -> None:
        """autobahn's per-frame and per-connection debug events stay in
        autobahn: none reaches the node's log (they once filled it, and cost a
        quarter of the reactor's time)."""
        await self.start_node()
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = await self.ws()
        self.assertEqual((await client.login(1)).code, Code.OK)
        await client.request(Cmd.KEEPALIVE, 1001, 1)
        await drop_ws(client)
        debug = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.debug]
        self.assertEqual(debug, [])
        self.assertNotEqual(events, [])  # the observer saw the node's own lines

    async def test_tcp_and_websocket_clients_chat_both_ways(self) -> None:
        await self.start_node()
        tcp, tcp_inbox = await self.client(1)
        ws = await self.ws()
        await ws.login(2)
        pushed = ws.wait_for(Cmd.C2C)
        await tcp.c2c(2, 1001, 10, b"to ws")
        self.assertEqual(pb.Message.FromString((await pushed).body).content, b"to ws")
        body = pb.C2CRequest(to_uid=1, to_appcode=1001, content=b"to tcp", client_msg_id="m2")
        await ws.request(Cmd.C2C, 1001, 2, body.SerializeToString(), msgtype=10)
        self.assertEqual([m.content for m in await tcp_inbox.wait(1)], [b"to tcp"])

    async def test_websocket_login_kicks_the_tcp_session(self) -> None:
        await self.start_node()
        _, tcp_inbox = await self.client(7)
        ws = await self.ws()
        self.assertEqual((await ws.login(7)).code, Code.OK)
        self.assertEqual(await tcp_inbox.kicked.addTimeout(TIMEOUT, R), KickReason.LOGIN_ELSEWHERE)

    async def test_tcp_login_kicks_the_websocket_session_then_close_1000(self) -> None:
        await self.start_node()
        ws = await self.ws()
        await ws.login(8)
        kicked = ws.wait_for(Cmd.KICKOUT)
        await self.client(8)
        kickout = pb.Kickout.FromString((await kicked).body)
        self.assertEqual(kickout.reason_code, KickReason.LOGIN_ELSEWHERE)
        self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1000)

    async def test_text_message_closes_1003(self) -> None:
        await self.start_node()
        ws = await self.ws()
        ws.sendMessage(b"hello", isBinary=False)
        self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1003)

    async def test_short_or_mismatched_binary_closes_1002_without_reply(self) -> None:
        await self.start_node()
        frame = encode(Cmd.KEEPALIVE, 1001, 0, 1, 1, b"")
        for payload in (frame[:20], frame + b"x", b"\x00\x00" + frame[2:]):
            ws = await self.ws()
            ws.sendMessage(payload, isBinary=True)
            self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1002)
            self.assertEqual(ws.frames, [])

    async def test_oversized_message_closes_1009(self) -> None:
        node = await self.start_node()
        ws = await self.ws()
        body = b"x" * (node.config.limits.max_body + 1)
        ws.sendMessage(encode(Cmd.KEEPALIVE, 1001, 0, 1, 1, body), isBinary=True)
        self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1009)

    async def test_keepalive_is_answered_and_logout_closes_1000(self) -> None:
        await self.start_node()
        ws = await self.ws()
        await ws.login(3)
        answer = await ws.request(Cmd.KEEPALIVE, 1001, 3)
        self.assertEqual(answer.cmd, Cmd.KEEPALIVE | RESPONSE_BIT)
        await ws.request(Cmd.LOGOUT, 1001, 3)
        self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1000)


class LimitTests(WSNodeTestCase):
    async def test_tcp_and_websocket_share_the_per_ip_cap(self) -> None:
        await self.start_node(limits=Limits(max_conn_per_ip=1))
        await self.client(9)
        ws = await self.ws()
        self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1000)
        self.assertEqual(self.node.gate.refused, 1)

    async def test_pings_do_not_extend_the_idle_timeout(self) -> None:
        await self.start_node(limits=Limits(login_timeout_s=1.0, heartbeat_s=1,
                                            idle_timeout_s=1.0))
        ws = await self.ws()
        await ws.login(4)
        logged_in = R.seconds()
        while not ws.closed.called and R.seconds() - logged_in < TIMEOUT:
            ws.sendPing()
            await deferLater(R, 0.1, lambda: None)
        self.assertEqual(await ws.closed, 1000)
        self.assertLess(R.seconds() - logged_in, 3.0)


class TLSTests(WSNodeTestCase):
    async def test_wss_verifies_and_new_handshakes_get_a_swapped_certificate(self) -> None:
        ca = CA(os.path.abspath(self.mktemp()))
        node = await self.start_node(ws=ssl_description(ca.issue("msgplatform node", stem="ws")))
        old = await self.ws(origin=f"https://{self.host()}", ca=ca.path)
        self.assertEqual((await old.login(5)).code, Code.OK)
        ca.issue("msgplatform node, renewed", stem="ws")  # over the same files
        self.assertEqual(node.reload_tls(), 1)  # what SIGHUP calls (tests.test_tls_twistd)
        new = await self.ws(origin=f"https://{self.host()}", ca=ca.path)
        self.assertEqual((presented(old), presented(new)),
                         ("msgplatform node", "msgplatform node, renewed"))
        self.assertEqual((await new.login(6)).code, Code.OK)
        pushed = new.wait_for(Cmd.C2C)
        body = pb.C2CRequest(to_uid=6, to_appcode=1001, content=b"old to new", client_msg_id="t")
        await old.request(Cmd.C2C, 1001, 5, body.SerializeToString(), msgtype=10)
        self.assertEqual(pb.Message.FromString((await pushed).body).content, b"old to new")

    async def test_the_console_over_https_names_wss(self) -> None:
        ca = CA(os.path.abspath(self.mktemp()))
        await self.start_node(ws=ssl_description(ca.issue("msgplatform node")))
        code, headers, _ = await self.edge("GET", "/console/", ca=ca.path)
        self.assertEqual(code, 200)
        self.assertIn(f"connect-src 'self' wss://{self.host()}/v1/ws;",
                      headers.getRawHeaders("content-security-policy")[0])

    async def test_a_client_close_over_tls_ends_the_connection(self) -> None:
        ca = CA(os.path.abspath(self.mktemp()))
        node = await self.start_node(ws=ssl_description(ca.issue("msgplatform node")))
        ws = await self.ws(ca=ca.path)
        await ws.login(6)
        ws.sendClose(1000)
        self.assertEqual(await ws.closed.addTimeout(TIMEOUT, R), 1000)
        await node.gate.when_empty().addTimeout(TIMEOUT, R)


class OptionTests(SynchronousTestCase):
    def _config(self, *argv: str) -> Config:
        options = Options()
        options.parseOptions(list(argv))
        return build_config(options)

    def test_ws_option_sets_listen_ws(self) -> None:
        self.assertEqual(self._config().listen.ws, "tcp:7070:interface=127.0.0.1")
        self.assertEqual(self._config("--ws", "tcp:9070").listen.ws, "tcp:9070")
        self.assertEqual(self._config("--ws", "").listen.ws, "")

    def test_a_bad_ws_option_is_named(self) -> None:
        error = self.assertRaises(ConfigError, self._config, "--ws", "bogus:1")
        self.assertTrue(str(error).startswith("--ws: "), str(error))

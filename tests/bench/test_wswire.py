"""The bench clients over WebSocket (:mod:`daojia_msg.bench.wswire`), on fake
transports: the upgrade a native client sends, one frame per binary message
each way, refusals as one exception, and the raw client against the real
WebSocket gate and logic (fake clock, iosim)."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import sys
from typing import Any

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import cli, runner
from daojia_msg.bench.wire import BenchClient, TLSRefused, result_code
from daojia_msg.bench.wswire import (
    BenchWebSocket,
    MessageTransport,
    WSRefused,
    client_factory,
)
from daojia_msg.gate.websocket import GateWebSocketFactory
from daojia_msg.protocol.codec import encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.bench import test_bench
from tests.gate.test_websocket import FakeSocket
from tests.helpers import Stack

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept(request: bytes) -> bytes:
    """The server's 101 answer to ``request`` (RFC 6455 §4.2.2)."""
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    digest = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + digest +
            b"\r\nSec-WebSocket-Protocol: msgplatform.v1\r\n\r\n")


def server_message(payload: bytes) -> bytes:
    """One unmasked binary message, as a server sends it (payloads < 64 KiB)."""
    if len(payload) < 126:
        return bytes([0x82, len(payload)]) + payload
    return bytes([0x82, 126]) + struct.pack("!H", len(payload)) + payload


def client_messages(data: bytes) -> list[tuple[int, bytes]]:
    """``(opcode, unmasked payload)`` of each message a client wrote."""
    out = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        assert data[0] & 0x80 and data[1] & 0x80, "one final, masked frame"
        at = 2
        if size == 126:
            size, at = struct.unpack_from("!H", data, 2)[0], 4
        mask, at = data[at:at + 4], at + 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[at:at + size]))
        out.append((opcode, payload))
        data = data[at + size:]
    return out


class TCPTransport(StringTransport):
    """A StringTransport that, like a TCP one, lets a producer be unregistered
    when none is (autobahn does so when it drops a connection)."""

    no_delay: bool | None = None

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class MessageTransportTests(SynchronousTestCase):
    def test_each_write_is_one_binary_message(self) -> None:
        ws = FakeSocket()
        transport = MessageTransport(ws)  # type: ignore[arg-type]
        transport.write(b"one")
        transport.writeSequence([b"two", b"three"])
        self.assertEqual(ws.messages, [(b"one", True), (b"two", True), (b"three", True)])

    def test_close_is_1000_abort_resets_the_tcp_connection(self) -> None:
        ws = FakeSocket()
        transport = MessageTransport(ws)  # type: ignore[arg-type]
        self.assertEqual(transport.getPeer(), ws.transport.getPeer())
        self.assertEqual(transport.getHost(), ws.transport.getHost())
        transport.loseConnection()
        self.assertEqual(ws.closes, [1000])
        self.assertFalse(ws.transport.disconnecting)
        transport.abortConnection()
        self.assertTrue(ws.transport.disconnecting)


class BenchWebSocketTests(SynchronousTestCase):
    """A real autobahn client on a StringTransport, the server's side by hand."""

    def setUp(self) -> None:
        self.pushes: list[Any] = []
        self.client = BenchClient(7, 1001, on_push=lambda c, f: self.pushes.append(f))
        self.ws = BenchWebSocket(self.client)
        self.ws.factory = client_factory(None, "127.0.0.1", 7070, timeout=0)
        self.opened: list[Any] = []
        self.ws.opened.addBoth(self.opened.append)
        self.transport = TCPTransport()
        self.ws.makeConnection(self.transport)

    def open(self) -> None:
        request = self.transport.value()
        self.transport.clear()
        self.ws.dataReceived(accept(request))

    def test_the_upgrade_of_a_native_client(self) -> None:
        self.assertTrue(self.transport.no_delay)  # from the start: Nagle off
        lines = self.transport.value().split(b"\r\n")
        self.assertEqual(lines[0], b"GET /v1/ws HTTP/1.1")
        self.assertIn(b"Host: 127.0.0.1:7070", lines)
        self.assertIn(b"Sec-WebSocket-Protocol: msgplatform.v1", lines)
        self.assertFalse([line for line in lines if line.lower().startswith(b"origin")])
        self.assertEqual(self.opened, [])
        self.assertFalse(self.client.connected)
        self.open()
        self.assertEqual(self.opened, [self.client])
        self.assertTrue(self.client.connected)
        self.assertIsInstance(self.client.transport, MessageTransport)

    def test_one_request_one_masked_binary_message(self) -> None:
        self.open()
        seq1 = self.client.request(Cmd.C2S, b"body", msgtype=1)
        seq2 = self.client.request(Cmd.KEEPALIVE)
        self.assertEqual(client_messages(self.transport.value()), [
            (2, encode(Cmd.C2S, 1001, 1, 7, seq1, b"body")),
            (2, encode(Cmd.KEEPALIVE, 1001, 0, 7, seq2, b"")),
        ])

    def test_each_message_in_is_fed_to_the_client(self) -> None:
        self.open()
        answers: list[Any] = []
        seq = self.client.request(Cmd.C2S, b"x", answers.append, 1)
        answer = encode(Cmd.C2S | RESPONSE_BIT, 1001, 1, 7, seq,
                        pb.Result(code=6).SerializeToString())
        push = encode(Cmd.C2C, 1001, 7, 7, 1, pb.Message(msgid=5, content=b"p" * 200)
                      .SerializeToString())
        self.ws.dataReceived(server_message(answer) + server_message(push))
        self.assertEqual([result_code(a) for a in answers], [6])
        [got] = self.pushes
        self.assertEqual(pb.Message.FromString(got.body).msgid, 5)

    def test_a_refused_upgrade_fails_the_connect(self) -> None:
        self.transport.clear()
        self.ws.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        self.ws.connectionLost(Failure(ConnectionLost()))
        [failure] = self.opened
        failure.trap(WSRefused)
        self.assertIn("403", str(failure.value))
        self.assertTrue(self.client.lost.called)
        self.assertFalse(self.client.connected)

    def test_a_connection_lost_before_the_upgrade_fails_the_connect(self) -> None:
        self.ws.connectionLost(Failure(ConnectionLost()))
        [failure] = self.opened
        failure.trap(WSRefused)
        self.assertTrue(self.client.lost.called)

    def test_a_tls_failure_says_why(self) -> None:
        """wss: the TLS handshake's failure is TLSRefused with OpenSSL's reason,
        and its completion reaches the client."""
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.ws.connectionLost(Failure(error))
        [failure] = self.opened
        failure.trap(TLSRefused)
        self.assertEqual(str(failure.value), "certificate verify failed")
        other = BenchClient(8, 1001)
        BenchWebSocket(other).handshakeCompleted()
        self.assertTrue(other.handshake.called)

    def test_closed_after_open(self) -> None:
        self.open()
        self.ws.connectionLost(Failure(ConnectionLost()))
        self.assertFalse(self.client.connected)
        self.assertTrue(self.client.lost.called)
        self.assertEqual(self.opened, [self.client])


class AgainstWebSocketGateTests(test_bench.AgainstGateTests):
    """The raw client over WebSocket against the real gate and logic: the TCP
    path's tests, each connection through a :class:`GateWebSocketFactory`."""

    def connect(self, stack: Stack, uid: int) -> tuple[BenchClient, iosim.IOPump, list[Any]]:
        factory = GateWebSocketFactory(stack.factory)
        factory.setProtocolOptions(openHandshakeTimeout=0)  # no timer on the real reactor
        pushes: list[Any] = []
        client = BenchClient(uid, 1001, on_push=lambda c, f: pushes.append(f))
        ws = BenchWebSocket(client)
        ws.factory = client_factory(None, "127.0.0.1", 7070, timeout=0)
        peer = IPv4Address("TCP", "127.0.0.2", 40000 + uid)
        server = factory.buildProtocol(peer)
        pump = iosim.connect(server, iosim.FakeTransport(server, True, peerAddress=peer),
                             ws, iosim.FakeTransport(ws, False), greet=False, clock=stack.clock)
        pump.flush()
        self.assertEqual(self.successResultOf(ws.opened), client)
        self.assertEqual(len(stack.factory.connections), uid)  # the gate's own table
        d = client.login(stack.token(uid))
        pump.flush()
        self.assertEqual(self.successResultOf(d).code, 0)
        return client, pump, pushes


class OptionsTests(SynchronousTestCase):
    def specs(self, *argv: str) -> list[dict[str, Any]]:
        return runner.worker_specs(cli.build_parser().parse_args(list(argv)))

    def test_ws_target(self) -> None:
        [spec] = self.specs("c2c", "--transport", "ws", "--ws", "127.0.0.1:7071",
                            "--uid-base", "1")
        self.assertEqual((spec["transport"], spec["gate_host"], spec["gate_port"]),
                         ("ws", "127.0.0.1", 7071))
        [spec] = self.specs("c2c", "--ws", "127.0.0.1:7071", "--uid-base", "1")
        self.assertEqual((spec["transport"], spec["gate_port"]), ("tcp", 7000))

    def test_ws_is_loopback_and_not_for_push(self) -> None:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        parser = cli.build_parser()
        self.assertRaises(SystemExit, parser.parse_args, ["c2c", "--ws", "10.0.0.1:7070"])
        self.assertRaises(SystemExit, parser.parse_args, ["c2c", "--transport", "quic"])
        self.assertRaises(SystemExit, cli.main, ["push", "--transport", "ws"])
        self.assertIn("push has no gate clients", stderr.getvalue())

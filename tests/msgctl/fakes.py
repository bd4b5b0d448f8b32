"""msgctl's test harness: a fake reactor, a faked gate behind it, captured output."""

from __future__ import annotations

import io
import sys
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.msgctl import cli
from daojia_msg.protocol.codec import Frame
from daojia_msg.protocol.codes import Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import answer, one

NOW = 1_700_000_000


class FakeGate:
    """The server end of the CLI's TCP connection attempts on a MemoryReactor."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.proto: Any = None
        self.transport = StringTransport()

    def accept(self) -> None:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        self.proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def refuse(self) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(error.ConnectionRefusedError())
        )

    def request(self, cmd: int) -> Frame:
        frame = one(self.transport)
        assert frame.cmd == cmd, frame
        return frame

    def answer(self, cmd: int, body: Any = None) -> Frame:
        frame = self.request(cmd)
        answer(self.proto, frame, body)
        return frame

    def login(self, **fields: Any) -> str:
        frame = self.answer(Cmd.LOGIN, pb.LoginResponse(heartbeat_s=60, **fields))
        return pb.LoginRequest.FromString(frame.body).token

    def close(self) -> None:
        self.proto.connectionLost(Failure(error.ConnectionDone()))


class CliTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.gate = FakeGate(self.reactor)
        self.out = io.StringIO()
        self.err = io.StringIO()

    def run_cli(self, *argv: str, **kwargs: Any) -> Deferred[int]:
        args = cli.build_parser().parse_args(argv)
        return cli.run(self.reactor, args, self.out, self.err, **kwargs)

    def exit_code(self, d: Deferred[int]) -> int:
        return self.successResultOf(d)

    def bad_args(self, *argv: str) -> str:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            cli.build_parser().parse_args(argv)
        self.assertEqual(caught.exception.code, 2)
        return stderr.getvalue()

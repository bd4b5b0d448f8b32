"""The gate's connection state machine, on StringTransport and task.Clock."""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import Limits, default_config
from daojia_msg.core.errors import BusUnavailable, StoreUnavailable
from daojia_msg.protocol.codec import FrameDecoder, encode
from daojia_msg.protocol.codes import MAGIC, Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Conn, Stack


def decode_all(data: bytes) -> list:  # type: ignore[type-arg]
    decoder = FrameDecoder(1 << 20)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next()) is not None:
        frames.append(frame)
    return frames


def with_limits(**changes: object) -> Stack:
    config = default_config()
    limits = Limits(**{**{f: getattr(config.limits, f) for f in Limits.__dataclass_fields__},
                       **changes})
    return Stack(config.replace(limits=limits))


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()

    def test_login_ok(self) -> None:
        conn = self.stack.connect()
        response = conn.login(42, 1001)
        self.assertEqual(response.code, Code.OK)
        self.assertEqual(response.heartbeat_s, 60)
        self.assertEqual(response.offline_count, 0)
        self.assertEqual(len(response.session_id), 32)
        self.assertEqual(response.server_time_ms, int(self.stack.clock.seconds() * 1000))
        # The response echoes the request header, with the response bit.
        self.assertEqual(conn.last.cmd, Cmd.LOGIN | 0x80)
        self.assertEqual((conn.last.uid, conn.last.appcode, conn.last.sequenceid), (42, 1001, 1))
        self.assertIn((42, 1001), self.stack.logic.local)

    def test_forged_token_unauthorized_and_still_open(self) -> None:
        conn = self.stack.connect()
        token = self.stack.token(42)
        expires, mac = token.split(":")
        forged = f"{expires}:{'0' * 64}"
        self.assertEqual(conn.login(42, 1001, forged).code, Code.UNAUTHORIZED)
        self.assertFalse(conn.closing)
        # Not logged in: C2C is refused, KEEPALIVE still answered.
        self.assertEqual(conn.c2c(7).code, Code.NOT_LOGGED_IN)
        self.assertEqual(conn.request(Cmd.KEEPALIVE).code, Code.OK)
        # A token for another uid does not work either.
        self.assertEqual(conn.login(42, 1001, self.stack.token(43)).code, Code.UNAUTHORIZED)

    def test_expired_token(self) -> None:
        conn = self.stack.connect()
        token = self.stack.token(42, ttl=5)
        self.stack.clock.advance(5)
        response = conn.login(42, 1001, token)
        self.assertEqual(response.code, Code.UNAUTHORIZED)
        self.assertEqual(response.reason, "token expired")

    def test_unknown_appcode(self) -> None:
        conn = self.stack.connect()
        self.assertEqual(conn.login(42, 9999, "1:ab").code, Code.UNKNOWN_APPCODE)

    def test_bad_login_body(self) -> None:
        conn = self.stack.connect()
        conn.uid, conn.appcode = 42, 1001
        response = conn.request(Cmd.LOGIN, b"\xff\xff\xff", pb.LoginResponse)
        self.assertEqual(response.code, Code.BAD_REQUEST)
        self.assertFalse(conn.closing)

    def test_not_logged_in(self) -> None:
        conn = self.stack.connect()
        conn.uid, conn.appcode = 42, 1001
        for cmd in (Cmd.C2C, Cmd.C2S, Cmd.ACK, Cmd.PULL, Cmd.HISTORY, Cmd.LOGOUT):
            self.assertEqual(conn.request(cmd).code, Code.NOT_LOGGED_IN, cmd)

    def test_keepalive_before_login(self) -> None:
        conn = self.stack.connect()
        response = conn.request(Cmd.KEEPALIVE, b"ignored body")
        self.assertEqual(response.code, Code.OK)
        self.assertEqual(response.server_time_ms, int(self.stack.clock.seconds() * 1000))

    def test_uid_mismatch(self) -> None:
        conn = self.stack.login(42)
        self.assertEqual(conn.request(Cmd.KEEPALIVE, uid=43).code, Code.UID_MISMATCH)
        self.assertEqual(conn.request(Cmd.PULL, appcode=1002, response=pb.PullResponse).code,
                         Code.UID_MISMATCH)
        # LOGIN as another identity: UID_MISMATCH, the session is unchanged.
        other = pb.LoginRequest(token=self.stack.token(43))
        self.assertEqual(conn.request(Cmd.LOGIN, other, pb.LoginResponse, uid=43).code,
                         Code.UID_MISMATCH)
        self.assertEqual(self.stack.logic.local[(42, 1001)].conn, conn.proto)
        self.assertNotIn((43, 1001), self.stack.logic.local)

    def test_relogin_same_identity(self) -> None:
        conn = self.stack.login(42)
        session_id = self.stack.logic.local[(42, 1001)].record.session_id
        response = conn.login(42, 1001)
        self.assertEqual(response.code, Code.OK)
        self.assertEqual(response.session_id, session_id)
        self.assertFalse(conn.closing)
        self.assertEqual(conn.pushes, [])  # nobody was kicked
        # A bad token on the re-LOGIN is refused and changes nothing.
        self.assertEqual(conn.login(42, 1001, "1:00").code, Code.UNAUTHORIZED)
        self.assertIn((42, 1001), self.stack.logic.local)

    def test_second_login_kicks_the_first(self) -> None:
        first = self.stack.login(42)
        second = self.stack.login(42, host="10.0.0.2")
        frames = first.received()
        self.assertEqual(len(frames), 1)
        kick = frames[0]
        self.assertEqual((kick.cmd, kick.uid, kick.appcode, kick.msgtype), (Cmd.KICKOUT, 42, 1001, 0))
        self.assertNotEqual(kick.sequenceid, 0)
        body = pb.Kickout()
        body.ParseFromString(kick.body)
        self.assertEqual(body.reason_code, KickReason.LOGIN_ELSEWHERE)
        self.assertTrue(first.closing)
        self.assertIs(self.stack.logic.local[(42, 1001)].conn, second.proto)
        # The old connection's close does not erase the new session.
        first.proto.connectionLost(None)
        self.assertIs(self.stack.logic.local[(42, 1001)].conn, second.proto)
        self.assertIsNotNone(self.stack.sessions._by_uid[42][1001])

    def test_same_uid_other_appcode_is_not_kicked(self) -> None:
        a = self.stack.login(42, 1001)
        self.stack.login(42, 1002)
        self.assertEqual(a.received(), [])
        self.assertFalse(a.closing)

    def test_logout(self) -> None:
        conn = self.stack.login(42)
        response = conn.request(Cmd.LOGOUT, b"ignored")
        self.assertEqual(response.code, Code.OK)
        self.assertTrue(conn.closing)
        self.assertNotIn((42, 1001), self.stack.logic.local)
        self.assertEqual(self.stack.sessions._by_uid, {})


class TimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()

    def test_login_timeout_not_extended_by_keepalive(self) -> None:
        conn = self.stack.connect()
        self.stack.clock.advance(9)
        conn.request(Cmd.KEEPALIVE)
        self.stack.clock.advance(0.9)
        self.assertFalse(conn.closing)
        self.stack.clock.advance(0.1)
        self.assertTrue(conn.closing)

    def test_idle_timeout(self) -> None:
        conn = self.stack.login(42)
        self.stack.clock.advance(179)
        self.assertFalse(conn.closing)
        conn.request(Cmd.KEEPALIVE)
        self.stack.clock.advance(179)
        self.assertFalse(conn.closing)
        self.stack.clock.advance(1)
        self.assertTrue(conn.closing)
        self.assertNotIn((42, 1001), self.stack.logic.local)

    def test_close_grace_then_abort(self) -> None:
        conn = self.stack.connect()
        self.stack.clock.advance(10)
        self.assertTrue(conn.closing)
        self.assertFalse(conn.transport.disconnected)
        self.stack.clock.advance(5)
        self.assertTrue(conn.transport.disconnected)  # aborted after the grace
        conn.proto.connectionLost(None)
        self.assertEqual(self.stack.clock.getDelayedCalls(), [])


class FramingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()

    def test_byte_at_a_time(self) -> None:
        conn = self.stack.connect()
        conn.uid, conn.appcode = 42, 1001
        data = conn.frame(Cmd.LOGIN, pb.LoginRequest(token=self.stack.token(42)))
        data += conn.frame(Cmd.KEEPALIVE)
        for i in range(len(data)):
            conn.send_raw(data[i:i + 1])
        frames = conn.received()
        self.assertEqual([f.cmd for f in frames], [Cmd.LOGIN | 0x80, Cmd.KEEPALIVE | 0x80])
        self.assertEqual([f.sequenceid for f in frames], [1, 2])

    def test_many_frames_per_chunk(self) -> None:
        conn = self.stack.login(42)
        self.stack.login(43)
        data = b"".join(conn.frame(Cmd.C2C, pb.C2CRequest(to_uid=43, to_appcode=1001,
                                                          content=b"m%d" % i), msgtype=3)
                        for i in range(50))
        conn.send_raw(data)
        frames = conn.received()
        self.assertEqual(len(frames), 50)
        results = []
        for f in frames:
            r = pb.Result()
            r.ParseFromString(f.body)
            results.append(r)
        self.assertEqual({r.code for r in results}, {Code.OK})
        self.assertEqual(sorted(f.sequenceid for f in frames), list(range(2, 52)))
        self.assertEqual(len({r.msgid for r in results}), 50)

    def test_bad_magic_closes_without_reply(self) -> None:
        conn = self.stack.connect()
        conn.send_raw(b"\x58\xdb")
        self.assertTrue(conn.closing)
        self.assertEqual(conn.transport.value(), b"")

    def test_bad_magic_first_byte(self) -> None:
        conn = self.stack.connect()
        conn.send_raw(b"G")  # "GET / HTTP/1.1" is not a frame
        self.assertTrue(conn.closing)
        self.assertEqual(conn.transport.value(), b"")

    def test_unsupported_version(self) -> None:
        conn = self.stack.connect()
        header = struct.pack("!HBBIIQIII", MAGIC, 2, Cmd.KEEPALIVE, 1001, 0, 42, 9, 0, 0)
        conn.send_raw(header)
        [reply] = conn.received()
        self.assertEqual((reply.cmd, reply.version, reply.sequenceid), (Cmd.KEEPALIVE | 0x80, 1, 9))
        result = pb.Result()
        result.ParseFromString(reply.body)
        self.assertEqual(result.code, Code.UNSUPPORTED_VERSION)
        self.assertTrue(conn.closing)

    def test_too_large_checked_before_body(self) -> None:
        conn = self.stack.login(42)
        header = struct.pack("!HBBIIQIII", MAGIC, 1, Cmd.C2C, 1001, 0, 42, 77, 0, 65537)
        conn.send_raw(header)  # no body byte sent
        [reply] = conn.received()
        result = pb.Result()
        result.ParseFromString(reply.body)
        self.assertEqual((result.code, reply.sequenceid), (Code.TOO_LARGE, 77))
        self.assertTrue(conn.closing)
        # Further input is discarded.
        conn.send_raw(b"x" * 100)
        self.assertEqual(conn.received(), [])

    def test_body_at_limit_accepted(self) -> None:
        conn = self.stack.connect()
        conn.uid, conn.appcode = 42, 1001
        response = conn.request(Cmd.KEEPALIVE, b"\0" * 65536)
        self.assertEqual(response.code, Code.OK)

    def test_unknown_commands(self) -> None:
        conn = self.stack.login(42)
        for cmd in (0x0B, 0x7F, Cmd.S2C, Cmd.KICKOUT, Cmd.C2C | 0x80, 0x00):
            conn.send(cmd)
            [reply] = conn.received()
            self.assertEqual(reply.cmd, cmd | 0x80)
            result = pb.Result()
            result.ParseFromString(reply.body)
            self.assertEqual(result.code, Code.UNKNOWN_CMD, hex(cmd))
        self.assertFalse(conn.closing)

    def test_unknown_command_before_login(self) -> None:
        # "known command" is checked before "logged in".
        conn = self.stack.connect()
        self.assertEqual(conn.request(0x0C).code, Code.UNKNOWN_CMD)

    def test_bad_bodies_keep_the_connection(self) -> None:
        conn = self.stack.login(42)
        for cmd, cls in ((Cmd.C2C, pb.Result), (Cmd.C2S, pb.Result), (Cmd.ACK, pb.Result),
                         (Cmd.PULL, pb.PullResponse), (Cmd.HISTORY, pb.HistoryResponse)):
            self.assertEqual(conn.request(cmd, b"\x0a\xff", cls).code, Code.BAD_REQUEST, cmd)
        self.assertFalse(conn.closing)
        self.assertEqual(conn.request(Cmd.KEEPALIVE).code, Code.OK)


class ShapingTests(SynchronousTestCase):
    def test_rate_limited_then_abuse(self) -> None:
        stack = with_limits(rate_per_s=10.0, rate_burst=5, abuse_excess=3, abuse_window_s=10.0)
        conn = stack.connect()
        conn.uid, conn.appcode = 42, 1001
        codes = []
        for _ in range(9):
            conn.send(Cmd.KEEPALIVE)
            for f in conn.received():
                r = pb.Result()
                r.ParseFromString(f.body)
                codes.append((f.cmd, r.code))
        ok, limited = (Cmd.KEEPALIVE | 0x80, Code.OK), (Cmd.KEEPALIVE | 0x80, Code.RATE_LIMITED)
        self.assertEqual(codes[:8], [ok] * 5 + [limited] * 3)
        # The 4th frame over budget within the window: KICKOUT ABUSE.
        self.assertEqual(codes[8][0], Cmd.KICKOUT)
        self.assertTrue(conn.closing)

    def test_rate_refills(self) -> None:
        stack = with_limits(rate_per_s=10.0, rate_burst=2)
        conn = stack.connect()
        conn.uid, conn.appcode = 42, 1001
        self.assertEqual([conn.request(Cmd.KEEPALIVE).code for _ in range(3)],
                         [Code.OK, Code.OK, Code.RATE_LIMITED])
        stack.clock.advance(0.15)  # 1.5 tokens at 10/s
        self.assertEqual(conn.request(Cmd.KEEPALIVE).code, Code.OK)

    def test_per_ip_cap(self) -> None:
        stack = with_limits(max_conn_per_ip=2)
        a = stack.connect("10.9.9.9")
        stack.connect("10.9.9.9")
        third = Conn(stack, stack.factory.buildProtocol(None), "10.9.9.9")
        self.assertTrue(third.closing)
        self.assertEqual(third.transport.value(), b"")
        third.proto.connectionLost(None)
        self.assertFalse(stack.connect("10.9.9.8").closing)
        a.proto.connectionLost(None)
        self.assertFalse(stack.connect("10.9.9.9").closing)
        self.assertEqual(stack.factory.peers.counts, {"10.9.9.9": 2, "10.9.9.8": 1})

    def test_per_ip_cap_counts_the_proxied_client(self) -> None:
        """Behind a PROXY-protocol listener the cap counts real clients, and
        connections that have not shown their client yet count against no one."""
        stack = with_limits(max_conn_per_ip=1)
        wrapping = HAProxyWrappingFactory(stack.factory)
        proxy = IPv4Address("TCP", "10.0.0.100", 40000)

        def via_proxy(client: str | None) -> StringTransport:
            transport = StringTransport(peerAddress=proxy)
            wrapper = wrapping.buildProtocol(proxy)
            wrapper.makeConnection(transport)
            if client is not None:
                header = f"PROXY TCP4 {client} 10.0.0.1 5555 7000\r\n".encode()
                keepalive = encode(Cmd.KEEPALIVE, 1001, 0, 1, 1)
                wrapper.dataReceived(header + keepalive)
            return transport

        silent = [via_proxy(None) for _ in range(3)]  # header not yet parsed
        self.assertEqual(stack.factory.peers.counts, {})
        a = via_proxy("203.0.113.1")
        b = via_proxy("203.0.113.2")
        for t in (a, b):
            [reply] = decode_all(t.value())
            self.assertEqual(reply.cmd, Cmd.KEEPALIVE | 0x80)
        self.assertEqual(stack.factory.peers.counts, {"203.0.113.1": 1, "203.0.113.2": 1})
        again = via_proxy("203.0.113.1")  # 203.0.113.1 is at its cap
        self.assertEqual(again.value(), b"")
        self.assertTrue(again.disconnecting)
        self.assertFalse(any(t.disconnecting for t in silent))
        # The login timeout bounds the life of a connection that never speaks.
        stack.clock.advance(10)
        self.assertTrue(all(t.disconnecting for t in silent))

    def test_inflight_cap_pauses_reading(self) -> None:
        stack = with_limits(max_inflight=2)
        conn = stack.login(42)
        stack.login(43)
        held = stack.stall_store()
        req = pb.C2CRequest(to_uid=43, to_appcode=1001, content=b"x")
        conn.send_raw(b"".join(conn.frame(Cmd.C2C, req) for _ in range(3)))
        self.assertEqual(len(held), 1)  # the first two, as one write
        self.assertEqual(conn.transport.producerState, "paused")
        held[0].callback(None)
        self.assertEqual(len(held), 2)  # the third one is read once they are answered
        held[1].callback(None)
        self.assertEqual(conn.transport.producerState, "producing")
        answers = [f for f in conn.received() if f.cmd & 0x80]
        self.assertEqual(len(answers), 3)


class PressureSourcesTests(SynchronousTestCase):
    def test_reading_resumes_once_no_source_is_under_pressure(self) -> None:
        stack = Stack()
        conn = stack.login(42)
        stack.factory.set_pressure(True, "bus")
        stack.factory.set_pressure(True, "store")
        self.assertEqual(conn.transport.producerState, "paused")
        stack.factory.set_pressure(False, "bus")
        self.assertEqual(conn.transport.producerState, "paused")
        stack.factory.set_pressure(False, "store")
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertEqual(conn.request(Cmd.KEEPALIVE).code, Code.OK)


class FailureTests(SynchronousTestCase):
    def test_store_down_is_unavailable(self) -> None:
        stack = Stack()
        conn = stack.login(42)
        stack.store.store = lambda batch: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        self.assertEqual(conn.c2c(43).code, Code.UNAVAILABLE)
        del stack.store.store  # back to the real method
        # Nothing was stored: the recipient has nothing pending.
        self.assertEqual(self.successResultOf(stack.store.count_pending(43, 1001)), 0)
        self.assertEqual(conn.c2c(43).code, Code.OK)
        self.assertEqual(self.successResultOf(stack.store.count_pending(43, 1001)), 1)

    def test_bus_down_is_unavailable(self) -> None:
        stack = Stack()
        conn = stack.login(42)
        stack.bus.publish = lambda *a: fail(BusUnavailable("down"))  # type: ignore[method-assign]
        self.assertEqual(conn.request(Cmd.C2S, pb.C2SRequest(content=b"order"), msgtype=2).code,
                         Code.UNAVAILABLE)

    def test_ack_with_store_down_is_unavailable(self) -> None:
        stack = Stack()
        a, b = stack.login(42), stack.login(43)
        msgid = a.c2c(43).msgid
        stack.store.ack = lambda *a: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        self.assertEqual(b.ack([msgid]).code, Code.UNAVAILABLE)
        del stack.store.ack
        self.assertEqual(self.successResultOf(stack.store.count_pending(43, 1001)), 1)
        self.assertEqual(b.ack([msgid]).code, Code.OK)
        self.assertEqual(self.successResultOf(stack.store.count_pending(43, 1001)), 0)

    def test_bug_before_the_store_or_bus_keeps_serving(self) -> None:
        """C2C, C2S and ACK are Deferred chains: an exception raised before
        they reach the store or the bus is an INTERNAL answer too."""
        stack = Stack()
        conn = stack.login(42)

        def boom(*a: object) -> None:
            raise ZeroDivisionError("bug")

        stack.store.store = boom  # type: ignore[method-assign]
        stack.store.ack = boom  # type: ignore[method-assign]
        stack.bus.publish = boom  # type: ignore[method-assign]
        self.assertEqual(conn.c2c(43).code, Code.INTERNAL)
        self.assertEqual(conn.ack([1]).code, Code.INTERNAL)
        self.assertEqual(conn.request(Cmd.C2S, pb.C2SRequest(content=b"order"), msgtype=2).code,
                         Code.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 3)
        self.assertEqual(conn.request(Cmd.KEEPALIVE).code, Code.OK)

    def test_internal_error_keeps_serving(self) -> None:
        stack = Stack()
        conn = stack.login(42)

        async def boom(*a: object) -> None:
            raise ZeroDivisionError("bug")

        stack.inbox.history = boom  # type: ignore[method-assign]
        self.assertEqual(conn.history().code, Code.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(conn.request(Cmd.KEEPALIVE).code, Code.OK)
        other = stack.login(43)
        self.assertEqual(other.c2c(42).code, Code.OK)

    def test_pushes_carry_version_1(self) -> None:
        stack = Stack()
        a = stack.login(42)
        b = stack.login(43)
        a.c2c(43)
        data = b.transport.value()
        self.assertEqual(data[:3], b"\x58\xda\x01")
        self.assertEqual(FrameDecoder(70000).max_body, 70000)
        self.assertEqual(encode(1, 2, 3, 4, 5)[2], 1)

"""Tests for :mod:`daojia_msg.bench.mqttworker`: the connection logic on a fake loop and
fake transports (no broker, no sockets, no waiting)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import mqttcodec
from daojia_msg.bench.mqttcodec import Decoder
from daojia_msg.bench.mqttplan import make_plan
from daojia_msg.bench.mqttworker import Conn, Worker


class FakeLoop:
    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.append((f, args))

    def run(self) -> None:
        while self.calls:
            f, args = self.calls.pop(0)
            f(*args)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


class Rig:
    """A worker of ``pairs`` pairs with connected, subscribed fake connections."""

    def __init__(self, pairs: int = 1, window: int = 2, **kw: Any) -> None:
        plan = make_plan("127.0.0.1", 1883, pairs, 16, 1.0, 0.0, window, 1,
                              run_id="t", **kw)
        self.w = w = Worker(plan, 0, list(range(pairs)))
        self.loop = FakeLoop()
        w.loop = self.loop
        self.sent: list[FakeTransport] = []
        self.recv: list[FakeTransport] = []
        for j in range(pairs):
            s = Conn(w, j, False, f"s{j}")
            r = Conn(w, j, True, f"r{j}")
            w.senders.append(s)
            w.receivers.append(r)
            for c, ts in ((s, self.sent), (r, self.recv)):
                t = FakeTransport()
                ts.append(t)
                c.connection_made(t)
                c.data_received(b"\x20\x02\x00\x00")  # CONNACK, accepted
            r.send(mqttcodec.subscribe_packet(1, w.topics[j]))
            r.data_received(b"\x90\x03\x00\x01\x01")  # SUBACK, QoS 1
        self.loop.run()

    def take(self, t: FakeTransport) -> list[bytes]:
        out, t.written = t.written, []
        return out


class ConnectionTests(SynchronousTestCase):
    def test_handshake(self) -> None:
        rig = Rig(pairs=2)
        self.assertEqual(rig.w.connected, 4)
        self.assertEqual(rig.w.subscribed, 2)
        self.assertEqual(rig.take(rig.sent[1]), [mqttcodec.connect_packet("s1", 60)])
        # CONNECT and SUBSCRIBE, queued in one pass, leave in one write
        self.assertEqual(rig.take(rig.recv[1]), [mqttcodec.connect_packet("r1", 60)
                                                 + mqttcodec.subscribe_packet(1, "bench/t/1")])
        self.assertEqual(rig.w.stats.errors, [])

    def test_publish_window_puback_and_delivery(self) -> None:
        rig = Rig(window=2)
        w = rig.w
        rig.take(rig.sent[0])
        rig.take(rig.recv[0])
        w.publishing = w.in_window = True
        w._fill(0)
        rig.loop.run()
        (written,) = rig.take(rig.sent[0])  # the window's two PUBLISHes in one write
        got = Decoder().feed(written)
        self.assertEqual([(t, f) for t, f, _ in got], [(mqttcodec.PUBLISH, 2), (mqttcodec.PUBLISH, 2)])
        self.assertEqual([mqttcodec.parse_publish(2, b)[1] for _, _, b in got], [1, 2])
        self.assertEqual(got[0][2][:11], b"\x00\x09bench/t/0")
        self.assertEqual(len(got[0][2]), 11 + 2 + 16)

        # the broker delivers both in one read (its own packet ids): both PUBACKed at once
        rig.recv[0].written = []
        r = w.receivers[0]
        r.data_received(written[:5])
        r.data_received(written[5:])
        self.assertEqual(w.stats.delivered, 2)
        rig.loop.run()
        self.assertEqual(rig.take(rig.recv[0]), [mqttcodec.puback_packet(1) + mqttcodec.puback_packet(2)])
        self.assertEqual(len(w.lat), 2)

        # the broker's PUBACK to the sender frees the window: the next PUBLISH goes out
        w.senders[0].data_received(mqttcodec.puback_packet(1))
        rig.loop.run()
        self.assertEqual(w.stats.broker_acked, 1)
        self.assertEqual(w.stats.acked_in_window, 1)
        self.assertEqual(len(w.result_lat), 1)
        (written,) = rig.take(rig.sent[0])
        ((_, flags, body),) = Decoder().feed(written)
        self.assertEqual(mqttcodec.parse_publish(flags, body)[1], 3)
        self.assertEqual(sorted(w.stamps[0]), [2, 3])
        self.assertIsNone(w.fatal)

    def test_packet_ids_wrap_and_skip_zero(self) -> None:
        rig = Rig(window=1)
        w = rig.w
        w.next_pid[0] = 0xFFFE
        w.publishing = True
        w._fill(0)
        w.senders[0].data_received(mqttcodec.puback_packet(0xFFFF))
        self.assertEqual(sorted(w.stamps[0]), [1])
        self.assertIsNone(w.fatal)

    def assertFatal(self, rig: Rig, conn: Conn, data: bytes, words: str) -> None:
        conn.data_received(data)
        w = rig.w
        self.assertIsNotNone(w.fatal)
        assert w.fatal is not None
        self.assertIn(words, w.fatal)
        self.assertIn(conn.client_id, w.fatal)
        self.assertTrue(w.failed.is_set())
        self.assertEqual(w.stats.errors[0], w.fatal)
        self.assertTrue(all(t.aborted for t in rig.sent + rig.recv))
        self.assertFalse(w.publishing)
        with self.assertRaises(RuntimeError) as e:
            w._raise_if_failed()
        self.assertIn(words, str(e.exception))

    def test_malformed_remaining_length_is_fatal(self) -> None:
        rig = Rig()
        self.assertFatal(rig, rig.w.senders[0], b"\x40\xff\xff\xff\xff\x01", "longer than 4 bytes")

    def test_unexpected_type_is_fatal(self) -> None:
        rig = Rig()
        self.assertFatal(rig, rig.w.receivers[0], b"\xf0\x00", "unexpected packet type 15")

    def test_publish_to_a_sender_is_unexpected(self) -> None:
        rig = Rig()
        self.assertFatal(rig, rig.w.senders[0], mqttcodec.publish_packet(1, "x", b"\0" * 12),
                         "unexpected packet type 3")

    def test_puback_not_in_flight_is_fatal(self) -> None:
        rig = Rig()
        self.assertFatal(rig, rig.w.senders[0], mqttcodec.puback_packet(99), "not in flight")

    def test_short_payload_is_fatal(self) -> None:
        rig = Rig()
        self.assertFatal(rig, rig.w.receivers[0], mqttcodec.publish_packet(1, "x", b"\0" * 11),
                         "payload of 11 bytes")

    def test_refused_connect_and_subscribe(self) -> None:
        rig = Rig()
        c = Conn(rig.w, 0, False, "s9")
        c.connection_made(FakeTransport())
        self.assertFatal(rig, c, b"\x20\x02\x00\x05", "connect refused: return code 5")
        rig = Rig()
        c = Conn(rig.w, 0, True, "r9")
        c.connection_made(FakeTransport())
        c.data_received(b"\x20\x02\x00\x00")
        self.assertFatal(rig, c, b"\x90\x03\x00\x01\x80", "subscribe refused")

    def test_second_connack_is_unexpected(self) -> None:
        rig = Rig()
        self.assertFatal(rig, rig.w.senders[0], b"\x20\x02\x00\x00", "unexpected packet type 2")

    def test_nothing_is_written_after_a_fatal_error(self) -> None:
        rig = Rig(window=2)
        w = rig.w
        rig.take(rig.sent[0])
        w.publishing = True
        w._fill(0)
        w.senders[0].data_received(b"\xf0\x00")
        rig.loop.run()
        self.assertEqual(rig.sent[0].written, [])

    def test_disconnect_is_reported(self) -> None:
        rig = Rig()
        rig.w.receivers[0].connection_lost(None)
        self.assertEqual(rig.w.stats.disconnects, 1)
        self.assertIn("disconnected: r0", rig.w.stats.errors[0])
        self.assertIsNone(rig.w.fatal)
        rig.w.closing = True  # at teardown it is not
        rig.w.senders[0].connection_lost(None)
        self.assertEqual(rig.w.stats.disconnects, 1)

    def test_a_fatal_error_ends_the_wait_at_once(self) -> None:
        rig = Rig()

        async def go() -> None:
            rig.w.failed = asyncio.Event()
            asyncio.get_running_loop().call_soon(rig.w.fail, "r0: boom")
            await rig.w._wait_event(asyncio.Event(), 3600.0)

        with self.assertRaises(RuntimeError) as e:
            asyncio.run(go())
        self.assertEqual(str(e.exception), "proc 0: r0: boom")

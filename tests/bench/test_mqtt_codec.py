"""Tests for the MQTT 3.1.1 client of :mod:`daojia_msg.bench.mqtt`.

The codec is pure (bytes in, packets out) and the connection logic runs on a
fake loop and fake transports: no broker, no sockets, no waiting.  Expected
bytes are those of the OASIS MQTT 3.1.1 spec (section numbers in the tests).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import mqtt, mqttcodec
from daojia_msg.bench.mqttcodec import Decoder, MalformedPacket

#: 2.2.3 Table 2.4 "Size of Remaining Length field", plus 0 and 127 / 16383.
REMAINING = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


def publish_with_body(body_len: int, pid: int = 10) -> bytes:
    """A QoS1 PUBLISH to "a/b" whose remaining length is ``body_len``."""
    return mqttcodec.publish_packet(pid, "a/b", b"x" * (body_len - 7))


class EncodeTests(SynchronousTestCase):
    def test_remaining_length_table(self) -> None:
        for n, raw in REMAINING:
            self.assertEqual(mqttcodec.encode_remaining_length(n), raw, n)

    def test_remaining_length_out_of_range(self) -> None:
        for n in (-1, 268_435_456):
            with self.assertRaises(ValueError):
                mqttcodec.encode_remaining_length(n)

    def test_connect(self) -> None:
        # 3.1.2: "MQTT", level 4, flags 0x02 (clean session only), keep alive 10;
        # 3.1.3.1: the client id as a UTF-8 string
        self.assertEqual(
            mqttcodec.connect_packet("bench", 10),
            bytes.fromhex("1011" "00044d515454" "04" "02" "000a" "0005") + b"bench")
        self.assertEqual(mqttcodec.connect_packet("c", 60, clean_session=False)[9], 0x00)
        with self.assertRaises(ValueError):
            mqttcodec.connect_packet("c", 65_536)

    def test_subscribe(self) -> None:
        # 3.8.1 fixed header 1000 0010; 3.8.2 packet id 10; 3.8.3 "a/b" QoS 1
        self.assertEqual(mqttcodec.subscribe_packet(10, "a/b", 1),
                         bytes.fromhex("8208" "000a" "0003612f62" "01"))

    def test_publish_qos1(self) -> None:
        # 3.3.1 type 3, QoS 1 -> 0x32; 3.3.2 Figure 3.11: topic "a/b", packet id 10
        self.assertEqual(mqttcodec.publish_packet(10, "a/b", b"hi"),
                         bytes.fromhex("3209" "0003612f62" "000a" "6869"))
        prefix = mqttcodec.publish_prefix("a/b", 2)
        self.assertEqual(prefix + b"\x00\x0a" + b"hi", mqttcodec.publish_packet(10, "a/b", b"hi"))

    def test_publish_long_remaining_length(self) -> None:
        raw = publish_with_body(128)
        self.assertEqual(raw[:3], b"\x32\x80\x01")
        self.assertEqual(len(raw), 3 + 128)

    def test_puback_ping_disconnect(self) -> None:
        self.assertEqual(mqttcodec.puback_packet(10), bytes.fromhex("4002000a"))  # 3.4
        self.assertEqual(mqttcodec.puback_packet(0xFFFF), bytes.fromhex("4002ffff"))
        self.assertEqual(mqttcodec.PINGREQ_PACKET, bytes.fromhex("c000"))  # 3.12
        self.assertEqual(mqttcodec.DISCONNECT_PACKET, bytes.fromhex("e000"))  # 3.14


#: What a broker sends: CONNACK, SUBACK, PUBACK, PINGRESP and PUBLISHes with
#: 1-, 2- and 3-byte remaining lengths.
STREAM_PACKETS: list[tuple[int, int, bytes]] = [
    (mqttcodec.CONNACK, 0, b"\x00\x00"),
    (mqttcodec.SUBACK, 0, b"\x00\x01\x01"),
    (mqttcodec.PUBACK, 0, b"\x00\x0a"),
    (mqttcodec.PINGRESP, 0, b""),
]
for _n in (7, 127, 128, 16_383, 16_384):
    _raw = publish_with_body(_n, pid=_n & 0xFFFF)
    STREAM_PACKETS.append((mqttcodec.PUBLISH, 2, _raw[len(_raw) - _n:]))


def encode_all(packets: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(bytes(((t << 4) | f,)) + mqttcodec.encode_remaining_length(len(b)) + b
                    for t, f, b in packets)


class DecodeTests(SynchronousTestCase):
    def feed_chunks(self, chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
        d = Decoder(max_packet=1 << 20)
        out = []
        for c in chunks:
            out.extend(d.feed(c))
        self.assertEqual(d.feed(b""), [])
        return out

    def test_all_at_once(self) -> None:
        raw = encode_all(STREAM_PACKETS)
        self.assertEqual(self.feed_chunks([raw]), STREAM_PACKETS)

    def test_one_byte_at_a_time(self) -> None:
        small = [p for p in STREAM_PACKETS if len(p[2]) <= 128]
        raw = encode_all(small)
        self.assertEqual(self.feed_chunks([raw[i:i + 1] for i in range(len(raw))]), small)

    def test_remaining_length_edges_split_everywhere_in_the_header(self) -> None:
        for n in (127, 128, 16_383, 16_384):
            raw = publish_with_body(n)
            for cut in range(1, 6):  # inside / right after the fixed header
                got = self.feed_chunks([raw[:cut], raw[cut:-1], raw[-1:]])
                self.assertEqual(len(got), 1, (n, cut))
                self.assertEqual(got[0][0], mqttcodec.PUBLISH)
                self.assertEqual(len(got[0][2]), n)

    def test_random_splits_and_coalescing(self) -> None:
        rng = random.Random(1883)
        packets = STREAM_PACKETS * 3
        raw = encode_all(packets)
        for _ in range(50):
            cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 40)))
            chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
            self.assertEqual(self.feed_chunks(chunks), packets)

    def test_partial_packet_is_kept(self) -> None:
        d = Decoder()
        self.assertEqual(d.feed(b"\x40"), [])
        self.assertEqual(d.feed(b"\x02\x00"), [])
        self.assertEqual(d.feed(b"\x0a\x40\x02\x00\x0b\xd0"),
                         [(mqttcodec.PUBACK, 0, b"\x00\x0a"), (mqttcodec.PUBACK, 0, b"\x00\x0b")])
        self.assertEqual(d.feed(b"\x00"), [(mqttcodec.PINGRESP, 0, b"")])

    def test_remaining_length_longer_than_4_bytes(self) -> None:
        d = Decoder()
        self.assertEqual(d.feed(b"\x30\xff\xff\xff"), [])  # could still be valid
        with self.assertRaises(MalformedPacket) as e:
            d.feed(b"\xff\x01")
        self.assertIn("longer than 4 bytes", str(e.exception))

    def test_packet_above_the_limit(self) -> None:
        with self.assertRaises(MalformedPacket):
            Decoder(max_packet=100).feed(b"\x30\x65")  # 101 bytes announced

    def test_parsers(self) -> None:
        self.assertEqual(mqttcodec.parse_connack(0, b"\x00\x00"), 0)
        self.assertEqual(mqttcodec.parse_connack(0, b"\x00\x05"), 5)
        self.assertEqual(mqttcodec.parse_suback(0, b"\x00\x0a\x01"), (10, [1]))
        self.assertEqual(mqttcodec.parse_suback(0, b"\x00\x0a\x80"), (10, [0x80]))
        self.assertEqual(mqttcodec.parse_puback(0, b"\x01\x02"), 0x0102)
        body = mqttcodec.publish_packet(10, "a/b", b"hi")[2:]
        self.assertEqual(mqttcodec.parse_publish(2, body), (1, 10, 7))
        self.assertEqual(mqttcodec.parse_publish(0, b"\x00\x03a/bhi"), (0, 0, 5))

    def test_bad_packets(self) -> None:
        bad: list[tuple[Callable[..., Any], int, bytes]] = [
            (mqttcodec.parse_connack, 0, b"\x00"),
            (mqttcodec.parse_connack, 1, b"\x00\x00"),
            (mqttcodec.parse_suback, 0, b"\x00\x0a"),
            (mqttcodec.parse_suback, 0, b"\x00\x0a\x03"),
            (mqttcodec.parse_suback, 2, b"\x00\x0a\x01"),
            (mqttcodec.parse_puback, 0, b"\x00\x0a\x00"),
            (mqttcodec.parse_puback, 2, b"\x00\x0a"),
            (mqttcodec.parse_publish, 4, b"\x00\x03a/b\x00\x0a"),  # QoS 2
            (mqttcodec.parse_publish, 6, b"\x00\x03a/b\x00\x0a"),  # QoS 3
            (mqttcodec.parse_publish, 2, b"\x00\x03a/b\x00"),  # no room for the id
            (mqttcodec.parse_publish, 0, b"\x00\x09a/b"),  # topic longer than the body
        ]
        for parse, flags, body in bad:
            with self.assertRaises(MalformedPacket, msg=f"{parse.__name__} {flags} {body!r}"):
                parse(flags, body)


# --------------------------------------------------------------------------
# the connection logic on a fake loop


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
        plan = mqtt.make_plan("127.0.0.1", 1883, pairs, 16, 1.0, 0.0, window, 1,
                              run_id="t", **kw)
        self.w = w = mqtt._Worker(plan, 0, list(range(pairs)))
        self.loop = FakeLoop()
        w.loop = self.loop
        self.sent: list[FakeTransport] = []
        self.recv: list[FakeTransport] = []
        for j in range(pairs):
            s = mqtt._Conn(w, j, False, f"s{j}")
            r = mqtt._Conn(w, j, True, f"r{j}")
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

    def assertFatal(self, rig: Rig, conn: mqtt._Conn, data: bytes, words: str) -> None:
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
        c = mqtt._Conn(rig.w, 0, False, "s9")
        c.connection_made(FakeTransport())
        self.assertFatal(rig, c, b"\x20\x02\x00\x05", "connect refused: return code 5")
        rig = Rig()
        c = mqtt._Conn(rig.w, 0, True, "r9")
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

"""Tests for :mod:`daojia_msg.bench.mqttcodec`, the MQTT 3.1.1 codec of the Mosquitto load.

The codec is pure (bytes in, packets out). Expected bytes are those of the OASIS
MQTT 3.1.1 spec (section numbers in the tests).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import mqttcodec
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

# -*- test-case-name: tests.bench.test_mqtt_codec -*-
"""MQTT 3.1.1 codec of the Mosquitto load generator (:mod:`daojia_msg.bench.mqtt`):
pure, bytes in and packets out, no socket and no loop.

Only what that load needs: the client writes CONNECT, SUBSCRIBE (one topic),
PUBLISH QoS1, PUBACK, PINGREQ and DISCONNECT, and reads CONNACK, SUBACK,
PUBLISH, PUBACK and PINGRESP. Section numbers are the OASIS MQTT 3.1.1 spec's.
"""

from __future__ import annotations

import struct

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

#: The largest remaining length 4 bytes can hold (2.2.3).
MAX_REMAINING = 268_435_455
#: A packet from the broker bigger than this is a broken stream for the generator.
MAX_INCOMING = 1 << 20

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
U16 = struct.Struct(">H")


class MalformedPacket(Exception):
    """The broker sent bytes that are not the MQTT 3.1.1 this client expects."""


def encode_remaining_length(n: int) -> bytes:
    """The fixed header's variable-length integer (2.2.3)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length {n} is out of range 0..{MAX_REMAINING}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65,535 bytes")
    return U16.pack(len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def connect_packet(client_id: str, keepalive: int, clean_session: bool = True) -> bytes:
    """CONNECT (3.1) with no will, user name or password."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive} is out of range 0..65535")
    flags = 0x02 if clean_session else 0x00
    return packet(0x10, _string("MQTT") + bytes((4, flags)) + U16.pack(keepalive)
                   + _string(client_id))


def subscribe_packet(packet_id: int, topic: str, qos: int = 1) -> bytes:
    """SUBSCRIBE (3.8) to one topic filter; the fixed header's flags are 0010."""
    return packet(0x82, U16.pack(packet_id) + _string(topic) + bytes((qos,)))


def puback_packet(packet_id: int) -> bytes:
    """PUBACK (3.4)."""
    return b"\x40\x02" + U16.pack(packet_id)


def publish_prefix(topic: str, payload_size: int) -> bytes:
    """A QoS1 PUBLISH (3.3) up to its packet identifier: fixed header and topic.

    The packet is ``prefix + packet id (2 bytes, big endian) + payload``, so a
    fixed-size payload reuses one prefix for every message.
    """
    topic_raw = _string(topic)
    return b"\x32" + encode_remaining_length(len(topic_raw) + 2 + payload_size) + topic_raw


def publish_packet(packet_id: int, topic: str, payload: bytes) -> bytes:
    """A whole QoS1 PUBLISH (3.3), DUP and RETAIN clear."""
    return publish_prefix(topic, len(payload)) + U16.pack(packet_id) + payload


#: One packet as split by :class:`Decoder`: (type, flags, body).
Packet = tuple[int, int, bytes]


class Decoder:
    """Splits a TCP byte stream into MQTT packets, whatever the chunking.

    :meth:`feed` returns the packets completed by ``data`` (none, one or
    many) and keeps any partial one for the next call; a remaining length
    longer than 4 bytes or above ``max_packet`` raises :class:`MalformedPacket`.
    """

    def __init__(self, max_packet: int = MAX_INCOMING) -> None:
        self.max_packet = max_packet
        self._buf = b""

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        out: list[Packet] = []
        pos = 0
        while n - pos >= 2:
            i = pos + 1
            length = 0
            shift = 0
            while True:
                if i >= n:
                    self._buf = buf[pos:]
                    return out
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacket("remaining length is longer than 4 bytes")
            if length > self.max_packet:
                raise MalformedPacket(
                    f"packet type {buf[pos] >> 4} of {length} bytes is above the "
                    f"{self.max_packet}-byte limit")
            end = i + length
            if end > n:
                break
            first = buf[pos]
            out.append((first >> 4, first & 0x0F, buf[i:end]))
            pos = end
        self._buf = buf[pos:]
        return out


def parse_connack(flags: int, body: bytes) -> int:
    """CONNACK (3.2): the return code (0 = accepted)."""
    if flags or len(body) != 2 or body[0] & 0xFE:
        raise MalformedPacket(f"bad CONNACK (flags {flags}, body {body.hex()})")
    return body[1]


def parse_suback(flags: int, body: bytes) -> tuple[int, list[int]]:
    """SUBACK (3.9): (packet id, return codes; 0x80 = refused)."""
    if flags != 0 or len(body) < 3:
        raise MalformedPacket(f"bad SUBACK (flags {flags}, body {body.hex()})")
    codes = list(body[2:])
    if any(c not in (0, 1, 2, 0x80) for c in codes):
        raise MalformedPacket(f"bad SUBACK return codes {codes}")
    return U16.unpack_from(body)[0], codes


def parse_puback(flags: int, body: bytes) -> int:
    """PUBACK (3.4): the packet id."""
    if flags != 0 or len(body) != 2:
        raise MalformedPacket(f"bad PUBACK (flags {flags}, body {body.hex()})")
    return (body[0] << 8) | body[1]


def parse_publish(flags: int, body: bytes) -> tuple[int, int, int]:
    """PUBLISH (3.3) at QoS 0 or 1: (qos, packet id or 0, payload offset in body)."""
    qos = (flags >> 1) & 3
    if qos > 1 or len(body) < 2:
        raise MalformedPacket(f"bad PUBLISH (flags {flags}, {len(body)} bytes)")
    off = 2 + ((body[0] << 8) | body[1])
    if qos:
        if off + 2 > len(body):
            raise MalformedPacket(f"PUBLISH too short for its topic ({len(body)} bytes)")
        return qos, (body[off] << 8) | body[off + 1], off + 2
    if off > len(body):
        raise MalformedPacket(f"PUBLISH too short for its topic ({len(body)} bytes)")
    return qos, 0, off

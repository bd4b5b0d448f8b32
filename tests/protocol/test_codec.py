"""Tests for :mod:`daojia_msg.protocol.codec`: the frame layout of docs/protocol.md §2."""

from __future__ import annotations

import random
import struct

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.protocol.codec import (
    HEADER,
    HEADER_SIZE,
    BadMagic,
    BadVersion,
    BodyTooLarge,
    Frame,
    FrameDecoder,
    FrameError,
    HeaderError,
    encode,
    encode_frame,
)
from daojia_msg.protocol.codes import MAGIC, RESPONSE_BIT, VERSION, Cmd

#: The header format, written out here as docs/protocol.md §2 gives it.
WIRE_FORMAT = "!HBBIIQIII"
MAX_BODY = 65536


def drain(decoder: FrameDecoder) -> list[Frame]:
    """Every whole frame the decoder holds now."""
    frames = []
    while (frame := decoder.next()) is not None:
        frames.append(frame)
    return frames


def header_bytes(
    *,
    magic: int = 0x58DA,
    version: int = 1,
    cmd: int = 0x01,
    appcode: int = 1001,
    msgtype: int = 0,
    uid: int = 42,
    seq: int = 7,
    reserve: int = 0,
    length: int = 0,
) -> bytes:
    """A header built with :mod:`struct` alone, any field value allowed."""
    return struct.pack(
        WIRE_FORMAT, magic, version, cmd, appcode, msgtype, uid, seq, reserve, length
    )


def sample_frames(rng: random.Random, count: int, max_body: int) -> list[Frame]:
    """``count`` frames with varied fields and body sizes, empty and ``max_body`` included."""
    special = [0, 0, 1, 31, 32, 33, 255, 256, max_body]
    frames = []
    for i in range(count):
        size = (
            special[i]
            if i < len(special)
            else rng.choice([0, rng.randrange(1, 64), rng.randrange(64, 4000)])
        )
        frames.append(
            Frame(
                cmd=rng.choice(list(Cmd)) | rng.choice([0, RESPONSE_BIT]),
                appcode=rng.randrange(2**32),
                msgtype=rng.randrange(2**32),
                uid=rng.randrange(2**64),
                sequenceid=rng.randrange(2**32),
                body=rng.randbytes(size),
                reserve=rng.choice([0, 0, rng.randrange(2**32)]),
            )
        )
    return frames


class HeaderLayoutTests(SynchronousTestCase):
    def test_header_struct(self) -> None:
        self.assertEqual(HEADER.format, WIRE_FORMAT)
        self.assertEqual(HEADER_SIZE, 32)
        self.assertEqual(struct.calcsize(WIRE_FORMAT), 32)
        self.assertEqual((MAGIC, VERSION, RESPONSE_BIT), (0x58DA, 1, 0x80))

    def test_encode_matches_struct(self) -> None:
        body = b"\x00\x01payload\xff"
        self.assertEqual(
            encode(0x05, 1001, 2, 123456789012, 99, body),
            struct.pack(WIRE_FORMAT, 0x58DA, 1, 0x05, 1001, 2, 123456789012, 99, 0, len(body))
            + body,
        )

    def test_encode_hand_written_bytes(self) -> None:
        wire = encode(0x85, 1001, 7, 0x0102030405060708, 0xDEADBEEF, b"hi")
        expected = (
            bytes.fromhex(
                "58da"  # magic_num
                "01"  # version
                "85"  # cmd: C2C response
                "000003e9"  # appcode 1001
                "00000007"  # msgtype
                "0102030405060708"  # uid
                "deadbeef"  # sequenceid
                "00000000"  # reservefield
                "00000002"  # bodylength
            )
            + b"hi"
        )
        self.assertEqual(wire, expected)
        self.assertEqual(wire[:2], b"\x58\xda")
        self.assertEqual(len(wire), 34)

    def test_encode_empty_body(self) -> None:
        wire = encode(Cmd.KEEPALIVE, 1, 0, 0, 1)
        self.assertEqual(len(wire), 32)
        self.assertEqual(wire[28:32], b"\x00\x00\x00\x00")

    def test_encode_extreme_values(self) -> None:
        wire = encode(0xFF, 2**32 - 1, 2**32 - 1, 2**64 - 1, 2**32 - 1)
        self.assertEqual(wire, bytes.fromhex("58da01ff") + b"\xff" * 20 + bytes(8))

    def test_encode_frame_default_equals_encode(self) -> None:
        frame = Frame(Cmd.C2S, 1002, 1, 77, 5, b"gps")
        self.assertEqual(encode_frame(frame), encode(Cmd.C2S, 1002, 1, 77, 5, b"gps"))

    def test_encode_frame_keeps_version_and_reserve(self) -> None:
        frame = Frame(0x09, 1001, 3, 55, 6, b"xyz", version=7, reserve=0xCAFEBABE)
        wire = encode_frame(frame)
        self.assertEqual(
            wire,
            struct.pack(WIRE_FORMAT, 0x58DA, 7, 0x09, 1001, 3, 55, 6, 0xCAFEBABE, 3) + b"xyz",
        )
        # The decoder refuses version 7, echoing the header it read.
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(wire)
        exc = self.assertRaises(BadVersion, decoder.next)
        self.assertEqual(exc.header, frame._replace(body=b""))

    def test_encode_frame_round_trip_reserve(self) -> None:
        # Receivers ignore reservefield: the decoder passes it through untouched.
        frame = Frame(0x03, 1001, 2, 9, 10, b"body", version=1, reserve=2**32 - 1)
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(encode_frame(frame))
        self.assertEqual(drain(decoder), [frame])


class DecodeTests(SynchronousTestCase):
    def test_one_frame(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(
            header_bytes(cmd=0x03, appcode=1002, msgtype=1, uid=5, seq=6, reserve=0, length=3)
            + b"abc"
        )
        frame = decoder.next()
        self.assertEqual(frame, Frame(0x03, 1002, 1, 5, 6, b"abc", 1, 0))
        assert frame is not None
        self.assertIs(type(frame.body), bytes)
        self.assertIsNone(decoder.next())

    def test_nothing_fed(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        self.assertIsNone(decoder.next())
        self.assertEqual(decoder.buffered(), 0)

    def test_partial_header_then_rest(self) -> None:
        wire = encode(Cmd.LOGIN, 1001, 0, 42, 1, b"token")
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(wire[:31])
        self.assertIsNone(decoder.next())
        decoder.feed(wire[31:33])
        self.assertIsNone(decoder.next())
        decoder.feed(wire[33:])
        self.assertEqual(decoder.next(), Frame(Cmd.LOGIN, 1001, 0, 42, 1, b"token"))

    def test_byte_at_a_time_equals_coalesced(self) -> None:
        frames = sample_frames(random.Random(1), 60, MAX_BODY)
        stream = b"".join(encode_frame(f) for f in frames)

        coalesced = FrameDecoder(MAX_BODY)
        coalesced.feed(stream)
        self.assertEqual(drain(coalesced), frames)
        self.assertEqual(coalesced.buffered(), 0)

        one_by_one = FrameDecoder(MAX_BODY)
        got: list[Frame] = []
        for i in range(len(stream)):
            one_by_one.feed(stream[i : i + 1])
            got.extend(drain(one_by_one))
        self.assertEqual(got, frames)
        self.assertEqual(one_by_one.buffered(), 0)

    def test_random_split_points(self) -> None:
        for seed in range(20):
            rng = random.Random(seed)
            frames = sample_frames(rng, 150, 4096)
            stream = b"".join(encode_frame(f) for f in frames)
            decoder = FrameDecoder(4096)
            got: list[Frame] = []
            pos = 0
            while pos < len(stream):
                # Mostly small pieces, sometimes several frames' worth at once.
                step = rng.choice([1, 2, rng.randrange(1, 40), rng.randrange(1, 10000)])
                decoder.feed(stream[pos : pos + step])
                pos += step
                got.extend(drain(decoder))
            self.assertEqual(got, frames, f"seed {seed}")
            self.assertEqual(decoder.buffered(), 0)

    def test_empty_feeds_are_harmless(self) -> None:
        wire = encode(Cmd.ACK, 1, 0, 2, 3, b"")
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(b"")
        self.assertIsNone(decoder.next())
        decoder.feed(wire)
        decoder.feed(b"")
        self.assertEqual(drain(decoder), [Frame(Cmd.ACK, 1, 0, 2, 3, b"")])


class BadMagicTests(SynchronousTestCase):
    def test_first_byte(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(b"\x59")
        self.assertRaises(BadMagic, decoder.next)

    def test_second_byte(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(b"\x58")
        self.assertIsNone(decoder.next())
        decoder.feed(b"\xdb")
        self.assertRaises(BadMagic, decoder.next)

    def test_byte_swapped(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(b"\xda\x58")
        self.assertRaises(BadMagic, decoder.next)

    def test_whole_header_with_bad_magic(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(header_bytes(magic=0x58DB, length=10))
        self.assertRaises(BadMagic, decoder.next)

    def test_after_a_good_frame(self) -> None:
        good = encode(Cmd.KEEPALIVE, 1001, 0, 1, 1)
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(good + b"\x00")
        self.assertEqual(decoder.next(), Frame(Cmd.KEEPALIVE, 1001, 0, 1, 1))
        self.assertRaises(BadMagic, decoder.next)

    def test_http_request_is_bad_magic(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(b"G")
        self.assertRaises(BadMagic, decoder.next)

    def test_error_tree(self) -> None:
        for cls in (BadMagic, BadVersion, BodyTooLarge):
            self.assertTrue(issubclass(cls, FrameError))
        self.assertTrue(issubclass(BadVersion, HeaderError))
        self.assertTrue(issubclass(BodyTooLarge, HeaderError))
        self.assertFalse(issubclass(BadMagic, HeaderError))


class HeaderCheckTests(SynchronousTestCase):
    fields = {
        "cmd": 0x05,
        "appcode": 1001,
        "msgtype": 3,
        "uid": 2**40 + 1,
        "seq": 1234,
        "reserve": 9,
    }

    def echoed(self, version: int) -> Frame:
        f = self.fields
        return Frame(
            f["cmd"], f["appcode"], f["msgtype"], f["uid"], f["seq"], b"", version, f["reserve"]
        )

    def test_bad_version_from_header_alone(self) -> None:
        header = header_bytes(version=2, length=2**32 - 1, **self.fields)
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(header[:-1])
        self.assertIsNone(decoder.next())
        decoder.feed(header[-1:])
        exc = self.assertRaises(BadVersion, decoder.next)
        self.assertEqual(exc.header, self.echoed(2))

    def test_bad_version_before_size(self) -> None:
        # Checks run magic, version, size (docs/protocol.md §6.2).
        decoder = FrameDecoder(64)
        decoder.feed(header_bytes(version=0, length=65, **self.fields))
        exc = self.assertRaises(BadVersion, decoder.next)
        self.assertEqual(exc.header, self.echoed(0))

    def test_too_large_from_header_alone(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(header_bytes(length=2**32 - 1, **self.fields))
        exc = self.assertRaises(BodyTooLarge, decoder.next)
        self.assertEqual(exc.header, self.echoed(1))

    def test_max_body_accepted(self) -> None:
        body = bytes(range(256)) * 4
        decoder = FrameDecoder(len(body))
        decoder.feed(encode(Cmd.C2C, 1, 2, 3, 4, body))
        self.assertEqual(drain(decoder), [Frame(Cmd.C2C, 1, 2, 3, 4, body)])

    def test_max_body_plus_one_refused(self) -> None:
        decoder = FrameDecoder(1024)
        decoder.feed(encode(Cmd.C2C, 1, 2, 3, 4, bytes(1025))[:HEADER_SIZE])
        exc = self.assertRaises(BodyTooLarge, decoder.next)
        self.assertEqual(exc.header, Frame(Cmd.C2C, 1, 2, 3, 4, b""))

    def test_default_limit(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(encode(Cmd.C2S, 1, 2, 3, 4, bytes(MAX_BODY)))
        self.assertEqual(len(drain(decoder)[0].body), MAX_BODY)
        decoder.feed(header_bytes(length=MAX_BODY + 1))
        self.assertRaises(BodyTooLarge, decoder.next)

    def test_error_after_good_frames(self) -> None:
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(encode(Cmd.KEEPALIVE, 1, 0, 2, 1) + header_bytes(length=MAX_BODY + 1))
        self.assertEqual(decoder.next(), Frame(Cmd.KEEPALIVE, 1, 0, 2, 1))
        self.assertRaises(BodyTooLarge, decoder.next)


class BufferTests(SynchronousTestCase):
    def test_buffered_counts_unreturned_bytes(self) -> None:
        a = encode(Cmd.C2S, 1, 1, 1, 1, b"a" * 10)
        b = encode(Cmd.C2S, 1, 1, 1, 2, b"b" * 20)
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(a + b[:5])
        self.assertEqual(decoder.buffered(), len(a) + 5)
        self.assertIsNotNone(decoder.next())
        self.assertEqual(decoder.buffered(), 5)
        self.assertIsNone(decoder.next())
        self.assertEqual(decoder.buffered(), 5)
        decoder.feed(b[5:])
        self.assertIsNotNone(decoder.next())
        self.assertIsNone(decoder.next())
        self.assertEqual(decoder.buffered(), 0)

    def test_buffer_is_compacted(self) -> None:
        """Consumed bytes are dropped, so a long-lived connection does not grow its buffer."""
        wire = encode(Cmd.C2S, 1001, 1, 5, 1, b"x" * 100)
        decoder = FrameDecoder(MAX_BODY)
        for _ in range(1000):
            decoder.feed(wire + wire[:7])
            self.assertEqual(len(drain(decoder)), 1)
            decoder.feed(wire[7:])
            self.assertEqual(len(drain(decoder)), 1)
            self.assertEqual(decoder.buffered(), 0)
            # White-box: the underlying bytearray itself is emptied.
            self.assertEqual(len(decoder._buf), 0)

    def test_partial_frame_kept_at_start(self) -> None:
        first = encode(Cmd.C2S, 1001, 1, 5, 1, b"y" * 50)
        second = encode(Cmd.C2S, 1001, 1, 5, 2, b"z" * 50)
        decoder = FrameDecoder(MAX_BODY)
        decoder.feed(first + second[:40])
        self.assertEqual(len(drain(decoder)), 1)
        self.assertEqual(len(decoder._buf), 40)
        decoder.feed(second[40:])
        self.assertEqual(drain(decoder), [Frame(Cmd.C2S, 1001, 1, 5, 2, b"z" * 50)])

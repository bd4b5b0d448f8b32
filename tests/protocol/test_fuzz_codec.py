"""Property tests (hypothesis) of the frame codec: any bytes, split anywhere,
decode to the frames of the whole stream or stop with a :class:`FrameError`
(nothing else comes out), the decoder never holds a frame's worth, and
encoding round-trips. Deterministic (derandomized, no example database)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.protocol.codec import (
    HEADER_SIZE,
    BadMagic,
    BadVersion,
    BodyTooLarge,
    Frame,
    FrameDecoder,
    encode,
    encode_frame,
)
from daojia_msg.protocol.codes import MAGIC, VERSION
from tests.fuzz.harness import decode, decode_chunked, split

MAX_BODY = 64
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=200,
                suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
frames = st.builds(Frame, cmd=u8, appcode=u32, msgtype=u32, uid=u64, sequenceid=u32,
                   body=st.binary(max_size=MAX_BODY), version=st.just(VERSION), reserve=u32)
#: Mostly well-formed frames, with noise: any bytes, a bad version, a body too large.
pieces = st.one_of(
    frames.map(encode_frame),
    frames.map(encode_frame),
    st.binary(max_size=40),
    frames.map(lambda f: encode_frame(f._replace(version=2))),
    frames.map(lambda f: encode_frame(f._replace(body=b"x" * (MAX_BODY + 1)))),
)


def whole(data: bytes) -> tuple[list[Frame], object]:
    decoder = FrameDecoder(MAX_BODY)
    decoder.feed(data)
    return decode(decoder)


class DecoderProperties(SynchronousTestCase):
    @FUZZ
    @given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8))
    def test_any_bytes_any_split(self, data: bytes, cuts: list[int]) -> None:
        """Only FrameErrors come out, and the split does not matter."""
        got, error = decode_chunked(split(data, cuts), MAX_BODY)
        expected, expected_error = whole(data)
        self.assertEqual(got, expected)
        self.assertEqual(type(error), type(expected_error))
        self.assertEqual(getattr(error, "header", None), getattr(expected_error, "header", None))

    @FUZZ
    @given(st.lists(pieces, max_size=8), st.lists(st.integers(0, 2000), max_size=8))
    def test_frames_and_noise(self, parts: list[bytes], cuts: list[int]) -> None:
        data = b"".join(parts)
        got, error = decode_chunked(split(data, cuts), MAX_BODY)
        self.assertEqual((got, type(error)), (whole(data)[0], type(whole(data)[1])))
        if error is None:
            return
        # What stopped it is where the first frame not decoded starts.
        at = sum(HEADER_SIZE + len(f.body) for f in got)
        rest = data[at:]
        if isinstance(error, BadMagic):
            self.assertNotEqual(rest[:2], MAGIC.to_bytes(2, "big")[: len(rest[:2])])
        else:
            assert isinstance(error, BadVersion | BodyTooLarge)
            self.assertEqual(encode_frame(error.header)[:HEADER_SIZE - 4], rest[:HEADER_SIZE - 4])

    @FUZZ
    @given(st.lists(frames, max_size=6), st.lists(st.integers(0, 600), max_size=8))
    def test_round_trip(self, sent: list[Frame], cuts: list[int]) -> None:
        data = b"".join(encode_frame(f) for f in sent)
        self.assertEqual(decode_chunked(split(data, cuts), MAX_BODY), (sent, None))
        for f in sent:
            self.assertEqual(encode(f.cmd, f.appcode, f.msgtype, f.uid, f.sequenceid, f.body),
                             encode_frame(f._replace(reserve=0)))

    @FUZZ
    @given(frames, st.integers(0, 255))
    def test_version_and_size_checked_from_the_header(self, frame: Frame, version: int) -> None:
        """Refused from the header alone, before the body comes; the error
        carries the header (to be echoed) without a body."""
        header = encode_frame(frame._replace(version=version))[:HEADER_SIZE]
        decoder = FrameDecoder(len(frame.body) - 1 if frame.body else MAX_BODY)
        decoder.feed(header)
        too_large = bool(frame.body)
        if version != VERSION:
            self.assertRaises(BadVersion, decoder.next)
        elif too_large:
            e = self.assertRaises(BodyTooLarge, decoder.next)
            self.assertEqual(e.header, frame._replace(body=b""))
        else:
            self.assertEqual(decoder.next(), frame)

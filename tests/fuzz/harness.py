"""One gate connection fed a byte stream, and what it must always do with it.

:func:`feed_gate` opens a connection on a :class:`~tests.helpers.Stack` (real
logic, in-memory sessions, an inline SQLite store (:func:`memory_stack`), a
:class:`Clock`), feeds it
the chunks (advancing the clock between them when asked), closes it, and
checks (:class:`Violation` names what failed):

- nothing raises out of ``dataReceived`` (it would reach the test);
- nothing is logged as a failure (an INTERNAL answer logs one);
- every frame the stream holds (as a client-side :class:`FrameDecoder` reads
  it, up to the first error) is answered exactly once, with its header echoed
  and a body of its response type whose code is a known one, unless the
  connection is closing; a closing one answered no frame twice nor one it
  was not sent; a stream that breaks (bad magic, version or size) closes it;
- once closed, it leaves no session, no counted connection and no timer.

:func:`decode_chunked` checks the codec alone: any split of a stream decodes
to the frames (and the error) of the whole stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from daojia_msg.config import Config
from daojia_msg.gate.protocol import RESPONSE_TYPES
from daojia_msg.protocol.codec import (
    BadVersion,
    BodyTooLarge,
    Frame,
    FrameDecoder,
    FrameError,
    encode,
)
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.store.sqlite import SQLiteMessageStore, inline_sqlite_pool
from tests.helpers import T0, Stack

#: The uids and appcodes the fuzzers log in with (appcode 1001: a demo app).
UIDS = (42, 43)
APPCODE = 1001


def memory_stack(config: Config | None = None) -> Stack:
    """A :class:`Stack` whose SQLite store is in memory: a few ms to make, no
    file (the fuzzers make one per example)."""
    clock = Clock()
    clock.advance(T0)
    store = SQLiteMessageStore(":memory:", clock, pool=inline_sqlite_pool(":memory:"))
    store.start()
    return Stack(config, store=store, clock=clock)


class Violation(AssertionError):
    """The gate did what it must never do."""


def decode(decoder: FrameDecoder) -> tuple[list[Frame], FrameError | None]:
    """Every frame ``decoder`` holds now, and the error that stopped it, if any."""
    frames = []
    try:
        while (frame := decoder.next()) is not None:
            frames.append(frame)
    except FrameError as e:
        return frames, e
    return frames, None


def decode_chunked(chunks: Sequence[bytes], max_body: int
                   ) -> tuple[list[Frame], FrameError | None]:
    """The frames of ``chunks`` fed one by one (taking frames out after each),
    checking on the way that only :class:`FrameError` s come out and that the
    decoder never holds a frame's worth: one header plus ``max_body``."""
    decoder = FrameDecoder(max_body)
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        more, error = decode(decoder)
        frames += more
        if error is not None:
            return frames, error
        if decoder.buffered() >= 32 + max_body:
            raise Violation(f"the decoder holds {decoder.buffered()} bytes and no frame")
    return frames, None


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (positions, any order, taken modulo its length + 1)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def key(frame: Frame) -> tuple[int, int, int, int, int]:
    """What an answer echoes of its request (its cmd without the response bit)."""
    return (frame.cmd & ~RESPONSE_BIT, frame.appcode, frame.msgtype, frame.uid,
            frame.sequenceid)


def login_frame(stack: Stack, uid: int, seq: int, appcode: int = APPCODE) -> bytes:
    """A LOGIN with a valid token (a fuzzer cannot forge one)."""
    body = pb.LoginRequest(token=stack.token(uid, appcode)).SerializeToString()
    return encode(Cmd.LOGIN, appcode, 0, uid, seq, body)


def feed_gate(stack: Stack, chunks: Sequence[bytes], advances: Sequence[float] = (),
              host: str = "10.0.0.9") -> list[Frame]:
    """Feed one new connection ``chunks`` (``advances[i]`` seconds pass after
    chunk ``i``), close it and check it (:class:`Violation`). Returns what the
    gate wrote, decoded."""
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    observer: Any = observe  # an ILogObserver

    timers = set(stack.clock.getDelayedCalls())
    globalLogPublisher.addObserver(observer)
    try:
        conn = stack.connect(host)
        for i, chunk in enumerate(chunks):
            conn.send_raw(chunk)
            if i < len(advances) and advances[i] > 0:
                stack.clock.advance(advances[i])
        written = conn.transport.value()
        closing = conn.closing
        conn.proto.connectionLost(Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(observer)
    if failures:
        event = failures[0]
        raise Violation(f"logged a failure: {event['log_failure'].getTraceback()}")
    out = _check_answers(b"".join(chunks), written, closing, stack.config.limits.max_body)
    _check_released(stack, timers)
    return out


def _frames(data: bytes, max_body: int) -> tuple[list[Frame], FrameError | None, int]:
    """The frames of ``data``, the error that stopped them, the bytes left over."""
    decoder = FrameDecoder(max_body)
    decoder.feed(data)
    frames, error = decode(decoder)
    return frames, error, decoder.buffered()


def _check_answers(stream: bytes, written: bytes, closing: bool, max_body: int) -> list[Frame]:
    sent, error, _ = _frames(stream, max_body)
    out, out_error, left = _frames(written, 1 << 30)
    if out_error is not None or left:
        raise Violation(f"the gate wrote bytes that are not whole frames: {written[-64:]!r}")
    answers = [f for f in out if f.cmd & RESPONSE_BIT]
    for answer in answers:
        body = RESPONSE_TYPES.get(answer.cmd & ~RESPONSE_BIT, pb.Result)()
        body.ParseFromString(answer.body)
        if body.code not in Code.__members__.values():
            raise Violation(f"an answer with an unknown code {body.code}: {answer}")
        if body.code == Code.INTERNAL:
            raise Violation(f"an INTERNAL answer: {answer} {body}")
    expected = Counter(key(f) for f in sent)
    if isinstance(error, BadVersion | BodyTooLarge):
        expected[key(error.header)] += 1  # answered UNSUPPORTED_VERSION or TOO_LARGE
    got = Counter(key(f) for f in answers)
    extra = got - expected
    if extra:
        raise Violation(f"answers to frames it was not sent (or twice): {sorted(extra)}")
    if error is not None and not closing:
        raise Violation(f"still open after a broken stream ({type(error).__name__})")
    if not closing and got != expected:
        missing = expected - got
        raise Violation(f"open, and frames left unanswered: {sorted(missing)}")
    return out


def _check_released(stack: Stack, timers: set[Any]) -> None:
    if stack.factory.connections or stack.factory.peers.counts:
        raise Violation("a closed connection is still counted")
    if stack.logic.local:
        raise Violation(f"a closed connection left sessions: {list(stack.logic.local)}")
    left = [call for call in stack.clock.getDelayedCalls() if call not in timers]
    if left:
        raise Violation(f"a closed connection left timers: {left}")

"""Property tests (hypothesis) of the gate's connection state machine: any
sequence of frames (valid logins, requests with valid or random bodies and
headers, bad versions, oversized bodies, random bytes), split anywhere, with
time passing between the pieces, never raises out of ``dataReceived``, logs no
failure, and gets every frame answered exactly once or the connection closed;
a closed connection leaves nothing behind (:mod:`tests.fuzz.harness` checks
all of it). Deterministic (derandomized, no example database)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message as PbMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import Limits, default_config
from daojia_msg.protocol.codec import Frame, encode, encode_frame
from daojia_msg.protocol.codes import Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.fuzz.harness import UIDS, feed_gate, login_frame, memory_stack, split
from tests.helpers import Stack

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
uids = st.sampled_from([*UIDS, 0, 7, 0xFFFFFFFFFFFFFFFF]) | u64
appcodes = st.sampled_from([1001, 1001, 1002, 0, 9999]) | u32
short = st.text(max_size=12)
#: Mostly valid ids (docs/protocol.md: 1 to 64 of A-Z a-z 0-9 . _), sometimes any text.
ids = st.sampled_from(["", "", "m-1", "a.B_9"]) | short
#: Mostly the users and the app that exist, sometimes any.
peers = st.sampled_from([*UIDS, *UIDS, 7, 0]) | uids
apps = st.sampled_from([1001, 1001, 1001, 1002, 0])
known = st.sampled_from([Cmd.C2C, Cmd.C2C, Cmd.C2S, Cmd.ACK, Cmd.PULL, Cmd.HISTORY,
                         Cmd.KEEPALIVE, Cmd.LOGIN, Cmd.LOGOUT, Cmd.S2C, Cmd.KICKOUT])
commands = st.one_of(known, known, known, st.integers(0, 0xFF))
#: A body of each client request's type, with any field values.
BODIES: dict[int, st.SearchStrategy[PbMessage]] = {
    Cmd.LOGIN: st.builds(pb.LoginRequest, token=st.text(max_size=80), device_id=short,
                         client_version=short),
    Cmd.C2C: st.builds(pb.C2CRequest, to_uid=peers, to_appcode=apps,
                       content=st.binary(max_size=64), client_msg_id=ids, logid=ids),
    Cmd.C2S: st.builds(pb.C2SRequest, content=st.binary(max_size=64), logid=ids),
    Cmd.ACK: st.builds(pb.Ack, msgids=st.lists(u64, max_size=4)),
    Cmd.PULL: st.builds(pb.PullRequest, after_msgid=u64, limit=u32),
    Cmd.HISTORY: st.builds(pb.HistoryRequest, peer_uid=peers, before_msgid=u64, limit=u32),
}


@st.composite
def requests(draw: Any, uid: int | None = None) -> bytes:
    """A frame with any command and header (mostly ``uid``'s, in app 1001,
    when given), and a valid or a random body."""
    cmd = draw(commands)
    body_type = BODIES.get(cmd)
    if body_type is not None and draw(st.integers(0, 3)):
        body = draw(body_type).SerializeToString()
    else:
        body = draw(st.binary(max_size=48))
    msgtype = draw(st.sampled_from([0, 1, 7, 100, 101]) | u32)
    if uid is not None and draw(st.integers(0, 4)):
        return encode(cmd, 1001, msgtype, uid, draw(u32), body)
    return encode(cmd, draw(appcodes), msgtype, draw(uids), draw(u32), body)


@st.composite
def broken(draw: Any) -> bytes:
    """What ends a stream: a bad version, a body over the limit, any bytes."""
    kind = draw(st.sampled_from(["version", "size", "bytes"]))
    frame = Frame(draw(st.integers(0, 0xFF)), draw(appcodes), 0, draw(uids), draw(u32))
    if kind == "version":
        return encode_frame(frame._replace(version=draw(st.integers(0, 0xFF).filter(
            lambda v: v != 1))))
    if kind == "size":
        return encode_frame(frame._replace(body=b"\0" * 65537))[:40]
    return draw(st.binary(min_size=1, max_size=32))


#: A piece of the stream: ("login", uid) is a LOGIN with a valid token.
pieces = st.one_of(
    requests().map(lambda b: ("bytes", b)),
    requests().map(lambda b: ("bytes", b)),
    st.tuples(st.just("login"), st.sampled_from(UIDS)),
    broken().map(lambda b: ("bytes", b)),
)
#: Seconds that pass after a chunk: none mostly, past the rate window, past the
#: login timeout, past the idle timeout.
advances = st.lists(st.sampled_from([0, 0, 0, 0.001, 1, 11, 200]), max_size=10)
cuts = st.lists(st.integers(0, 4000), max_size=10)


def render(stack: Stack, parts: list[tuple[str, Any]]) -> bytes:
    out = []
    for n, (kind, value) in enumerate(parts):
        out.append(login_frame(stack, value, 1_000_000 + n) if kind == "login" else value)
    return b"".join(out)


def tight() -> Stack:
    """A stack whose limits the fuzzer reaches: a small rate, burst and abuse
    allowance, small bodies, two requests in flight."""
    config = default_config()
    limits = Limits(**{**{f: getattr(config.limits, f) for f in Limits.__dataclass_fields__},
                       "rate_per_s": 2.0, "rate_burst": 4, "abuse_excess": 6,
                       "max_body": 40, "max_inflight": 2})
    return memory_stack(config.replace(limits=limits))


def any_stream(make: Callable[[], Stack], doc: str) -> Callable[..., None]:
    """A property: any stream of :data:`pieces`, cut anywhere, with time
    passing, fed to a connection of the stack ``make()`` returns."""

    @FUZZ
    @given(st.lists(pieces, max_size=12), cuts, advances)
    def test(self: SynchronousTestCase, parts: list[tuple[str, Any]], at: list[int],
             wait: list[float]) -> None:
        stack = make()
        feed_gate(stack, split(render(stack, parts), at), wait)

    test.__doc__ = doc
    return test


class GateProperties(SynchronousTestCase):
    test_default_limits = any_stream(memory_stack, "The limits of the default config.")
    test_tight_limits = any_stream(tight, "Limits the fuzzer reaches (rate, abuse, size).")

    @FUZZ
    @given(st.sampled_from(UIDS).flatmap(
        lambda uid: st.tuples(st.just(uid), st.lists(requests(uid), max_size=10))), cuts)
    def test_after_login(self, session: tuple[int, list[bytes]], at: list[int]) -> None:
        """Logged in first, then requests mostly with the session's header (so
        they reach the handlers), then anything."""
        uid, more = session
        stack = memory_stack()
        feed_gate(stack, split(render(stack, [("login", uid)]) + b"".join(more), at))

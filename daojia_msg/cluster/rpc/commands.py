# -*- test-case-name: tests.cluster.test_rpc -*-
"""The internal RPC's commands, its errors and its authentication.

Commands: :class:`Auth`, :class:`Deliver`, :class:`DeliverMany`, :class:`Kick`,
:class:`TraceEvents`. A message travels as its protobuf ``Message`` without
content plus the content as a second value, because one AMP value holds at
most 65,535 bytes and content alone may take 65,000 of them. The pushes to one
peer within one reactor turn travel together as one :class:`DeliverMany` (at
most :data:`BATCH_ITEMS` of them and :data:`BATCH_BYTES` in all, each with at
most :data:`BATCH_CONTENT` bytes of content; a longer one goes alone).

Authentication, when the cluster has a shared secret (``cluster.rpc_secret``):
the client's first command on a connection is ``Auth(node_id, ts, mac)`` with
``mac = HMAC-SHA256(secret, f"{node_id}:{ts}")`` and ``ts`` in whole seconds;
the server accepts it when ``|now - ts| <= 60`` and the mac matches
(``hmac.compare_digest``). Any other command before that, a wrong mac or a stale
``ts`` is answered with the fatal ``UNAUTHORIZED`` error and the connection is
closed; a connection that has not authenticated within 10 s is closed too.
With an empty secret no Auth is needed (loopback-only clusters). The secret and
the macs are never logged. This keeps unauthenticated hosts from pushing or
kicking; it does not encrypt, nor stop a replay within the window by someone
who can read the traffic: keep the RPC on a private network.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from twisted.internet.defer import (
    Deferred,
    succeed,
)
from twisted.protocols import amp

#: How far an Auth timestamp may be from the server's clock, in seconds.
AUTH_WINDOW_S = 60
#: A connection that has not authenticated within this many seconds is closed.
AUTH_TIMEOUT_S = 10.0
#: The most one AMP value can hold (the content of a Deliver must fit).
MAX_VALUE = amp.MAX_VALUE_LENGTH
#: A DeliverMany carries at most this many messages...
BATCH_ITEMS = 256
#: ... of at most this many bytes in all (:func:`batch_size`: its items are
#: one AMP value, with room left for the keys and lengths around them) ...
BATCH_BYTES = 60000
#: ... each with at most this much content (a longer one goes alone, as a Deliver).
BATCH_CONTENT = 16384
#: DeliverMany's answer for each message: pushed to the session, the session
#: is not here (not pushed), or refused (it does not parse, its content is
#: over the limit, or the push failed: the server logged why).
PUSHED, NOT_HELD, REFUSED = 1, 0, -1



# -- errors (each maps to one AMP error code) ---------------------------------


class Unauthorized(Exception):
    """The connection did not authenticate (fatal: the server closes it)."""


class BadMessage(Exception):
    """A Deliver whose message does not parse or whose content is over the limit."""


class InternalError(Exception):
    """The receiving node failed unexpectedly (it logged why and keeps serving)."""


_FATAL: dict[type[Exception], bytes] = {Unauthorized: b"UNAUTHORIZED"}


# -- commands ------------------------------------------------------------------


class Auth(amp.Command):
    """Prove the connection comes from a node that knows the cluster secret."""

    arguments = [(b"node_id", amp.Integer()), (b"ts", amp.Integer()), (b"mac", amp.String())]
    response = []  # an empty answer: authenticated
    fatalErrors = _FATAL


class Deliver(amp.Command):
    """Push a message to a local session: ``message`` is the serialized
    ``pb.Message`` without its content, which travels as ``content``."""

    arguments = [
        (b"session_id", amp.Unicode()),
        (b"message", amp.String()),
        (b"content", amp.String()),
    ]
    response = [(b"pushed", amp.Boolean())]
    errors = {BadMessage: b"BAD_MESSAGE", InternalError: b"INTERNAL"}
    fatalErrors = _FATAL


class DeliverMany(amp.Command):
    """Several Deliver in one call (the pushes to one peer of one reactor
    turn): ``items`` as Deliver's arguments, ``pushed`` one of
    :data:`PUSHED`, :data:`NOT_HELD` or :data:`REFUSED` for each, in order.
    A node without it answers UNHANDLED: the caller then sends it Deliver."""

    arguments = [(b"items", amp.AmpList(Deliver.arguments))]
    response = [(b"pushed", amp.ListOf(amp.Integer()))]
    errors = {InternalError: b"INTERNAL"}
    fatalErrors = _FATAL


def batch_size(item: dict[str, Any]) -> int:
    """What a DeliverMany item takes of :data:`BATCH_BYTES`: its values, with
    their keys and 2-byte lengths around them."""
    return len(item["session_id"].encode()) + len(item["message"]) + len(item["content"]) + 48


class Kick(amp.Command):
    """KICKOUT a local session."""

    arguments = [
        (b"uid", amp.Integer()),
        (b"appcode", amp.Integer()),
        (b"session_id", amp.Unicode()),
        (b"reason_code", amp.Integer()),
        (b"reason", amp.Unicode()),
    ]
    response = [(b"kicked", amp.Boolean())]
    errors = {InternalError: b"INTERNAL"}
    fatalErrors = _FATAL


class TraceEvents(amp.Command):
    """The events about one logid that the node's trace buffer still holds,
    oldest first: ``events`` is :func:`encode_events` of them (as many of the
    oldest as fit one AMP value; ``truncated`` when some did not), ``traced``
    False when the node keeps no trace buffer (``events`` is then empty)."""

    arguments = [(b"logid", amp.Unicode())]
    response = [(b"events", amp.String()), (b"traced", amp.Boolean()),
                (b"truncated", amp.Boolean())]
    errors = {InternalError: b"INTERNAL"}
    fatalErrors = _FATAL


#: The most events one node answers about a logid (the oldest are kept).
MAX_TRACE_EVENTS = 500

#: The fields of a trace event as :class:`TraceEvents` carries it, and their types.
TRACE_FIELDS: dict[str, tuple[type, ...]] = {
    "ts_ms": (int,), "event": (str,), "msgid": (str, type(None)), "uid": (str, type(None)),
    "appcode": (int, type(None)),
}


class PeerTrace(NamedTuple):
    """A node's answer to :class:`TraceEvents`."""

    events: list[dict[str, Any]]
    traced: bool
    truncated: bool


def encode_events(events: Sequence[dict[str, Any]], limit: int = MAX_VALUE
                  ) -> tuple[bytes, bool]:
    """``events`` (dicts of :data:`TRACE_FIELDS`) as a JSON array of at most
    ``limit`` bytes and :data:`MAX_TRACE_EVENTS` events: the oldest that fit;
    True when some were left out."""
    parts: list[bytes] = []
    size = 2  # the brackets
    for i, event in enumerate(events):
        if i == MAX_TRACE_EVENTS:
            return b"[" + b",".join(parts) + b"]", True
        part = json.dumps({k: event.get(k) for k in TRACE_FIELDS},
                          separators=(",", ":")).encode()
        size += len(part) + (1 if parts else 0)
        if size > limit:
            return b"[" + b",".join(parts) + b"]", True
        parts.append(part)
    return b"[" + b",".join(parts) + b"]", False


def decode_events(data: bytes) -> list[dict[str, Any]]:
    """The events of :func:`encode_events`; ValueError when ``data`` is not that."""
    events = json.loads(data)
    if not isinstance(events, list):
        raise ValueError("trace events: expected a JSON array")
    for event in events:
        if not isinstance(event, dict) or event.keys() != TRACE_FIELDS.keys() or any(
                not isinstance(event[k], types) or isinstance(event[k], bool)
                for k, types in TRACE_FIELDS.items()):
            raise ValueError("trace events: an event is not {ts_ms, event, msgid, uid, appcode}")
    return events


# -- authentication -------------------------------------------------------------


def auth_mac(secret: str, node_id: int, ts: int) -> bytes:
    """HMAC-SHA256, keyed by the cluster secret, of ``f"{node_id}:{ts}"``."""
    return hmac.new(secret.encode(), f"{node_id}:{ts}".encode(), hashlib.sha256).digest()


def check_auth(secret: str, now: float, node_id: int, ts: int, mac: bytes) -> str | None:
    """Why an Auth is refused, or None when it is good (always, with no secret)."""
    if not secret:
        return None
    if abs(now - ts) > AUTH_WINDOW_S:
        return f"timestamp {ts} is more than {AUTH_WINDOW_S} s from this node's clock"
    if not hmac.compare_digest(auth_mac(secret, node_id, ts), mac):
        return "wrong mac"
    return None



class ClosedWaiters:
    """``when_closed()``: a Deferred that fires once the connection is closed."""

    connected: bool | int
    _closed: list[Deferred[None]]

    def when_closed(self) -> Deferred[None]:
        if not self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        return d

    def _fire_closed(self) -> None:
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)



# -*- test-case-name: tests.cluster.test_rpc -*-
"""The internal RPC's commands, its errors and its authentication.

Commands: :class:`Auth`, :class:`Deliver`, :class:`Kick`. A message travels as
its protobuf ``Message`` without content plus the content as a second value,
because one AMP value holds at most 65,535 bytes and content alone may take
65,000 of them.

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



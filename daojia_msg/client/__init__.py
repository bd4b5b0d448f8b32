"""The Twisted client library of msgplatform (docs/client.md).

:class:`MsgClient` keeps one identity connected: it reconnects with backoff,
logs in on each connection, drains offline messages, ACKs what it receives and
resends a C2C with its ``client_msg_id`` after a lost connection, and pauses
its C2C and C2S after RATE_LIMITED (:class:`SendBackoff`).
:class:`MsgClientProtocol` is one connection, for tools and tests that want
every frame in their hands. :func:`gate_endpoint` is where either connects:
a gate over TCP, or over TLS with the node's certificate verified. Failures
are :class:`ClientError` subclasses.
"""

from daojia_msg.client.backoff import SendBackoff
from daojia_msg.client.client import NO_RECONNECT, TRANSIENT_LOGIN_CODES, MsgClient
from daojia_msg.client.endpoint import gate_endpoint
from daojia_msg.client.errors import (
    ClientError,
    ConnectionLost,
    KickedOut,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    ResultError,
    TLSFailed,
    code_name,
    kick_reason_name,
)
from daojia_msg.client.protocol import MsgClientProtocol, RecentIds

__all__ = [
    "NO_RECONNECT",
    "TRANSIENT_LOGIN_CODES",
    "ClientError",
    "ConnectionLost",
    "KickedOut",
    "MsgClient",
    "MsgClientProtocol",
    "NotConnected",
    "ProtocolError",
    "RecentIds",
    "RequestTimeout",
    "ResultError",
    "SendBackoff",
    "TLSFailed",
    "code_name",
    "gate_endpoint",
    "kick_reason_name",
]

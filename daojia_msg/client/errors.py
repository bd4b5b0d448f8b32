# -*- test-case-name: tests.client.test_protocol,tests.client.test_tls -*-
"""Client errors: what a request's Deferred fails with.

::

    ClientError
     +-- ResultError        the server answered with a non-OK code
     +-- RequestTimeout     no answer within the request timeout
     +-- ConnectionLost     the connection closed before the answer came
     |    +-- KickedOut     ... because the server sent KICKOUT
     |    +-- TLSFailed     ... because the TLS handshake failed
     +-- NotConnected       no (logged-in) connection to send on
     +-- ProtocolError      the server sent something that does not parse

:class:`ConnectionLost` is also a :class:`twisted.internet.error.ConnectionLost`,
so code that already catches Twisted's error keeps working.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.python.failure import Failure

from daojia_msg.protocol.codes import Cmd, Code, KickReason


def code_name(code: int) -> str:
    """``"UNAUTHORIZED"`` for 2; the number itself for codes this version does not know."""
    try:
        return Code(code).name
    except ValueError:
        return str(code)


def cmd_name(cmd: int) -> str:
    try:
        return Cmd(cmd).name
    except ValueError:
        return f"0x{cmd:02X}"


def kick_reason_name(reason_code: int) -> str:
    try:
        return KickReason(reason_code).name
    except ValueError:
        return str(reason_code)


class ClientError(Exception):
    """Base of the client errors."""


class ResultError(ClientError):
    """The server answered a request with a non-OK ``code``.

    ``response`` is the whole parsed response message (``LoginResponse``,
    ``Result``, ``PullResponse`` or ``HistoryResponse``).
    """

    def __init__(self, code: int, reason: str, response: Any = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.response = response

    @property
    def code_name(self) -> str:
        return code_name(self.code)

    def __str__(self) -> str:
        return f"{self.code_name}: {self.reason}" if self.reason else self.code_name


_KNOWN_CODES = frozenset(int(code) for code in Code)


def may_resend(error: BaseException) -> bool:
    """Whether a C2C that failed with ``error`` may be resent with the same
    ``client_msg_id``, after a pause: the server answered TIMEOUT (it may or
    may not be stored), or a code this version does not know
    (docs/protocol.md §7, §7.4)."""
    if not isinstance(error, ResultError):
        return False
    return error.code == Code.TIMEOUT or error.code not in _KNOWN_CODES


def resend_delay(attempt: int) -> float:
    """Seconds before resend number ``attempt`` (1, 2, ...) after TIMEOUT:
    0.5, 1, 2, then 4 each."""
    return min(0.5 * 2.0 ** (attempt - 1), 4.0)


class RequestTimeout(ClientError):
    """No response to request ``sequenceid`` (command ``cmd``) within ``timeout`` seconds."""

    def __init__(self, cmd: int, sequenceid: int, timeout: float) -> None:
        super().__init__(cmd, sequenceid, timeout)
        self.cmd = cmd
        self.sequenceid = sequenceid
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no answer to {cmd_name(self.cmd)} (sequenceid {self.sequenceid}) within {self.timeout:g} s"


class ConnectionLost(ClientError, error.ConnectionLost):
    """The connection closed while the request was outstanding.

    The request may or may not have taken effect: resend only what is
    idempotent (a C2C with the same ``client_msg_id`` is).
    ``failure`` is the transport's reason, when known.
    """

    def __init__(self, failure: Failure | None = None) -> None:
        super().__init__()
        self.failure = failure

    def __str__(self) -> str:
        if self.failure is None:
            return "connection lost"
        return f"connection lost: {self.failure.getErrorMessage()}"


class KickedOut(ConnectionLost):
    """The server sent KICKOUT (``reason_code`` from :class:`KickReason`), then closed."""

    def __init__(self, reason_code: int, reason: str = "") -> None:
        super().__init__()
        self.reason_code = reason_code
        self.reason = reason

    def __str__(self) -> str:
        name = kick_reason_name(self.reason_code)
        return f"kicked out: {name}: {self.reason}" if self.reason else f"kicked out: {name}"


class TLSFailed(ConnectionLost):
    """The TLS handshake failed: the server's certificate did not verify (signed
    by another CA, or not naming the host), or the server refused this client
    (its TLS version, or a certificate it wants). ``why`` is OpenSSL's reason."""

    def __init__(self, why: str, failure: Failure | None = None) -> None:
        super().__init__(failure)
        self.why = why

    def __str__(self) -> str:
        return f"TLS handshake failed: {self.why}"


class NotConnected(ClientError):
    """There is no connection to send the request on (or the client was stopped)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not connected"


class ProtocolError(ClientError):
    """The server sent a frame the client cannot use (bad body, wrong response command)."""

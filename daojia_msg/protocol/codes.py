# -*- test-case-name: tests.protocol.test_codec -*-
"""Commands, result codes and kickout reasons of protocol version 1 (docs/protocol.md §3, §4).

The numbers are the wire's: they never change meaning within version 1.
"""

from __future__ import annotations

import enum

#: ``magic_num``, ``version`` and a response's ``cmd`` bit (docs/protocol.md §2).
MAGIC = 0x58DA
VERSION = 1
RESPONSE_BIT = 0x80


class Cmd(enum.IntEnum):
    """The header's ``cmd`` (docs/protocol.md §3); a response adds :data:`RESPONSE_BIT`."""

    LOGIN = 0x01
    LOGOUT = 0x02
    C2S = 0x03
    S2C = 0x04
    C2C = 0x05
    KEEPALIVE = 0x06
    KICKOUT = 0x07
    ACK = 0x08
    PULL = 0x09
    HISTORY = 0x0A


#: Commands a client may send as a request. S2C and KICKOUT are server pushes:
#: a client that sends one is answered UNKNOWN_CMD (docs/protocol.md §6.2).
CLIENT_REQUESTS = frozenset(
    {Cmd.LOGIN, Cmd.LOGOUT, Cmd.C2S, Cmd.C2C, Cmd.KEEPALIVE, Cmd.ACK, Cmd.PULL, Cmd.HISTORY}
)

#: Commands allowed before a successful LOGIN; others are NOT_LOGGED_IN (docs/protocol.md §6.2).
BEFORE_LOGIN = frozenset({Cmd.LOGIN, Cmd.KEEPALIVE})


class Code(enum.IntEnum):
    """``code`` of every response body (docs/protocol.md §4, Result codes)."""

    OK = 0
    BAD_REQUEST = 1
    UNAUTHORIZED = 2
    NOT_LOGGED_IN = 3
    UID_MISMATCH = 4
    TOO_LARGE = 5
    RATE_LIMITED = 6
    UNKNOWN_CMD = 7
    UNSUPPORTED_VERSION = 8
    UNKNOWN_APPCODE = 9
    NO_ROUTE = 10
    UNAVAILABLE = 11
    INTERNAL = 12
    TIMEOUT = 13


class KickReason(enum.IntEnum):
    """``Kickout.reason_code`` (docs/protocol.md §4, Kickout reasons)."""

    LOGIN_ELSEWHERE = 1
    ADMIN = 2
    SHUTDOWN = 3
    ABUSE = 4

# -*- test-case-name: tests.msgctl.test_oneshot,tests.msgctl.test_tls -*-
"""What every msgctl command shares: its context, its error, tokens, message
lines, the gate's endpoint (TCP, or TLS with ``--tls``) and its errors, and
resending after TIMEOUT."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from daojia_msg.auth import mint_token
from daojia_msg.client.endpoint import gate_endpoint
from daojia_msg.client.errors import ClientError, RequestTimeout, TLSFailed, resend_delay
from daojia_msg.config import DEMO_APPS
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.tls import TLSError

#: Attaches a protocol to the standard input (the tests give a fake one).
StdioFactory = Callable[[Protocol], object]

T = TypeVar("T")

#: Resends of a message answered TIMEOUT (HTTP 504), after the client
#: library's pauses (0.5, 1, 2 s: docs/protocol.md §7.4).
RESENDS = 3


class CliError(Exception):
    """A failure reported as one line ``msgctl: error: ...`` and exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ctx:
    """One command's run: the reactor, the parsed options and where to print."""

    reactor: Any
    args: argparse.Namespace
    out: TextIO
    err: TextIO
    http: Any = None
    stdio: StdioFactory | None = None

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def note(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()


def secret(args: argparse.Namespace) -> str:
    """``--secret``, or the demo secret of a demo app."""
    if args.secret:
        return str(args.secret)
    demo = DEMO_APPS.get(args.appcode)
    if demo is None:
        raise CliError(
            f"--secret is required: appcode {args.appcode} is not a demo app (1001, 1002)", 2
        )
    return demo.secret


def token(ctx: Ctx, ttl: int = 86400) -> str:
    expires_at = int(ctx.reactor.seconds()) + ttl
    return mint_token(secret(ctx.args), ctx.args.appcode, ctx.args.uid, expires_at)


def text(m: pb.Message) -> str:
    return m.content.decode("utf-8", "replace")


def format_message(m: pb.Message) -> str:
    """One received message as a line: its sender (an app server's push has
    none: ``server``, with its msgtype), its ids, its text."""
    if m.kind == pb.S2C or not m.from_uid:
        sender = f"server msgtype={m.msgtype}"
    else:
        sender = f"{m.from_uid}@{m.from_appcode}"
    return f"[{sender} msgid={m.msgid} logid={m.logid}] {text(m)}"


#: What a connection attempt fails with before any byte is exchanged (a name
#: that does not resolve is one of them: Twisted's DNSLookupError is not a
#: ConnectError).
CONNECT_ERRORS = (ConnectError, DNSLookupError)


def connect_error(ctx: Ctx, e: Exception) -> CliError:
    return CliError(f"cannot connect to {ctx.args.host}:{ctx.args.port}: {str(e).rstrip('.')}")


def check_tls(args: argparse.Namespace) -> None:
    """``--ca`` goes with ``--tls``."""
    if args.ca and not args.tls:
        raise CliError("--ca needs --tls", 2)


def endpoint(ctx: Ctx) -> IStreamClientEndpoint:
    """The gate of ``--host`` and ``--port``; over TLS with ``--tls``, the
    node's certificate verified against ``--ca``."""
    a = ctx.args
    check_tls(a)
    try:
        return gate_endpoint(ctx.reactor, a.host, a.port, tls=a.tls, ca=a.ca, timeout=10)
    except TLSError as e:
        raise CliError(f"--ca: {e}", 2) from None


def tls_hint(why: str, host: str) -> str:
    """What to check, after OpenSSL's reason."""
    if "certificate verify failed" in why:
        return f"{why} (is --ca the CA that signed the node's certificate?)"
    if "does not name the host" in why:
        return f"{why} (the node's certificate must name {host}: use that name as --host)"
    return why


def login_error(ctx: Ctx, e: ClientError, handshake_done: bool = True) -> CliError:
    """A failed LOGIN, or the TLS handshake before it, as one line."""
    a = ctx.args
    if isinstance(e, TLSFailed):
        return CliError(f"cannot connect to {a.host}:{a.port} over TLS: {tls_hint(e.why, a.host)}")
    if a.tls and not handshake_done:
        return CliError(f"cannot connect to {a.host}:{a.port} over TLS: the connection closed "
                        "during the handshake (is it a TLS port?)")
    if isinstance(e, RequestTimeout):  # a port that takes bytes and never answers
        return CliError(f"login failed: {e} (is {a.host}:{a.port} the node's gate?)")
    return CliError(f"login failed: {e}")


async def resending(ctx: Ctx, send: Callable[[], Awaitable[T]],
                    may_resend: Callable[[Exception], bool], what: str) -> T:
    """``send()``, and again (the same message: the same ``client_msg_id`` or
    ``Idempotency-Key``) after a pause while it fails with an error that
    ``may_resend``, at most :data:`RESENDS` more times; each resend is said on
    stderr."""
    attempt = 0
    while True:
        try:
            return await send()
        except Exception as e:
            if attempt >= RESENDS or not may_resend(e):
                raise
            attempt += 1
            ctx.note(f"msgctl: {e}; resending {what} ({attempt} of {RESENDS})")
            await deferLater(ctx.reactor, resend_delay(attempt), lambda: None)

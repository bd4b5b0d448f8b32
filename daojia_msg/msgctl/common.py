# -*- test-case-name: tests.msgctl.test_oneshot -*-
"""What every msgctl command shares: its context, its error, tokens and message lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet.protocol import Protocol

from daojia_msg.auth import mint_token
from daojia_msg.config import DEMO_APPS
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: Attaches a protocol to the standard input (the tests give a fake one).
StdioFactory = Callable[[Protocol], object]


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


def connect_error(ctx: Ctx, e: Exception) -> CliError:
    return CliError(f"cannot connect to {ctx.args.host}:{ctx.args.port}: {str(e).rstrip('.')}")

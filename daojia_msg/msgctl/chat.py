# -*- test-case-name: tests.msgctl.test_chat,tests.msgctl.test_tls -*-
"""``msgctl chat``: standard input's lines go to ``--to``, messages in are printed.

It runs a reconnecting :class:`MsgClient` until end of input, or until a kickout
after which reconnecting would fight another device or an operator.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from daojia_msg.client.client import NO_RECONNECT, MsgClient
from daojia_msg.client.errors import ClientError, kick_reason_name
from daojia_msg.msgctl.common import (
    CONNECT_ERRORS,
    Ctx,
    connect_error,
    endpoint,
    format_message,
    login_error,
    secret,
    token,
)
from daojia_msg.protocol.pb import msgplatform_pb2 as pb


class _LineInput(LineReceiver):
    delimiter = b"\n"

    def __init__(self, on_line: Callable[[str], object], on_eof: Callable[[], object]) -> None:
        self.on_line = on_line
        self.on_eof = on_eof

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            self.on_line(text)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.on_eof()


async def cmd_chat(ctx: Ctx) -> int:
    a = ctx.args
    to_appcode = a.to_appcode or a.appcode
    secret(a)  # fail early on a missing secret
    finished: Deferred[int] = Deferred()

    def kicked(code: int, reason: str) -> None:
        ctx.note(f"*** kicked out: {kick_reason_name(code)} {reason}".rstrip())
        if code in NO_RECONNECT and not finished.called:
            finished.callback(1)

    def logged_in(r: pb.LoginResponse) -> None:
        ctx.note(f"*** logged in as {a.uid}@{a.appcode}, {r.offline_count} offline message(s)")
        if unsent:
            ctx.note(f"*** sending {len(unsent)} line(s) typed while offline")

    def lost() -> None:
        if not finished.called:
            ctx.note("*** connection lost: reconnecting (lines typed meanwhile are sent then)")

    #: Lines typed and not yet answered, by their send.
    unsent: dict[Deferred[None], str] = {}

    client = MsgClient(
        ctx.reactor,
        endpoint(ctx),
        a.uid,
        a.appcode,
        lambda: token(ctx),
        on_message=lambda m: ctx.say(format_message(m)),
        on_kickout=kicked,
        on_login=logged_in,
        on_disconnect=lost,
        client_version="msgctl",
    )
    client.startService()
    try:
        await client.when_ready(fail_after_failures=1)
    except CONNECT_ERRORS as e:
        await client.stopService()
        raise connect_error(ctx, e) from None
    except ClientError as e:
        await client.stopService()
        raise login_error(ctx, e) from None
    sending: list[Deferred[None]] = []

    def send(text: str) -> None:
        d = client.c2c(a.to, to_appcode, a.msgtype, text.encode())
        done = d.addCallbacks(
            lambda r: ctx.note(f"*** sent msgid={r.msgid} logid={r.logid}"),
            lambda f: ctx.note(f"*** not sent: {f.getErrorMessage()}"),
        )
        unsent[done] = text
        done.addBoth(lambda _: unsent.pop(done, None))
        sending.append(done)

    def report_unsent() -> None:
        """Ctrl-C stops the reactor: say which lines never went out."""
        if unsent:
            ctx.note(f"*** {len(unsent)} line(s) not sent:")
            for text in unsent.values():
                ctx.note(f"***   {text}")
            unsent.clear()

    ctx.reactor.addSystemEventTrigger("before", "shutdown", report_unsent)

    def eof() -> None:
        if not finished.called:
            finished.callback(0)

    stdin = _LineInput(send, eof)
    if ctx.stdio is not None:
        ctx.stdio(stdin)
    else:
        from twisted.internet.stdio import StandardIO

        StandardIO(stdin, reactor=ctx.reactor)
    code = await finished
    if unsent:
        ctx.note(f"*** waiting to send {len(unsent)} line(s) (Ctrl-C gives up)")
    await DeferredList(sending)
    await client.logout()
    return code

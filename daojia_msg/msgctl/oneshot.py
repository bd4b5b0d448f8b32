# -*- test-case-name: tests.msgctl.test_oneshot,tests.msgctl.test_tls -*-
"""The one-shot commands: ``token``, and ``send``, ``c2s``, ``pull`` and ``history``,
each on a connection of its own that logs in, makes its request and logs out.
``send`` resends after TIMEOUT with the same ``client_msg_id``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol

from daojia_msg.client.errors import ClientError, may_resend
from daojia_msg.client.protocol import MsgClientProtocol
from daojia_msg.msgctl.common import (
    CONNECT_ERRORS,
    Ctx,
    connect_error,
    endpoint,
    format_message,
    login_error,
    resending,
    text,
    token,
)
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

T = TypeVar("T")


async def _session(ctx: Ctx, **kwargs: Any) -> MsgClientProtocol:
    """A logged-in connection (no keepalives, no ACKs unless asked)."""
    a = ctx.args
    login_token = token(ctx)
    kwargs.setdefault("auto_ack", False)
    proto = MsgClientProtocol(ctx.reactor, a.uid, a.appcode, heartbeat_s=0, **kwargs)
    gate = endpoint(ctx)
    try:
        await connectProtocol(gate, proto)
    except CONNECT_ERRORS as e:
        raise connect_error(ctx, e) from None
    try:
        await proto.login(login_token)
    except ClientError as e:
        await _close(proto)
        raise login_error(ctx, e, proto.handshake_done) from None
    return proto


async def _close(proto: MsgClientProtocol) -> None:
    if proto.logged_in:
        try:
            await proto.logout()
        except ClientError:
            pass
    if proto.connected_ok and proto.transport is not None:
        proto.transport.loseConnection()
    await proto.when_closed()


async def cmd_token(ctx: Ctx) -> None:
    ctx.say(token(ctx, ctx.args.ttl))


async def _one(ctx: Ctx, call: Callable[[MsgClientProtocol], Deferred[T]], **kwargs: Any) -> T:
    """``call`` on a session of its own (:func:`_session` with ``kwargs``), closed after."""
    proto = await _session(ctx, **kwargs)
    try:
        return await call(proto)
    finally:
        await _close(proto)


async def cmd_send(ctx: Ctx) -> None:
    """One C2C; answered TIMEOUT, it is resent with the same client_msg_id."""
    a = ctx.args
    content = " ".join(a.text).encode()
    client_msg_id = uuid.uuid4().hex

    def send(proto: MsgClientProtocol) -> Deferred[pb.Result]:
        return Deferred.fromCoroutine(resending(
            ctx, lambda: proto.c2c(a.to, a.to_appcode or a.appcode, a.msgtype, content,
                                   client_msg_id),
            may_resend, "with the same client_msg_id"))

    r = await _one(ctx, send)
    ctx.say(f"msgid={r.msgid} logid={r.logid}")


async def cmd_c2s(ctx: Ctx) -> None:
    a = ctx.args
    r = await _one(ctx, lambda p: p.c2s(a.msgtype, " ".join(a.text).encode()))
    # A C2S published on the bus is answered with its msgid; an offer accept
    # (offers.accept_msgtype) publishes nothing and its OK carries neither.
    ctx.say(f"msgid={r.msgid} logid={r.logid}" if r.msgid or r.logid else "accepted")


async def cmd_pull(ctx: Ctx) -> None:
    def show(m: pb.Message) -> None:
        ctx.say(format_message(m))

    ack = ctx.args.ack
    count = await _one(ctx, lambda p: p.drain(ack=ack), on_message=show, auto_ack=ack)
    ctx.note(f"{count} pending message(s){', acked' if ack and count else ''}")


async def cmd_history(ctx: Ctx) -> None:
    a = ctx.args
    page = await _one(ctx, lambda p: p.history(a.peer, a.before, a.limit))
    for m in page.messages:
        ctx.say(
            f"[{m.from_uid}@{m.from_appcode} -> {m.to_uid}@{m.to_appcode} msgid={m.msgid} logid={m.logid}] {text(m)}"
        )
    if page.has_more and page.messages:
        ctx.note(f"(more: --before {page.messages[-1].msgid})")

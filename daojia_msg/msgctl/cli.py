# -*- test-case-name: tests.msgctl.test_cli -*-
"""``msgctl``: mint tokens, chat, send, pull, read history, upload C2S, push over HTTP,
trace a message through the nodes' JSON logs.

Only :func:`main` touches the global reactor (through ``task.react``); everything
else takes it as an argument, so the tests drive :func:`run` with a fake one.
For the demo apps (1001, 1002) the secret and API key default to the demo ones.
Logging in as a ``(uid, appcode)`` kicks out that identity's other session.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import react
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from daojia_msg import tracing
from daojia_msg.auth import mint_token
from daojia_msg.client.client import NO_RECONNECT, MsgClient
from daojia_msg.client.errors import ClientError, ResultError, kick_reason_name
from daojia_msg.client.protocol import MsgClientProtocol
from daojia_msg.config import DEMO_APPS
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

StdioFactory = Callable[[Protocol], object]


class CliError(Exception):
    """A failure reported as one line ``msgctl: error: ...`` and exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Ctx:
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


# -- arguments


def _uint(bits: int, low: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value < 2**bits:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {2**bits - 1}, got {value}"
            )
        return value

    parse.__name__ = f"uint{bits}"
    return parse


UID, U32 = _uint(64, 1), _uint(32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgctl", description="msgplatform command-line client")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ident = argparse.ArgumentParser(add_help=False)
    ident.add_argument("--uid", type=UID, required=True, help="your uid")
    ident.add_argument("--appcode", type=U32, required=True, help="your appcode")
    ident.add_argument(
        "--secret", help="the app's token secret (default: the demo secret of 1001/1002)"
    )
    gate = argparse.ArgumentParser(add_help=False, parents=[ident])
    gate.add_argument("--host", default="127.0.0.1", help="gate host (default %(default)s)")
    gate.add_argument(
        "--port", type=_uint(16, 1), default=7000, help="gate port (default %(default)s)"
    )
    peer = argparse.ArgumentParser(add_help=False)
    peer.add_argument("--to", type=UID, required=True, metavar="UID", help="the peer's uid")
    peer.add_argument("--to-appcode", type=U32, help="the peer's appcode (default: --appcode)")
    peer.add_argument("--msgtype", type=U32, default=0, help="message type (default 0)")

    p = sub.add_parser("token", parents=[ident], help="print a login token")
    p.add_argument(
        "--ttl", type=_uint(31, 1), default=86400, help="seconds of validity (default 86400)"
    )
    sub.add_parser(
        "chat", parents=[gate, peer], help="chat with --to: stdin lines out, messages in"
    )
    p = sub.add_parser("send", parents=[gate, peer], help="send one C2C message")
    p.add_argument("text", nargs="+", metavar="TEXT")
    p = sub.add_parser("pull", parents=[gate], help="print pending (offline) messages")
    p.add_argument("--ack", action="store_true", help="ACK them (they are no longer pending)")
    p = sub.add_parser("history", parents=[gate], help="print the message history, newest first")
    p.add_argument("--peer", type=_uint(64), default=0, metavar="UID", help="only with this uid")
    p.add_argument(
        "--limit", type=U32, default=0, metavar="N", help="page size (server default 20)"
    )
    p.add_argument(
        "--before", type=_uint(64), default=0, metavar="MSGID", help="older than this msgid"
    )
    p = sub.add_parser("c2s", parents=[gate], help="upload one C2S message")
    p.add_argument("--msgtype", type=U32, required=True)
    p.add_argument("text", nargs="+", metavar="TEXT")
    p = sub.add_parser("push", help="push one S2C message through the HTTP API")
    p.add_argument("--to", type=UID, required=True, metavar="UID")
    p.add_argument("--to-appcode", type=U32, required=True)
    p.add_argument("--msgtype", type=U32, required=True)
    p.add_argument("--api-key", help="the app's API key (default: demo-key-<A> for 1001/1002)")
    p.add_argument(
        "--http", default="http://127.0.0.1:8080", help="HTTP API base (default %(default)s)"
    )
    p.add_argument("--logid", default="")
    p.add_argument("text", nargs="+", metavar="TEXT")
    p = sub.add_parser("tail", help="print the C2S envelopes arriving on a topic of a bus")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--bus", required=True, metavar="URL",
                   help="redis://..., amqp://... or the webhook URL http(s)://...")
    p.add_argument("--exchange", default="msgplatform.c2s", help="RabbitMQ exchange")
    p.add_argument("--listen", default="", metavar="STRPORT",
                   help="for a webhook: where to receive the POSTs (tcp:9000)")
    p.add_argument("--count", type=int, default=0,
                   help="stop after this many envelopes (default: run until Ctrl-C)")
    p = sub.add_parser("stats", help="print delivery statistics (GET /v1/stats)")
    p.add_argument("--appcode", type=U32, default=1001,
                   help="whose user system to show (default %(default)s)")
    p.add_argument("--api-key", help="the app's API key (default: demo-key-<A> for 1001/1002)")
    p.add_argument(
        "--http", default="http://127.0.0.1:8080", help="HTTP API base (default %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    p = sub.add_parser(
        "trace", help="print one message's path, in time order, from the nodes' JSON logs"
    )
    p.add_argument("logid", metavar="LOGID", help="the message's logid")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="JSON log files (log.json_file of each node)"
    )
    return parser


def _secret(args: argparse.Namespace) -> str:
    if args.secret:
        return str(args.secret)
    demo = DEMO_APPS.get(args.appcode)
    if demo is None:
        raise CliError(
            f"--secret is required: appcode {args.appcode} is not a demo app (1001, 1002)", 2
        )
    return demo.secret


def _token(ctx: _Ctx, ttl: int = 86400) -> str:
    expires_at = int(ctx.reactor.seconds()) + ttl
    return mint_token(_secret(ctx.args), ctx.args.appcode, ctx.args.uid, expires_at)


def _text(m: pb.Message) -> str:
    return m.content.decode("utf-8", "replace")


def format_message(m: pb.Message) -> str:
    return f"[{m.from_uid}@{m.from_appcode} msgid={m.msgid} logid={m.logid}] {_text(m)}"


def _connect_error(ctx: _Ctx, e: Exception) -> CliError:
    return CliError(f"cannot connect to {ctx.args.host}:{ctx.args.port}: {str(e).rstrip('.')}")


# -- one-shot sessions


async def _session(ctx: _Ctx, **kwargs: Any) -> MsgClientProtocol:
    """A logged-in connection (no keepalives, no ACKs unless asked)."""
    a = ctx.args
    token = _token(ctx)
    kwargs.setdefault("auto_ack", False)
    proto = MsgClientProtocol(ctx.reactor, a.uid, a.appcode, heartbeat_s=0, **kwargs)
    try:
        await connectProtocol(TCP4ClientEndpoint(ctx.reactor, a.host, a.port, timeout=10), proto)
    except ConnectError as e:
        raise _connect_error(ctx, e) from None
    try:
        await proto.login(token)
    except ClientError as e:
        await _close(proto)
        raise CliError(f"login failed: {e}") from None
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


async def cmd_token(ctx: _Ctx) -> None:
    ctx.say(_token(ctx, ctx.args.ttl))


async def cmd_send(ctx: _Ctx) -> None:
    a = ctx.args
    proto = await _session(ctx)
    try:
        r = await proto.c2c(a.to, a.to_appcode or a.appcode, a.msgtype, " ".join(a.text).encode())
    finally:
        await _close(proto)
    ctx.say(f"msgid={r.msgid} logid={r.logid}")


async def cmd_c2s(ctx: _Ctx) -> None:
    a = ctx.args
    proto = await _session(ctx)
    try:
        r = await proto.c2s(a.msgtype, " ".join(a.text).encode())
    finally:
        await _close(proto)
    ctx.say(f"msgid={r.msgid} logid={r.logid}")


async def cmd_pull(ctx: _Ctx) -> None:
    def show(m: pb.Message) -> None:
        ctx.say(format_message(m))

    proto = await _session(ctx, on_message=show, auto_ack=ctx.args.ack)
    try:
        count = await proto.drain(ack=ctx.args.ack)
    finally:
        await _close(proto)
    ctx.note(f"{count} pending message(s){', acked' if ctx.args.ack and count else ''}")


async def cmd_history(ctx: _Ctx) -> None:
    a = ctx.args
    proto = await _session(ctx)
    try:
        page = await proto.history(a.peer, a.before, a.limit)
    finally:
        await _close(proto)
    for m in page.messages:
        ctx.say(
            f"[{m.from_uid}@{m.from_appcode} -> {m.to_uid}@{m.to_appcode} msgid={m.msgid} logid={m.logid}] {_text(m)}"
        )
    if page.has_more and page.messages:
        ctx.note(f"(more: --before {page.messages[-1].msgid})")


# -- chat


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


async def cmd_chat(ctx: _Ctx) -> int:
    a = ctx.args
    to_appcode = a.to_appcode or a.appcode
    _secret(a)  # fail early on a missing secret
    finished: Deferred[int] = Deferred()

    def kicked(code: int, reason: str) -> None:
        ctx.note(f"*** kicked out: {kick_reason_name(code)} {reason}".rstrip())
        if code in NO_RECONNECT and not finished.called:
            finished.callback(1)

    def logged_in(r: pb.LoginResponse) -> None:
        ctx.note(f"*** logged in as {a.uid}@{a.appcode}, {r.offline_count} offline message(s)")

    client = MsgClient(
        ctx.reactor,
        TCP4ClientEndpoint(ctx.reactor, a.host, a.port, timeout=10),
        a.uid,
        a.appcode,
        lambda: _token(ctx),
        on_message=lambda m: ctx.say(format_message(m)),
        on_kickout=kicked,
        on_login=logged_in,
        client_version="msgctl",
    )
    client.startService()
    try:
        await client.when_ready(fail_after_failures=1)
    except ConnectError as e:
        await client.stopService()
        raise _connect_error(ctx, e) from None
    except ClientError as e:
        await client.stopService()
        raise CliError(f"login failed: {e}") from None
    sending: list[Deferred[None]] = []

    def send(text: str) -> None:
        d = client.c2c(a.to, to_appcode, a.msgtype, text.encode())
        sending.append(
            d.addCallbacks(
                lambda r: ctx.note(f"*** sent msgid={r.msgid} logid={r.logid}"),
                lambda f: ctx.note(f"*** not sent: {f.getErrorMessage()}"),
            )
        )

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
    await DeferredList(sending)
    await client.logout()
    return code


# -- HTTP push


def _api_key(given: str | None, appcode: int) -> str:
    key = given or (DEMO_APPS[appcode].api_key if appcode in DEMO_APPS else None)
    if not key:
        raise CliError(f"--api-key is required: appcode {appcode} is not a demo app (1001, 1002)",
                       2)
    return key


async def _http(ctx: _Ctx, method: str, path: str, key: str, body: Any = None) -> str:
    """One HTTP API request; its body text, or :class:`CliError` with the API's error."""
    http = ctx.http
    if http is None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        http = HTTPClient(
            Agent(ctx.reactor, pool=HTTPConnectionPool(ctx.reactor, persistent=False))
        )
    url = ctx.args.http.rstrip("/") + path
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if body is None:
            response = await http.request(method, url, headers=headers)
        else:
            response = await http.request(method, url, json=body, headers=headers)
        data = await response.content()
    except ConnectError as e:
        raise CliError(f"cannot reach {url}: {str(e).rstrip('.')}") from None
    except Exception as e:
        raise CliError(f"cannot reach {url}: {e.__class__.__name__}: {e}") from None
    text: str = data.decode("utf-8", "replace").strip()
    if not 200 <= response.code < 300:
        try:
            detail = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            detail = text or response.phrase.decode("latin-1")
        raise CliError(f"HTTP {response.code}: {detail}")
    return text


async def cmd_push(ctx: _Ctx) -> None:
    a = ctx.args
    body: dict[str, Any] = {
        "to_uid": a.to,
        "to_appcode": a.to_appcode,
        "msgtype": a.msgtype,
        "content": " ".join(a.text),
    }
    if a.logid:
        body["logid"] = a.logid
    ctx.say(await _http(ctx, "POST", "/v1/push", _api_key(a.api_key, a.to_appcode), body))


async def cmd_tail(ctx: _Ctx) -> None:
    """Print each envelope of TOPIC as it arrives, until --count or Ctrl-C."""
    from daojia_msg.consumer import consume

    a = ctx.args
    done: Deferred[None] = Deferred()
    seen = [0]

    def show(envelope: Any) -> None:
        m = envelope.message
        text = m.content.decode("utf-8", "backslashreplace")
        ctx.say(f"[{envelope.topic}] msgid={m.msgid} from={m.from_uid}@{m.from_appcode} "
                f"msgtype={m.msgtype} logid={envelope.logid} {text}")
        seen[0] += 1
        if a.count and seen[0] >= a.count and not done.called:
            done.callback(None)

    try:
        stop = await consume(ctx.reactor, a.bus, a.topic, show, exchange=a.exchange,
                             listen=a.listen)
    except ValueError as e:
        raise CliError(str(e), 2) from None
    except Exception as e:
        raise CliError(f"cannot read {a.topic} from the bus: {e}") from None
    ctx.note(f"*** tailing {a.topic}" + (f" ({a.count} envelopes)" if a.count else ""))
    try:
        await done
    finally:
        await stop()


async def cmd_stats(ctx: _Ctx) -> None:
    """Delivery statistics of the key's user system (cluster-wide in a cluster)."""
    a = ctx.args
    text = await _http(ctx, "GET", "/v1/stats", _api_key(a.api_key, a.appcode))
    if a.json:
        ctx.say(text)
        return
    stats = json.loads(text)
    rate = stats.get("delivery_rate")
    window = stats.get("window_s")
    ctx.say(f"delivery rate: {'-' if rate is None else f'{rate:.2%}'}"
            + (f" (last {window:g} s)" if window else "")
            + f", since the start: {_pct(stats.get('delivery_rate_total'))}")
    names = ("accepted", "pushed", "acked", "repushed", "stored", "pulled")
    ctx.say(f"{'appcode':>8} {'msgtype':>8} {'kind':<4} " + " ".join(f"{n:>9}" for n in names)
            + f" {'ack p50 ms':>10} {'ack p99 ms':>10}")
    for r in stats["by_route"]:
        ctx.say(f"{r['appcode']:>8} {r['msgtype']:>8} {r['kind']:<4} "
                + " ".join(f"{r[n]:>9}" for n in names) + _latency(r.get("ack_latency")))
    t = stats["totals"]
    ctx.say(f"{'total':>8} {'':>8} {'':<4} " + " ".join(f"{t[n]:>9}" for n in names)
            + _latency(stats.get("ack_latency")))


def _latency(summary: dict[str, Any] | None) -> str:
    """The ACK latency columns: p50 and p99 in ms (bucket bounds), ``-`` if none."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    summary = summary or {}
    return f" {ms(summary.get('p50_ms')):>10} {ms(summary.get('p99_ms')):>10}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


# -- trace


async def cmd_trace(ctx: _Ctx) -> int:
    """The events of one logid in the JSON log files, in time order. Exit 1
    when none is found or a file cannot be read (what can be read is printed)."""
    a = ctx.args
    if not a.logid:
        raise CliError("LOGID must not be empty", 2)
    unreadable: list[str] = []

    def cannot_read(path: str, e: OSError) -> None:
        unreadable.append(path)
        ctx.note(f"msgctl: error: cannot read {path}: {e.strerror or e}")

    found = tracing.read_trace(a.logid, a.files, on_error=cannot_read)
    for path, count in found.skipped.items():
        ctx.note(f"msgctl: warning: {path}: skipped {count} unreadable record(s) "
                 f"naming logid {a.logid}")
    for event in found:
        ctx.say(tracing.format_line(tracing.record(event)))
    readable = len(dict.fromkeys(a.files)) - len(unreadable)
    if not found and readable:
        raise CliError(f"no log events with logid {a.logid} in {readable} file(s)")
    return 1 if unreadable else 0


COMMANDS: dict[str, Callable[[_Ctx], Any]] = {
    "token": cmd_token,
    "chat": cmd_chat,
    "send": cmd_send,
    "pull": cmd_pull,
    "history": cmd_history,
    "c2s": cmd_c2s,
    "push": cmd_push,
    "stats": cmd_stats,
    "tail": cmd_tail,
    "trace": cmd_trace,
}


def run(
    reactor: Any,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    http: Any = None,
    stdio: StdioFactory | None = None,
) -> Deferred[int]:
    """Run the parsed command; fires with the exit code (errors already printed)."""
    ctx = _Ctx(reactor, args, out, err, http, stdio)
    return Deferred.fromCoroutine(_run(ctx))


async def _run(ctx: _Ctx) -> int:
    try:
        code = await COMMANDS[ctx.args.command](ctx)
        return code or 0
    except CliError as e:
        ctx.note(f"msgctl: error: {e}")
        return e.code
    except ResultError as e:
        ctx.note(f"msgctl: error: {ctx.args.command} failed: {e}")
        return 1
    except (ClientError, ConnectError) as e:
        ctx.note(f"msgctl: error: {e}")
        return 1
    except Exception as e:  # one line for the user, not a traceback
        ctx.note(f"msgctl: error: {e.__class__.__name__}: {e}")
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    """The ``msgctl`` console script."""
    args = build_parser().parse_args(argv)

    def start(reactor: Any) -> Deferred[None]:
        def finish(code: int) -> None:
            if code:
                raise SystemExit(code)

        return run(reactor, args, sys.stdout, sys.stderr).addCallback(finish)

    react(start)


if __name__ == "__main__":
    main()

# -*- test-case-name: tests.msgctl.test_cli -*-
"""``msgctl``: mint tokens, chat, send, pull, read history, upload C2S, push over HTTP,
read delivery statistics, tail a bus, trace a message through the nodes' JSON logs;
run simulated drivers on the live map and offer them an order (the demo).

Only :func:`main` touches the global reactor (through ``task.react``); :func:`run`
takes it as an argument, so the tests drive it with a fake one. For the demo apps
(1001, 1002) the secret and API key default to the demo ones. Logging in as a
``(uid, appcode)`` kicks out that identity's other session.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from daojia_msg.client.errors import ClientError, ResultError
from daojia_msg.msgctl.args import build_parser
from daojia_msg.msgctl.chat import cmd_chat
from daojia_msg.msgctl.common import CONNECT_ERRORS, CliError, Ctx, StdioFactory
from daojia_msg.msgctl.dispatch import cmd_offer
from daojia_msg.msgctl.fleet import cmd_drivers
from daojia_msg.msgctl.httpapi import cmd_push, cmd_stats, cmd_store_stats
from daojia_msg.msgctl.oneshot import cmd_c2s, cmd_history, cmd_pull, cmd_send, cmd_token
from daojia_msg.msgctl.tail import cmd_tail
from daojia_msg.msgctl.tracelog import cmd_trace

__all__ = ["COMMANDS", "CliError", "build_parser", "main", "run"]

COMMANDS: dict[str, Callable[[Ctx], Any]] = {
    "token": cmd_token,
    "chat": cmd_chat,
    "send": cmd_send,
    "pull": cmd_pull,
    "history": cmd_history,
    "c2s": cmd_c2s,
    "push": cmd_push,
    "stats": cmd_stats,
    "store-stats": cmd_store_stats,
    "tail": cmd_tail,
    "trace": cmd_trace,
    "drivers": cmd_drivers,
    "offer": cmd_offer,
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
    ctx = Ctx(reactor, args, out, err, http, stdio)
    return Deferred.fromCoroutine(_run(ctx))


async def _run(ctx: Ctx) -> int:
    try:
        code = await COMMANDS[ctx.args.command](ctx)
        return code or 0
    except CliError as e:
        ctx.note(f"msgctl: error: {e}")
        return e.code
    except ResultError as e:
        ctx.note(f"msgctl: error: {ctx.args.command} failed: {e}")
        return 1
    except (ClientError, *CONNECT_ERRORS) as e:
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

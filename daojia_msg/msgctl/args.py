# -*- test-case-name: tests.msgctl.test_cli,tests.msgctl.test_tls -*-
"""msgctl's command line: the commands and their options."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from daojia_msg import __version__
from daojia_msg.msgctl.demoargs import add_demo_commands


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.5 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected 0.5 to 86400 seconds, got {value:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgctl", description="msgplatform command-line client")
    parser.add_argument("--version", action="version", version=f"msgctl (msgplatform) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ident = argparse.ArgumentParser(add_help=False)
    ident.add_argument("--uid", type=UID, required=True, help="your uid")
    ident.add_argument("--appcode", type=U32, required=True, help="your appcode")
    ident.add_argument(
        "--secret", help="the app's token secret (default: the demo secret of 1001/1002)"
    )
    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--tls", action="store_true",
                     help="connect over TLS (1.2 or 1.3), verifying the node's certificate")
    tls.add_argument("--ca", metavar="FILE",
                     help="with --tls: the CA that signed the node's certificate (PEM; "
                          "default: the system's CAs)")
    where = argparse.ArgumentParser(add_help=False, parents=[tls])
    where.add_argument("--host", default="127.0.0.1", help="gate host (default %(default)s)")
    where.add_argument(
        "--port", type=_uint(16, 1), default=7000, help="gate port (default %(default)s)"
    )
    gate = argparse.ArgumentParser(add_help=False, parents=[ident, where])
    http = argparse.ArgumentParser(add_help=False, parents=[tls])
    http.add_argument("--http", metavar="URL",
                      help="HTTP API base (default http://127.0.0.1:8080, https:// with --tls; "
                           "HOST:PORT alone takes the same scheme)")
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
    p = sub.add_parser("c2s", parents=[gate], help="upload one C2S message (on a geo route, "
                       "such as the demo's msgtype 1, a position: \"<lat>,<lon>\")")
    p.add_argument("--msgtype", type=U32, required=True)
    p.add_argument("text", nargs="+", metavar="TEXT")
    p = sub.add_parser("push", parents=[http], help="push one S2C message through the HTTP API")
    p.add_argument("--to", type=UID, required=True, metavar="UID")
    p.add_argument("--to-appcode", type=U32, required=True)
    p.add_argument("--msgtype", type=U32, required=True)
    p.add_argument("--api-key", help="the app's API key (default: demo-key-<A> for 1001/1002)")
    p.add_argument("--logid", default="")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="the push's Idempotency-Key: a repeat within 7 days is answered with "
                        "the first msgid (default: a fresh one, kept for resends after a 504)")
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
    p = sub.add_parser("stats", parents=[http], help="print delivery statistics (GET /v1/stats)")
    p.add_argument("--appcode", type=U32, default=1001,
                   help="whose user system to show (default %(default)s)")
    p.add_argument("--api-key", help="the app's API key (default: demo-key-<A> for 1001/1002)")
    p.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    p.add_argument("--watch", type=_seconds, metavar="SECONDS",
                   help="print them again every SECONDS (at least 0.5) until Ctrl-C")
    p.add_argument("--rounds", type=int, default=0, metavar="N",
                   help="with --watch: stop after N rounds (default: until Ctrl-C)")
    p = sub.add_parser("store-stats", parents=[http],
                       help="print the message store's rows, bytes, oldest pending message and "
                            "last purge (\"store\" of GET /v1/stats)")
    p.add_argument("--appcode", type=U32, default=1001,
                   help="the app whose API key asks (default %(default)s)")
    p.add_argument("--api-key", help="the app's API key (default: demo-key-<A> for 1001/1002)")
    p.add_argument("--json", action="store_true", help="print the \"store\" JSON as it is")
    add_demo_commands(sub, where, http)
    p = sub.add_parser(
        "trace", help="print one message's path, in time order, from the nodes' JSON logs"
    )
    p.add_argument("logid", metavar="LOGID", help="the message's logid")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="JSON log files (log.json_file of each node)"
    )
    return parser

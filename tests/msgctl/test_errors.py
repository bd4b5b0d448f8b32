"""msgctl's one-line errors for what users type wrong: an ``--http`` without
its scheme or with another one, an HTTP API address that is not one (a
port that closes without answering), and a gate host whose name does not
resolve."""

from __future__ import annotations

import argparse
import io
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import DNSLookupError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.client.errors import RequestTimeout
from daojia_msg.msgctl import cli, httpapi, oneshot
from daojia_msg.msgctl.common import CliError, Ctx, login_error
from daojia_msg.msgctl.httpapi import base_url
from daojia_msg.protocol.codes import Cmd
from tests.servers import hangup_port

R: Any = reactor


def ctx_for(*argv: str) -> Ctx:
    args: argparse.Namespace = cli.build_parser().parse_args(["stats", *argv])
    return Ctx(R, args, io.StringIO(), io.StringIO())


class BaseUrlTests(SynchronousTestCase):
    def test_host_and_port_alone_take_http_or_https(self) -> None:
        self.assertEqual(base_url(ctx_for("--http", "localhost:8080")), "http://localhost:8080")
        self.assertEqual(base_url(ctx_for("--http", "node.example:8443", "--tls")),
                         "https://node.example:8443")
        self.assertEqual(base_url(ctx_for("--http", "http://10.0.0.5:8080/")),
                         "http://10.0.0.5:8080")
        self.assertEqual(base_url(ctx_for()), "http://127.0.0.1:8080")
        self.assertEqual(base_url(ctx_for("--tls")), "https://127.0.0.1:8080")
        self.assertEqual(base_url(ctx_for("--http", "HTTPS://node.example", "--tls")),
                         "https://node.example")

    def test_another_scheme_is_one_clear_error(self) -> None:
        with self.assertRaises(CliError) as caught:
            base_url(ctx_for("--http", "ftp://127.0.0.1:8080"))
        self.assertEqual(str(caught.exception),
                         "--http: expected an http:// or https:// URL, got ftp://127.0.0.1:8080")
        self.assertEqual(caught.exception.code, 2)


class LoginErrorTests(SynchronousTestCase):
    def test_no_answer_to_login_asks_whether_it_is_the_gate(self) -> None:
        """A port that takes the bytes and never answers (the HTTP API's, say)."""
        args = cli.build_parser().parse_args(["pull", "--uid", "1", "--appcode", "1001",
                                              "--port", "8080"])
        error = login_error(Ctx(R, args, io.StringIO(), io.StringIO()),
                            RequestTimeout(Cmd.LOGIN, 1, 10))
        self.assertEqual(str(error), "login failed: no answer to LOGIN (sequenceid 1) within "
                                     "10 s (is 127.0.0.1:8080 the node's gate?)")


class Unresolvable:
    """A gate endpoint whose host name does not resolve."""

    def connect(self, factory: Any) -> Deferred[Any]:
        return fail(DNSLookupError("nosuchhost.invalid"))


class ConnectTests(TestCase):
    async def msgctl(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await cli.run(R, cli.build_parser().parse_args(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    async def test_a_gate_host_that_does_not_resolve(self) -> None:
        self.patch(oneshot, "endpoint", lambda ctx: Unresolvable())
        code, out, err = await self.msgctl("send", "--uid", "1", "--appcode", "1001", "--to", "2",
                                           "--host", "nosuchhost.invalid", "hi")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "msgctl: error: cannot connect to nosuchhost.invalid:7000: "
                              "DNS lookup failed: nosuchhost.invalid\n")

    async def test_an_http_address_that_closes_without_answering(self) -> None:
        """``--http`` pointed at a port that is not an HTTP server (the gate, say)."""
        url = f"http://127.0.0.1:{hangup_port(self)}"
        code, out, err = await self.msgctl("push", "--to", "2", "--to-appcode", "1001",
                                           "--msgtype", "5", "--http", url, "hi")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"msgctl: error: cannot reach {url}/v1/push: the connection "
                              "closed without an HTTP answer (is --http the node's HTTP API, "
                              "not its gate, or https:// with --tls?)\n")

    async def test_an_http_host_that_does_not_resolve(self) -> None:
        url = "http://nosuchhost.invalid:8080"
        agent = self.patch_agent(DNSLookupError("nosuchhost.invalid"))
        code, out, err = await self.msgctl("stats", "--http", url)
        self.assertEqual((code, out, agent), (1, "", [f"{url}/v1/stats"]))
        self.assertEqual(err, f"msgctl: error: cannot reach {url}/v1/stats: DNS lookup "
                              "failed: nosuchhost.invalid\n")

    def patch_agent(self, error: Exception) -> list[str]:
        """msgctl's HTTP client fails every request with ``error``; the URLs asked."""
        asked: list[str] = []

        class Failing:
            def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
                asked.append(url)
                return fail(error)

        self.patch(httpapi, "_client", lambda ctx: Failing())
        return asked

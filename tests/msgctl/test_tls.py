"""msgctl --tls [--ca FILE] against a real node whose gate and HTTP API are TLS:
the commands work, and a CA that did not sign the node's certificate, or a
port that is not TLS, fails with one clear line."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred

from daojia_msg.msgctl import cli
from tests.servers import hangup_port
from tests.tlsnodes import R, TLSNodeTestCase

VERIFY_FAILED = ("certificate verify failed (is --ca the CA that signed the node's "
                 "certificate?)")


class MsgctlOverTLSTests(TLSNodeTestCase):
    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.start_tls_node())

    async def msgctl(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args(argv)
        code = await cli.run(R, args, out, err)
        return code, out.getvalue(), err.getvalue()

    def gate(self, ca: str | None = None) -> tuple[str, ...]:
        return ("--port", str(self.port("gate")), "--tls", "--ca", ca or self.ca.path)

    def http(self, ca: str | None = None) -> tuple[str, ...]:
        return ("--http", f"https://127.0.0.1:{self.port('http')}", "--tls", "--ca",
                ca or self.ca.path)

    async def test_send_then_pull(self) -> None:
        code, out, err = await self.msgctl("send", "--uid", "1", "--appcode", "1001", "--to", "2",
                                           *self.gate(), "over", "TLS")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("msgid="), out)
        code, out, err = await self.msgctl("pull", "--uid", "2", "--appcode", "1001", "--ack",
                                           *self.gate())
        self.assertEqual(code, 0, err)
        self.assertIn("[1@1001 msgid=", out)
        self.assertIn("] over TLS", out)

    async def test_a_wrong_ca_fails_clearly(self) -> None:
        port = self.port("gate")
        for command in (("send", "--to", "2", "hi"), ("pull",), ("chat", "--to", "2")):
            code, out, err = await self.msgctl(*command, "--uid", "1", "--appcode", "1001",
                                               *self.gate(self.other_ca.path))
            self.assertEqual((code, out), (1, ""), command)
            self.assertEqual(err, f"msgctl: error: cannot connect to 127.0.0.1:{port} over TLS: "
                                  f"{VERIFY_FAILED}\n", command)

    async def test_a_port_that_is_not_tls(self) -> None:
        port = hangup_port(self)
        code, _, err = await self.msgctl("pull", "--uid", "1", "--appcode", "1001",
                                         "--port", str(port), "--tls", "--ca", self.ca.path)
        self.assertEqual(code, 1)
        self.assertEqual(err, f"msgctl: error: cannot connect to 127.0.0.1:{port} over TLS: the "
                              "connection closed during the handshake (is it a TLS port?)\n")

    async def test_push_and_stats_over_https(self) -> None:
        code, out, err = await self.msgctl("push", "--to", "2", "--to-appcode", "1001",
                                           "--msgtype", "5", *self.http(), "hello")
        self.assertEqual(code, 0, err)
        self.assertIn("msgid", json.loads(out))
        code, out, err = await self.msgctl("stats", "--json", *self.http())
        self.assertEqual(code, 0, err)
        self.assertIn("totals", json.loads(out))

    async def test_push_with_a_wrong_ca_fails_clearly(self) -> None:
        url = f"https://127.0.0.1:{self.port('http')}"
        code, out, err = await self.msgctl("push", "--to", "2", "--to-appcode", "1001",
                                           "--msgtype", "5", *self.http(self.other_ca.path), "x")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"msgctl: error: cannot reach {url}/v1/push over TLS: "
                              f"{VERIFY_FAILED}\n")

    async def test_options_that_do_not_fit(self) -> None:
        code, _, err = await self.msgctl("pull", "--uid", "1", "--appcode", "1001",
                                         "--ca", self.ca.path)
        self.assertEqual((code, err), (2, "msgctl: error: --ca needs --tls\n"))
        code, _, err = await self.msgctl("stats", "--tls", "--http", "http://127.0.0.1:8080")
        self.assertEqual((code, err), (2, "msgctl: error: --tls needs an https:// URL, got "
                                          "--http http://127.0.0.1:8080\n"))
        code, _, err = await self.msgctl("pull", "--uid", "1", "--appcode", "1001", "--tls",
                                         "--ca", "no-such-ca.pem")
        self.assertEqual(code, 2)
        self.assertEqual(err, "msgctl: error: --ca: cannot read the CA certificate "
                              "'no-such-ca.pem': No such file or directory\n")

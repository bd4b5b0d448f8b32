"""msgplatform-bench --tls [--ca FILE] against a real node whose gate is TLS:
logins and held connections over TLS (counts only, never speed), and a CA
that did not sign the node's certificate stopping the run with one line."""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from daojia_msg.bench import cli, runner
from daojia_msg.bench.gatescenarios import Connect, Login
from daojia_msg.bench.wire import TLSRefused
from tests.tlsnodes import R, TLSNodeTestCase


class BenchOverTLSTests(TLSNodeTestCase):
    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.start_tls_node())

    def argv(self, scenario: str, ca: str | None = None) -> list[str]:
        return [scenario, "--gate", f"127.0.0.1:{self.port('gate')}", "--tls",
                "--ca", ca or self.ca.path, "--no-progress"]

    def spec(self, scenario: str, ca: str | None = None, **kw: Any) -> dict[str, Any]:
        args = cli.build_parser().parse_args([*self.argv(scenario, ca), "--uid-base", "7000"])
        [spec] = runner.worker_specs(args)
        spec.update(kw)
        return spec

    async def test_logins_over_tls(self) -> None:
        scenario = Login(R, self.spec("login", hi=5))
        self.addCleanup(scenario.close)
        await scenario.check_target()
        await scenario.setup()
        result = await scenario.run()
        self.assertEqual((result["ok"], result["failed"]), (5, {}))
        transport: Any = scenario.clients[0].transport
        self.assertIn(transport.getHandle().get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))

    async def test_idle_connections_over_tls(self) -> None:
        scenario = Connect(R, self.spec("connect", hi=4))
        self.addCleanup(scenario.close)
        setup = await scenario.setup()
        self.assertEqual((setup["logged_in"], setup["failed"]), (4, {}))
        self.assertEqual(len(self.node.gate.connections), 4)

    async def test_another_ca_stops_the_run_before_it_starts(self) -> None:
        scenario = Login(R, self.spec("login", ca=self.other_ca.path, hi=5))
        e = await self.assertFailure(Deferred.fromCoroutine(scenario.check_target()), TLSRefused)
        self.assertEqual(str(e), f"TLS handshake with 127.0.0.1:{self.port('gate')} failed: "
                                 "certificate verify failed (is --ca the CA that signed the "
                                 "node's certificate?)")

    async def test_the_command_with_worker_processes(self) -> None:
        out = os.path.abspath(self.mktemp())
        argv = [*self.argv("login"), "-n", "10", "--json", out]
        self.assertEqual(await deferToThread(cli.main, argv), 0)
        with open(out) as f:
            self.assertEqual(json.load(f)["results"]["ok"], 10)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        code = await deferToThread(cli.main, [*self.argv("login", self.other_ca.path), "-n", "10"])
        self.assertEqual(code, 1)
        self.assertIn("msgplatform-bench: worker 0: TLS handshake with 127.0.0.1:"
                      f"{self.port('gate')} failed: certificate verify failed", stderr.getvalue())

    def test_ca_goes_with_tls(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        with self.assertRaises(SystemExit) as caught:
            cli.main(["login", "--ca", "ca.pem"])
        self.assertEqual(caught.exception.code, 2)

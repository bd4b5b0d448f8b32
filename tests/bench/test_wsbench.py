"""msgplatform-bench --transport ws against a real node whose gate also
listens over WebSocket (``tcp:0``): short runs complete with every message
counted (counts only, never speed), the node holds WebSocket connections,
wss verifies the node's certificate, and a target that is no WebSocket gate
stops the run with one line."""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from daojia_msg.bench import cli, runner
from daojia_msg.bench.gatescenarios import C2C, Connect, Login
from daojia_msg.bench.wswire import WSRefused
from daojia_msg.gate.websocket import FrameTransport
from tests.gate.wshelpers import WSNodeTestCase
from tests.nodes import R
from tests.tlscerts import CA
from tests.tlsnodes import ssl_description


class BenchOverWebSocketTests(WSNodeTestCase):
    def argv(self, scenario: str, *more: str) -> list[str]:
        return [scenario, "--transport", "ws", "--ws", self.host(),
                "--gate", f"127.0.0.1:{self.port('gate')}", "--no-progress", *more]

    def spec(self, scenario: str, *more: str, **kw: Any) -> dict[str, Any]:
        args = cli.build_parser().parse_args(self.argv(scenario, "--uid-base", "9000", *more))
        [spec] = runner.worker_specs(args)
        spec.update(kw)
        return spec

    def websockets(self) -> list[bool]:
        """For each of the node's gate connections: whether it is a WebSocket."""
        return [isinstance(c.transport, FrameTransport) for c in self.node.gate.connections]

    async def test_c2c_open_loop_counts_add_up(self) -> None:
        await self.start_node()
        scenario = C2C(R, self.spec("c2c", hi=2, duration=0.2, rate=100.0, drain_s=10))
        self.addCleanup(scenario.close)
        setup = await scenario.setup()
        self.assertEqual((setup["pairs"], setup["failed"]), (2, {}))
        self.assertEqual(self.websockets(), [True] * 4)
        result = await scenario.run()
        self.assertEqual(result["sent"], 20)  # 100/s for 0.2 s, open loop
        self.assertEqual((result["ok"], result["pushes"], result["acked"], result["errors"]),
                         (20, 20, 20, {}))
        self.assertEqual(len(result["push_latency_us"]), 20)

    async def test_idle_websockets_held_then_reset(self) -> None:
        await self.start_node()
        scenario = Connect(R, self.spec("connect", hi=4))
        setup = await scenario.setup()
        self.assertEqual((setup["logged_in"], setup["failed"]), (4, {}))
        self.assertEqual(self.websockets(), [True] * 4)
        scenario.stop()
        self.assertEqual((await scenario.run())["still_connected"], 4)
        scenario.close()
        await self.node.gate.when_empty().addTimeout(10, R)

    async def test_wss_logins(self) -> None:
        ca = CA(os.path.abspath(self.mktemp()))
        await self.start_node(ws=ssl_description(ca.issue("msgplatform node")))
        scenario = Login(R, self.spec("login", "--tls", "--ca", ca.path, hi=3))
        self.addCleanup(scenario.close)
        await scenario.check_target()
        await scenario.setup()
        result = await scenario.run()
        self.assertEqual((result["ok"], result["failed"]), (3, {}))
        self.assertEqual(self.websockets(), [True] * 3)

    async def test_the_command_with_worker_processes(self) -> None:
        """A short c2c run over WebSocket, two worker processes: nonzero results."""
        await self.start_node()
        out = os.path.abspath(self.mktemp())
        argv = self.argv("c2c", "--pairs", "2", "--rate", "100", "--duration", "0.2",
                         "--procs", "2", "--json", out)
        self.assertEqual(await deferToThread(cli.main, argv), 0)
        with open(out) as f:
            doc = json.load(f)
        res = doc["results"]
        self.assertEqual((res["sent"], res["ok"], res["acked"], res["pairs"]), (20, 20, 20, 2))
        self.assertGreater(res["acked_per_s"], 0)
        self.assertEqual((doc["parameters"]["transport"], doc["parameters"]["ws"]),
                         ("ws", self.host()))

    async def test_not_a_websocket_gate_stops_the_run(self) -> None:
        await self.start_node()
        spec = self.spec("login", hi=1, gate_port=self.port("gate"))
        scenario = Login(R, spec)
        e = await self.assertFailure(Deferred.fromCoroutine(scenario.check_target()), WSRefused)
        self.assertIn(f"no WebSocket gate at 127.0.0.1:{self.port('gate')}/v1/ws: ", str(e))
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        argv = [*self.argv("login", "-n", "2")]
        argv[argv.index("--ws") + 1] = f"127.0.0.1:{self.port('gate')}"
        self.assertEqual(await deferToThread(cli.main, argv), 1)
        self.assertIn("msgplatform-bench: worker 0: no WebSocket gate at", stderr.getvalue())

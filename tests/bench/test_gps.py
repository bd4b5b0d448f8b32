"""The bench's C2S runs: the C2S-only baseline on msgtype 2, and ``--gps``
(moving positions on the demo's geo msgtype 1), against a real node."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from daojia_msg.bench import cli, runner
from daojia_msg.bench.gatescenarios import C2S, GPS_CENTRE, gps_content
from daojia_msg.core.geo import distance_m, parse_position
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.nodes import NodeTestCase

R: Any = reactor


def specs(*argv: str) -> list[dict[str, Any]]:
    return runner.worker_specs(cli.build_parser().parse_args(["c2s", *argv]))


class GpsTests(NodeTestCase):
    def test_msgtypes(self) -> None:
        [plain] = specs("--procs", "1")
        [gps] = specs("--gps", "--procs", "1")
        [given] = specs("--gps", "--msgtype", "9", "--procs", "1")
        self.assertEqual([(s["msgtype"], s["gps"]) for s in (plain, gps, given)],
                         [(2, False), (1, True), (9, True)])

    def test_positions_move(self) -> None:
        first, later = parse_position(gps_content(7, 0)), parse_position(gps_content(7, 100))
        self.assertAlmostEqual(later[0] - first[0], 0.001, places=6)
        self.assertNotEqual(parse_position(gps_content(8, 0)), first)

    def test_the_grid_is_centred_on_the_square(self) -> None:
        """A run's first 50 drivers (--conns 50, a fresh block of uids) are
        within the docs' 3,000 m query at People's Square; the 10,000 cells
        of the grid are centred on it and ~100 m apart."""
        base = 10**9 * 7
        first = [parse_position(gps_content(base + i, 0)) for i in range(50)]
        self.assertLess(max(distance_m(*GPS_CENTRE, *p) for p in first), 3000)
        self.assertEqual(parse_position(gps_content(base, 0)), GPS_CENTRE)
        cells = [parse_position(gps_content(base + i, 0)) for i in range(10_000)]
        self.assertEqual(len(set(cells)), 10_000)
        for axis in (0, 1):
            middle = (min(p[axis] for p in cells) + max(p[axis] for p in cells)) / 2
            self.assertLess(abs(middle - GPS_CENTRE[axis]), 0.0006)  # half a cell
        for neighbour in (1, 100):  # the next column, the next row
            self.assertLess(abs(distance_m(*cells[0], *cells[neighbour]) - 100), 2)

    async def run_c2s(self, *argv: str) -> dict[str, Any]:
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)
        args = cli.build_parser().parse_args(
            ["c2s", "--gate", f"127.0.0.1:{self.port('gate')}", "--uid-base", "6000",
             "--appcode", "1002", "--conns", "2", "--procs", "1", *argv])
        [spec] = runner.worker_specs(args)
        spec.update(duration=0.2, rate=50.0, drain_s=10)
        scenario = C2S(R, spec)
        self.addCleanup(scenario.close)
        await scenario.setup()
        return await scenario.run()

    async def test_gps_run_is_accepted_and_indexed(self) -> None:
        result = await self.run_c2s("--gps")
        self.assertEqual((result["sent"], result["ok"], result["errors"]), (10, 10, {}))
        lat, lon = parse_position(gps_content(6000, 0))
        found = await Deferred.fromCoroutine(self.node.logic.nearby(1002, lat, lon, 1000, 10))
        self.assertEqual(sorted(p.uid for p in found), [6000, 6001])
        [(payload, _), *_] = self.node.router.buses[""].topics["gps"]
        message = pb.Message()
        message.ParseFromString(payload)
        parse_position(message.content)

    async def test_baseline_on_msgtype_2(self) -> None:
        result = await self.run_c2s()
        self.assertEqual((result["ok"], result["errors"]), (10, {}))
        self.assertNotIn("gps", self.node.router.buses[""].topics)

"""msgplatform-bench: the summary math, the raw client, the options, the
JSON shape, and two tiny runs against a real node (counts only, never speed)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import cli, report, runner, stats
from daojia_msg.bench.gatescenarios import C2C, REFUSED_BACKOFF_S, login_order
from daojia_msg.bench.httpscenarios import Pull, Push
from daojia_msg.bench.report import HELD_BACK
from daojia_msg.bench.wire import BenchClient, result_code, source_address
from daojia_msg.client.backoff import SendBackoff
from daojia_msg.protocol.codec import FrameDecoder, encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import sent
from tests.helpers import Stack
from tests.nodes import NodeTestCase

R: Any = reactor


class StatsTests(SynchronousTestCase):
    def test_percentiles_in_ms(self) -> None:
        summary = stats.latency_summary([i * 1000 for i in range(1, 1001)])  # 1..1000 ms
        self.assertEqual(summary["count"], 1000)
        self.assertEqual(summary["p50_ms"], 500.5)
        self.assertEqual(summary["p99_ms"], 990.01)
        self.assertEqual(summary["p99.9_ms"], 999.001)
        self.assertEqual((summary["mean_ms"], summary["max_ms"]), (500.5, 1000.0))

    def test_empty_summary_is_none_not_zero(self) -> None:
        summary = stats.latency_summary([])
        self.assertEqual(summary["count"], 0)
        self.assertIsNone(summary["p99_ms"])
        self.assertIsNone(summary["mean_ms"])

    def test_rate_and_window(self) -> None:
        self.assertEqual(stats.rate(100, 4), 25.0)
        self.assertIsNone(stats.rate(5, 0))
        reports = [{"t_start": 10.0, "t_end": 12.0}, {"t_start": 9.5, "t_end": 11.0}, {}]
        self.assertEqual(stats.window(reports), 2.5)
        self.assertEqual(stats.window([]), 0.0)

    def test_cpu_verdict(self) -> None:
        self.assertEqual(stats.cpu_share(0.5, 2.0), 25.0)
        self.assertIsNone(stats.cpu_share(1.0, 0))
        calm = stats.generator_verdict([{"cpu_pct": 20.0}, {"cpu_pct": 40.0}])
        self.assertEqual((calm["max_cpu_pct"], calm["sum_cpu_pct"], calm["suspect"]),
                         (40.0, 60.0, False))
        self.assertTrue(stats.generator_verdict([{"cpu_pct": 97.0}])["suspect"])
        self.assertFalse(stats.generator_verdict([])["suspect"])

    def test_split_sums_to_total(self) -> None:
        self.assertEqual(stats.split(10, 3), [4, 3, 3])
        self.assertEqual(stats.split(2, 4), [1, 1, 0, 0])
        self.assertEqual(sum(stats.split(15001, 7)), 15001)


class SourceAddressTests(SynchronousTestCase):
    def test_spread_over_addresses(self) -> None:
        self.assertEqual(source_address(0, 4500), "127.0.0.2")
        self.assertEqual(source_address(4499, 4500), "127.0.0.2")
        self.assertEqual(source_address(4500, 4500), "127.0.0.3")
        self.assertEqual(source_address(14999, 4500), "127.0.0.5")

    def test_runs_out(self) -> None:
        self.assertRaises(ValueError, source_address, 300, 1)


class BenchClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pushes: list[Any] = []
        self.reads: list[BenchClient] = []
        self.client = BenchClient(7, 1001, on_push=lambda c, f: self.pushes.append(f))
        self.client.after_read = self.reads.append
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def sent(self) -> list[Any]:
        decoder = FrameDecoder(1 << 20)
        decoder.feed(self.transport.value())
        self.transport.clear()
        frames = []
        while (f := decoder.next()) is not None:
            frames.append(f)
        return frames

    def test_request_is_one_frame_answer_goes_to_callback(self) -> None:
        answers: list[Any] = []
        seq = self.client.request(Cmd.C2S, b"body", answers.append, msgtype=1)
        [frame] = self.sent()
        self.assertEqual((frame.cmd, frame.appcode, frame.msgtype, frame.uid, frame.sequenceid,
                          frame.body), (Cmd.C2S, 1001, 1, 7, seq, b"body"))
        body = pb.Result(code=6).SerializeToString()
        self.client.dataReceived(encode(Cmd.C2S | RESPONSE_BIT, 1001, 1, 7, seq, body))
        [answer] = answers
        self.assertEqual(result_code(answer), 6)
        self.assertEqual(self.client.waiting, {})

    def test_login_parses_the_response(self) -> None:
        d = self.client.login("tok")
        [frame] = self.sent()
        req = pb.LoginRequest()
        req.ParseFromString(frame.body)
        self.assertEqual((frame.cmd, req.token), (Cmd.LOGIN, "tok"))
        body = pb.LoginResponse(code=0, offline_count=3).SerializeToString()
        data = encode(Cmd.LOGIN | RESPONSE_BIT, 1001, 0, 7, frame.sequenceid, body)
        for i in range(len(data)):  # byte by byte
            self.client.dataReceived(data[i:i + 1])
        self.assertEqual(self.successResultOf(d).offline_count, 3)

    def test_pushes_kickout_and_after_read(self) -> None:
        push = encode(Cmd.C2C, 1001, 7, 7, 1, pb.Message(msgid=5).SerializeToString())
        kick = encode(Cmd.KICKOUT, 1001, 0, 7, 2, pb.Kickout(reason_code=1).SerializeToString())
        self.client.dataReceived(push + push + kick)
        self.assertEqual(len(self.pushes), 2)
        self.assertEqual(self.client.kicked, 1)
        self.assertEqual(self.reads, [self.client])


class AgainstGateTests(SynchronousTestCase):
    """The raw client against the real gate and logic (fake clock, iosim)."""

    def connect(self, stack: Stack, uid: int) -> tuple[BenchClient, iosim.IOPump, list[Any]]:
        pushes: list[Any] = []
        client = BenchClient(uid, 1001, on_push=lambda c, f: pushes.append(f))
        server = stack.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 40000 + uid))
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True,
                                        peerAddress=IPv4Address("TCP", "127.0.0.2", 40000 + uid)),
            client, iosim.FakeTransport(client, False), greet=False, clock=stack.clock)
        d = client.login(stack.token(uid))
        pump.flush()
        self.assertEqual(self.successResultOf(d).code, 0)
        return client, pump, pushes

    def test_c2c_pushed_and_acked(self) -> None:
        stack = Stack()
        alice, apump, _ = self.connect(stack, 1)
        bob, bpump, pushes = self.connect(stack, 2)
        body = pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x").SerializeToString()
        answers: list[Any] = []
        alice.request(Cmd.C2C, body, answers.append, 7)
        apump.flush()
        bpump.flush()
        self.assertEqual([result_code(a) for a in answers], [0])
        [push] = pushes
        msg = pb.Message()
        msg.ParseFromString(push.body)
        acks: list[Any] = []
        bob.ack([msg.msgid], acks.append)
        bpump.flush()
        self.assertEqual([result_code(a) for a in acks], [0])
        left = bob.call(Cmd.PULL, pb.PullRequest().SerializeToString(), pb.PullResponse)
        bpump.flush()
        self.assertEqual(list(self.successResultOf(left).messages), [])


class ClosedLoopBackoffTests(SynchronousTestCase):
    def test_rate_limited_is_resent_after_a_backoff(self) -> None:
        """Closed loop: the next request goes at once after an answer, after
        REFUSED_BACKOFF_S after a RATE_LIMITED one."""
        clock = Clock()
        scenario = C2C(clock, {"gate_host": "127.0.0.1", "gate_port": 1})
        sent: list[str] = []
        scenario.again(Code.OK, lambda target, _us: sent.append(target), "a")
        scenario.again(Code.RATE_LIMITED, lambda target, _us: sent.append(target), "b")
        self.assertEqual(sent, ["a"])
        clock.advance(REFUSED_BACKOFF_S)
        self.assertEqual(sent, ["a", "b"])


def result_frame(code: int) -> Any:
    decoder = FrameDecoder(1 << 16)
    decoder.feed(encode(Cmd.ACK | RESPONSE_BIT, 1001, 0, 11, 1,
                        pb.Result(code=code).SerializeToString()))
    return decoder.next()


class DrainTests(SynchronousTestCase):
    """When a C2C run's drain is over: every C2C answered, every message
    answered OK pushed, every ACK answered; a refused ACK ends its wait
    (it counts under ``errors["ack"]``) but is no C2C answer."""

    def scenario(self) -> C2C:
        scenario = C2C(Clock(), {"appcode": 1001})
        scenario.pushes = scenario.acked = scenario.duplicates = scenario.acks_sent = 0
        scenario.sent, scenario.ok, scenario.errors = 3, 3, {}
        return scenario

    def test_a_refused_ack_ends_its_wait(self) -> None:
        scenario = self.scenario()
        scenario.pushes = 3
        acks = [scenario._make_ack_cb(1) for _ in range(4)]  # one msgid pushed twice
        acks[0](result_frame(Code.OK))
        acks[1](result_frame(Code.OK))
        acks[2](result_frame(Code.OK))
        self.assertFalse(scenario._drained())
        acks[3](result_frame(Code.BAD_REQUEST))
        self.assertTrue(scenario._drained())
        self.assertEqual((scenario.acked, scenario.errors), (3, {"ack": 1}))

    def test_a_refused_ack_is_no_c2c_answer(self) -> None:
        scenario = self.scenario()
        scenario.ok, scenario.pushes = 2, 2
        ack = scenario._make_ack_cb(2)
        ack(result_frame(Code.BAD_REQUEST))
        self.assertFalse(scenario._drained())  # the third C2C is not answered
        scenario.errors["code 6"] = 1
        self.assertTrue(scenario._drained())

    def test_a_message_answered_ok_but_not_pushed_is_waited_for(self) -> None:
        scenario = self.scenario()
        scenario.pushes = 2
        for _ in range(2):
            scenario._make_ack_cb(1)(result_frame(Code.OK))
        self.assertFalse(scenario._drained())


class OpenLoopBackoffTests(SynchronousTestCase):
    """Open loop with ``backoff``: a sender refused RATE_LIMITED refuses its own
    C2C for the pause (counted ``held back``, nothing written), as the client
    library does; without it, every C2C goes out."""

    def scenario(self, backoff: bool) -> tuple[C2C, BenchClient, StringTransport]:
        clock = Clock()
        scenario = C2C(clock, {"appcode": 1001, "rate": 100.0, "duration": 1.0,
                               "backoff": backoff})
        sender, receiver = BenchClient(10, 1001), BenchClient(11, 1001)
        transport = StringTransport()
        sender.makeConnection(transport)
        scenario.pairs = [(sender, receiver)]
        scenario.content_pad, scenario.run_tag = b"", "t"
        scenario.sent = scenario.ok = 0
        scenario.errors, scenario.latencies, scenario.refused_latencies = {}, [], []
        scenario.deadline, scenario.closed = 0.0, False
        scenario.backoffs = ({sender: SendBackoff(clock, rng=lambda: 1.0)} if backoff else {})
        return scenario, sender, transport

    def refuse(self, sender: BenchClient, frame: Any) -> None:
        body = pb.Result(code=Code.RATE_LIMITED).SerializeToString()
        sender.dataReceived(encode(Cmd.C2C | RESPONSE_BIT, 1001, 7, 10, frame.sequenceid, body))

    def test_paused_sender_holds_back(self) -> None:
        scenario, sender, transport = self.scenario(backoff=True)
        clock = scenario.reactor
        pair = scenario.pairs[0]
        scenario.send(pair, 0)
        scenario.send(pair, 0)
        first, second = sent(transport)
        clock.advance(0.01)
        self.refuse(sender, first)  # a pause of 50 ms, from 0.01 s
        self.refuse(sender, second)  # in flight before the pause: no longer pause
        scenario.send(pair, 0)
        clock.advance(0.049)
        scenario.send(pair, 0)
        self.assertEqual(sent(transport), [])
        self.assertEqual(scenario.errors, {"code 6": 2, HELD_BACK: 2})
        clock.advance(0.002)  # the pause is over
        scenario.send(pair, 0)
        [third] = sent(transport)
        body = pb.Result(code=0, msgid=1).SerializeToString()
        sender.dataReceived(encode(Cmd.C2C | RESPONSE_BIT, 1001, 7, 10, third.sequenceid, body))
        self.assertEqual((scenario.sent, scenario.ok), (5, 1))
        self.assertIn(HELD_BACK, report.REFUSALS)

    def test_without_backoff_every_frame_goes(self) -> None:
        scenario, sender, transport = self.scenario(backoff=False)
        pair = scenario.pairs[0]
        scenario.send(pair, 0)
        self.refuse(sender, sent(transport)[0])
        for _ in range(3):
            scenario.send(pair, 0)
        self.assertEqual(len(sent(transport)), 3)
        self.assertEqual(scenario.errors, {"code 6": 1})

    def test_option_reaches_the_workers(self) -> None:
        args = cli.build_parser().parse_args(["c2c", "--rate", "100", "--backoff"])
        self.assertTrue(runner.worker_specs(args)[0]["backoff"])
        args = cli.build_parser().parse_args(["overload", "--backoff"])
        self.assertTrue(args.backoff)


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> argparse.Namespace:
        return cli.build_parser().parse_args(list(argv))

    def test_c2c_specs_split_pairs_and_rate(self) -> None:
        args = self.parse("c2c", "--pairs", "5", "--rate", "1000", "--procs", "2",
                          "--gate", "127.0.0.1:7001", "--uid-base", "100")
        specs = runner.worker_specs(args)
        self.assertEqual([(s["lo"], s["hi"]) for s in specs], [(0, 3), (3, 5)])
        self.assertEqual([s["rate"] for s in specs], [600.0, 400.0])
        self.assertEqual(specs[0]["gate_port"], 7001)
        self.assertEqual(specs[0]["secret"], "demo-secret-1001")
        self.assertEqual(specs[0]["api_key"], "demo-key-1001")

    def test_pull_uses_one_worker(self) -> None:
        specs = runner.worker_specs(self.parse("pull", "-n", "50", "--procs", "4"))
        self.assertEqual(len(specs), 1)
        self.assertEqual(specs[0]["n"], 50)

    def test_push_splits_rate_over_procs(self) -> None:
        specs = runner.worker_specs(self.parse("push", "--batch", "10", "--rate", "900",
                                            "--procs", "3", "--concurrency", "9"))
        self.assertEqual([(s["rate"], s["concurrency"], s["batch"]) for s in specs],
                         [(300.0, 3, 10)] * 3)

    def test_bounds_and_loopback_only(self) -> None:
        for argv in (["c2c", "--gate", "10.1.2.3:7000"], ["push", "--http", "http://example.com"],
                     ["connect", "-n", "1000000"], ["c2c", "--duration", "3600"],
                     ["push", "--batch", "1001"], ["c2s", "--procs", "0"]):
            self.assertRaises(SystemExit, self.parse, *argv)

    def test_node_pids(self) -> None:
        args = self.parse("c2c", "--node-pid", "12,34")
        self.assertEqual((args.node_pids, args.node_pid), ((12, 34), 12))
        one = self.parse("c2c", "--node-pid", "56")
        self.assertEqual((one.node_pids, one.node_pid), ((56,), 56))
        self.assertIsNone(self.parse("c2c").node_pid)
        for bad in ("x", "1,,2", "0", "-3"):
            self.assertRaises(SystemExit, self.parse, "c2c", "--node-pid", bad)

    def test_rate_limit_warning(self) -> None:
        self.assertEqual(runner.check(self.parse("c2s", "--conns", "100", "--rate", "10000")), [])
        [warning] = runner.check(self.parse("c2s", "--conns", "10", "--rate", "10000"))
        self.assertIn("1000 frames/s per connection", warning)


class ReportTests(SynchronousTestCase):
    def doc(self) -> dict[str, Any]:
        setups = [{"pairs": 1}, {"pairs": 1}]
        reports = [
            {"t_start": 1.0, "t_send_end": 2.0, "t_end": 2.5, "sent": 10, "ok": 10, "errors": {},
             "pushes": 10, "acked": 10, "duplicates": 0, "missing_results": 0,
             "latency_us": [1000] * 10, "push_latency_us": [2000] * 10},
            {"t_start": 1.5, "t_send_end": 2.5, "t_end": 3.0, "sent": 10, "ok": 9,
             "errors": {"code 6": 1}, "pushes": 9, "acked": 9, "duplicates": 1,
             "missing_results": 0, "latency_us": [3000] * 9, "push_latency_us": [4000] * 9},
        ]
        return {"scenario": "c2c", "parameters": {"pairs": 2},
                "results": report.summarize("c2c", setups, reports),
                "generator": {"procs": [{"pid": 1, "cpu_s": 1.0, "wall_s": 2.0, "cpu_pct": 50.0}],
                              **stats.generator_verdict([{"cpu_pct": 50.0}])},
                "node": {"pid": None}, "git_commit": None, "machine": {"nproc": 2}}

    def test_c2c_summary(self) -> None:
        res = self.doc()["results"]
        self.assertEqual((res["sent"], res["ok"], res["pushes"], res["acked"], res["pairs"]),
                         (20, 19, 19, 19, 2))
        self.assertEqual(res["errors"], {"code 6": 1})
        self.assertEqual(res["elapsed_s"], 2.0)
        self.assertEqual(res["acked_per_s"], 9.5)
        self.assertEqual(res["result_latency"]["count"], 19)
        self.assertEqual(res["push_latency"]["p50_ms"], 2.0)

    def test_goodput_and_refusals(self) -> None:
        """Goodput: pushes within the bound, per second of the send window
        (here 1.5 s); refusals: RATE_LIMITED and UNAVAILABLE added up, with
        how fast they were answered."""
        setups = [{"pairs": 1}]
        reports = [{"t_start": 1.0, "t_send_end": 2.5, "t_end": 4.0, "sent": 6, "ok": 3,
                    "errors": {"code 6": 2, "code 11": 1, "ack": 1}, "pushes": 3, "acked": 3,
                    "push_latency_us": [1000, 900_000, 1_500_000],
                    "refused_latency_us": [2000, 4000, 6000]}]
        res = report.summarize("c2c", setups, reports, goodput_within_s=1.0)
        self.assertEqual((res["goodput_per_s"], res["refused"], res["refused_per_s"]),
                         (1.3, 3, 2.0))
        self.assertEqual(res["refusal_latency"]["p50_ms"], 4.0)
        self.assertEqual(report.summarize("c2c", setups, reports, 2.0)["goodput_per_s"], 2.0)
        push = report.summarize("push", [{}], [{
            "t_start": 0.0, "t_send_end": 2.0, "t_end": 3.0, "requests": 4, "sent": 4, "ok": 2,
            "good": 1, "errors": {"http 429": 2}, "latency_us": [1, 2],
            "refused_latency_us": [5000, 7000]}])
        self.assertEqual((push["offered_per_s"], push["goodput_per_s"], push["refused"]),
                         (2.0, 0.5, 2))
        self.assertEqual(push["refusal_latency"]["max_ms"], 7.0)

    def test_json_shape_and_table(self) -> None:
        doc = self.doc()
        text = json.dumps(runner.strip_samples(doc))
        back = json.loads(text)
        self.assertEqual(set(back), {"scenario", "parameters", "results", "generator", "node",
                                     "git_commit", "machine"})
        self.assertNotIn("latency_us", text)
        rendered = cli.render(doc)
        self.assertIn("acked_per_s", rendered)
        self.assertIn("push_latency.p99.9_ms", rendered)
        self.assertIn("generator.suspect", rendered)

    def test_calibration(self) -> None:
        """The median of the runs, in ms, of work that takes real time."""
        self.assertGreater(report._calibration_work(), 0)
        times = iter([10.0, 10.5, 20.0, 20.004, 30.0, 30.25])
        self.patch(report.time, "perf_counter", lambda: next(times))
        self.patch(report, "_calibration_work", lambda: 0)
        self.assertEqual(report.calibrate(repeat=3), 250.0)
        facts = report.machine_facts(4.0, 5.5)
        self.assertEqual((facts["nproc"], facts["calibration_ms"], facts["calibration_after_ms"]),
                         (os.cpu_count(), 4.0, 5.5))
        self.assertEqual(len(facts["loadavg"]), 3)


class LoginOrderTests(SynchronousTestCase):
    """Behind a balancer that takes turns, the two of a C2C pair share a node
    as often as phones placed at random do."""

    @staticmethod
    def together(order: list[Any], nodes: int = 2) -> float:
        """The share of pairs (sender uid even, receiver the next) that a
        balancer giving connection i to node i % nodes puts on one node."""
        node = {job[1]: i % nodes for i, job in enumerate(order)}
        senders = [uid for uid in node if uid % 2 == 0]
        return sum(node[uid] == node[uid + 1] for uid in senders) / len(senders)

    def test_pairs_share_a_node_as_at_random(self) -> None:
        jobs = [(i, 1000 + i, "token", None) for i in range(400)]
        self.assertEqual(self.together(jobs), 0.0)  # in turn, every pair is split
        order = login_order(jobs, 7)
        self.assertEqual(sorted(order, key=lambda j: j[1]), jobs)
        self.assertEqual(order, login_order(jobs, 7))
        self.assertNotEqual(order, login_order(jobs, 8))
        self.assertTrue(0.4 < self.together(order) < 0.6, self.together(order))
        self.assertTrue(0.25 < self.together(order, 3) < 0.42, self.together(order, 3))


class SmokeTests(NodeTestCase):
    """Tiny runs against a real node on tcp:0. Counts only, never speed."""

    async def asyncSetUp(self) -> None:
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)

    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.asyncSetUp())

    def spec(self, scenario: str, **kw: Any) -> dict[str, Any]:
        args = cli.build_parser().parse_args(
            [scenario, "--gate", f"127.0.0.1:{self.port('gate')}",
             "--http", f"http://127.0.0.1:{self.port('http')}", "--uid-base", "5000"])
        [spec] = runner.worker_specs(args)
        spec.update(kw)
        return spec

    async def test_c2c_open_loop_counts_add_up(self) -> None:
        scenario = C2C(R, self.spec("c2c", hi=2, duration=0.2, rate=100.0, drain_s=10))
        self.addCleanup(scenario.close)
        setup = await scenario.setup()
        self.assertEqual((setup["pairs"], setup["failed"]), (2, {}))
        result = await scenario.run()
        self.assertEqual(result["sent"], 20)  # 100/s for 0.2 s, open loop
        self.assertEqual((result["ok"], result["pushes"], result["acked"], result["errors"]),
                         (20, 20, 20, {}))
        self.assertEqual(len(result["push_latency_us"]), 20)
        self.assertEqual(len(result["send_lag_us"]), 20)  # how late each left
        self.assertTrue(all(lag >= 0 for lag in result["send_lag_us"]))

    async def test_pull_drains_the_backlog(self) -> None:
        scenario = Pull(R, self.spec("pull", n=150, page=100))
        self.addCleanup(scenario.close)
        self.assertEqual((await scenario.setup())["seeded"], 150)
        result = await scenario.run()
        self.assertEqual((result["pulled"], result["acked"], result["pages"],
                          result["left_after"]), (150, 150, 2, 0))

    async def test_push_single_and_batched(self) -> None:
        """The raw HTTP generator against a real node: every push answered and counted."""
        for batch, rate in ((1, 100.0), (10, 0.0)):
            scenario = Push(R, self.spec("push", batch=batch, duration=0.2, rate=rate,
                                         concurrency=2, drain_s=10))
            self.addCleanup(scenario.close)
            await scenario.setup()
            result = await scenario.run()
            self.assertEqual(result["errors"], {})
            self.assertEqual(result["ok"], result["sent"])
            self.assertEqual(result["requests"] * batch, result["sent"])
            self.assertGreater(result["sent"], 0)
            if batch == 1:
                self.assertLessEqual(result["sent"], 20)  # 100/s for 0.2 s, open loop
            await scenario.http.close()

    async def test_cli_with_worker_processes(self) -> None:
        out = os.path.abspath(self.mktemp())
        argv = ["c2c", "--gate", f"127.0.0.1:{self.port('gate')}", "--pairs", "2", "--rate",
                "100", "--duration", "0.2", "--procs", "2", "--no-progress", "--json", out]
        self.assertEqual(await deferToThread(cli.main, argv), 0)
        with open(out) as f:
            doc = json.load(f)
        res = doc["results"]
        self.assertEqual((res["sent"], res["ok"], res["acked"]), (20, 20, 20))
        self.assertEqual(len(doc["generator"]["procs"]), 2)
        self.assertEqual(len(doc["generator"]["setup_procs"]), 2)
        self.assertIn("nproc", doc["machine"])
        self.assertGreater(doc["machine"]["calibration_ms"], 0)
        self.assertGreater(doc["machine"]["calibration_after_ms"], 0)


class PreflightTests(SynchronousTestCase):
    """A run against an address nothing listens on, or with a ``--node-pid``
    that is no process, is one line and exit 1 before any worker starts."""

    def main(self, *argv: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main([*argv, "--no-progress"])
        return code, err.getvalue()

    def closed_port(self) -> int:
        with socket.create_server(("127.0.0.1", 0)) as gone:
            return int(gone.getsockname()[1])

    def test_nothing_at_the_gate(self) -> None:
        port = self.closed_port()
        for scenario in (["c2c", "--pairs", "1"], ["login", "-n", "1"], ["c2s", "--conns", "1"]):
            self.assertEqual(self.main(*scenario, "--gate", f"127.0.0.1:{port}"), (
                1, f"msgplatform-bench: cannot connect to 127.0.0.1:{port} (--gate): Connection "
                   "refused: is the node running there?\n"), scenario)

    def test_nothing_at_the_http_api(self) -> None:
        port = self.closed_port()
        self.assertEqual(self.main("push", "--http", f"http://127.0.0.1:{port}"), (
            1, f"msgplatform-bench: cannot connect to 127.0.0.1:{port} (--http): Connection "
               "refused: is the node running there?\n"))

    def test_a_node_pid_that_is_no_process(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listening:
            port = listening.getsockname()[1]
            code, err = self.main("c2c", "--gate", f"127.0.0.1:{port}", "--node-pid", "999999999")
        self.assertEqual((code, err), (1, "msgplatform-bench: --node-pid 999999999: no such "
                                          "process\n"))

    def test_a_json_file_that_cannot_be_written_is_refused_first(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            cli.main(["c2c", "--json", "/no/such/dir/x.json"])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn("cannot write /no/such/dir/x.json: /no/such/dir is not a writable "
                      "directory", err.getvalue())

"""Tests for :mod:`daojia_msg.bench.mqtt`, the Mosquitto baseline load.

The unit tests need no broker; the smoke tests talk to the local Mosquitto
(127.0.0.1:1883, or MSGP_TEST_MQTT_HOST / MSGP_TEST_MQTT_PORT) and assert only
that every message was delivered and acked, never a timing.  Outside CI they
skip when no broker answers; with CI=true they fail instead.  The MQTT codec
and connection logic are tested without a broker in ``test_mqtt_codec``.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from typing import Any

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import mqtt, mqttcodec
from tests.servers import require_mosquitto


def plan(**kw: Any) -> Any:
    args: dict[str, Any] = dict(host="127.0.0.1", port=1883, pairs=200, payload_size=64,
                                duration=10.0, rate=0.0, window=4, procs=2)
    args.update(kw)
    return mqtt.make_plan(**args)


class SummaryTests(SynchronousTestCase):
    def test_percentiles_in_ms(self) -> None:
        # 1..1000 ms over two processes' arrays, in ns
        a = np.arange(1, 501, dtype=np.int64) * 1_000_000
        b = np.arange(501, 1001, dtype=np.int64) * 1_000_000
        s = mqtt.summarize([b, a], duration=10.0, delivered_in_window=1000)
        expect = np.percentile(np.arange(1, 1001, dtype=np.float64), [50, 99, 99.9])
        self.assertAlmostEqual(s["p50_ms"], expect[0])
        self.assertAlmostEqual(s["p99_ms"], expect[1])
        self.assertAlmostEqual(s["p999_ms"], expect[2])
        self.assertAlmostEqual(s["p50_ms"], 500.5)
        self.assertAlmostEqual(s["max_ms"], 1000.0)
        self.assertAlmostEqual(s["mean_ms"], 500.5)
        self.assertEqual(s["samples"], 1000)
        self.assertAlmostEqual(s["throughput"], 100.0)

    def test_nothing_delivered(self) -> None:
        s = mqtt.summarize([np.empty(0, dtype=np.int64)], duration=5.0, delivered_in_window=0)
        self.assertEqual(s["throughput"], 0.0)
        self.assertIsNone(s["p50_ms"])
        self.assertIsNone(s["p99_ms"])
        self.assertIsNone(s["p999_ms"])
        self.assertEqual(mqtt.summarize([], duration=5.0, delivered_in_window=0)["samples"], 0)

    def test_throughput_counts_the_window_only(self) -> None:
        lat = np.full(1200, 2_000_000, dtype=np.int64)  # 1,200 latencies (drain included)
        s = mqtt.summarize([lat], duration=10.0, delivered_in_window=1000)
        self.assertAlmostEqual(s["throughput"], 100.0)
        self.assertEqual(s["samples"], 1200)
        self.assertAlmostEqual(s["p99_ms"], 2.0)

    def test_cpu_entry(self) -> None:
        c = mqtt.cpu_entry(1, 100, 3.0, 1.0, 10.0)
        self.assertEqual(c, {"proc": 1, "pairs": 100, "user_s": 3.0, "sys_s": 1.0,
                             "cpu_s": 4.0, "busy": 0.4})

    def test_split_pairs_round_robin(self) -> None:
        parts = mqtt.split_pairs(7, 3)
        self.assertEqual(parts, [[0, 3, 6], [1, 4], [2, 5]])
        self.assertEqual(sorted(i for p in parts for i in p), list(range(7)))

    def test_split_count(self) -> None:
        self.assertEqual(mqtt.split_count(20, 2), [10, 10])
        self.assertEqual(mqtt.split_count(7, 3), [3, 2, 2])
        self.assertEqual(sum(mqtt.split_count(1001, 200)), 1001)

    def test_header_carries_time_and_sequence(self) -> None:
        self.assertEqual(mqtt.MIN_PAYLOAD, 12)
        self.assertEqual(mqtt.HEADER.unpack_from(mqtt.HEADER.pack(123456789, 7) + b"\0" * 52),
                         (123456789, 7))


class ArgumentTests(SynchronousTestCase):
    def test_modes(self) -> None:
        self.assertEqual(plan().mode, "closed")
        self.assertEqual(plan(rate=5000).mode, "open")
        self.assertEqual(plan(count=20).mode, "count")

    def test_run_id_and_defaults(self) -> None:
        p = plan()
        self.assertEqual(len(p.run_id), 8)
        self.assertNotEqual(p.run_id, plan().run_id)
        self.assertEqual(plan(run_id="abc").run_id, "abc")
        self.assertEqual(p.release, "result")  # like c2c: the window counts Results
        self.assertEqual(plan(release="delivery").release, "delivery")
        self.assertTrue(p.nodelay)

    def test_rejects(self) -> None:
        bad: list[dict[str, Any]] = [
            dict(pairs=0), dict(payload_size=11), dict(payload_size=65_001), dict(duration=0),
            dict(duration=float("inf")), dict(rate=-1), dict(rate=float("nan")), dict(window=0),
            dict(procs=0), dict(procs=201), dict(count=0), dict(port=0), dict(host=""),
            dict(release="ack"),
        ]
        for kw in bad:
            with self.assertRaises(ValueError, msg=repr(kw)):
                plan(**kw)

    def test_open_file_and_port_budgets(self) -> None:
        # 20,000 open files per process: 10,000 pairs in one process is too many
        with self.assertRaises(ValueError):
            plan(pairs=10_000, procs=1)
        plan(pairs=10_000, procs=2)
        # ~28,000 ephemeral ports per source address
        with self.assertRaises(ValueError):
            plan(pairs=15_000, procs=4)
        plan(pairs=15_000, procs=4, bind_addresses=["127.0.0.1", "127.0.0.2"])

    def test_parser_defaults(self) -> None:
        a = mqtt.build_parser().parse_args([])
        self.assertEqual((a.host, a.port, a.pairs, a.payload, a.duration, a.rate, a.window,
                          a.procs, a.count, a.release), ("127.0.0.1", 1883, 200, 64, 10.0, 0.0, 8, 1, None,
                                          "result"))
        a = mqtt.build_parser().parse_args(
            ["--pairs", "2", "--rate", "5000", "--procs", "2", "--bind", "127.0.0.2",
             "--bind", "127.0.0.3", "--payload", "200"])
        self.assertEqual((a.pairs, a.rate, a.procs, a.bind, a.payload),
                         (2, 5000.0, 2, ["127.0.0.2", "127.0.0.3"], 200))

    def test_main_reports_bad_arguments(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = mqtt.main(["--pairs", "0", "--broker-pid", "1"])
        self.assertEqual(rc, 2)
        self.assertIn("pairs must be at least 1", err.getvalue())


class MosquittoSmokeTest(SynchronousTestCase):
    def test_all_delivered_and_acked(self) -> None:
        host, port = require_mosquitto()
        r = mqtt.run_mqtt(host, port, 2, 64, 30.0, 0.0, 4, 1, count=20, release="delivery")
        self.assertEqual(r["errors"], [])
        self.assertEqual(r["sent"], 20)
        self.assertEqual(r["broker_acked"], 20)  # the sender's "Result"
        self.assertEqual(r["delivered"], 20)  # pushed to the receiver, which PUBACKs it
        self.assertEqual(r["lost"], 0)
        self.assertEqual(r["samples"], 20)
        self.assertIsNotNone(r["result_p99_ms"])
        self.assertEqual(len(r["generator_cpu"]), 1)

    def assertAllDelivered(self, r: dict[str, Any]) -> None:
        self.assertEqual(r["errors"], [])
        self.assertEqual(r["disconnects"], 0)
        self.assertGreater(r["sent"], 0)
        self.assertEqual(r["broker_acked"], r["sent"])
        self.assertEqual(r["delivered"], r["sent"])
        self.assertEqual(r["lost"], 0)
        self.assertEqual(r["samples"], r["sent"])
        self.assertGreater(r["throughput"], 0)
        self.assertIsNotNone(r["p99_ms"])

    def test_closed_loop_delivers_everything(self) -> None:
        host, port = require_mosquitto()
        r = mqtt.run_mqtt(host, port, 4, 64, 1.0, 0.0, 8, 1, drain=10.0)
        self.assertEqual(r["mode"], "closed")
        self.assertAllDelivered(r)

    def test_open_loop_two_procs_delivers_everything(self) -> None:
        host, port = require_mosquitto()
        r = mqtt.run_mqtt(host, port, 4, 100, 1.0, 400.0, 8, 2, drain=10.0)
        self.assertEqual(r["mode"], "open")
        self.assertAllDelivered(r)
        self.assertEqual(r["sent"], 400)
        self.assertEqual(len(r["generator_cpu"]), 2)


class BadBrokerTest(SynchronousTestCase):
    """A "broker" that sends a malformed packet: the run must end with the
    error at once, not hang until a timeout."""

    def bad_broker(self, garbage: bytes, after_publish: bool) -> int:
        """Listen on a free port; answer CONNECT and SUBSCRIBE properly, then
        send ``garbage`` at once or on the first PUBLISH."""
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        conns: list[socket.socket] = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def session(c: socket.socket) -> None:
            with contextlib.suppress(OSError):
                answer(c)

        def answer(c: socket.socket) -> None:
            d = mqttcodec.Decoder()
            while data := c.recv(65536):
                for ptype, _flags, body in d.feed(data):
                    if not after_publish:
                        c.sendall(garbage)
                    elif ptype == mqttcodec.CONNECT:
                        c.sendall(b"\x20\x02\x00\x00")
                    elif ptype == mqttcodec.SUBSCRIBE:
                        c.sendall(b"\x90\x03" + body[:2] + b"\x01")
                    elif ptype == mqttcodec.PUBLISH:
                        c.sendall(garbage)

        def serve() -> None:
            while True:
                try:
                    c, _ = server.accept()
                except OSError:
                    return
                conns.append(c)
                threading.Thread(target=session, args=(c,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return int(server.getsockname()[1])

    def test_malformed_packet_at_connect_ends_the_run(self) -> None:
        port = self.bad_broker(b"\xf0\x00", after_publish=False)  # type 15: MQTT 5's AUTH
        with self.assertRaises(RuntimeError) as e:
            mqtt.run_mqtt("127.0.0.1", port, 1, 64, 1.0, 0.0, 8, 1, connect_timeout=20.0)
        self.assertIn("unexpected packet type 15", str(e.exception))

    def test_malformed_packet_during_the_run_ends_it(self) -> None:
        port = self.bad_broker(b"\x40\xff\xff\xff\xff\x01", after_publish=True)
        t0 = time.monotonic()
        with self.assertRaises(RuntimeError) as e:
            mqtt.run_mqtt("127.0.0.1", port, 2, 64, 120.0, 0.0, 8, 1)
        self.assertIn("remaining length is longer than 4 bytes", str(e.exception))
        self.assertLess(time.monotonic() - t0, 60.0)  # not the 120 s run + drain

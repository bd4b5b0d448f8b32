"""Tests for :mod:`daojia_msg.bench.mqtt`, the Mosquitto baseline load.

The smoke tests talk to the local Mosquitto (127.0.0.1:1883, or MSGP_TEST_MQTT_HOST /
MSGP_TEST_MQTT_PORT) and assert only that every message was delivered and acked,
never a timing. Outside CI they skip when no broker answers; with CI=true they fail
instead. The plan, the codec and the connection logic are tested without a broker
(``test_mqttplan``, ``test_mqtt_codec``, ``test_mqttworker``).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import mqtt, mqttcodec
from tests.servers import require_mosquitto


class ArgumentTests(SynchronousTestCase):
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

"""The AMQP URL: parsing it, and what of it may be shown."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bus.amqp_connection import Broker, redact_url


class UrlTests(SynchronousTestCase):
    def test_parse(self) -> None:
        broker = Broker.parse("amqps://u:p%40ss@mq.example:5999/orders%2Fc2s?heartbeat=10")
        self.assertEqual((broker.host, broker.port, broker.tls), ("mq.example", 5999, True))
        self.assertEqual(broker.parameters.virtual_host, "orders/c2s")
        self.assertEqual(broker.parameters.credentials.password, "p@ss")
        self.assertEqual(broker.parameters.heartbeat, 10)
        self.assertEqual(broker.display, "amqps://u@mq.example:5999/orders%2Fc2s")
        plain = Broker.parse("amqp://h")
        self.assertEqual((plain.port, plain.tls, plain.parameters.virtual_host), (5672, False, "/"))
        self.assertEqual(Broker.parse("amqps://h").port, 5671)
        with self.assertRaises(ValueError):
            Broker.parse("redis://h/0")

    def test_redact_url(self) -> None:
        for url, shown in [
            ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest@127.0.0.1:5672/"),
            ("amqps://u:p%40ss@h/v%2Fx?heartbeat=10", "amqps://u@h/v%2Fx"),
            ("amqp://:pw@h/", "amqp://h/"),
            ("amqp://h", "amqp://h"),
            ("amqp://u@[::1]:5673/x", "amqp://u@[::1]:5673/x"),
            ("nonsense", "<not a URL>"),
        ]:
            self.assertEqual(redact_url(url), shown)

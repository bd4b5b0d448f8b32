"""The in-process bus (the embedded default)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.memory import MemoryBus


class MemoryBusTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IMessageBus, MemoryBus()))

    def test_keeps_the_newest_per_topic_and_tells_subscribers(self) -> None:
        bus = MemoryBus(keep=2)
        self.successResultOf(bus.start())
        seen: list[tuple[str, bytes, str]] = []
        unsubscribe = bus.subscribe("gps", lambda *a: seen.append(a))
        for i in range(3):
            self.assertIsNone(self.successResultOf(bus.publish("gps", b"%d" % i, f"log-{i}")))
        self.successResultOf(bus.publish("orders", b"o", "log-o"))
        self.assertEqual(list(bus.topics["gps"]), [(b"1", "log-1"), (b"2", "log-2")])
        self.assertEqual(seen, [("gps", b"%d" % i, f"log-{i}") for i in range(3)])
        unsubscribe()
        bus.publish("gps", b"3", "log-3")
        self.assertEqual(len(seen), 3)
        self.successResultOf(bus.stop())

    def test_keeps_each_topic_s_media_type(self) -> None:
        bus = MemoryBus()
        bus.publish("offers", b"{}", "1", "application/json")
        bus.publish("gps", b"g", "2")
        self.assertEqual(bus.content_types, {"offers": "application/json",
                                             "gps": "application/x-protobuf"})

    def test_a_failing_subscriber_neither_fails_the_publish_nor_the_others(self) -> None:
        bus = MemoryBus()
        seen: list[bytes] = []

        def broken(topic: str, payload: bytes, logid: str) -> None:
            raise ValueError("consumer bug")

        bus.subscribe("gps", broken)
        bus.subscribe("gps", lambda topic, payload, logid: seen.append(payload))
        self.successResultOf(bus.publish("gps", b"x", "log-x"))
        self.assertEqual(seen, [b"x"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

# -*- test-case-name: tests.bus.test_memory -*-
"""The in-process bus: the embedded default.

It keeps the newest ``keep`` envelopes of each topic (a bounded ring, like a
Redis stream's ``MAXLEN``) and hands each new one to the topic's subscribers,
so in-process consumers, the tests and operators can see what C2S produced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from daojia_msg.bus.envelope import CONTENT_TYPE
from daojia_msg.bus.interfaces import IMessageBus

Subscriber = Callable[[str, bytes, str], object]


@implementer(IMessageBus)
class MemoryBus:
    log = Logger()

    def __init__(self, keep: int = 10000) -> None:
        self.keep = keep
        self.topics: dict[str, deque[tuple[bytes, str]]] = {}
        #: The media type of each topic's newest envelope (one topic carries
        #: one: the C2S envelope's protobuf, JSON on ``offers``).
        self.content_types: dict[str, str] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def publish(self, topic: str, payload: bytes, logid: str,
                content_type: str = CONTENT_TYPE) -> Deferred[None]:
        self.content_types[topic] = content_type
        ring = self.topics.get(topic)
        if ring is None:
            ring = self.topics[topic] = deque(maxlen=self.keep)
        ring.append((payload, logid))
        for subscriber in self._subscribers.get(topic, ()):
            try:
                subscriber(topic, payload, logid)
            except Exception:
                self.log.failure("bus subscriber failed on {topic}", topic=topic, logid=logid)
        return succeed(None)

    def subscribe(self, topic: str, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(topic, payload, logid)`` for each new envelope; returns
        a function that unsubscribes."""
        self._subscribers.setdefault(topic, []).append(subscriber)
        return lambda: self._subscribers[topic].remove(subscriber)

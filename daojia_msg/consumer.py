# -*- test-case-name: tests.test_consumer -*-
"""The app-server side of C2S: read a topic from any bus, get decoded envelopes.

::

    stop = await consume(reactor, "redis://127.0.0.1:6379/0", "gps", on_envelope)
    ...
    await stop()

``on_envelope(envelope)`` gets an :class:`~daojia_msg.bus.envelope.Envelope`:
the topic, the protobuf ``Message`` (kind C2S: msgid, from_uid, from_appcode,
msgtype, content, send_time_ms) and the logid; an entry of another media type
(the ``offers`` topic's outcomes, ``application/json``) has an empty message,
its ``content_type`` and its decoded ``data``. Each bus's app-server side is
``daojia_msg.bus.<bus>_consumer``. By bus:

- ``redis://``: reads the stream with ``XREAD BLOCK`` from new entries on
  (:class:`~daojia_msg.bus.redis_streams_consumer.RedisStreamsConsumer`: a
  tail; production consumers use consumer groups, ``XREADGROUP``);
- ``amqp://``: binds an exclusive queue to the exchange with the topic as
  routing key (a tail; production consumers bind a durable queue of their own,
  :class:`~daojia_msg.bus.amqp_consumer.AmqpConsumer` with ``queue=``); a lost
  connection is re-established with backoff;
- ``http(s)://``: the platform POSTs to that URL, so the consumer *receives*:
  it serves a :class:`~daojia_msg.bus.webhook_consumer.WebhookReceiver` on
  ``listen`` (a Twisted endpoint, e.g. ``tcp:9000:interface=127.0.0.1``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from daojia_msg.bus.envelope import Envelope

Stop = Callable[[], Awaitable[None]]


async def consume(reactor: Any, url: str, topic: str, on_envelope: Callable[[Envelope], object],
                  *, exchange: str = "msgplatform.c2s", listen: str = "") -> Stop:
    """Start reading ``topic`` from the bus at ``url``; returns the function
    that stops it."""
    scheme = url.partition(":")[0]
    if scheme == "redis":
        from daojia_msg.bus.redis_streams_consumer import RedisStreamsConsumer

        streams = RedisStreamsConsumer(url, topic, reactor, on_envelope)
        await streams.start()
        return streams.stop
    if scheme in ("amqp", "amqps"):
        from daojia_msg.bus.amqp_consumer import AmqpConsumer

        queue = AmqpConsumer(url, topic, reactor, on_envelope, exchange=exchange)
        await queue.start()
        return queue.stop
    if scheme in ("http", "https"):
        from daojia_msg.bus.webhook_consumer import WebhookReceiver

        if not listen:
            raise ValueError("a webhook is received: give the endpoint to listen on")
        site = Site(WebhookReceiver(on_envelope, topic=topic))
        port = await serverFromString(reactor, listen).listen(site)

        async def stop() -> None:
            await port.stopListening()

        return stop
    raise ValueError(f"cannot consume from {url!r}: expected redis://, amqp:// or http(s)://")

# -*- test-case-name: tests.chaos.test_servers -*-
"""The read-back of the C2S route on the private RabbitMQ: a durable queue of
the suite's own, bound to the bus's exchange with the route's topic before
any node starts, read empty after each phase.

A tail (an exclusive queue, what ``daojia_msg.consumer`` binds) would miss
what the nodes publish while the broker restarts and the tail reconnects;
this queue keeps every persistent message the broker confirmed, across its
restart too, so a message is counted lost only if the broker confirmed it
and then did not keep it. Blocking pika calls, run in a thread.
"""

from __future__ import annotations

from typing import Any

import pika

from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The bus's exchange (bus.amqp_exchange's default), declared as the bus does.
EXCHANGE = "msgplatform.c2s"


def declare(url: str, queue: str, topic: str, exchange: str = EXCHANGE) -> None:
    """The exchange (durable topic, as the bus declares it), the durable
    ``queue`` and its binding with routing key ``topic``."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, routing_key=topic)
    finally:
        conn.close()


def fetch(url: str, queue: str, at_most: int = 1_000_000) -> list[bytes]:
    """Every message now in ``queue`` (taken off it: auto-ack), in order."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    bodies: list[bytes] = []
    try:
        channel = conn.channel()
        while len(bodies) < at_most:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
    finally:
        conn.close()
    return bodies


def messages(bodies: list[bytes]) -> list[tuple[bytes, int]]:
    """(content, msgid) of each envelope (a serialized ``Message``); what is
    not one is left out."""
    out = []
    for body in bodies:
        message = pb.Message()
        try:
            message.ParseFromString(body)
        except Exception:
            continue
        out.append((message.content, message.msgid))
    return out


async def drain(reactor: Any, url: str, queue: str, arrived: Any,
                log: Any = None) -> int:
    """Read ``queue`` empty in a thread, pass each (content, msgid) to
    ``arrived``; how many. A failure (the broker down) is logged and counts
    0: the next drain reads what is left."""
    from twisted.internet.threads import deferToThreadPool

    try:
        bodies = await deferToThreadPool(reactor, reactor.getThreadPool(), fetch, url, queue)
    except Exception as e:
        if log is not None:
            log(f"reading the RabbitMQ queue {queue} failed: {e!r}")
        return 0
    found = messages(bodies)
    for content, msgid in found:
        arrived(content, msgid)
    return len(found)

# -*- test-case-name: tests.bus.test_redis_streams,tests.bus.test_redis_streams_consumer -*-
"""What the Redis Streams bus (:mod:`daojia_msg.bus.redis_streams`) and its
consumer (:mod:`daojia_msg.bus.redis_streams_consumer`) share: a reconnecting
txredisapi connection of their own, not the node's session pool.

It is made with ``charset=None`` and ``convertNumbers=False`` so that payloads
and logids go and come back exactly as bytes (txredisapi would otherwise turn
``b"12"`` into ``12``). txredisapi queues a command while it has no live
connection, until it reconnects (txredisapi#112), and stops reconnecting for
good when a SELECT or AUTH fails on a reconnect: the users check
:func:`is_connected` and :func:`gave_up` before each command and fail at once
(or start anew) instead of waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import TimeoutError
from twisted.internet.interfaces import IReactorTime

from daojia_msg.config import RedisURL
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.deadlines import within
from daojia_msg.redisconn import DEADLINE_FACTOR

#: Seconds to wait for a Redis reply (and to connect) unless told otherwise;
#: never more than the router's ``bus.publish_timeout_s`` allows.
REPLY_TIMEOUT_S = 2.0


def where(url: RedisURL) -> str:
    """``host:port/db`` (never the password)."""
    return f"{url.host}:{url.port}/{url.db}"


def is_connected(conn: Any) -> bool:
    """Whether txredisapi's connection holds a live connection right now."""
    factory = getattr(conn, "_factory", None)
    size = getattr(factory, "size", None)
    return not isinstance(size, int) or size > 0


def gave_up(conn: Any) -> bool:
    """Whether txredisapi's connection stopped reconnecting for good."""
    factory = getattr(conn, "_factory", None)
    return bool(getattr(factory, "stopped", False)) and not getattr(factory, "size", 1)


async def open_connection(url: RedisURL, clock: IReactorTime, *, connect_timeout: float,
                          reply_timeout: float) -> Any:
    """A reconnecting txredisapi connection of its own (``charset=None``,
    ``convertNumbers=False``) to ``url``, once it answers a PING.

    First one PING on a connection that does not reconnect, so that a server
    that is down fails at once with its reason; then the lasting connection,
    which must answer within :data:`DEADLINE_FACTOR` x ``connect_timeout``.
    Raises :class:`BusUnavailable` naming ``host:port/db``.
    """
    at = where(url)
    try:
        probe = await txredisapi.Connection(
            url.host, url.port, dbid=url.db, reconnect=False, charset=None,
            convertNumbers=False, password=url.password or None,
            connectTimeout=connect_timeout, replyTimeout=connect_timeout)
    except Exception as e:
        raise BusUnavailable(f"cannot connect to Redis at {at}: {e}") from None
    try:
        await probe.ping()
    except Exception as e:
        raise BusUnavailable(f"Redis at {at} does not answer: {e}") from None
    finally:
        await probe.disconnect()
    conn = connect_lazily(url, connect_timeout=connect_timeout, reply_timeout=reply_timeout)
    deadline = connect_timeout * DEADLINE_FACTOR
    ready = within(conn.ping(), deadline, clock)
    try:
        await ready
    except Exception as e:
        await conn.disconnect()
        why = f"no answer within {deadline:g} s" if isinstance(e, TimeoutError) else str(e)
        raise BusUnavailable(f"Redis at {at} does not answer: {why}") from None
    return conn


def connect_lazily(url: RedisURL, *, connect_timeout: float, reply_timeout: float) -> Any:
    """A reconnecting connection to ``url`` that connects in the background."""
    return txredisapi.lazyConnection(
        url.host, url.port, dbid=url.db, reconnect=True, charset=None, convertNumbers=False,
        password=url.password or None, connectTimeout=connect_timeout,
        replyTimeout=reply_timeout)


def count_connections(conn: Any, made: Callable[[], None]) -> Any:
    """Call ``made()`` at each connection ``conn`` makes from now on, and
    return ``conn``. txredisapi has no hook for it: its factory's
    ``addConnection`` is wrapped, on this one instance."""
    factory = conn._factory
    add = factory.addConnection

    def added(connection: Any) -> None:
        add(connection)
        if connection in factory.pool:
            made()

    factory.addConnection = added
    return conn


def replace(conn: Any, url: RedisURL, *, connect_timeout: float, reply_timeout: float) -> Any:
    """A new :func:`connect_lazily` connection in place of ``conn`` (one
    that :func:`gave_up`), which is closed."""
    new = connect_lazily(url, connect_timeout=connect_timeout, reply_timeout=reply_timeout)
    conn.disconnect().addErrback(lambda _: None)
    return new

# -*- test-case-name: tests.bus.test_redis_streams_consumer -*-
"""The app server's side of the Redis Streams bus: tail one stream with
``XREAD BLOCK`` (the entry's fields: docs/operations.md §7), for ``msgctl
tail`` and tests. The node's side is :mod:`daojia_msg.bus.redis_streams`.

An app team's consumers use consumer groups in production (``XGROUP
CREATE``, ``XREADGROUP``, ``XACK``; ``XAUTOCLAIM`` for the entries of a
consumer that died), so that each entry is handled once and none is lost
across restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from daojia_msg.bus.envelope import BadEnvelope, Envelope, decode_envelope, media_type
from daojia_msg.bus.redis_streams_connection import (
    REPLY_TIMEOUT_S,
    gave_up,
    is_connected,
    open_connection,
    replace,
    where,
)
from daojia_msg.config import parse_redis_url
from daojia_msg.core.errors import BusUnavailable


class RedisStreamsConsumer:
    """Reads ``topic`` with ``XREAD BLOCK`` and calls ``on_envelope`` with each
    decoded :class:`Envelope`, in stream order.

    A helper for tails and tests; app servers use consumer groups instead (see
    the module docstring). ``start_id="$"`` means "what is published after
    :meth:`start` fired" (the position is fixed at start, so nothing published
    between two reads is missed); any other id (``"0"``: the whole stream) reads
    the entries after it. It has one connection of its own that nothing else
    uses (``XREAD BLOCK`` holds it). When Redis goes away it logs, waits
    ``retry_s`` and reads on from where it was. Entries that are not envelopes
    are logged and skipped; an ``on_envelope`` that raises is logged.

    Use::

        consumer = RedisStreamsConsumer(url, "gps", reactor, print)
        await consumer.start()
        ...
        await consumer.stop()
    """

    log = Logger()

    def __init__(self, url: str, topic: str, reactor: IReactorTime,
                 on_envelope: Callable[[Envelope], object], *, start_id: str = "$",
                 block_ms: int = 1000, count: int = 100,
                 reply_timeout_s: float = REPLY_TIMEOUT_S, retry_s: float = 1.0) -> None:
        self.url = parse_redis_url(url, ("bus", "url"))
        self.where = where(self.url)
        self.topic = topic
        self.reactor = reactor
        self.on_envelope = on_envelope
        self.last_id = start_id
        self.block_ms = block_ms
        self.count = count
        self.reply_timeout = reply_timeout_s
        self.retry_s = retry_s
        self._conn: Any = None
        self._loop: Deferred[None] | None = None
        self._stopping = False

    def start(self) -> Deferred[None]:
        """Fires once the position is fixed and reading has begun; fails with
        :class:`BusUnavailable` when Redis cannot be reached."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._stopping = False
        # A reply may take the whole BLOCK: the reply timeout starts after it.
        self._conn = await open_connection(
            self.url, self.reactor, connect_timeout=self.reply_timeout,
            reply_timeout=self.block_ms / 1000 + self.reply_timeout)
        try:
            if self.last_id == "$":
                newest = await self._conn.execute_command(
                    "XREVRANGE", self.topic, "+", "-", "COUNT", 1)
                self.last_id = newest[0][0].decode() if newest else "0-0"
        except Exception as e:
            await self._conn.disconnect()
            self._conn = None
            raise BusUnavailable(f"redis XREVRANGE {self.topic} at {self.where}: {e}") from None
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(
            lambda f: self.log.failure("stream reader of {topic} stopped", f, topic=self.topic))

    def stop(self) -> Deferred[None]:
        """Stops reading and closes the connection; fires once it is closed."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                reply = await self._read()
            except CancelledError:
                return
            except Exception as e:
                if self._stopping:
                    return
                self.log.warn("reading stream {topic} at {where} failed: {error}; "
                              "again in {delay} s", topic=self.topic, where=self.where,
                              error=str(e), delay=self.retry_s)
                try:
                    await deferLater(self.reactor, self.retry_s)
                except CancelledError:
                    return
                continue
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self.last_id = entry_id.decode()
                    self._deliver(entry_id, fields)

    def _read(self) -> Deferred[Any]:
        if self._conn is None or not is_connected(self._conn):
            if self._conn is not None and gave_up(self._conn) and not self._stopping:
                self._conn = replace(self._conn, self.url, connect_timeout=self.reply_timeout,
                                     reply_timeout=self.block_ms / 1000 + self.reply_timeout)
            return fail(BusUnavailable("not connected"))
        d: Deferred[Any] = self._conn.execute_command(
            "XREAD", "COUNT", self.count, "BLOCK", self.block_ms,
            "STREAMS", self.topic, self.last_id)
        return d

    def _deliver(self, entry_id: bytes, flat: list[bytes]) -> None:
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        try:
            envelope = decode_envelope(self.topic, fields[b"msg"], fields[b"logid"].decode(),
                                       media_type(fields.get(b"content_type")))
        except (KeyError, BadEnvelope, UnicodeDecodeError, AttributeError) as e:
            self.log.warn("stream {topic} entry {entry_id} is not an envelope: {error}",
                          topic=self.topic, entry_id=entry_id.decode(), error=repr(e))
            return
        try:
            self.on_envelope(envelope)
        except Exception:
            self.log.failure("on_envelope failed on {topic} entry {entry_id}",
                             topic=self.topic, entry_id=entry_id.decode(), logid=envelope.logid)

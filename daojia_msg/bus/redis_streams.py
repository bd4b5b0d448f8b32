# -*- test-case-name: tests.bus.test_redis_streams -*-
"""The Redis Streams bus (DESIGN.md §3, bus envelope), and a stream reader.

Each C2S frame becomes one stream entry::

    XADD <topic> MAXLEN ~ <bus.stream_maxlen> * msg <Message bytes> logid <logid>

**Pipelining.** :meth:`RedisStreamsBus.publish` only queues the frame. The
queue is flushed as *one* txredisapi pipeline of XADDs (one write, one round
trip) on the next reactor turn (``callLater(0)``), so every publish of one
turn shares a round trip. Only one pipeline is in flight at a time: frames that
arrive while it is out wait and go together in the next one, sent the moment
the previous one has all its replies. Under load the batches therefore grow by
themselves to what arrived during one round trip, up to :data:`MAX_BATCH`
XADDs per pipeline (several pipelines then follow one another). Each caller's
Deferred fires on *its own* XADD reply; an error reply (e.g. ``WRONGTYPE``)
fails only that caller.

**Never hang.** The bus has its own reconnecting connection (not the node's
session pool: a pipeline holds its connection until all replies are in), made
with ``charset=None`` and ``convertNumbers=False`` so that payloads and logids
come back exactly as bytes (txredisapi would otherwise turn ``b"12"`` into
``12``). Every XADD has txredisapi's reply timeout (which also drops a stuck
connection); while there is no live connection a batch fails at once
(txredisapi would queue it until it reconnects, txredisapi#112); and each
pipeline has a backstop deadline of :data:`DEADLINE_FACTOR` reply timeouts,
after which the connection is dropped. Any failure fails the callers of the
batch with :class:`BusUnavailable`. A connection that txredisapi gave up on (a
SELECT or AUTH that failed on a reconnect stops it for good) is replaced. The
queue is bounded too (:data:`MAX_QUEUED_BATCHES` batches, at least twice
``bus.max_pending``): beyond it ``publish`` fails at once.

**Start-up.** :meth:`RedisStreamsBus.start` fails with :class:`BusUnavailable`
("cannot connect to Redis at host:port/db: ...") when the server cannot be
reached or does not answer a PING. Not :class:`ConfigError`: the bus cannot
know which key names its URL (``bus.url`` or ``buses.<name>.url``), and the
URL itself was checked when the config was read; the node's start-up prints
the message as its one line either way.

:class:`RedisStreamsConsumer` tails one stream with ``XREAD BLOCK``, for tails
(``msgctl``) and tests. An app team's consumers use consumer groups in
production (``XGROUP CREATE``, ``XREADGROUP``, ``XACK``; ``XAUTOCLAIM`` for the
entries of a consumer that died), so that each entry is handled once and none
is lost across restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    fail,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bus.envelope import BadEnvelope, Envelope, decode_envelope
from daojia_msg.bus.errors import BusUnavailable
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.cluster.redisconn import DEADLINE_FACTOR
from daojia_msg.config import BusConfig, RedisURL, parse_redis_url

#: Seconds to wait for a Redis reply (and to connect) unless told otherwise;
#: never more than the router's ``bus.publish_timeout_s`` allows.
REPLY_TIMEOUT_S = 2.0
#: XADDs per pipeline at most. Measured on the 2-core test machine (48-byte
#: payloads, 10,000 publishes outstanding, Redis on the same machine): ~5,000
#: XADD/s one at a time, ~11,000-15,000/s with 100 per pipeline, fewer
#: (~7,500-11,500/s) with 1,000: the client's own work per XADD (txredisapi
#: builds each command and Deferred in Python) is the limit, not round trips.
MAX_BATCH = 100
#: Frames waiting for a pipeline at most, in batches (and at least twice
#: ``bus.max_pending``, the router's own bound): beyond it publish fails at once.
MAX_QUEUED_BATCHES = 100
#: Seconds between two new connections replacing one that gave up (see _revive).
REVIVE_S = 1.0


def _where(url: RedisURL) -> str:
    """``host:port/db`` (never the password)."""
    return f"{url.host}:{url.port}/{url.db}"


def _connected(conn: Any) -> bool:
    """Whether txredisapi's connection holds a live connection right now."""
    factory = getattr(conn, "_factory", None)
    size = getattr(factory, "size", None)
    return not isinstance(size, int) or size > 0


def _gave_up(conn: Any) -> bool:
    """Whether txredisapi's connection stopped reconnecting for good."""
    factory = getattr(conn, "_factory", None)
    return bool(getattr(factory, "stopped", False)) and not getattr(factory, "size", 1)


def _drop(conn: Any) -> None:
    """Abort the live connections of ``conn`` (it reconnects by itself)."""
    factory = getattr(conn, "_factory", None)
    for protocol in list(getattr(factory, "pool", ())):
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()


async def open_connection(url: RedisURL, clock: IReactorTime, *, connect_timeout: float,
                          reply_timeout: float) -> Any:
    """A reconnecting txredisapi connection of its own (``charset=None``,
    ``convertNumbers=False``) to ``url``, once it answers a PING.

    First one PING on a connection that does not reconnect, so that a server
    that is down fails at once with its reason; then the lasting connection,
    which must answer within :data:`DEADLINE_FACTOR` x ``connect_timeout``.
    Raises :class:`BusUnavailable` naming ``host:port/db``.
    """
    where = _where(url)
    try:
        probe = await txredisapi.Connection(
            url.host, url.port, dbid=url.db, reconnect=False, charset=None,
            convertNumbers=False, password=url.password or None,
            connectTimeout=connect_timeout, replyTimeout=connect_timeout)
    except Exception as e:
        raise BusUnavailable(f"cannot connect to Redis at {where}: {e}") from None
    try:
        await probe.ping()
    except Exception as e:
        raise BusUnavailable(f"Redis at {where} does not answer: {e}") from None
    finally:
        await probe.disconnect()
    conn = connect_lazily(url, connect_timeout=connect_timeout, reply_timeout=reply_timeout)
    deadline = connect_timeout * DEADLINE_FACTOR
    ready = conn.ping()
    ready.addTimeout(deadline, clock)
    try:
        await ready
    except Exception as e:
        await conn.disconnect()
        why = f"no answer within {deadline:g} s" if isinstance(e, TimeoutError) else str(e)
        raise BusUnavailable(f"Redis at {where} does not answer: {why}") from None
    return conn


def connect_lazily(url: RedisURL, *, connect_timeout: float, reply_timeout: float) -> Any:
    """A reconnecting connection to ``url`` that connects in the background."""
    return txredisapi.lazyConnection(
        url.host, url.port, dbid=url.db, reconnect=True, charset=None, convertNumbers=False,
        password=url.password or None, connectTimeout=connect_timeout,
        replyTimeout=reply_timeout)


class _Pending:
    """One queued publish: the XADD's arguments and the caller's Deferred."""

    __slots__ = ("topic", "payload", "logid", "d")

    def __init__(self, topic: bytes, payload: bytes, logid: bytes) -> None:
        self.topic = topic
        self.payload = payload
        self.logid = logid
        self.d: Deferred[None] = Deferred()

    def fail(self, why: str) -> None:
        if not self.d.called:
            self.d.errback(BusUnavailable(why))


@implementer(IMessageBus)
class RedisStreamsBus:
    """C2S frames to Redis Streams, pipelined (see the module docstring).

    ``reactor`` schedules the flushes and the deadlines (tests may pass a
    Clock, though txredisapi itself always runs on the global reactor).
    ``reply_timeout_s`` defaults to :data:`REPLY_TIMEOUT_S`, or less so that
    the backstop deadline ends before the router's ``publish_timeout_s``.

    ``pipelines`` counts the pipelines sent and ``largest_batch`` is the most
    XADDs one of them carried (for metrics and tests).
    """

    log = Logger()

    def __init__(self, url: str, config: BusConfig, reactor: IReactorTime, *,
                 reply_timeout_s: float | None = None, max_batch: int = MAX_BATCH) -> None:
        self.url = parse_redis_url(url, ("bus", "url"))
        self.where = _where(self.url)
        self.config = config
        self.reactor = reactor
        if reply_timeout_s is None:
            reply_timeout_s = min(REPLY_TIMEOUT_S, config.publish_timeout_s / DEADLINE_FACTOR)
        self.reply_timeout = reply_timeout_s
        self.deadline = reply_timeout_s * DEADLINE_FACTOR
        self.max_batch = max_batch
        # Never below what the router may hand over (twice bus.max_pending).
        self.max_queued = max(max_batch * MAX_QUEUED_BATCHES, 2 * config.max_pending)
        self._maxlen = str(config.stream_maxlen).encode()
        self._conn: Any = None
        self._queue: list[_Pending] = []
        self._flush_call: IDelayedCall | None = None
        self._in_flight = False
        self._stopped = False
        self._revived_at = float("-inf")
        self.pipelines = 0
        self.largest_batch = 0

    # -- IMessageBus ----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._conn = await open_connection(
            self.url, self.reactor, connect_timeout=self.reply_timeout,
            reply_timeout=self.reply_timeout)
        self._stopped = False
        self.log.info("C2S bus: Redis Streams at {where}, MAXLEN ~ {maxlen}",
                      where=self.where, maxlen=self.config.stream_maxlen)

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopped = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        queued, self._queue = self._queue, []
        for pending in queued:
            pending.fail("the Redis Streams bus stopped")
        conn, self._conn = self._conn, None
        if conn is not None:
            # A pipeline in flight fails with the lost connection.
            await conn.disconnect()

    def publish(self, topic: str, payload: bytes, logid: str) -> Deferred[None]:
        if self._stopped:
            return fail(BusUnavailable("the Redis Streams bus stopped"))
        if len(self._queue) >= self.max_queued:
            return fail(BusUnavailable(
                f"{len(self._queue)} C2S frames already wait for Redis at {self.where}"))
        try:
            pending = _Pending(topic.encode(), bytes(payload), logid.encode())
        except UnicodeEncodeError as e:
            return fail(BusUnavailable(f"topic or logid not encodable: {e}"))
        self._queue.append(pending)
        if not self._in_flight and self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return pending.d

    # -- the pipeline ---------------------------------------------------------------

    def _flush(self) -> None:
        """Send the next batch, unless one is in flight (it calls again when done)."""
        self._flush_call = None
        # A frame already answered (the router timed it out: UNAVAILABLE) is
        # not sent any more: the client was told it did not reach the bus.
        self._queue = [p for p in self._queue if not p.d.called]
        if self._in_flight or not self._queue:
            return
        batch = self._queue[:self.max_batch]
        del self._queue[:self.max_batch]
        self._in_flight = True
        self.pipelines += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        d = Deferred.fromCoroutine(self._send(batch))
        d.addTimeout(self.deadline, self.reactor)
        d.addBoth(self._sent, batch)

    async def _send(self, batch: list[_Pending]) -> None:
        conn = self._conn
        if conn is None or not _connected(conn):
            self._revive()
            raise BusUnavailable(f"not connected to Redis at {self.where}")
        pipe = await conn.pipeline()
        replies: list[Deferred[Any]] = []
        try:
            for p in batch:
                reply = pipe.execute_command(
                    b"XADD", p.topic, b"MAXLEN", b"~", self._maxlen, b"*",
                    b"msg", p.payload, b"logid", p.logid)
                # First in the chain: the pipeline's own DeferredList would
                # swallow an error reply before a later callback saw it.
                replies.append(reply.addBoth(self._settle, p))
        finally:
            # One write for the whole batch; txredisapi takes the connection
            # back once every reply is in (or failed).
            pipe.execute_pipeline().addErrback(lambda _: None)
        settled = await DeferredList(replies, consumeErrors=True)
        errors = [why for _, why in settled if why]
        if errors:
            self.log.warn("{failed} of {count} XADDs to Redis at {where} failed, e.g.: {why}",
                          failed=len(errors), count=len(batch), where=self.where, why=errors[0])

    def _revive(self) -> None:
        """Replace a connection that gave up for good.

        txredisapi stops reconnecting for good when SELECT or AUTH fails on a
        reconnect (e.g. a server that does not answer in time while it
        restarts); with a database other than none that would leave the bus
        dead. At most once every :data:`REVIVE_S` seconds, a new connection is
        started instead (the batches meanwhile fail at once).
        """
        conn = self._conn
        if self._stopped or not _gave_up(conn):
            return
        now = self.reactor.seconds()
        if now - self._revived_at < REVIVE_S:
            return
        self._revived_at = now
        self.log.warn("Redis at {where} gave up reconnecting; connecting anew", where=self.where)
        self._conn = connect_lazily(self.url, connect_timeout=self.reply_timeout,
                                    reply_timeout=self.reply_timeout)
        conn.disconnect().addErrback(lambda _: None)

    def _settle(self, result: object, pending: _Pending) -> str | None:
        """One XADD's reply: its caller's Deferred fires (or fails) now.
        Returns why it failed, or None."""
        if pending.d.called:
            return None
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return None  # the deadline: _sent answers with the reason
            why = result.getErrorMessage()
            pending.fail(f"redis XADD to {self.where}: {why}")
            return why
        pending.d.callback(None)
        return None

    def _sent(self, result: object, batch: list[_Pending]) -> None:
        self._in_flight = False
        if isinstance(result, Failure):
            if result.check(TimeoutError):
                why = f"no reply within {self.deadline:g} s"
                if self._conn is not None:
                    _drop(self._conn)  # its reply timers went with the cancel
            else:
                why = result.getErrorMessage()
            unanswered = [p for p in batch if not p.d.called]
            if unanswered:
                self.log.warn("C2S pipeline of {count} XADDs to Redis at {where} failed: {why}",
                              count=len(unanswered), where=self.where, why=why)
            for p in unanswered:
                p.fail(f"redis XADD to {self.where}: {why}")
        else:
            for p in batch:
                p.fail(f"redis XADD to {self.where}: no reply")
        if self._queue and not self._stopped:
            self._flush()


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
        self.where = _where(self.url)
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
        if self._conn is None or not _connected(self._conn):
            if self._conn is not None and _gave_up(self._conn) and not self._stopping:
                old, self._conn = self._conn, connect_lazily(
                    self.url, connect_timeout=self.reply_timeout,
                    reply_timeout=self.block_ms / 1000 + self.reply_timeout)
                old.disconnect().addErrback(lambda _: None)
            return fail(BusUnavailable("not connected"))
        d: Deferred[Any] = self._conn.execute_command(
            "XREAD", "COUNT", self.count, "BLOCK", self.block_ms,
            "STREAMS", self.topic, self.last_id)
        return d

    def _deliver(self, entry_id: bytes, flat: list[bytes]) -> None:
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        try:
            envelope = decode_envelope(self.topic, fields[b"msg"], fields[b"logid"].decode())
        except (KeyError, BadEnvelope, UnicodeDecodeError, AttributeError) as e:
            self.log.warn("stream {topic} entry {entry_id} is not an envelope: {error}",
                          topic=self.topic, entry_id=entry_id.decode(), error=repr(e))
            return
        try:
            self.on_envelope(envelope)
        except Exception:
            self.log.failure("on_envelope failed on {topic} entry {entry_id}",
                             topic=self.topic, entry_id=entry_id.decode(), logid=envelope.logid)

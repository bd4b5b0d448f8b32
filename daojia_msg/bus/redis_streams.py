# -*- test-case-name: tests.bus.test_redis_streams -*-
"""The Redis Streams bus (docs/operations.md §7), and a stream reader.

Each C2S frame becomes one stream entry::

    XADD <topic> MAXLEN ~ <bus.stream_maxlen> * msg <Message bytes> logid <logid>

**One command per batch.** :meth:`RedisStreamsBus.publish` only queues the
frame. The queue is flushed on the next reactor turn (``callLater(0)``), so
every publish of one turn shares a batch, and the batch goes to Redis as *one*
command: ``EVALSHA`` of :data:`XADD_BATCH`, a Lua script that runs the XADDs
above for the batch's entries, in order (``KEYS``: the topics; ``ARGV``: the
MAXLEN, then a payload and a logid per entry), and answers one reply per
entry: its entry id, or the error of that XADD alone (``redis.pcall``: e.g.
``WRONGTYPE`` on a key that is not a stream fails only its caller, as a
separate XADD would). The stream entries are the same as before, field for
field. The ids come back as status replies (one line each), not bulk strings:
txredisapi's pure-Python parser, used when hiredis is missing, reads each
bulk string of a reply in a reactor turn of its own.

When Redis does not know the script (``NOSCRIPT``: after a restart, a
failover or ``SCRIPT FLUSH``) the same batch goes again as ``EVAL`` with the
source, which loads it (logged at info). The sha and source come from
:class:`~daojia_msg.redisconn.Script`, but not its ``__call__``, which
runs on the node's session pool with the store's errors and deadline; the bus
has its own connection, errors and deadline (below).

Why not a txredisapi pipeline of XADDs, as before: txredisapi builds each
command, its Deferred and its reply timer in Python, and that per-XADD work
was ~41% of a node's time in the issue's profile (~3,400 frames/s). The bus
alone, 48-byte payloads, 10,000 publishes outstanding, on the 2-core test
machine with hiredis: ~12,500 XADD/s (~67 us CPU each) as a pipeline,
~80,000-100,000 entries/s (~7 us CPU each) as a script.

**Batches grow under load.** Only one batch is in flight at a time: frames that
arrive while it is out wait and go together in the next one, sent the moment
the previous one has its reply. Under load the batches therefore grow by
themselves to what arrived during one round trip, up to :data:`MAX_BATCH`
entries or :data:`MAX_BATCH_BYTES` of payloads per command (several commands
then follow one another). Entries of one stream land in the order of their
publishes: a script runs whole, alone, in order, and one batch follows
another. Each caller's Deferred fires on *its own* entry of the reply.

**One Redis, not Redis Cluster.** A script may only touch keys of one hash
slot in Redis Cluster, and a batch holds the streams of many topics. This
deployment uses a single Redis (a Sentinel-managed primary would do too;
txredisapi does not follow ``MOVED`` anyway, txredisapi#125); a cluster
would need one batch per slot, or topics that share a ``{hash tag}``. Streams
need Redis 5 or later, which replicates scripts by their effects, so an
``XADD *`` in a script is allowed.

**Never hang.** The bus has its own reconnecting connection (not the node's
session pool), made with ``charset=None`` and ``convertNumbers=False`` so that
payloads and logids go and come back exactly as bytes (txredisapi would
otherwise turn ``b"12"`` into ``12``). A batch's command is encoded here and
written straight to the connection (:func:`~daojia_msg.redisconn.execute`:
txredisapi's per-argument encoder was a tenth of the node's CPU under C2S
load); while there is no live connection a batch fails at once (txredisapi
would queue it until it reconnects, txredisapi#112); and each batch has a
deadline of :data:`DEADLINE_FACTOR` reply timeouts (covering the ``EVAL``
after a ``NOSCRIPT`` too), after which the connection is dropped (when the
command went through txredisapi's own path, its reply timeout drops it first). Any failure of the
command fails the callers of the batch with :class:`BusUnavailable`. A
connection that txredisapi gave up on (a SELECT or AUTH that failed on a
reconnect stops it for good) is replaced. The queue is bounded too
(:data:`MAX_QUEUED_BATCHES` batches, at least twice ``bus.max_pending``):
beyond it ``publish`` fails at once.

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

from collections import deque
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bus.envelope import BadEnvelope, Envelope, decode_envelope
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.config import BusConfig, RedisURL, parse_redis_url
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.deadlines import Deadlines, within
from daojia_msg.redisconn import DEADLINE_FACTOR, Script, execute

#: Seconds to wait for a Redis reply (and to connect) unless told otherwise;
#: never more than the router's ``bus.publish_timeout_s`` allows.
REPLY_TIMEOUT_S = 2.0
#: Entries per batch (one EVALSHA) at most. Measured on the 2-core test
#: machine (Redis on it too, hiredis, other sessions' work around: noisy).
#: The bus alone (48-byte payloads, 10,000 publishes outstanding) does
#: ~80,000-100,000 entries/s with any cap from 100 to 2,000: the cap hardly
#: matters to the client any more. A node under ``msgplatform-bench c2s
#: --conns 100 --rate 0 --duration 10 --procs 2`` did, mean of 4 runs each,
#: ~10,600 frames/s with 100, ~11,800 with 300, ~13,000 with 1,000 (its
#: batches then grow to ~280 entries by themselves), ~10,900 with 3,000
#: (2 runs). A full batch of 1,000 takes Redis ~5 ms (~5 us per XADD in the
#: script), the longest it holds other clients up.
MAX_BATCH = 1000
#: Payload bytes per batch: a batch takes no more entries once it holds this
#: many (C2S bodies may be up to ``limits.max_body``, 64 KiB by default; 1,000
#: of those would be one 64 MiB command that blocks Redis for its length).
MAX_BATCH_BYTES = 1 << 20
#: Frames waiting for a batch at most, in batches (and at least twice
#: ``bus.max_pending``, the router's own bound): beyond it publish fails at once.
MAX_QUEUED_BATCHES = 20
#: Seconds between two new connections replacing one that gave up (see _revive).
REVIVE_S = 1.0


#: The XADDs of one batch, in order, each on its own (``redis.pcall``): one reply
#: per entry, its id (as a status reply, see the module docstring) or its
#: error. KEYS: the topics; ARGV: the MAXLEN, then a payload and a logid per
#: entry (the fields of docs/operations.md §7, in that order).
XADD_BATCH = Script("""\
local maxlen = ARGV[1]
local replies = {}
for i, topic in ipairs(KEYS) do
  local id = redis.pcall('XADD', topic, 'MAXLEN', '~', maxlen, '*',
                         'msg', ARGV[2 * i], 'logid', ARGV[2 * i + 1])
  if type(id) == 'string' then id = redis.status_reply(id) end
  replies[i] = id
end
return replies
""")
_SHA = XADD_BATCH.sha.encode()
_SOURCE = XADD_BATCH.source.encode()


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
    ready = within(conn.ping(), deadline, clock)
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
    """One queued publish: its entry's arguments and the caller's Deferred."""

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
    """C2S frames to Redis Streams, one command per batch (see the module docstring).

    ``reactor`` schedules the flushes and the deadlines (tests may pass a
    Clock, though txredisapi itself always runs on the global reactor).
    ``reply_timeout_s`` defaults to :data:`REPLY_TIMEOUT_S`, or less so that
    the backstop deadline ends before the router's ``publish_timeout_s``.

    ``batches`` counts the batches sent and ``largest_batch`` is the most
    entries one of them carried (for metrics and tests); ``commands`` counts
    the commands they took (one each, two after a ``NOSCRIPT``).
    """

    log = Logger()

    def __init__(self, url: str, config: BusConfig, reactor: IReactorTime, *,
                 reply_timeout_s: float | None = None, max_batch: int = MAX_BATCH,
                 max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self.url = parse_redis_url(url, ("bus", "url"))
        self.where = _where(self.url)
        self.config = config
        self.reactor = reactor
        if reply_timeout_s is None:
            reply_timeout_s = min(REPLY_TIMEOUT_S, config.publish_timeout_s / DEADLINE_FACTOR)
        self.reply_timeout = reply_timeout_s
        self.deadline = reply_timeout_s * DEADLINE_FACTOR
        #: The time limit of the batch in flight; a stall of the node is not counted.
        self._deadlines = Deadlines(reactor, self.deadline, "Redis Streams batches")
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        # Never below what the router may hand over (twice bus.max_pending).
        self.max_queued = max(max_batch * MAX_QUEUED_BATCHES, 2 * config.max_pending)
        self._maxlen = str(config.stream_maxlen).encode()
        self._conn: Any = None
        self._queue: deque[_Pending] = deque()
        self._flush_call: IDelayedCall | None = None
        self._in_flight = False
        self._stopped = False
        self._revived_at = float("-inf")
        self.batches = 0
        self.largest_batch = 0
        self.commands = 0

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
        queued, self._queue = self._queue, deque()
        for pending in queued:
            pending.fail("the Redis Streams bus stopped")
        conn, self._conn = self._conn, None
        if conn is not None:
            # A batch in flight fails with the lost connection.
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

    # -- the batches ----------------------------------------------------------------

    def _flush(self) -> None:
        """Send the next batch, unless one is in flight (it calls again when done)."""
        self._flush_call = None
        if self._in_flight:
            return
        queue, limit, room = self._queue, self.max_batch, self.max_batch_bytes
        batch: list[_Pending] = []
        while queue and len(batch) < limit and room > 0:
            pending = queue.popleft()
            # A frame already answered (the router timed it out: UNAVAILABLE) is
            # not sent any more: the client was told it did not reach the bus.
            if not pending.d.called:
                batch.append(pending)
                room -= len(pending.payload)
        if not batch:
            return
        self._in_flight = True
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        d = Deferred.fromCoroutine(self._send(batch))
        self._deadlines.watch(d).addBoth(self._sent, batch)

    async def _send(self, batch: list[_Pending]) -> None:
        conn = self._conn
        if conn is None or not _connected(conn):
            self._revive()
            raise BusUnavailable(f"not connected to Redis at {self.where}")
        args: list[Any] = [len(batch)]
        args += [p.topic for p in batch]
        args.append(self._maxlen)
        for p in batch:
            args += (p.payload, p.logid)
        self.commands += 1
        try:
            replies = await execute(conn, b"EVALSHA", _SHA, *args)
        except txredisapi.ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            self.log.info("Redis at {where} does not know the XADD script; loading it",
                          where=self.where)
            self.commands += 1
            replies = await execute(conn, b"EVAL", _SOURCE, *args)
        if not isinstance(replies, list) or len(replies) != len(batch):
            raise BusUnavailable(f"the XADD script answered {replies!r:.100}")
        errors: list[str] = []
        for p, reply in zip(batch, replies, strict=True):
            if p.d.called:
                continue
            if isinstance(reply, Exception):
                why = str(reply)
                errors.append(why)
                p.fail(f"redis XADD to {self.where}: {why}")
            else:
                p.d.callback(None)
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
                self.log.warn("C2S batch of {count} XADDs to Redis at {where} failed: {why}",
                              count=len(unanswered), where=self.where, why=why)
            for p in unanswered:
                p.fail(f"redis XADD to {self.where}: {why}")
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

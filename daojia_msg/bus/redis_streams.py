# -*- test-case-name: tests.bus.test_redis_streams -*-
"""The Redis Streams bus: each C2S envelope becomes one entry of the stream
its topic names::

    XADD <topic> MAXLEN ~ <bus.stream_maxlen> * msg <Message bytes> logid <logid>

(the entry's fields: docs/operations.md §7). A payload of another media type
than the envelope's protobuf (the ``offers`` topic's JSON) has a third field,
``content_type <media type>``; an entry without it is protobuf, as every
entry written before the field existed. The app server's side is
:mod:`daojia_msg.bus.redis_streams_consumer`.

**One command per batch.** :meth:`RedisStreamsBus.publish` only queues the
frame. The queue is flushed on the next reactor turn (``callLater(0)``), so
every publish of one turn shares a batch, and the batch goes to Redis as *one*
command: ``EVALSHA`` of :data:`XADD_BATCH`, a Lua script that runs the XADDs
above for the batch's entries, in order, and answers one reply per entry: its
entry id, or the error of that XADD alone (``redis.pcall``: e.g.
``WRONGTYPE`` on a key that is not a stream fails only its caller, as a
separate XADD would). Why not a pipeline of XADDs: txredisapi's work per
command, not Redis, was the node's limit (BENCHMARKS.md).

When Redis does not know the script (``NOSCRIPT``: after a restart, a
failover or ``SCRIPT FLUSH``) the same batch goes again as ``EVAL`` with the
source, which loads it (logged at info). The sha and source come from
:class:`~daojia_msg.redisconn.Script`, but not its ``__call__``, which
runs on the node's session pool with the store's errors and deadline; the bus
has its own connection, errors and deadline (below).

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

**Never hang.** The bus has a connection of its own
(:mod:`daojia_msg.bus.redis_streams_connection`). A batch's command is
encoded here and written straight to it
(:func:`~daojia_msg.redisconn.execute`, not txredisapi's per-argument
encoder); while there is no live connection a batch fails at once; and each
batch has a deadline of :data:`DEADLINE_FACTOR` reply timeouts (covering the
``EVAL`` after a ``NOSCRIPT`` too), after which the connection is dropped
(when the command went through txredisapi's own path, its reply timeout
drops it first). A batch that never went out (no live connection), or that
Redis answered with an error, fails its callers with :class:`BusUnavailable`:
nothing was published, and a client may send again. A batch whose command was
written but whose reply never came (the deadline, a connection lost in
between) fails them with :class:`BusTimeout` (answered TIMEOUT), as the AMQP
bus fails a publish its broker never confirmed: Redis may have run it, and a
resend could publish a message twice. A connection that txredisapi gave up on
is replaced. The queue is bounded too (:data:`MAX_QUEUED_BATCHES` batches, at
least twice ``bus.max_pending``): beyond it ``publish`` fails at once.

**Start-up.** :meth:`RedisStreamsBus.start` fails with :class:`BusUnavailable`
("cannot connect to Redis at host:port/db: ...") when the server cannot be
reached or does not answer a PING. Not :class:`ConfigError`: the bus cannot
know which key names its URL (``bus.url`` or ``buses.<name>.url``), and the
URL itself was checked when the config was read; the node's start-up prints
the message as its one line either way.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bus.envelope import CONTENT_TYPE
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.redis_streams_connection import (
    REPLY_TIMEOUT_S,
    count_connections,
    gave_up,
    is_connected,
    open_connection,
    replace,
    where,
)
from daojia_msg.config import BusConfig, parse_redis_url
from daojia_msg.core.errors import BusTimeout, BusUnavailable
from daojia_msg.deadlines import Deadlines
from daojia_msg.redisconn import DEADLINE_FACTOR, Script, execute

#: Entries per batch (one EVALSHA) at most: a full batch holds other clients
#: of Redis up for about 5 ms; the cap was measured (BENCHMARKS.md).
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
#: per entry, its id or its error. KEYS: the topics; ARGV: the MAXLEN, then a
#: payload, a logid and a media type per entry (the fields of
#: docs/operations.md §7, in that order; an empty media type, the envelope's
#: protobuf, writes no ``content_type`` field). The ids are status replies (a line each), not bulk strings:
#: txredisapi's pure-Python parser, used when hiredis is missing, reads each
#: bulk string of a reply in a reactor turn of its own.
XADD_BATCH = Script("""\
local maxlen = ARGV[1]
local replies = {}
for i, topic in ipairs(KEYS) do
  local at = 3 * i - 1
  local id
  if ARGV[at + 2] == '' then
    id = redis.pcall('XADD', topic, 'MAXLEN', '~', maxlen, '*',
                     'msg', ARGV[at], 'logid', ARGV[at + 1])
  else
    id = redis.pcall('XADD', topic, 'MAXLEN', '~', maxlen, '*',
                     'msg', ARGV[at], 'logid', ARGV[at + 1], 'content_type', ARGV[at + 2])
  end
  if type(id) == 'string' then id = redis.status_reply(id) end
  replies[i] = id
end
return replies
""")
_SHA = XADD_BATCH.sha.encode()
_SOURCE = XADD_BATCH.source.encode()


def _drop(conn: Any) -> None:
    """Abort the live connections of ``conn`` (it reconnects by itself)."""
    factory = getattr(conn, "_factory", None)
    for protocol in list(getattr(factory, "pool", ())):
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()


class _Pending:
    """One queued publish: its entry's arguments and the caller's Deferred."""

    __slots__ = ("topic", "payload", "logid", "content_type", "d")

    def __init__(self, topic: bytes, payload: bytes, logid: bytes, content_type: bytes) -> None:
        self.topic = topic
        self.payload = payload
        self.logid = logid
        #: Empty for the envelope's protobuf (no field written).
        self.content_type = content_type
        self.d: Deferred[None] = Deferred()

    def fail(self, why: str, uncertain: bool = False) -> None:
        """Fail the caller: :class:`BusUnavailable` (not published), or with
        ``uncertain`` :class:`BusTimeout` (it may have been)."""
        if not self.d.called:
            self.d.errback(BusTimeout(why) if uncertain else BusUnavailable(why))


class _Unconfirmed(Exception):
    """A batch's command went out and no reply came: Redis may have run it."""


@implementer(IMessageBus)
class RedisStreamsBus:
    """C2S frames to Redis Streams, one command per batch (see the module docstring).

    ``reactor`` schedules the flushes and the deadlines (tests may pass a
    Clock, though txredisapi itself always runs on the global reactor).
    ``reply_timeout_s`` defaults to :data:`REPLY_TIMEOUT_S`, or less so that
    the backstop deadline ends before the router's ``publish_timeout_s``.

    ``batches`` counts the batches sent and ``largest_batch`` is the most
    entries one of them carried (for metrics and tests); ``commands`` counts
    the commands they took (one each, two after a ``NOSCRIPT``);
    ``reconnects`` the connections made after the first.
    """

    log = Logger()

    def __init__(self, url: str, config: BusConfig, reactor: IReactorTime, *,
                 reply_timeout_s: float | None = None, max_batch: int = MAX_BATCH,
                 max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self.url = parse_redis_url(url, ("bus", "url"))
        self.where = where(self.url)
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
        self.reconnects = 0

    # -- IMessageBus ----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self._conn = count_connections(await open_connection(
            self.url, self.reactor, connect_timeout=self.reply_timeout,
            reply_timeout=self.reply_timeout), self._reconnected)
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

    def publish(self, topic: str, payload: bytes, logid: str,
                content_type: str = CONTENT_TYPE) -> Deferred[None]:
        if self._stopped:
            return fail(BusUnavailable("the Redis Streams bus stopped"))
        if len(self._queue) >= self.max_queued:
            return fail(BusUnavailable(
                f"{len(self._queue)} C2S frames already wait for Redis at {self.where}"))
        try:
            pending = _Pending(topic.encode(), bytes(payload), logid.encode(),
                               b"" if content_type == CONTENT_TYPE else content_type.encode())
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
        if conn is None or not is_connected(conn):
            self._revive()
            raise BusUnavailable(f"not connected to Redis at {self.where}")
        args: list[Any] = [len(batch)]
        args += [p.topic for p in batch]
        args.append(self._maxlen)
        for p in batch:
            args += (p.payload, p.logid, p.content_type)
        self.commands += 1
        try:
            replies = await _written(conn, b"EVALSHA", _SHA, args)
        except txredisapi.ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            self.log.info("Redis at {where} does not know the XADD script; loading it",
                          where=self.where)
            self.commands += 1
            replies = await _written(conn, b"EVAL", _SOURCE, args)
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
        if self._stopped or not gave_up(conn):
            return
        now = self.reactor.seconds()
        if now - self._revived_at < REVIVE_S:
            return
        self._revived_at = now
        self.log.warn("Redis at {where} gave up reconnecting; connecting anew", where=self.where)
        self._conn = count_connections(replace(
            conn, self.url, connect_timeout=self.reply_timeout,
            reply_timeout=self.reply_timeout), self._reconnected)

    def _reconnected(self) -> None:
        self.reconnects += 1

    def _sent(self, result: object, batch: list[_Pending]) -> None:
        self._in_flight = False
        if isinstance(result, Failure):
            # The deadline runs only once the command was written.
            uncertain = result.check(TimeoutError, _Unconfirmed) is not None
            if result.check(TimeoutError):
                why = f"no reply within {self.deadline:g} s"
                if self._conn is not None:
                    _drop(self._conn)  # its reply timers went with the cancel
            else:
                why = result.getErrorMessage()
            unanswered = [p for p in batch if not p.d.called]
            if unanswered:
                self.log.warn("C2S batch of {count} XADDs to Redis at {where} failed: {why}"
                              "{maybe}", count=len(unanswered), where=self.where, why=why,
                              maybe=" (they may have been published)" if uncertain else "")
            for p in unanswered:
                p.fail(f"redis XADD to {self.where}: {why}", uncertain)
        if self._queue and not self._stopped:
            self._flush()


async def _written(conn: Any, command: bytes, script: Any, args: list[Any]) -> Any:
    """The reply to ``command``; a failure after it went out (a connection
    lost before the reply) is :class:`_Unconfirmed`, as Redis may have run it.
    A failure before it went out (it fails at once), or an error reply, is
    raised as it is."""
    d = execute(conn, command, script, *args)
    written = not d.called
    try:
        return await d
    except (txredisapi.ResponseError, CancelledError):  # (cancelled: the deadline's)
        raise
    except Exception as e:
        if written:
            raise _Unconfirmed(str(e) or type(e).__name__) from e
        raise

# -*- test-case-name: tests.store.mysql.test_store -*-
""":class:`MySQLMessageStore`, the cluster's :class:`IMessageStore`.

``store`` and ``ack`` go through a :class:`GroupCommitter` with several
flushes in flight (``concurrency``, at most ``pool_max``), so that one flush's
round trips and commit (the InnoDB log fsync) overlap another's; writes queued
while a lane's flush is in flight go together in its next one
(:mod:`.flush`). A write's lane is chosen by uid (the sender's for a store,
the recipient's for an ACK: the uid whose de-dup keys or pending rows it
locks), so one node's flushes never wait for each other's row locks on a key
or a pending message, and a sender's messages commit in the order sent; other
nodes' flushes may, which the keys and locking reads handle.

Reads go straight to the database of their uid (:mod:`.placement`), batched
(:class:`~daojia_msg.store.mysql.pools.Database`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.config import MySQLConfig, StoreConfig, parse_mysql_url
from daojia_msg.core.errors import StoreError
from daojia_msg.core.model import AckedMessage, NewMessage, Page, StoredMessage, StoreOutcome
from daojia_msg.logic.interfaces import IMessageStore
from daojia_msg.store.batching import GroupCommitter
from daojia_msg.store.dbpool import StoreLife, close_pool
from daojia_msg.store.lifecycle import PurgeCounts, PurgeCutoffs, Retention, StorageFigures
from daojia_msg.store.mysql import schema
from daojia_msg.store.mysql.across import AcrossDatabases
from daojia_msg.store.mysql.counts import PendingCounter
from daojia_msg.store.mysql.flush import AckOp, FlushTransactions, StoreOp
from daojia_msg.store.mysql.lifecycle import MySQLLifecycle
from daojia_msg.store.mysql.placement import Placement
from daojia_msg.store.mysql.pools import (
    Database,
    check_reachable,
    describe,
    lock_wait_seconds,
    mysql_pool,
)
from daojia_msg.store.mysql.render import PARAMSTYLE
from daojia_msg.store.reads import ReadStats
from daojia_msg.store.sql import MessageTransactions, Statements, Tables

T = TypeVar("T")

PURGE_CHUNK = 5000
"""``purge_dedup`` deletes at most this many keys per statement (and transaction)."""

FLUSHES_IN_FLIGHT = MySQLConfig().flushes_in_flight
"""Flushes (transactions) in flight at once by default (``[mysql]
flushes_in_flight``), at most ``pool_max``. Each lane flushes its own writes,
so more lanes mean smaller transactions when the load is light; a database
further away (longer round trips, slower commits) gains more from more lanes."""


@implementer(IMessageStore)
class MySQLMessageStore:
    """:class:`IMessageStore` on MySQL/MariaDB databases.

    :param config: ``[mysql]``: ``url`` (required), ``databases``, ``shards``,
        pool sizes and timeouts.
    :param reactor: time for de-dup keys (``seconds()``) and the pools'
        ``cp_reactor``.
    :param pools: ready-made pools, one per database in config order (tests);
        the store closes them at :meth:`stop`.
    :param max_batch: at most this many writes per group commit.
    :param concurrency: at most this many flushes in flight (default
        ``config.flushes_in_flight``, and never more than ``pool_max``).
    :param retention: ``[store]``: what expires (:class:`Retention`); None keeps all.
    :ivar committer: the :class:`GroupCommitter` of the writes.
    :ivar placement: the :class:`Placement` of rows.
    """

    log = Logger()

    def __init__(
        self,
        config: MySQLConfig,
        reactor: IReactorTime,
        pools: list[adbapi.ConnectionPool] | None = None,
        max_batch: int = 1000,
        concurrency: int | None = None,
        retention: StoreConfig | None = None,
    ) -> None:
        if not config.url:
            raise ValueError("MySQLMessageStore needs mysql.url")
        #: The config key of each database's URL, for errors at start.
        self._keys = [("mysql", "url")] + [
            ("mysql", "databases", str(i)) for i in range(len(config.databases))]
        urls = [parse_mysql_url(url, key)
                for url, key in zip((config.url, *config.databases), self._keys, strict=True)]
        if pools is not None and len(pools) != len(urls):
            raise ValueError(f"{len(urls)} databases configured, {len(pools)} pools given")
        if pools is None:
            pools = [mysql_pool(url, config, reactor) for url in urls]
        self._urls = urls
        self.config = config
        self._clock = reactor
        if concurrency is None:
            concurrency = config.flushes_in_flight
        concurrency = max(1, min(concurrency, config.pool_max))
        #: Read batches in flight per database: half the connections flushes leave.
        self.reads_in_flight = max(1, (config.pool_max - concurrency) // 2)
        #: Reads in flight and failed, over every database (``/metrics``).
        self.read_stats = ReadStats()
        self._dbs = [
            Database(i, describe(u), p, self.reads_in_flight, self.read_stats)
            for i, (u, p) in enumerate(zip(urls, pools, strict=True))
        ]
        self.placement = Placement(config.shards, len(self._dbs))
        self.retention = Retention(reactor, retention)
        self._lifecycle = MySQLLifecycle(self._dbs, config.shards, reactor)
        self._txns = [
            MessageTransactions(
                PARAMSTYLE,
                Statements(Tables.shard(n), history_has_content=True, locking_reads=True),
            )
            for n in range(config.shards)
        ]
        self._count_pending = PendingCounter(self.placement)
        self._flushes = FlushTransactions(self.placement, self._txns)
        self._across = AcrossDatabases(self._dbs, self.placement, self._flushes)
        self.committer = GroupCommitter(self._run_flush, max_ops=max_batch, concurrency=concurrency)
        #: The smallest ``max_allowed_packet`` of the databases (read at start).
        self.max_packet_bytes = 16 << 20
        self._life = StoreLife()

    @property
    def pools(self) -> list[adbapi.ConnectionPool]:
        return [db.pool for db in self._dbs]

    @property
    def retries(self) -> int:
        """How many interactions ran a second time after a lost connection."""
        return sum(db.retrier.retries for db in self._dbs)

    @property
    def max_statement_bytes(self) -> int:
        """Bytes per multi-row statement (estimated): half of
        :attr:`max_packet_bytes`, at least 64 KiB."""
        return self._flushes.max_statement_bytes

    @max_statement_bytes.setter
    def max_statement_bytes(self, value: int) -> None:
        self._flushes.max_statement_bytes = value

    def _names(self) -> str:
        return ", ".join(db.name for db in self._dbs)

    # Life

    def start(self) -> Deferred[None]:
        count, shards, wait_s = len(self._dbs), self.config.shards, lock_wait_seconds(self.config)

        def migrate() -> Deferred[list[tuple[int, int]]]:
            for db in self._dbs:
                db.pool.start()
            def migrate_all(_: object) -> Deferred[list[tuple[int, int]]]:
                return self._on_all(
                    lambda db: db.run(schema.migrate_txn, db.name, db.index, count, shards, wait_s))

            reachable = self._on_all(
                lambda db: check_reachable(db, self._keys[db.index], self._urls[db.index].database))
            return reachable.addCallback(migrate_all).addCallback(packet_sizes)

        def packet_sizes(found: list[tuple[int, int]]) -> list[tuple[int, int]]:
            self.max_packet_bytes = min(p for _, p in found)
            self.max_statement_bytes = max(self.max_packet_bytes // 2, 1 << 16)
            return found

        def opened(found: list[tuple[int, int]]) -> None:
            self.log.info(
                "message store on {databases} open: schema version {version} (was {found}),"
                " {shards} shard tables per database",
                databases=self._names(),
                version=schema.SCHEMA_VERSION,
                found=[f for f, _ in found],
                shards=shards,
            )

        return self._life.start(migrate, opened)

    def stop(self) -> Deferred[None]:
        return self._life.stop(
            lambda: self.committer.drain().addCallback(
                lambda _: self._on_all(lambda db: db.runner.when_idle())
            ),
            self._close,
        )

    def _close(self) -> None:
        for db in self._dbs:
            close_pool(db.pool, db.name)
        self.log.info("message store on {databases} closed", databases=self._names())

    # Writes: group-committed

    def store(self, messages: list[NewMessage]) -> Deferred[list[StoreOutcome]]:
        batch = list(messages)
        for new in batch:
            # A row the server would refuse must not fail the flush it joins.
            if 2 * len(new.message.content) + 4096 > self.max_packet_bytes:
                return fail(
                    StoreError(
                        f"message {new.message.msgid}: {len(new.message.content)} bytes of"
                        f" content do not fit the MySQL max_allowed_packet"
                        f" ({self.max_packet_bytes})"
                    )
                )
        now_ms = int(self._clock.seconds() * 1000)
        # One sender's messages (a C2C): its lane; an app server's (uid 0): any.
        if len(batch) == 1:
            senders = {batch[0].message.from_uid}
        else:
            senders = {new.message.from_uid for new in batch}
        affinity = senders.pop() if len(senders) == 1 and 0 not in senders else None
        return self._write(StoreOp(batch, now_ms), len(batch), [], affinity)

    def ack(self, uid: int, appcode: int, msgids: list[int]) -> Deferred[list[AckedMessage]]:
        ids = list(msgids)
        return self._write(AckOp(uid, appcode, ids), len(ids), [], uid)

    def _write(
        self, op: StoreOp | AckOp, rows: int, nothing: T, affinity: int | None
    ) -> Deferred[T]:
        if not self._life.started:
            return self._life.not_running()
        if not rows:
            return succeed(nothing)
        # The committer hands the queued ops to _run_flush, which merges them.
        return self.committer.submit(cast("Callable[[Any], Any]", op), affinity, rows)

    def _run_flush(self, _write_batch_txn: object, ops: list[StoreOp | AckOp]) -> Deferred[Any]:
        """The committer's ``run_interaction``: one flush of ``ops``, its
        stores, then its ACKs. Fires with one result per op (a
        :class:`Failure` for an op that failed alone: the committer fails that
        caller alone), or fails as a whole."""
        if len(self._dbs) == 1:
            return self._dbs[0].run(self._flushes.flush_txn, ops)
        return Deferred.fromCoroutine(self._across.flush(ops))

    def _on_all(self, f: Callable[[Database], Deferred[T]]) -> Deferred[list[T]]:
        """``f(db)`` on every database; fails with the first failure."""
        d = DeferredList([f(db) for db in self._dbs], fireOnOneErrback=True, consumeErrors=True)

        def values(done: list[tuple[bool, T]]) -> list[T]:
            return [value for _, value in done]

        def first_error(failure: Failure) -> Failure:
            return (
                cast(FirstError, failure.value).subFailure if failure.check(FirstError) else failure
            )

        return d.addCallbacks(values, first_error)

    # Reads (and the purge): straight to the pools

    def pull(self, uid: int, appcode: int, after_msgid: int, limit: int) -> Deferred[Page]:
        db, n = self.placement.place(uid)
        after = max(after_msgid, self.retention.pending_floor() - 1)
        return self._read(db, self._txns[n].pull_txn, uid, appcode, after, limit)

    def pending_message(self, to_uid: int, msgid: int) -> Deferred[StoredMessage | None]:
        db, n = self.placement.place(to_uid)
        floor = self.retention.pending_floor()
        return self._read(db, self._txns[n].pending_message_txn, to_uid, msgid, floor)

    def count_pending(self, uid: int, appcode: int) -> Deferred[int]:
        floor = self.retention.pending_floor()
        return self._read(self.placement.place(uid)[0], self._count_pending, uid, appcode, floor)

    def history(
        self, usersystem: str, uid: int, before_msgid: int, limit: int, peer_uid: int
    ) -> Deferred[Page]:
        db, n = self.placement.place(uid)
        return self._read(db, self._txns[n].history_txn, usersystem, uid, before_msgid, limit,
                          peer_uid, self.retention.history_floor())

    def max_msgid(self) -> Deferred[int]:
        """The largest msgid of every ``messages_<n>`` of every database."""
        if not self._life.started:
            return self._life.not_running()
        return self._on_all(lambda db: db.run(self._max_msgid_txn)).addCallback(max)

    def _max_msgid_txn(self, txn: Any) -> int:
        return max(t.max_msgid_txn(txn) for t in self._txns)

    def purge_dedup(self, before_ms: int) -> Deferred[int]:
        """Delete old keys in every ``dedup_<n>``, at most :data:`PURGE_CHUNK`
        per transaction (short locks); not group-committed: it does not hold
        up message writes. Fires with how many were dropped."""
        if not self._life.started:
            return self._life.not_running()
        d = self._on_all(lambda db: Deferred.fromCoroutine(self._purge_db(db, before_ms)))
        return d.addCallback(sum)

    async def _purge_db(self, db: Database, before_ms: int) -> int:
        total = 0
        for t in self._txns:
            while True:
                dropped = await db.run(t.purge_dedup_txn, before_ms, PURGE_CHUNK)
                total += dropped
                if dropped < PURGE_CHUNK:
                    break
        return total

    def purge(self, cutoffs: PurgeCutoffs,
              counts: PurgeCounts | None = None) -> Deferred[PurgeCounts]:
        """One purge round over every shard table of every database
        (:mod:`.lifecycle`: batches under each shard's named lock)."""
        if not self._life.started:
            return self._life.not_running()
        return Deferred.fromCoroutine(self._lifecycle.purge(cutoffs, counts))

    def storage(self) -> Deferred[StorageFigures]:
        """Estimated rows and bytes per table kind over every database, and
        the oldest pending msgid (:mod:`.lifecycle`)."""
        if not self._life.started:
            return self._life.not_running()
        return self._lifecycle.storage()

    def _read(self, db: int, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        if not self._life.started:
            return self._life.not_running()
        return self._dbs[db].read(interaction, *args)

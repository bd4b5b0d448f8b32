"""The MySQL store's flushes: writes merged into few transactions and statements,
several flushes in flight, and two nodes racing on the same keys and ACKs.
"""

from __future__ import annotations

import hashlib
import itertools

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from daojia_msg.config import parse_mysql_url
from daojia_msg.core.model import StoreOutcome
from daojia_msg.store.mysql import MySQLMessageStore
from daojia_msg.store.mysql.store import FLUSHES_IN_FLIGHT
from tests.store.mysql.fixtures import (
    LANES,
    TestPool,
    fresh_database,
    msgids,
    mysql_config,
    senders,
    spread_every_write,
    started,
)
from tests.store.suites import USERS, c2c, ids


class GroupCommitTests(TestCase):
    async def test_concurrent_stores_share_transactions_and_statements(self) -> None:
        """40 concurrent store() calls: the first flushes at once, the 39 that
        queue behind it go in one more transaction, with one multi-row INSERT
        per table touched."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        pool.statements.clear()
        pool.queries.clear()
        pool.interactions.clear()
        calls = [store.store([c2c(100 + i, 1, 10, 2, 10, client_msg_id=f"c{i}")])
                 for i in range(40)]  # fmt: skip
        outcomes = await gatherResults(calls)
        self.assertEqual(outcomes, [[StoreOutcome(100 + i, f"log-{100 + i}")] for i in range(40)])
        self.assertEqual(store.committer.flushes, 2)
        self.assertEqual(pool.interactions, ["flush_txn", "flush_txn"])
        self.assertEqual(pool.inserts("messages_"), [1, 39])
        self.assertEqual(pool.inserts("history_"), [1, 1, 39, 39])  # sender's, recipient's
        self.assertEqual(pool.inserts("dedup_"), [1, 39])
        self.assertEqual(len(msgids(url, "messages_2")), 40)
        # Keys, then messages and history: two round trips per flush.
        self.assertEqual(len(pool.queries), 4)

    async def test_a_flush_is_two_round_trips_whatever_tables_it_touches(self) -> None:
        """Stores from 4 senders to 4 recipients (every table) and ACKs of 2
        recipients, in one flush: keys and ACK reads in one query, messages,
        history and ACK updates in another."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool], concurrency=1)
        await store.store([c2c(1, 5, 10, 2, 10), c2c(2, 5, 10, 3, 10)])
        await deferLater(reactor, 0, lambda: None)
        pool.queries.clear()
        pool.statements.clear()
        busy = store.store([c2c(3, 5, 10, 6, 10)])  # no key, no ACK: one query
        calls = [store.store([c2c(10 + u, u, 10, 4 + u, 10, client_msg_id="k")]) for u in range(4)]
        acks = [store.ack(2, 10, [1]), store.ack(3, 10, [2])]
        await busy
        outcomes = await gatherResults(calls)
        self.assertEqual(outcomes, [[StoreOutcome(10 + u, f"log-{10 + u}")] for u in range(4)])
        self.assertEqual([[a.msgid for a in acked] for acked in await gatherResults(acks)],
                         [[1], [2]])  # fmt: skip
        self.assertEqual(store.committer.flushes, 3)
        self.assertEqual(len(pool.queries), 1 + 2)
        self.assertEqual(pool.inserts("dedup_"), [1, 1, 1, 1])
        self.assertEqual(pool.inserts("messages_"), [1, 1, 1, 1, 1])
        self.assertEqual(len([t for t in pool.statements if t.startswith("UPDATE")]), 2)

    async def test_big_flushes_are_split_to_fit_the_packet_size(self) -> None:
        url = fresh_database(self)
        config = mysql_config(url, shards=1)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        self.assertGreaterEqual(store.max_statement_bytes, 1 << 16)
        store.max_statement_bytes = 100_000
        big = [c2c(i, content=bytes([i]) * 20_000) for i in range(1, 11)]
        await store.store(big)
        self.assertEqual(pool.inserts("messages_0"), [2, 2, 2, 2, 2])
        page = await store.pull(2, 10, 0, 20)
        self.assertEqual(page.messages, [n.message for n in big])


class ConcurrentFlushTests(TestCase):
    """The production pool settings, 4 shard tables, 4 flushes in flight."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = fresh_database(self)
        self.config = mysql_config(self.url, shards=4)
        self.pool = TestPool(self.url, self.config)
        self.store = await started(self, self.config, [self.pool], concurrency=LANES)
        self.store.committer.spread_at = 1  # every lane flushes when idle, as under load

    def test_concurrency(self) -> None:
        default = MySQLMessageStore(self.config, reactor)
        self.addCleanup(default.stop)
        self.assertEqual(default.committer.concurrency, FLUSHES_IN_FLIGHT)
        few = MySQLMessageStore(mysql_config(self.url, pool_min=1, pool_max=3), reactor,
                                concurrency=8)  # fmt: skip
        self.addCleanup(few.stop)
        self.assertEqual(few.committer.concurrency, 3)  # never more than pool_max
        one = MySQLMessageStore(mysql_config(self.url, flushes_in_flight=1), reactor)
        self.addCleanup(one.stop)
        self.assertEqual(one.committer.concurrency, 1)  # [mysql] flushes_in_flight

    async def test_flushes_overlap(self) -> None:
        """One store per lane: every flush is handed to the pool before any
        has committed."""
        uids = senders(LANES)
        calls = [self.store.store([c2c(100 + k, uid, 10, 2, 10)]) for k, uid in enumerate(uids)]
        self.assertEqual(self.store.committer.in_flight, LANES)
        self.assertEqual(await gatherResults(calls),
                         [[StoreOutcome(100 + k, f"log-{100 + k}")] for k in range(len(uids))])  # fmt: skip
        self.assertEqual(await self.store.count_pending(2, 10), len(uids))

    async def test_one_senders_writes_keep_their_order(self) -> None:
        """A sender's stores share a lane: a resend never races its first send."""
        calls = [self.store.store([c2c(10 + i, client_msg_id=f"k{i % 2}")]) for i in range(6)]
        outcomes = [o for (o,) in await gatherResults(calls)]
        self.assertEqual([(o.msgid, o.duplicate) for o in outcomes],
                         [(10, False), (11, False), (10, True), (11, True), (10, True),
                          (11, True)])  # fmt: skip
        self.assertEqual(self.store.committer.flushes, 2)

    async def test_concurrent_resends_of_one_key_give_one_message(self) -> None:
        """Each key sent 4 times at once, in 4 concurrent flushes (and keys in
        opposite orders in one op): every answer names the same msgid,
        exactly one is not a duplicate, one message row per key."""
        spread_every_write(self)
        calls: list[Deferred[list[StoreOutcome]]] = []
        keys: list[str] = []
        for i in range(25):
            key = f"k{i}"
            keys.append(key)
            calls.extend(
                self.store.store([c2c(1000 * (j + 1) + i, 3 + i % 3, 10, 2, 10, client_msg_id=key)])
                for j in range(4)
            )
        x, y = (
            c2c(9001, 5, 10, 6, 10, client_msg_id="x"),
            c2c(9002, 5, 10, 6, 10, client_msg_id="y"),
        )
        x2, y2 = (
            c2c(9003, 5, 10, 6, 10, client_msg_id="x"),
            c2c(9004, 5, 10, 6, 10, client_msg_id="y"),
        )
        pair = [self.store.store([x, y]), self.store.store([y2, x2])]
        results = await gatherResults(calls)
        for i, key in enumerate(keys):
            answers = [o for (o,) in results[4 * i : 4 * i + 4]]
            self.assertEqual(len({(o.msgid, o.logid) for o in answers}), 1, (key, answers))
            self.assertEqual([o.duplicate for o in answers].count(False), 1, (key, answers))
        winners = sorted(o.msgid for (o,) in results if not o.duplicate)
        first, second = await gatherResults(pair)
        self.assertEqual({first[0].msgid, second[1].msgid}, {first[0].msgid})
        self.assertEqual({first[1].msgid, second[0].msgid}, {first[1].msgid})
        self.assertEqual(ids(await self.store.pull(2, 10, 0, 100)), winners)
        self.assertEqual(len(ids(await self.store.pull(6, 10, 0, 100))), 2)
        self.assertEqual(sum(len(msgids(self.url, f"dedup_{n}")) for n in range(4)), 27)
        self.assertEqual(sum(len(msgids(self.url, f"history_{n}")) for n in range(4)), 2 * 27)

    async def test_concurrent_stores_and_acks_lose_nothing(self) -> None:
        """30 senders each send 8 messages to their own recipient, one round
        at a time; each round's ACKs (with repeats of older ones) go while the
        next round is stored, over every lane. Every message is ACKed exactly
        once, none is left pending, every history row is there."""
        spread_every_write(self)
        pairs = [(100 + 2 * k, 101 + 2 * k) for k in range(30)]
        reported: list[int] = []
        stored: list[int] = []
        previous: dict[int, list[int]] = {}
        msgid = itertools.count(1)
        for _ in range(9):
            round_ids = {r: [next(msgid)] for _, r in pairs}
            stores = [self.store.store([c2c(round_ids[r][0], s, 10, r, 10,
                                            client_msg_id=f"c{round_ids[r][0]}")])
                      for s, r in pairs]  # fmt: skip
            acks = [self.store.ack(r, 10, previous.get(r, []) + stored[-90:-60]) for _, r in pairs]
            for outcome in await gatherResults(stores):
                self.assertFalse(outcome[0].duplicate)
                stored.append(outcome[0].msgid)
            for acked in await gatherResults(acks):
                reported.extend(a.msgid for a in acked)
            previous = round_ids
        for acked in await gatherResults([self.store.ack(r, 10, previous[r]) for _, r in pairs]):
            reported.extend(a.msgid for a in acked)
        self.assertEqual(sorted(reported), sorted(stored))
        for _, r in pairs:
            self.assertEqual(await self.store.count_pending(r, 10), 0)
        for s, r in pairs:
            self.assertEqual(len(ids(await self.store.history(USERS, s, 0, 100, r))), 9)

    async def test_acks_of_a_flush_are_one_read_and_one_update_per_table(self) -> None:
        """Recipients 2 and 6 (table 2), 3 (table 3); ACKs queued behind one
        flush go in the next: one locking read and one update per table. A
        msgid named twice is reported once; one of another recipient is left
        alone."""
        pool = TestPool(self.url, self.config)
        store = await started(self, self.config, [pool], concurrency=1)
        await store.store([c2c(1, 1, 10, 2, 10), c2c(2, 1, 10, 2, 10), c2c(3, 1, 10, 6, 10),
                           c2c(4, 1, 10, 3, 10)])  # fmt: skip
        await deferLater(reactor, 0, lambda: None)  # the first flush is over
        pool.statements.clear()
        busy = store.store([c2c(5, 1, 10, 2, 11)])
        acks = [store.ack(2, 10, [2, 1]), store.ack(6, 10, [3, 4]), store.ack(3, 10, [4]),
                store.ack(2, 10, [1, 99])]  # fmt: skip
        await busy
        results = [[a.msgid for a in acked] for acked in await gatherResults(acks)]
        self.assertEqual(results, [[1, 2], [3], [4], []])
        self.assertEqual(store.committer.flushes, 3)
        reads = [t for t in pool.statements if t.startswith("SELECT msgid, to_uid")]
        updates = [t for t in pool.statements if t.startswith("UPDATE messages_")]
        self.assertEqual(
            [t.split("FROM ")[1].split()[0] for t in reads], ["messages_2", "messages_3"]
        )
        self.assertEqual([t.split()[1] for t in updates], ["messages_2", "messages_3"])
        self.assertTrue(all(t.endswith("FOR UPDATE") for t in reads))
        self.assertEqual(await store.count_pending(6, 10), 0)

    async def test_a_deadlock_runs_the_flush_again_on_a_pooled_connection(self) -> None:
        def deadlock() -> None:
            raise pymysql.err.OperationalError(1213, "Deadlock found (test)")

        self.pool.interactions.clear()
        self.pool.hooks["flush_txn"] = deadlock
        outcomes = await self.store.store([c2c(1, client_msg_id="k")])
        self.assertEqual(outcomes, [StoreOutcome(1, "log-1")])
        self.assertEqual(self.pool.interactions, ["flush_txn", "flush_txn"])
        self.assertEqual(self.store.retries, 1)

    async def test_a_lock_wait_timeout_runs_the_flush_again(self) -> None:
        """Another transaction holds the de-dup key (uncommitted) longer than
        the row-lock wait (2 s): the flush times out (1205), runs again, and
        answers with the other's msgid once it commits."""
        store = await started(self, mysql_config(self.url, shards=4, read_timeout_s=4.0))
        u = parse_mysql_url(self.url)
        raw = pymysql.connect(host=u.host, port=u.port, user=u.user, database=u.database)
        self.addCleanup(raw.close)
        with raw.cursor() as cur:
            cur.execute(
                "INSERT INTO dedup_1 (uid, appcode, client_msg_sha256, msgid, logid, created_ms)"
                " VALUES (1, 10, %s, 7, 'log-7', 1)", hashlib.sha256(b"k").digest(),
            )  # fmt: skip
        stored = store.store([c2c(1, client_msg_id="k")])
        await deferLater(reactor, 3.0, lambda: None)  # the first run gave up after 2 s
        self.assertNoResult(stored)
        raw.commit()
        self.assertEqual(await stored, [StoreOutcome(7, "log-7", duplicate=True)])
        self.assertEqual(store.retries, 1)
        self.assertEqual(msgids(self.url, "messages_2"), [])

    async def test_stop_waits_for_every_flush_in_flight(self) -> None:
        done: list[str] = []
        calls = [
            self.store.store([c2c(10 + k, uid, 10, 2, 10)]).addCallback(lambda _: done.append("w"))
            for k, uid in enumerate(senders(LANES))
        ]
        stopped = self.store.stop().addCallback(lambda _: done.append("stopped"))
        await gatherResults([*calls, stopped])
        self.assertEqual(done, ["w"] * LANES + ["stopped"])
        self.assertFalse(self.pool.running)
        self.assertEqual(len(msgids(self.url, "messages_2")), LANES)


class TwoNodesTests(TestCase):
    """Two stores on the same databases (two nodes) racing on the same keys
    and the same ACKs."""

    async def nodes(self, databases: int) -> tuple[MySQLMessageStore, MySQLMessageStore]:
        urls = [fresh_database(self) for _ in range(databases)]
        config = mysql_config(*urls, shards=2)
        return await started(self, config), await started(self, config)

    async def race_on_keys(self, databases: int) -> None:
        a, b = await self.nodes(databases)
        # Senders 3 and 4 (with 2 databases: one in each), recipients in both.
        pairs = [(3 + i % 2, 4 - i % 2) for i in range(60)]
        calls = [node.store([c2c(base + i, s, 10, r, 10, client_msg_id=f"k{i}")])
                 for i, (s, r) in enumerate(pairs) for node, base in ((a, 1000), (b, 2000))]  # fmt: skip
        results = await gatherResults(calls)
        stored = []
        for i in range(60):
            (first,), (second,) = results[2 * i], results[2 * i + 1]
            self.assertEqual(
                [first.duplicate, second.duplicate].count(False), 1, (i, first, second)
            )
            self.assertEqual(first.msgid, second.msgid)
            stored.append(first.msgid)
        pending = [ids(await a.pull(r, 10, 0, 100)) for r in (3, 4)]
        self.assertEqual(sorted(pending[0] + pending[1]), sorted(stored))
        history = ids(await b.history(USERS, 3, 0, 100, 0))
        self.assertEqual(sorted(history), sorted(stored))

    async def race_on_acks(self, databases: int) -> None:
        a, b = await self.nodes(databases)
        await a.store([c2c(i, 1, 10, 2, 10) for i in range(1, 101)])
        mine, theirs = await gatherResults(
            [a.ack(2, 10, list(range(1, 101))), b.ack(2, 10, list(range(100, 0, -1)))]
        )
        reported = [m.msgid for m in mine] + [m.msgid for m in theirs]
        self.assertEqual(sorted(reported), list(range(1, 101)))
        self.assertEqual(await b.count_pending(2, 10), 0)

    async def test_race_on_keys_one_database(self) -> None:
        await self.race_on_keys(1)

    async def test_race_on_keys_two_databases(self) -> None:
        await self.race_on_keys(2)

    async def test_race_on_acks_one_database(self) -> None:
        await self.race_on_acks(1)

    async def test_race_on_acks_two_databases(self) -> None:
        await self.race_on_acks(2)

"""The MySQL store's reads: batched, and the pending counts of many logins in one query."""

from __future__ import annotations

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from tests.store.mysql.fixtures import TestPool, fresh_database, mysql_config, started
from tests.store.suites import c2c


class ReadBatchTests(TestCase):
    async def test_concurrent_counts_share_interactions(self) -> None:
        """40 logins' count_pending at once: two interactions (the first count
        alone, then the 39 that waited for it, in one query), each caller its own count."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        await store.store([c2c(1 + i, 5, 10, 100 + i % 3, 10) for i in range(6)])
        pool.interactions.clear()
        pool.queries.clear()
        counts = await gatherResults([store.count_pending(100 + i % 4, 10) for i in range(40)])
        self.assertEqual(counts, [[2, 2, 2, 0][i % 4] for i in range(40)])
        self.assertEqual(len(pool.interactions), 2)  # one batch of counts in flight
        # A batch's counts, over all four tables, are one query.
        self.assertEqual(len(pool.queries), 2)

    async def test_other_reads_go_several_at_once(self) -> None:
        """PULLs are not held behind one another: reads_in_flight batches."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        self.assertEqual(store.reads_in_flight, 4)  # (pool_max 10 - 2 flushes) // 2
        pool.interactions.clear()
        pages = await gatherResults([store.pull(100 + i, 10, 0, 20) for i in range(6)])
        self.assertEqual([p.messages for p in pages], [[]] * 6)
        # 4 alone at once, then the 2 that waited in one batch.
        self.assertEqual(len(pool.interactions), 5)

    async def test_merged_counts_keep_appcodes_and_states_apart(self) -> None:
        """One query counts many (uid, appcode): another appcode's messages
        and ACKed messages are not counted; a uid with nothing pending is 0."""
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=2))
        # msgid 1 + i -> (uid 100 + i % 3, appcode 10 + i % 2); msgid 1 ACKed.
        await store.store([c2c(1 + i, 5, 10, 100 + i % 3, 10 + i % 2) for i in range(9)])
        await store.ack(100, 10, [1])
        keys = [(100, 10), (100, 11), (101, 10), (101, 11), (102, 10), (102, 11), (103, 10)]
        counts = await store._dbs[0].run(store._count_pending.many, keys)
        self.assertEqual(counts, [1, 1, 1, 2, 2, 1, 0])

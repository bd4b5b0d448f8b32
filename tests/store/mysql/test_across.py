"""The MySQL store's write order over two databases, with one of them failing at
chosen moments.
"""

from __future__ import annotations

import hashlib

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from daojia_msg.core.errors import StoreUnavailable, StoreUncertain
from daojia_msg.core.model import StoreOutcome
from tests.store.mysql.fixtures import (
    TestPool,
    down,
    fresh_database,
    msgids,
    mysql_config,
    query,
    started,
)
from tests.store.suites import c2c


class AcrossDatabasesTests(TestCase):
    """The write order over two databases (2 x 2 tables: uids 4 and 8 in the
    first, 3 in the second), with one of them failing at chosen moments.

    One flush in flight at a time, so that a test knows which writes share one."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.a, self.b = fresh_database(self), fresh_database(self)
        config = mysql_config(self.a, self.b, shards=2)
        self.pa, self.pb = TestPool(self.a, config), TestPool(self.b, config)
        self.store = await started(self, config, [self.pa, self.pb], concurrency=1)

    def rows(self) -> dict[str, list[int]]:
        found = {}
        for name, url in (("a", self.a), ("b", self.b)):
            for table in ("messages", "history", "dedup"):
                found[f"{name}.{table}"] = sorted(
                    m for n in (0, 1) for m in msgids(url, f"{table}_{n}")
                )
        return {k: v for k, v in found.items() if v}

    async def test_an_op_fails_whole_and_its_written_rows_are_deleted(self) -> None:
        """3 -> 4: message in a, sender's history in b. b fails the write: the
        op is UNAVAILABLE and a's rows are deleted again. 4 -> 8 (all in a)
        is not held up."""
        self.pb.hooks["write_rows_txn"] = down
        await self.assertFailure(self.store.store([c2c(1, 3, 10, 4, 10)]), StoreUnavailable)
        self.assertEqual(self.rows(), {})
        self.assertEqual(await self.store.store([c2c(2, 4, 10, 8, 10)]), [StoreOutcome(2, "log-2")])
        self.assertEqual(self.rows(), {"a.messages": [2], "a.history": [2, 2]})
        self.flushLoggedErrors()

    async def test_a_write_that_may_have_committed_is_deleted_too(self) -> None:
        """b commits the write but its answer is lost twice (StoreUncertain:
        TIMEOUT for the client): the copies are deleted in b as in a."""
        self.pb.lose_commit_answers = 2
        await self.assertFailure(self.store.store([c2c(1, 3, 10, 4, 10)]), StoreUncertain)
        self.assertEqual(self.rows(), {})
        self.flushLoggedErrors()

    async def test_a_resend_of_a_failed_op_in_the_same_flush_fails_too(self) -> None:
        """Two ops in one flush, the second a resend of the first: the first
        fails, so the second cannot be answered with its msgid."""
        busy = self.store.store([c2c(1, 4, 10, 8, 10)])  # flush 1, in flight
        self.pb.hooks["write_rows_txn"] = down
        first = self.store.store([c2c(2, 3, 10, 4, 10, client_msg_id="k")])
        resend = self.store.store([c2c(3, 3, 10, 4, 10, client_msg_id="k"), c2c(4, 4, 10, 8, 10)])
        await busy
        await self.assertFailure(first, StoreUnavailable)
        await self.assertFailure(resend, StoreUnavailable)
        self.assertEqual(self.store.committer.flushes, 2)
        self.assertEqual(self.rows(), {"a.messages": [1], "a.history": [1, 1]})
        self.flushLoggedErrors()

    async def test_key_lookup_failure_writes_nothing(self) -> None:
        self.pb.hooks["find_keys_txn"] = down
        await self.assertFailure(
            self.store.store([c2c(1, 3, 10, 4, 10, client_msg_id="k")]), StoreUnavailable
        )
        self.assertEqual(self.rows(), {})
        self.flushLoggedErrors()

    async def test_key_recording_failure_still_answers_ok(self) -> None:
        """The messages are durable when the keys are written: the answer is
        OK (a resend would be stored again, never an OK for a lost message)."""
        self.pb.hooks["claim_keys_txn"] = down
        outcomes = await self.store.store([c2c(1, 3, 10, 4, 10, client_msg_id="k")])
        self.assertEqual(outcomes, [StoreOutcome(1, "log-1")])
        self.assertEqual(self.rows(), {"a.messages": [1], "a.history": [1], "b.history": [1]})
        self.flushLoggedErrors()

    async def test_a_resend_stored_by_another_node_meanwhile_wins(self) -> None:
        """Between our lookup and our key, another node records the same key
        for its copy (msgid 7): we answer with its ids and delete our copy."""

        def other_node_first() -> None:
            digest = hashlib.sha256(b"k").digest()
            query(self.b, "INSERT INTO dedup_1 (uid, appcode, client_msg_sha256, msgid, logid,"
                  " created_ms) VALUES (3, 10, %s, 7, 'log-7', 1)", digest)  # fmt: skip

        self.pb.hooks["claim_keys_txn"] = other_node_first
        outcomes = await self.store.store([c2c(1, 3, 10, 4, 10, client_msg_id="k")])
        self.assertEqual(outcomes, [StoreOutcome(7, "log-7", duplicate=True)])
        self.assertEqual(self.rows(), {"b.dedup": [7]})

    async def test_acks_of_several_databases_in_one_flush(self) -> None:
        await self.store.store([c2c(1, 3, 10, 4, 10), c2c(2, 4, 10, 3, 10)])
        busy = self.store.store([c2c(5, 4, 10, 8, 10)])
        acks = [self.store.ack(4, 10, [1]), self.store.ack(3, 10, [2, 1])]
        await busy
        self.assertEqual([[a.msgid for a in acked] for acked in await gatherResults(acks)],
                         [[1], [2]])  # fmt: skip
        self.assertEqual(await self.store.count_pending(3, 10), 0)
        self.assertEqual(await self.store.count_pending(4, 10), 0)

    async def test_one_database_down_fails_only_its_acks(self) -> None:
        await self.store.store([c2c(1, 3, 10, 4, 10), c2c(2, 4, 10, 3, 10)])
        busy = self.store.store([c2c(5, 4, 10, 8, 10)])
        self.pb.hooks["acks_txn"] = down
        ok, broken = self.store.ack(4, 10, [1]), self.store.ack(3, 10, [2])
        await busy
        self.assertEqual([a.msgid for a in await ok], [1])
        await self.assertFailure(broken, StoreUnavailable)
        self.flushLoggedErrors()

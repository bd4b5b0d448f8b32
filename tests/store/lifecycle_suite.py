"""The data lifecycle of the message stores (docs/operations.md §13), written
once and run on every SQL backend: what expires is never pulled, counted or
read again, the purge removes it in batches and counts it per route,
delivered rows leave the pending table, history past its retention is gone.

A fixture hands over a started store built with :data:`RETENTION` on a
``task.Clock`` at :data:`NOW`, and ``rows(kind)``: the exact row count of a
table kind (``pending``, ``history``, ``dedup``) over all its tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.config import StoreConfig
from daojia_msg.core.model import Kind, PurgeCutoffs
from daojia_msg.ids import IdGenerator
from tests.store.suites import USERS, c2c, ids, s2c

NOW = 1_795_700_000.0
RETENTION = StoreConfig(pending_ttl_days=1.0, history_days=2.0, dedup_days=7.0)
DAY_MS = 86_400_000


def msgid(age_days: float, seq: int = 0) -> int:
    """A msgid made ``age_days`` before :data:`NOW` (``seq`` apart)."""
    return IdGenerator.floor_for(int(NOW * 1000 - age_days * DAY_MS)) + seq


def cutoffs(batch: int = 1000, now: float = NOW) -> PurgeCutoffs:
    now_ms = int(now * 1000)
    return PurgeCutoffs(
        pending_before=IdGenerator.floor_for(now_ms - RETENTION.pending_ttl_ms),
        history_before=IdGenerator.floor_for(now_ms - RETENTION.history_ms),
        dedup_before_ms=int(now_ms - RETENTION.dedup_days * DAY_MS),
        batch=batch,
    )


@dataclass
class LifecycleFixture:
    store: Any
    clock: Clock
    rows: Callable[[str], int]


def make_lifecycle_tests(fixture: Callable[[TestCase], Any]) -> type[TestCase]:
    class LifecycleTests(TestCase):
        async def setUp(self) -> None:  # type: ignore[override]
            made = maybeDeferred(cast(Callable[[TestCase], Any], fixture), self)
            self.fixture: LifecycleFixture = await made
            self.store = self.fixture.store

        async def test_expired_is_not_pulled_counted_or_pending(self) -> None:
            old, fresh = msgid(1.5), msgid(0.5)
            await self.store.store([c2c(old), c2c(fresh)])
            self.assertEqual(ids(await self.store.pull(2, 10, 0, 10)), [fresh])
            self.assertEqual(ids(await self.store.pull(2, 10, old - 5, 10)), [fresh])
            self.assertEqual(await self.store.count_pending(2, 10), 1)
            self.assertIsNone(await self.store.pending_message(2, old))
            self.assertIsNotNone(await self.store.pending_message(2, fresh))
            # Time passes: the fresh one expires too.
            self.fixture.clock.advance(0.6 * 86400)
            self.assertEqual(ids(await self.store.pull(2, 10, 0, 10)), [])
            self.assertEqual(await self.store.count_pending(2, 10), 0)

        async def test_purge_counts_expired_per_route_then_deletes(self) -> None:
            await self.store.store([c2c(msgid(1.5, 0)), c2c(msgid(1.5, 1), to_appcode=11),
                                    s2c(msgid(1.2, 0)), c2c(msgid(1.1, 0)), c2c(msgid(0.2))])
            counts = await self.store.purge(cutoffs())
            self.assertEqual(counts.expired, {(10, 7, Kind.C2C): 2, (11, 7, Kind.C2C): 1,
                                              (10, 7, Kind.S2C): 1})
            self.assertEqual((counts.delivered, counts.history, counts.skipped), (0, 0, []))
            self.assertEqual(self.fixture.rows("pending"), 1)
            self.assertEqual(self.fixture.rows("history"), 5 + 4)  # kept: within history_days
            again = await self.store.purge(cutoffs())
            self.assertEqual(again.expired, {})

        async def test_acked_rows_leave_the_pending_table_history_keeps_them(self) -> None:
            a, b = msgid(0.1, 0), msgid(0.1, 1)
            await self.store.store([c2c(a), c2c(b)])
            await self.store.ack(2, 10, [a])
            counts = await self.store.purge(cutoffs())
            self.assertEqual((counts.delivered, counts.expired), (1, {}))
            self.assertEqual(self.fixture.rows("pending"), 1)
            self.assertEqual(ids(await self.store.pull(2, 10, 0, 10)), [b])
            self.assertEqual(ids(await self.store.history(USERS, 2, 0, 10, 0)), [b, a])

        async def test_old_history_is_gone(self) -> None:
            old, kept = msgid(2.5), msgid(1.5)
            await self.store.store([c2c(old), c2c(kept)])
            # Not returned before the purge (it lags): filtered by msgid.
            self.assertEqual(ids(await self.store.history(USERS, 1, 0, 10, 0)), [kept])
            self.assertEqual(ids(await self.store.history(USERS, 2, 0, 10, 1)), [kept])
            counts = await self.store.purge(cutoffs())
            self.assertEqual(counts.history, 2)  # the sender's row and the recipient's
            self.assertEqual(self.fixture.rows("history"), 2)
            self.assertEqual(ids(await self.store.history(USERS, 1, 0, 10, 0)), [kept])

        async def test_batches_never_exceed_purge_batch(self) -> None:
            expired = [c2c(msgid(1.5, i)) for i in range(23)]
            delivered = [c2c(msgid(0.5, i), client_msg_id=f"k{i}") for i in range(17)]
            await self.store.store(expired + delivered)
            await self.store.ack(2, 10, [n.message.msgid for n in delivered])
            counts = await self.store.purge(cutoffs(batch=5))
            self.assertEqual((counts.expired_total, counts.delivered), (23, 17))
            self.assertEqual(counts.largest_batch, 5)
            self.assertGreaterEqual(counts.batches, 5 + 4 + 1 + 1)
            self.assertEqual(self.fixture.rows("pending"), 0)
            self.assertEqual(self.fixture.rows("dedup"), 17)

        async def test_old_dedup_keys_purged(self) -> None:
            await self.store.store([c2c(msgid(0.1, i), client_msg_id=f"k{i}") for i in range(3)])
            self.fixture.clock.advance(8 * 86400)
            counts = await self.store.purge(cutoffs(batch=2, now=NOW + 8 * 86400))
            self.assertEqual(counts.dedup, 3)
            self.assertEqual(self.fixture.rows("dedup"), 0)

        async def test_storage_figures(self) -> None:
            old = msgid(0.5)
            await self.store.store([c2c(old), c2c(msgid(0.1), client_msg_id="k")])
            figures = await self.store.storage()
            self.assertEqual(figures.oldest_pending_msgid, old)
            self.assertEqual(set(figures.rows), {"pending", "history", "dedup"})
            self.assertEqual(set(figures.bytes), {"pending", "history", "dedup"})
            self.assertGreater(figures.bytes["pending"], 0)
            if not figures.approximate:
                self.assertEqual(figures.rows, {"pending": 2, "history": 4, "dedup": 1})

    return LifecycleTests

"""The data lifecycle on one node (SQLite inline, ``task.Clock``): expired
messages are neither pulled, counted at LOGIN nor pushed again, the purge
loop counts them ``expired`` per route, history past its retention is gone,
the storage figures are cached."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import default_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind, PurgeCounts
from daojia_msg.metrics.delivery import COUNTERS
from daojia_msg.metrics.lifecycle import LifecycleCollector
from daojia_msg.metrics.registry import make_registry
from tests.helpers import Stack
from tests.metrics.test_registry import scrape, value

DAY = 86400.0
EXPIRED = COUNTERS.index("expired")


def lifecycle_stack(**store: Any) -> Stack:
    """A stack whose messages expire after a day, history after two (purged
    unpaced unless ``purge_max_rows_per_s`` is given)."""
    config = default_config()
    settings = {"pending_ttl_days": 1.0, "history_days": 2.0, "purge_interval_s": 60.0,
                "purge_max_rows_per_s": 0.0, **store}
    return Stack(replace(config, store=replace(config.store, **settings)))


class ExpiryTests(SynchronousTestCase):
    def test_an_expired_message_is_neither_pulled_nor_counted_then_counted_expired(self) -> None:
        stack = lifecycle_stack()
        a = stack.login(1)
        old = a.c2c(2, b"old").msgid
        stack.clock.advance(0.5 * DAY)
        a = stack.login(1, host="10.0.0.5")  # the first connection timed out meanwhile
        fresh = a.c2c(2, b"fresh").msgid
        a.c2c(3, b"other", msgtype=9)
        stack.clock.advance(0.6 * DAY)  # old: 1.1 days, fresh: 0.6 days
        b = stack.connect("10.0.0.2")
        self.assertEqual(b.login(2).offline_count, 1)
        self.assertEqual([m.msgid for m in b.pull().messages], [fresh])
        self.assertNotEqual(old, fresh)
        self.assertEqual(stack.logic.stats.totals()["expired"], 0)
        counts = self.successResultOf(stack.logic.lifecycle.purge_round())
        assert counts is not None
        self.assertEqual(counts.expired, {(1001, 7, Kind.C2C): 1})
        self.assertEqual(stack.logic.stats.by_route[(1001, 7, Kind.C2C)][EXPIRED], 1)
        self.assertEqual(stack.logic.stats.snapshot()["totals"]["expired"], 1)
        registry = make_registry(stack.logic.stats, lambda: 0, lambda: 0)
        registry.register(LifecycleCollector(stack.logic.lifecycle))
        samples = scrape(registry)
        self.assertEqual(value(samples["msgplatform_messages_expired"],
                               "msgplatform_messages_expired_total",
                               appcode="1001", msgtype="7", kind="C2C"), 1)
        self.assertEqual(value(samples["msgplatform_store_purged_rows"],
                               "msgplatform_store_purged_rows_total", reason="expired"), 1)
        # The other two expire a day later; uid 3's too, though nobody asked.
        stack.clock.advance(DAY)
        c = stack.connect("10.0.0.3")
        self.assertEqual(c.login(3).offline_count, 0)
        self.successResultOf(stack.logic.lifecycle.purge_round())
        self.assertEqual(stack.logic.stats.totals()["expired"], 3)

    def test_an_expired_push_is_not_pushed_again(self) -> None:
        stack = lifecycle_stack(pending_ttl_days=15 / DAY)  # 15 s; ACK timeout 10 s
        b = stack.login(2)
        a = stack.login(1, host="10.0.0.3")
        a.c2c(2, b"never acked")
        self.assertEqual(len(b.pushed_messages()), 1)
        stack.clock.advance(10)
        self.assertEqual(len(b.pushed_messages()), 1)  # re-pushed: 10 s old
        stack.clock.advance(10)
        self.assertEqual(b.pushed_messages(), [])  # 20 s old: expired
        self.assertEqual(stack.logic.stats.totals()["repushed"], 1)

    def test_acked_rows_leave_and_old_history_is_gone_from_history(self) -> None:
        stack = lifecycle_stack()
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        a, b = stack.login(1), stack.login(2, host="10.0.0.2")
        sent = a.c2c(2, b"hello").msgid
        self.assertEqual(b.ack([sent]).code, 0)
        stack.clock.advance(60)  # a purge round
        last = stack.logic.lifecycle.last
        assert last is not None
        self.assertEqual(last.delivered, 1)
        figures = stack.logic.lifecycle.figures
        assert figures is not None
        self.assertEqual(figures.rows, {"pending": 0, "history": 2, "dedup": 0})
        self.assertEqual([m.msgid for m in a.history().messages], [sent])
        stack.clock.advance(2 * DAY)
        a2 = stack.login(1, host="10.0.0.4")
        self.assertEqual(list(a2.history().messages), [])
        self.assertEqual(stack.logic.lifecycle.purged["history"], 2)


class PaceTests(SynchronousTestCase):
    def test_a_round_waits_after_each_batch_for_its_share_of_a_second(self) -> None:
        """purge_max_rows_per_s = 10, batches of 2: after each batch that
        deleted rows the round waits 0.2 s on the reactor, then goes on."""
        stack = lifecycle_stack(purge_batch=2, purge_max_rows_per_s=10.0)
        a = stack.login(1)
        b = stack.login(2, host="10.0.0.2")
        sent = [a.c2c(2, b"m%d" % i).msgid for i in range(3)]
        self.assertEqual(b.ack(sent).code, 0)
        round_ = Deferred.fromCoroutine(stack.logic.lifecycle.purge_round())
        self.assertNoResult(round_)  # the first batch (2 delivered rows) ran: 0.2 s
        stack.clock.advance(0.19)
        self.assertNoResult(round_)
        stack.clock.advance(0.01)  # the second batch (1 row), then 0.1 s
        self.assertNoResult(round_)
        stack.clock.advance(0.1)
        counts = self.successResultOf(round_)
        assert counts is not None
        self.assertEqual((counts.delivered, counts.largest_batch), (3, 2))

    def test_the_node_stops_during_a_pause(self) -> None:
        stack = lifecycle_stack(purge_batch=1, purge_max_rows_per_s=1.0)
        stack.logic.startService()
        a = stack.login(1)
        b = stack.login(2, host="10.0.0.2")
        sent = [a.c2c(2, b"m%d" % i).msgid for i in range(3)]
        b.ack(sent)
        stack.clock.advance(60)  # a round: one row, then a second's pause
        stack.logic.stopService()
        self.assertEqual(self.flushLoggedErrors(), [])
        stack.clock.advance(600)
        self.assertEqual(stack.logic.lifecycle.purged["delivered"], 1)


class LoopTests(SynchronousTestCase):
    def test_purge_loop_survives_any_error(self) -> None:
        stack = lifecycle_stack()
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        stack.store.purge = lambda cutoffs, counts: fail(ZeroDivisionError())  # type: ignore[method-assign]
        stack.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        stack.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_stop_cuts_a_round_short(self) -> None:
        """The node stops while a round waits on the store: the round is
        cancelled (no more batches), quietly; no round starts again."""
        stack = lifecycle_stack()
        stack.logic.startService()
        waiting: list[Deferred[Any]] = []

        def purge(cutoffs: Any, counts: Any) -> Deferred[Any]:
            waiting.append(Deferred())
            return waiting[-1]

        stack.store.purge = purge  # type: ignore[method-assign]
        stack.clock.advance(60)
        self.assertEqual(len(waiting), 1)
        stack.logic.stopService()
        self.assertTrue(waiting[0].called)  # cancelled
        self.assertEqual(self.flushLoggedErrors(), [])
        stack.clock.advance(600)
        self.assertEqual(len(waiting), 1)
        self.assertIsNone(stack.logic.lifecycle.last)

    def test_stop_while_a_finished_round_reads_the_figures(self) -> None:
        """The node stops after a round's batches, while it reads the storage
        figures: the round is done and counted, and its end is quiet (it was
        a CancelledError logged as unhandled, a cluster test found)."""
        stack = lifecycle_stack()
        stack.logic.startService()
        reading: list[Deferred[Any]] = []

        def storage() -> Deferred[Any]:
            reading.append(Deferred())
            return reading[-1]

        stack.store.storage = storage  # type: ignore[method-assign]
        stack.clock.advance(60)
        self.assertEqual(len(reading), 1)  # the read at the end of the round, held
        round_ = stack.logic.lifecycle._round
        self.assertIsNotNone(stack.logic.lifecycle.last)  # its counts
        stack.logic.stopService()
        self.successResultOf(round_)  # ended, not failed with CancelledError
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_round_that_fails_half_way_counts_what_it_deleted(self) -> None:
        """The batches committed before the failure deleted their rows: their
        expired messages are counted, as a finished round's would be."""
        stack = lifecycle_stack()

        def purge(cutoffs: Any, counts: PurgeCounts) -> Deferred[Any]:
            counts.expired[(1001, 7, Kind.C2C)] = 3  # a first batch committed,
            counts.delivered = 5
            return fail(StoreUnavailable("mysql: gone"))  # then the database went

        stack.store.purge = purge  # type: ignore[method-assign]
        self.assertIsNone(self.successResultOf(stack.logic.lifecycle.purge_round()))
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        self.assertEqual(stack.logic.stats.snapshot()["totals"]["expired"], 3)
        self.assertEqual(stack.logic.lifecycle.purged["delivered"], 5)
        self.assertIsNone(stack.logic.lifecycle.last)  # no round finished

    def test_cutoffs_follow_the_config(self) -> None:
        stack = lifecycle_stack(purge_batch=7)
        cutoffs = stack.logic.lifecycle.cutoffs()
        now_ms = int(stack.clock.seconds() * 1000)
        self.assertEqual(cutoffs.batch, 7)
        self.assertEqual(cutoffs.dedup_before_ms, now_ms - 7 * 86_400_000)
        self.assertEqual(stack.ids.time_ms(cutoffs.pending_before), now_ms - 86_400_000)
        self.assertEqual(stack.ids.time_ms(cutoffs.history_before), now_ms - 2 * 86_400_000)

    def test_snapshot_is_cached_for_a_purge_interval(self) -> None:
        stack = lifecycle_stack()
        reads: list[int] = []
        real = stack.store.storage

        def storage() -> Any:
            reads.append(1)
            return real()

        stack.store.storage = storage  # type: ignore[method-assign]
        a = stack.login(1)
        a.c2c(2)
        stack.clock.advance(10)
        snapshot = self.successResultOf(stack.logic.lifecycle.snapshot())
        self.assertEqual(snapshot["pending_rows"], 1)
        self.assertEqual(snapshot["oldest_pending_age_s"], 10.0)
        self.assertEqual(snapshot["bytes"].keys(), {"pending", "history", "dedup"})
        self.assertIsNone(snapshot["last_purge"])
        stack.clock.advance(30)
        self.successResultOf(stack.logic.lifecycle.snapshot())
        self.assertEqual(len(reads), 1)
        stack.clock.advance(30)
        again = self.successResultOf(stack.logic.lifecycle.snapshot())
        self.assertEqual((len(reads), again["oldest_pending_age_s"]), (2, 70.0))

    def test_a_failed_read_is_not_tried_again_within_the_interval(self) -> None:
        stack = lifecycle_stack()
        reads: list[int] = []

        def storage() -> Any:
            reads.append(1)
            return fail(ZeroDivisionError())

        stack.store.storage = storage  # type: ignore[method-assign]
        first = self.successResultOf(stack.logic.lifecycle.snapshot())
        self.assertEqual((first["pending_rows"], first["bytes"]), (None, None))
        stack.clock.advance(30)
        self.successResultOf(stack.logic.lifecycle.snapshot())
        self.assertEqual(len(reads), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        stack.clock.advance(30)
        self.successResultOf(stack.logic.lifecycle.snapshot())
        self.assertEqual(len(reads), 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

# -*- test-case-name: tests.logic.test_lifecycle -*-
"""The data lifecycle on this node (docs/operations.md §13): the purge loop
and the storage figures.

Every ``store.purge_interval_s`` the node runs one purge round on the message
store (:meth:`IMessageStore.purge <daojia_msg.logic.interfaces.IMessageStore.purge>`):
pending messages older than ``store.pending_ttl_days`` (counted ``expired`` per
route in :class:`~daojia_msg.metrics.delivery.Stats`), delivered rows, history
older than ``store.history_days`` and de-duplication keys older than
``store.dedup_days``. A round never overlaps the previous one. After each
round (and at start) the storage figures are read again; ``/metrics``
answers from that copy, ``/v1/stats`` too unless it is older than
``purge_interval_s`` (the figures are read at most that often).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from daojia_msg.core.model import PurgeCounts, PurgeCutoffs, StorageFigures
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.context import Context
from daojia_msg.logic.interfaces import IMessageStore

#: The reasons rows are purged (``msgplatform_store_purged_rows_total{reason}``).
REASONS = ("expired", "delivered", "history", "dedup")


class Lifecycle:
    """The purge loop and the storage figures of one node.

    :ivar purged: rows purged by this node since it started, by reason.
    :ivar last: the last round's counts and its Unix ms (None before one ran).
    :ivar figures: the last :class:`StorageFigures` read, and when (Unix s).
    """

    log = Logger()

    def __init__(self, ctx: Context, store: IMessageStore) -> None:
        self.ctx = ctx
        self.store = store
        self.config = ctx.config.store
        self.purged = dict.fromkeys(REASONS, 0)
        self.last: PurgeCounts | None = None
        self.last_at_ms: int | None = None
        self.figures: StorageFigures | None = None
        self.figures_at = 0.0
        self._asked_at: float | None = None  # the last read asked for (it may have failed)
        self._waiters: list[Deferred[StorageFigures | None]] = []
        self._round: Deferred[PurgeCounts | None] | None = None
        self._stopping = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = ctx.clock

    def start(self) -> None:
        """The first round after ``purge_interval_s``; the figures at once."""
        self._loop.start(self.config.purge_interval_s, now=False)
        self.read_figures()

    def stop(self) -> None:
        """No more rounds; the one under way stops after its batch (its
        transaction runs to its end; the store waits for it as it stops)."""
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        if self._round is not None and not self._round.called:
            self._round.cancel()

    def _tick(self) -> Deferred[PurgeCounts | None]:
        self._round = Deferred.fromCoroutine(self.purge_round())
        return self._round

    def cutoffs(self) -> PurgeCutoffs:
        now_ms = self.ctx.now_ms()
        return PurgeCutoffs(
            pending_before=self.config.pending_floor(now_ms),
            history_before=self.config.history_floor(now_ms),
            dedup_before_ms=int(now_ms - self.config.dedup_days * 86_400_000),
            batch=self.config.purge_batch,
            max_rows_per_s=self.config.purge_max_rows_per_s,
        )

    async def purge_round(self) -> PurgeCounts | None:
        """One round; None when it failed (logged: the loop goes on). What
        its committed batches deleted is counted either way."""
        counts = PurgeCounts()
        try:
            await self.store.purge(self.cutoffs(), counts)
        except Exception as e:  # keep the LoopingCall alive whatever happened
            if self._stopping or isinstance(e, CancelledError):
                self.log.info("purge round cut short: the node stops")
            else:
                self.log.failure("purging the message store failed")
            self._count(counts)
            return None
        self._count(counts)
        self.last, self.last_at_ms = counts, self.ctx.now_ms()
        if counts.expired or counts.delivered or counts.history or counts.dedup:
            self.log.info(
                "purged {expired} expired, {delivered} delivered, {history} history rows and"
                " {dedup} de-duplication keys in {batches} batches", expired=counts.expired_total,
                delivered=counts.delivered, history=counts.history, dedup=counts.dedup,
                batches=counts.batches)
        if counts.skipped:
            self.log.debug("purge skipped {tables}: another node purges them",
                           tables=", ".join(counts.skipped))
        try:
            await self.read_figures()
        except CancelledError:  # the node stops: the round itself is done
            pass
        return counts

    def _count(self, counts: PurgeCounts) -> None:
        """What a round deleted, into the delivery statistics and the metrics."""
        for route, n in counts.expired.items():
            self.ctx.stats.add(route, "expired", n)
        for reason, n in zip(REASONS, (counts.expired_total, counts.delivered, counts.history,
                                       counts.dedup), strict=True):
            self.purged[reason] += n

    def read_figures(self) -> Deferred[StorageFigures | None]:
        """Read the storage figures again (one read at a time; those who ask
        meanwhile share it); None when the store could not answer (logged)."""
        waiter: Deferred[StorageFigures | None] = Deferred()
        self._asked_at = self.ctx.clock.seconds()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._read())
        return waiter

    async def _read(self) -> None:
        figures: StorageFigures | None = None
        try:
            figures = await self.store.storage()
        except Exception:
            if not self._stopping:
                self.log.failure("reading the message store's storage figures failed")
        else:
            self.figures, self.figures_at = figures, self.ctx.clock.seconds()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(figures)

    def oldest_pending_age_s(self) -> float | None:
        figures = self.figures
        if figures is None or not figures.oldest_pending_msgid:
            return None
        return max(0.0, self.ctx.clock.seconds()
                   - IdGenerator.time_ms(figures.oldest_pending_msgid) / 1000)

    async def snapshot(self) -> dict[str, Any]:
        """The ``"store"`` of ``GET /v1/stats``: the figures (read now if the
        copy is older than ``purge_interval_s``) and this node's last round."""
        asked = self._asked_at
        if asked is None or self.ctx.clock.seconds() - asked >= self.config.purge_interval_s:
            await self.read_figures()  # (a failed read is not tried again sooner either)
        figures = self.figures
        last = self.last
        return {
            "pending_rows": figures.rows["pending"] if figures else None,
            "history_rows": figures.rows["history"] if figures else None,
            "dedup_rows": figures.rows["dedup"] if figures else None,
            "oldest_pending_age_s": self.oldest_pending_age_s(),
            "bytes": dict(figures.bytes) if figures else None,
            "approximate": figures.approximate if figures else None,
            "figures_at_ms": int(self.figures_at * 1000) if figures else None,
            "last_purge": None if last is None else {
                "at_ms": self.last_at_ms,
                "expired": last.expired_total,
                "delivered": last.delivered,
                "history": last.history,
                "dedup": last.dedup,
                "batches": last.batches,
                "skipped": list(last.skipped),
            },
        }

# -*- test-case-name: tests.store.test_batching -*-
"""Group commit: write transactions run one at a time, and those that queue up
behind the one in flight are merged into the next.

A flush is one ``runInteraction``, so one transaction and one commit (one
fsync) for every write queued meanwhile. Each write is a plain function of the
transaction (``op(txn) -> result``); they run in the order submitted, so a
later write sees what an earlier one wrote in the same flush (this is how
de-duplication works across the batches of one flush). If the transaction
fails, every write in it fails with the same error and nothing is written.

Used by the SQLite store and meant for the MySQL one (one committer per shard).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

R = TypeVar("R")

Op = Callable[[Any], Any]
"""A write: a function of the DB-API transaction (cursor), run in the pool's thread."""

RunInteraction = Callable[..., "Deferred[Any]"]
"""``ConnectionPool.runInteraction``, or something that wraps it."""


def write_batch_txn(txn: Any, ops: list[Op]) -> list[Any]:
    """The interaction of one flush: every queued write, in order, in one transaction."""
    return [op(txn) for op in ops]


class GroupCommitter:
    """Serialise writes; merge the writes that queue while one flush is in flight.

    The first write submitted to an idle committer is flushed at once (no added
    latency); writes submitted while that flush runs wait, and all of them go
    in the next flush, up to ``max_ops`` writes per flush.

    :ivar flushes: how many transactions (``run_interaction`` calls) ran.
    :ivar submitted: how many writes were submitted.
    """

    def __init__(self, run_interaction: RunInteraction, max_ops: int = 1000) -> None:
        if max_ops < 1:
            raise ValueError(f"max_ops must be >= 1, got {max_ops}")
        self._run_interaction = run_interaction
        self._max_ops = max_ops
        self._queue: list[tuple[Op, Deferred[Any]]] = []
        self._in_flight = False
        self._idle_waiters: list[Deferred[None]] = []
        self.flushes = 0
        self.submitted = 0

    @property
    def busy(self) -> bool:
        """True while a flush runs or writes wait."""
        return self._in_flight or bool(self._queue)

    def submit(self, op: Callable[[Any], R]) -> Deferred[R]:
        """Queue ``op``; fires with its result once its transaction committed."""
        d: Deferred[R] = Deferred()
        self._queue.append((op, d))
        self.submitted += 1
        if not self._in_flight:
            self._flush()
        return d

    def drain(self) -> Deferred[None]:
        """Fires once every write submitted so far is done (committed or failed)."""
        if not self.busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _flush(self) -> None:
        batch = self._queue[: self._max_ops]
        del self._queue[: self._max_ops]
        self._in_flight = True
        self.flushes += 1
        try:
            d = self._run_interaction(write_batch_txn, [op for op, _ in batch])
        except Exception:
            d = fail()
        d.addBoth(self._flushed, batch)

    def _flushed(self, result: list[Any] | Failure, batch: list[tuple[Op, Deferred[Any]]]) -> None:
        # Still "in flight" while the callers' callbacks run: a write they
        # submit queues, and goes in the next flush below, after them.
        if isinstance(result, Failure):
            for _, d in batch:
                d.errback(result)
        else:
            for (_, d), value in zip(batch, result, strict=True):
                d.callback(value)
        if self._queue:
            self._flush()
            return
        self._in_flight = False
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

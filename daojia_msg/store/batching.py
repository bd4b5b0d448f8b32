# -*- test-case-name: tests.store.test_batching -*-
"""Group commit: writes that queue up while a transaction is in flight are
merged into the next one; up to ``concurrency`` transactions are in flight.

A flush is one ``runInteraction``, so one transaction and one commit (one
fsync) for every write queued meanwhile. Each write is a plain function of the
transaction (``op(txn) -> result``); within a flush they run in the order
submitted, so a later write sees what an earlier one wrote in the same flush
(this is how de-duplication works across the batches of one flush). If the
transaction fails, every write in it fails with the same error and nothing is
written. A write whose result is a :class:`Failure` (its interaction
decided it failed alone, e.g. the MySQL store's merged flushes) fails its
caller alone.

Concurrency is by *lanes*: ``concurrency`` independent queues, each with at
most one flush in flight. A write names its ``affinity`` (for the message
stores: the uid whose rows and de-dup keys it changes); writes of one affinity
always go to the same lane, so they run one after another in the order
submitted, never in two transactions at once: two flushes of one node never
wait for each other's row locks over one sender's de-dup keys or one
recipient's pending messages, and one sender's messages commit in the order
sent. A write without an affinity goes to the lane with the fewest writes
waiting.

With ``concurrency`` 1 (the default; the SQLite store: one writer) there is
one lane: every write runs in the order submitted, one transaction at a time.

Back-pressure: when writes arrive faster than the database takes them, the
queue would grow without bound and every answer would wait longer and longer
(past the RPC and Redis timeouts, which then fail too). Once ``pressure_at``
writes wait, ``on_pressure(True)`` (the node then stops reading its client
sockets, as it does when the C2S buses lag); ``on_pressure(False)`` once half
as many do.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

R = TypeVar("R")

Op = Callable[[Any], Any]
"""A write: a function of the DB-API transaction (cursor), run in the pool's thread."""

RunInteraction = Callable[..., "Deferred[Any]"]
"""``ConnectionPool.runInteraction``, or something that wraps it."""

#: Back-pressure once this many full flushes' worth of writes wait.
PRESSURE_FLUSHES = 4
#: Weight of writes (rows) a lane holds before it flushes while another lane's flush runs.
SPREAD_AT = 64

log = Logger()

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def lane_of(affinity: Hashable, lanes: int) -> int:
    """The lane of ``affinity`` among ``lanes``: its hash, mixed (Fibonacci
    hashing), so that regular ids (all even, a stride of the shard count) still
    spread over every lane."""
    return (((hash(affinity) * _GOLDEN) & _MASK64) >> 32) % lanes


def write_batch_txn(txn: Any, ops: list[Op]) -> list[Any]:
    """The interaction of one flush: every queued write, in order, in one transaction."""
    return [op(txn) for op in ops]


class _Lane:
    """One queue of writes with at most one flush in flight.

    Writes are numbered as submitted; flushes take them from the front, so
    they finish in that order too and ``done`` (how many are finished) says
    which: every one numbered below it.
    """

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self.queue: deque[tuple[Op, Deferred[Any]]] = deque()
        #: The weights of the writes waiting in ``queue``, in order, and their sum.
        self.weights: deque[int] = deque()
        self.weight = 0
        self.in_flight = False
        self.submitted = 0
        self.done = 0
        self._started = 0.0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    @property
    def busy(self) -> bool:
        return self.in_flight or bool(self.queue)

    def submit(self, op: Op, d: Deferred[Any], weight: int = 1) -> None:
        self.queue.append((op, d))
        self.weights.append(weight)
        self.weight += weight
        self.submitted += 1
        if not self.in_flight and self._committer.may_flush(self):
            self._flush()

    def drain(self) -> Deferred[None]:
        """Fires once the writes submitted to this lane so far are finished."""
        if self.done >= self.submitted:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append((self.submitted, d))
        return d

    def _flush(self) -> None:
        self._started = self._committer.timer()
        n = min(len(self.queue), self._committer.max_ops)
        batch = [self.queue.popleft() for _ in range(n)]
        for _ in range(n):
            self.weight -= self.weights.popleft()
        self._committer.taken(n)
        self.in_flight = True
        self._committer.flushes += 1
        try:
            d = self._committer.run_interaction(write_batch_txn, [op for op, _ in batch])
        except Exception:
            d = fail()
        d.addBoth(self._flushed, batch)

    def _flushed(self, result: list[Any] | Failure, batch: list[tuple[Op, Deferred[Any]]]) -> None:
        # Still "in flight" while the callers' callbacks run: a write they
        # submit to this lane queues, and goes in the next flush below, after them.
        committer = self._committer
        committer.on_flushed(committer.timer() - self._started, len(batch),
                             isinstance(result, Failure))
        if isinstance(result, Failure):
            for _, d in batch:
                d.errback(result)
        else:
            for (_, d), value in zip(batch, result, strict=True):
                if isinstance(value, Failure):  # that write failed alone
                    d.errback(value)
                else:
                    d.callback(value)
        self.done += len(batch)
        self.in_flight = False
        self._committer.flushed(self)
        if self._waiters:
            ready = [d for target, d in self._waiters if target <= self.done]
            self._waiters = [(t, d) for t, d in self._waiters if t > self.done]
            for waiter in ready:
                waiter.callback(None)


class GroupCommitter:
    """Merge the writes that queue while flushes are in flight; at most
    ``concurrency`` flushes (transactions) in flight, one per lane.

    The first write submitted when no flush runs is flushed at once (no added
    latency); writes submitted while flushes run wait, and those of a lane all
    go in its next flush, up to ``max_ops`` writes per flush. A second (third...)
    lane starts a flush while another runs only once ``spread_at`` of its
    writes (by weight: rows) wait: under light load one flush at a time carries everything, and
    each extra flush in flight would cost a thread hand-off and GIL waits for
    a few writes (single HTTP pushes with MySQL: 3,032-3,101/s with two small
    flushes at once, 3,793-3,829/s with one); under heavy load the lanes
    overlap. When a flush ends, the lanes that wait go first, in turn, so
    none waits behind a busy one for ever. Each caller's
    Deferred fires (in the order submitted, within a flush) once its flush is
    done: with the write's result once committed, or with the flush's failure.
    Flushes of different lanes finish in any order.

    :ivar flushes: how many transactions (``run_interaction`` calls) ran.
    :ivar submitted: how many writes were submitted.
    """

    def __init__(
        self, run_interaction: RunInteraction, max_ops: int = 1000, concurrency: int = 1,
        pressure_at: int | None = None, spread_at: int = SPREAD_AT,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_ops < 1:
            raise ValueError(f"max_ops must be >= 1, got {max_ops}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.run_interaction = run_interaction
        self.max_ops = max_ops
        self.concurrency = concurrency
        self._lanes = [_Lane(self) for _ in range(concurrency)]
        #: Writes a lane holds before it flushes while another lane's flush runs.
        self.spread_at = max(1, spread_at)
        self.flushes = 0
        self.submitted = 0
        #: Writes queued and not yet in a flush.
        self.waiting = 0
        #: ``on_pressure(True)`` once ``pressure_at`` writes wait (default
        #: :data:`PRESSURE_FLUSHES` full flushes' worth), ``on_pressure(False)``
        #: once half as many do: the node stops reading its clients meanwhile.
        self.pressure_at = pressure_at if pressure_at is not None else PRESSURE_FLUSHES * max_ops
        self.pressure = False
        self.on_pressure: Callable[[bool], None] = lambda on: None
        #: Each flush's duration (``timer`` seconds), writes and whether it
        #: failed as a whole, for the metrics (``msgplatform_store_flush_*``).
        self.timer = timer
        self.on_flushed: Callable[[float, int, bool], None] = lambda seconds, writes, failed: None

    @property
    def busy(self) -> bool:
        """True while a flush runs or writes wait."""
        return any(lane.busy for lane in self._lanes)

    @property
    def in_flight(self) -> int:
        """How many flushes are in flight now."""
        return sum(lane.in_flight for lane in self._lanes)

    def submit(self, op: Callable[[Any], R], affinity: Hashable | None = None,
               weight: int = 1) -> Deferred[R]:
        """Queue ``op``; fires with its result once its transaction committed.

        Writes of one ``affinity`` run in the order submitted, one
        transaction at a time; ``None``: no such constraint. ``weight`` (rows,
        say: a batch of 1,000 pushes is one write of weight 1,000) counts
        towards ``spread_at``.
        """
        d: Deferred[R] = Deferred()
        self.submitted += 1
        self.waiting += 1
        self._lane(affinity).submit(op, d, weight)
        if self.waiting >= self.pressure_at and not self.pressure:
            self._set_pressure(True)
        return d

    def may_flush(self, lane: _Lane) -> bool:
        """Whether ``lane`` (idle, with writes waiting) flushes now."""
        return lane.weight >= self.spread_at or not self.in_flight

    def flushed(self, lane: _Lane) -> None:
        """``lane``'s flush ended: start the lanes that may, the others first."""
        lanes = self._lanes
        start = lanes.index(lane) + 1
        for i in range(len(lanes)):
            other = lanes[(start + i) % len(lanes)]
            if other.queue and not other.in_flight and self.may_flush(other):
                other._flush()

    def taken(self, n: int) -> None:
        """A lane took ``n`` waiting writes into a flush."""
        self.waiting -= n
        if self.pressure and self.waiting <= self.pressure_at // 2:
            self._set_pressure(False)

    def _set_pressure(self, on: bool) -> None:
        self.pressure = on
        log.warn("message store {state}: {waiting} writes waiting",
                 state="lags, pausing client reads" if on else "caught up, reading again",
                 waiting=self.waiting)
        self.on_pressure(on)

    def drain(self) -> Deferred[None]:
        """Fires once every write submitted so far is done (committed or failed)."""
        waiting = [lane.drain() for lane in self._lanes if lane.busy]
        if not waiting:
            return succeed(None)
        if len(waiting) == 1:
            return waiting[0]
        return gatherResults(waiting).addCallback(lambda _: None)

    def _lane(self, affinity: Hashable | None) -> _Lane:
        lanes = self._lanes
        if len(lanes) == 1:
            return lanes[0]
        if affinity is None:
            return min(lanes, key=lambda lane: (len(lane.queue), lane.in_flight))
        return lanes[lane_of(affinity, len(lanes))]

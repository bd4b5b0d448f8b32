# -*- test-case-name: tests.test_deadlines -*-
"""Time limits for many Deferreds that all get the same time, on one timer.

``Deferred.addTimeout`` schedules and cancels a DelayedCall per Deferred (and
adds three callbacks), too much on a path that runs per message (a Redis
command, a bus publish, an RPC). When every Deferred gets
the same ``timeout``, the order they were watched in is the order of their
deadlines, so an ordered dict is the queue and one DelayedCall (for the oldest)
serves them all; nothing is scheduled while nothing waits.

Time the node was stalled does not count. A reactor runs its due timers
*before* it polls its sockets, and what was written during a long stretch of
work (a big batch, a core taken by other processes) is only sent once that
work ends. When the node was busy for longer than a timeout, the timer fires
late, and what it watches may be an answer that already arrived, unread, or
a request that was never sent: taken for timeouts, they would drop a healthy
connection with every command on it, on a node already busy. So a timer
that fires more than :data:`STALL_SHARE` of its timeout late gives
everything that waits one more ``timeout`` from then, once each: a Deferred
still waits at most twice its timeout plus the stall, and never for ever.

(Twisted's epoll and select reactors: ``mainLoop`` calls ``runUntilCurrent``
before ``doIteration``, and ``FileDescriptor.write`` only buffers until the
socket is polled writable.)

Timed by :class:`Deadlines`: Redis commands written straight to a connection
(the usual path) and the backstop of those that go through txredisapi's pool,
internal RPC calls, the router's C2S publish deadline, the Redis Streams bus's
batches. By :func:`within` (one Deferred, the same rule): the webhook bus's
requests, connecting to a peer node, to the Redis Streams bus or to an AMQP
broker, and closing an AMQP connection. Not: txredisapi's own reply timer on
its pool path (a command goes there only when no connection is idle).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")

#: A timer this late, as a share of its timeout, means the node was stalled.
STALL_SHARE = 0.25


def _timed_out(result: Any, timeout: float) -> Any:
    """A cancellation by the time limit is a :class:`TimeoutError`."""
    if isinstance(result, Failure) and result.check(CancelledError):
        return Failure(TimeoutError(f"not done within {timeout:g} s"))
    return result


class Deadlines:
    """Watch Deferreds for ``timeout`` seconds of ``clock`` each (``name``
    says which in the log line about a stall).

    :ivar stalls: how many times the timer fired more than ``stall`` late
        (logged when that gave something more time).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float, name: str = "deadlines") -> None:
        self.clock = clock
        self.timeout = timeout
        self.name = name
        #: A timer this late (seconds) means the node was stalled.
        self.stall = timeout * STALL_SHARE
        self.stalls = 0
        #: key -> (deadline, Deferred, watched: by :meth:`watch`, not :meth:`add`).
        self._entries: OrderedDict[int, tuple[float, Deferred[Any], bool]] = OrderedDict()
        self._expired: set[int] = set()
        #: Entries that got their one more timeout after a stall.
        self._extended: set[int] = set()
        self._keys = itertools.count()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def watch(self, d: Deferred[T]) -> Deferred[T]:
        """Like ``d.addTimeout(timeout, clock)``: when ``d`` has not fired in
        time it is cancelled, and fails with :class:`TimeoutError` (unless its
        canceller gave it another result)."""
        if d.called:
            return d
        return d.addBoth(self._settled, self._add(d, True))

    def add(self, d: Deferred[Any]) -> int:
        """Time ``d`` without a callback on it: when its time is up it is
        cancelled (its canceller says what it fails with), unless
        :meth:`discard` was called with the key returned first. For a caller
        that sees the end of what ``d`` waits for on another Deferred (one
        callback less per Deferred than :meth:`watch`)."""
        return self._add(d, False)

    def discard(self, key: int) -> None:
        """Stop timing what :meth:`add` returned ``key`` for."""
        if self._entries.pop(key, None) is not None and not self._entries:
            self._cancel_timer()
        self._extended.discard(key)

    def _add(self, d: Deferred[Any], watched: bool) -> int:
        key = next(self._keys)
        self._entries[key] = (self.clock.seconds() + self.timeout, d, watched)
        if self._timer is None:
            self._arm(self.timeout)
        return key

    def stop(self) -> None:
        """Forget the timer (what still waits is no longer timed)."""
        self._entries.clear()
        self._extended.clear()
        self._cancel_timer()

    def _settled(self, result: Any, key: int) -> Any:
        if self._entries.pop(key, None) is not None and not self._entries:
            self._cancel_timer()
        self._extended.discard(key)
        if key in self._expired:
            self._expired.discard(key)
            return _timed_out(result, self.timeout)
        return result

    def _arm(self, delay: float) -> None:
        self._timer = self.clock.callLater(delay, self._expire, self.clock.seconds() + delay)

    def _expire(self, due: float) -> None:
        self._timer = None
        now = self.clock.seconds()
        if now - due > self.stall:
            self._stalled(now, now - due)
        entries = self._entries
        while entries:
            key, (deadline, d, watched) = next(iter(entries.items()))
            if deadline > now:
                # A callback of a timeout may have watched one meanwhile, and
                # armed the timer for it: the first deadline is this one.
                self._cancel_timer()
                self._arm(deadline - now)
                return
            del entries[key]
            self._extended.discard(key)
            if watched:
                self._expired.add(key)
            try:
                d.cancel()
            except Exception:
                self.log.failure("{name}: cancelling a late one failed", name=self.name)

    def _stalled(self, now: float, late: float) -> None:
        """The timer ran ``late``: every entry not extended yet, past its
        deadline or not (one watched during the stall was not even sent), gets
        ``timeout`` from ``now``. They move last, in order: the entries
        extended before keep their earlier deadlines, in front."""
        entries = self._entries
        fresh = [(key, d, watched) for key, (_, d, watched) in entries.items()
                 if key not in self._extended]
        for key, d, watched in fresh:
            del entries[key]
            entries[key] = (now + self.timeout, d, watched)
            self._extended.add(key)
        self.stalls += 1
        if not fresh:
            return
        self.log.warn(
            "{name}: the node was stalled, this timer ran {late:.1f} s late;"
            " {count} waiting get {timeout:g} s more",
            name=self.name, late=late, count=len(fresh), timeout=self.timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def within(d: Deferred[T], timeout: float, clock: IReactorTime,
           on_timeout_cancel: Callable[[Any, float], Any] = _timed_out) -> Deferred[T]:
    """``d.addTimeout(timeout, clock, onTimeoutCancel)`` for a Deferred of its
    own time limit, with the rule of :class:`Deadlines` for a stall: a timer
    that runs more than :data:`STALL_SHARE` of ``timeout`` late gives ``d``
    one more ``timeout`` instead, once. When the timer cancels ``d``, its
    result goes through ``on_timeout_cancel(result, timeout)`` (by default a
    cancellation becomes :class:`TimeoutError`). Returns ``d``."""
    if d.called:
        return d
    timer: list[IDelayedCall] = []
    cancelled_by_timer = False

    def expire(due: float, extended: bool) -> None:
        nonlocal cancelled_by_timer
        now = clock.seconds()
        if not extended and now - due > timeout * STALL_SHARE:
            timer[0] = clock.callLater(timeout, expire, now + timeout, True)
            return
        cancelled_by_timer = True
        d.cancel()

    def settled(result: Any) -> Any:
        if timer[0].active():
            timer[0].cancel()
        if cancelled_by_timer:
            return on_timeout_cancel(result, timeout)
        return result

    timer.append(clock.callLater(timeout, expire, clock.seconds() + timeout, False))
    return d.addBoth(settled)

# -*- test-case-name: tests.test_deadlines -*-
"""Time limits for many Deferreds that all get the same time, on one timer.

``Deferred.addTimeout`` schedules and cancels a DelayedCall per Deferred (and
adds three callbacks): on a path that runs per message (a Redis command, a bus
publish, an RPC) that was a tenth of the node's time. When every Deferred gets
the same ``timeout``, the order they were watched in is the order of their
deadlines, so an ordered dict is the queue and one DelayedCall (for the oldest)
serves them all; nothing is scheduled while nothing waits.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


class Deadlines:
    """Watch Deferreds for ``timeout`` seconds of ``clock`` each."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._entries: OrderedDict[int, tuple[float, Deferred[Any]]] = OrderedDict()
        self._expired: set[int] = set()
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
        key = next(self._keys)
        self._entries[key] = (self.clock.seconds() + self.timeout, d)
        if self._timer is None:
            self._timer = self.clock.callLater(self.timeout, self._expire)
        return d.addBoth(self._settled, key)

    def stop(self) -> None:
        """Forget the timer (what still waits is no longer timed)."""
        self._entries.clear()
        self._cancel_timer()

    def _settled(self, result: Any, key: int) -> Any:
        if self._entries.pop(key, None) is not None and not self._entries:
            self._cancel_timer()
        if key in self._expired:
            self._expired.discard(key)
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(TimeoutError(f"not done within {self.timeout:g} s"))
        return result

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        entries = self._entries
        while entries:
            key, (deadline, d) = next(iter(entries.items()))
            if deadline > now:
                self._timer = self.clock.callLater(deadline - now, self._expire)
                return
            del entries[key]
            self._expired.add(key)
            d.cancel()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

# -*- test-case-name: tests.gate.test_protocol -*-
"""Connection shaping: a per-connection token bucket with abuse detection, and
a per-source-IP connection counter (Twisted's ``LimitConnectionsByPeer`` is
broken on Python 3, twisted#12183)."""

from __future__ import annotations

import math
from collections.abc import Callable


class TokenBucket:
    """``rate`` frames a second sustained, bursts of ``burst``.

    :meth:`take` answers whether a frame is within the allowance. Frames over
    it are counted; more than ``abuse_excess`` of them within ``abuse_window``
    seconds makes :attr:`abusive` true (the gate then kicks with ABUSE).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "abuse_excess", "abuse_window",
                 "_excess", "_excess_since")

    def __init__(
        self, rate: float, burst: int, now: float, abuse_excess: int, abuse_window: float
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self.abuse_excess = abuse_excess
        self.abuse_window = abuse_window
        self._excess = 0
        self._excess_since = now

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = min(tokens, self.burst) - 1.0
            return True
        self.tokens = max(tokens, 0.0)
        if now - self._excess_since > self.abuse_window:
            self._excess = 0
            self._excess_since = now
        self._excess += 1
        return False

    @property
    def abusive(self) -> bool:
        return self._excess > self.abuse_excess


class PeerCounter:
    """Open connections per source host, with a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}

    def acquire(self, host: str) -> bool:
        """Count one more connection from ``host``; False (not counted) at the cap."""
        n = self.counts.get(host, 0)
        if n >= self.cap:
            return False
        self.counts[host] = n + 1
        return True

    def release(self, host: str) -> None:
        n = self.counts.get(host, 0) - 1
        if n > 0:
            self.counts[host] = n
        else:
            self.counts.pop(host, None)


#: The reason of a request refused by admission control.
OVER_CAPACITY = "node over capacity: retry after a backoff"


class Admission:
    """Admission control for the whole node: at most ``limit`` requests in work
    at once. :meth:`enter` answers whether one more may start (counted:
    :meth:`leave` when it is answered); one refused is counted in
    :attr:`refused`. Refusing at the door costs a frame's decode and a short
    answer; admitting past what the node keeps up with only queues work that
    times out later (open loop: the queue and the latency grow without bound).

    ``cap`` is the hard bound (0: none, and nothing adapts). With a latency
    ``target_s`` the bound in force, :attr:`limit`, follows how long admitted
    requests take to be answered (their sojourn), in the spirit of CoDel: the
    quickest answer of an interval (:data:`INTERVAL`) tells a standing queue
    from a burst. When even the quickest took longer than the target, the
    queue stands: the limit shrinks in proportion (``limit * target /
    quickest``, at most halved, never below :data:`FLOOR`), and is judged
    again only by requests admitted after the cut. When the quickest was
    within the target and the limit was reached during the interval, it grows
    by a tenth, up to ``cap``. A count alone cannot fit both a node that needs
    ~1,500 requests in flight for its throughput and one whose cores are
    shared and for which 300 already queue a second; the latency target fits
    both, and the node's queue stays about the target deep however much is
    offered.
    """

    #: The interval over which the quickest sojourn is taken (s).
    INTERVAL = 0.1
    #: The limit never shrinks below this many requests in work.
    FLOOR = 32

    __slots__ = ("cap", "limit", "inflight", "refused", "target", "_seconds",
                 "_window_end", "_quickest", "_reached", "_cut_at")

    def __init__(self, cap: int, target_s: float = 0.0,
                 seconds: Callable[[], float] | None = None) -> None:
        self.cap = cap
        #: The bound in force (``cap`` when nothing adapts; 0: none).
        self.limit = cap
        self.inflight = 0
        self.refused = 0
        #: The sojourn target (s); 0 (or no clock, or no cap): a fixed count.
        self.target = target_s if cap and seconds is not None else 0.0
        self._seconds = seconds or (lambda: 0.0)
        self._window_end = 0.0
        self._quickest = math.inf
        self._reached = False
        self._cut_at = -math.inf

    def now(self) -> float:
        """The time to give :meth:`leave` for a request admitted now."""
        return self._seconds()

    def enter(self) -> bool:
        if self.limit and self.inflight >= self.limit:
            self.refused += 1
            self._reached = True
            return False
        self.inflight += 1
        return True

    def leave(self, started: float | None = None) -> None:
        """One admitted request was answered; ``started`` is :meth:`now` as it
        was when it was admitted (None: no sojourn to learn from)."""
        self.inflight -= 1
        if not self.target or started is None:
            return
        now = self._seconds()
        if started >= self._cut_at and now - started < self._quickest:
            self._quickest = now - started
        if now >= self._window_end:
            self._adapt(now)

    def _adapt(self, now: float) -> None:
        quickest, target = self._quickest, self.target
        if quickest == math.inf:
            pass  # nothing admitted since the last cut was answered yet
        elif quickest > target:
            cut = max(min(self.cap, self.FLOOR), int(self.limit * max(0.5, target / quickest)))
            if cut < self.limit:
                self.limit = cut
                self._cut_at = now
        elif self._reached and self.limit < self.cap:
            self.limit = min(self.cap, self.limit + max(1, self.limit // 10))
        self._quickest = math.inf
        self._reached = False
        self._window_end = now + self.INTERVAL

    def full(self) -> bool:
        """Whether a request arriving now would be refused (counted as refused
        when it would): the gate asks before it parses the request's body, so
        a refusal costs only the header's decode and a ready-made answer."""
        if self.limit and self.inflight >= self.limit:
            self.refused += 1
            self._reached = True
            return True
        return False

# -*- test-case-name: tests.gate.test_protocol -*-
"""Connection shaping: a per-connection token bucket with abuse detection, and
a per-source-IP connection counter (Twisted's ``LimitConnectionsByPeer`` is
broken on Python 3, twisted#12183)."""

from __future__ import annotations


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

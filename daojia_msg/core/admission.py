# -*- test-case-name: tests.gate.test_admission -*-
"""Admission control by latency: how many requests a node takes on at once.

The gate bounds C2C and C2S with it (``limits.node_max_inflight``), the HTTP
API its pushes (``limits.http_max_inflight``), both aiming at
``limits.admission_target_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable


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
        if self.full():
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

# -*- test-case-name: tests.client.test_backoff -*-
"""What a client does after RATE_LIMITED: it pauses its C2C and C2S.

A C2C or C2S answered RATE_LIMITED was not carried out: the node is over
capacity or the connection over its allowance, and the protocol asks the
client to retry after a backoff (docs/protocol.md, result code 6). A client
that keeps sending at its own pace costs a node that is already short of time
a read, a refusal and a write for every frame it refuses (BENCHMARKS.md,
"Clients that back off"). :class:`SendBackoff` is the rule
:class:`~daojia_msg.client.MsgClient` follows, and the benchmark's open loop
with ``--backoff``:

- after a refusal, the client pauses: 50 ms after the first refusal in a row,
  doubling with each further one up to 1 s, each pause between half and all
  of that (jitter, so that the phones refused together do not come back
  together); an accepted message ends the row;
- a C2C or C2S asked for during the pause is refused at once by the client
  itself, with the same RATE_LIMITED, without reaching the node. It is not
  queued: a queue would send it late, after the messages the pause let
  through, and at twice a node's capacity most of what waited arrived too
  late to matter (measured in BENCHMARKS.md). The app decides, as for the
  node's own refusal: show it failed, or send it again later with the same
  ``client_msg_id``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

#: The first pause after a refusal, in seconds; it doubles with each refusal in a row.
BASE_S = 0.05
#: The longest pause, in seconds.
CAP_S = 1.0


class SendBackoff:
    """One client's pause after RATE_LIMITED (see the module's docstring)."""

    def __init__(
        self,
        clock: IReactorTime,
        base_s: float = BASE_S,
        cap_s: float = CAP_S,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {base_s} and {cap_s}")
        self.clock = clock
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng
        #: Refusals in a row (an accepted send resets it).
        self.refusals = 0
        #: When (the clock's seconds) the last pause began, and until when it lasts.
        self.started = float("-inf")
        self.until = 0.0

    def paused(self) -> bool:
        """Whether a C2C or C2S asked for now is to be refused without being sent."""
        return self.clock.seconds() < self.until

    def remaining(self) -> float:
        """Seconds left of the pause (0 when there is none)."""
        return max(0.0, self.until - self.clock.seconds())

    def refused(self, sent_at: float | None = None) -> float:
        """A send was answered RATE_LIMITED: start a pause and return its
        length in seconds.

        ``sent_at`` is when (the clock's seconds) the refused frame went out.
        A frame sent before the last pause began was refused for the same
        overload that pause answers: it neither lengthens the pause nor counts
        as one more refusal in a row (0 is returned), so that the frames in
        flight when the first refusal comes do not turn 50 ms into a second."""
        if sent_at is not None and sent_at < self.started:
            return 0.0
        now = self.clock.seconds()
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.refusals, 32))
        pause = ceiling * (0.5 + 0.5 * self._rng())
        self.refusals += 1
        self.started = now
        self.until = max(self.until, now + pause)
        return pause

    def accepted(self, sent_at: float | None = None) -> None:
        """A send was carried out: the next refusal starts from the first pause
        again, unless the frame went out before the last pause began (its
        answer says nothing of the node since)."""
        if sent_at is None or sent_at >= self.started:
            self.refusals = 0

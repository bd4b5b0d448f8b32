# -*- test-case-name: tests.chaos.test_ledger -*-
"""What the fault suite sent, what came back, and the verdict per message.

Every message carries its number in its content (``chaos c2c 17``); the
:class:`Ledger` keeps one :class:`Sent` per ``(kind, number)``, filled in by the
senders as answers come, and the msgids each number arrived under, filled in
by the receivers. :func:`classify` turns one phase's messages into a
:class:`Row` of counts:

delivered
    the receiver got it (under one msgid, the one the sender was told);
lost
    the sender got OK and the receiver never got it: BAD;
double
    the same number arrived under two or more msgids: BAD;
mismatch
    it arrived under one msgid, not the one the sender was told: BAD;
refused
    the sender got a definite refusal (UNAVAILABLE at the end, or another
    error code): fine, unless it arrived anyway (``refused_delivered``: BAD);
unconfirmed
    the last answer left it open (TIMEOUT, a lost connection) and it did
    not arrive: fine, the platform never said it was stored;
unanswered
    the last attempt got no answer within the answer timeout + margin: BAD;
frozen
    unanswered, but sent by a user whose connection was on the node that a
    fault froze (SIGSTOP) while that attempt was out: no process could
    answer it; shown, not BAD.

``no_answer`` counts *attempts* without an answer (e.g. to a stopped node)
that a resend then settled: not a verdict, but shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from daojia_msg.config import ClusterConfig

#: "c2s-amqp": C2S on the route to the private RabbitMQ (when the run has one)
KINDS = ("c2c", "s2c", "c2s", "c2s-amqp")
CONTENT = re.compile(rb"chaos (c2c|s2c|c2s-amqp|c2s) (\d+)")

# A message's outcome, as its sender saw it.
PENDING = "pending"
OK = "ok"
REFUSED = "refused"          # a definite refusal: not stored
UNCERTAIN = "uncertain"      # TIMEOUT / connection lost: may or may not be stored
UNANSWERED = "unanswered"    # no answer at all


def content_for(kind: str, number: int) -> bytes:
    return b"chaos %s %d" % (kind.encode(), number)


def parse_content(content: bytes) -> tuple[str, int] | None:
    """``("c2c", 17)`` for ``b"chaos c2c 17"``; None for anything else."""
    match = CONTENT.search(content)
    if match is None:
        return None
    return match.group(1).decode(), int(match.group(2))


@dataclass
class Sent:
    """One numbered message and what its sender learnt."""

    kind: str
    number: int
    phase: str
    sent_at: float
    outcome: str = PENDING
    msgid: int | None = None
    attempts: int = 0
    #: attempts that got no answer within the time limit
    no_answer: int = 0
    #: the last error (a code name, "no answer", "connection lost")
    last_error: str = ""
    answered_at: float | None = None
    #: the sending user (C2C, C2S) and when its last attempt went out
    sender: int = 0
    last_attempt_at: float = 0.0
    #: set when the last attempt went to a node the fault had frozen
    frozen: bool = False

    def settle(self, outcome: str, now: float, msgid: int | None = None) -> None:
        self.outcome = outcome
        self.msgid = msgid
        self.answered_at = now


@dataclass
class Row:
    """One phase's counts (all kinds together, and per kind in ``kinds``)."""

    phase: str
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    double: int = 0
    mismatch: int = 0
    refused: int = 0
    refused_delivered: int = 0
    unconfirmed: int = 0
    unanswered: int = 0
    frozen: int = 0
    no_answer: int = 0
    resends: int = 0
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    #: examples of each bad verdict: "c2c 17 (msgid 123)"
    bad_examples: dict[str, list[str]] = field(default_factory=dict)
    #: facts about the phase itself (the fault's timings), set by the runner
    notes: dict[str, Any] = field(default_factory=dict)

    BAD = ("lost", "double", "mismatch", "refused_delivered", "unanswered")
    COUNTS = ("sent", "delivered", "lost", "double", "mismatch", "refused",
              "refused_delivered", "unconfirmed", "unanswered", "frozen", "no_answer",
              "resends")
    #: The faults during which a KICKOUT the users got is a failure too: a
    #: Redis outage shorter than ``cluster.redis_outage_grace_s`` must leave
    #: every connection in place (a kick would send every phone of the
    #: cluster into a reconnect storm at once). Past the grace a node kicks
    #: its users by design, so a longer outage (``--fault-seconds``) is not judged.
    NO_KICKOUT = frozenset({"redis-restart"})
    #: The nodes' ``cluster.redis_outage_grace_s`` (the suite's nodes keep the default).
    GRACE_S = ClusterConfig().redis_outage_grace_s

    @property
    def kicked(self) -> int:
        """The KICKOUTs that count as bad: those of a phase whose fault
        (``redis-restart``, or ``redis-restart#2`` when it runs twice) is in
        :attr:`NO_KICKOUT` and healed within :attr:`GRACE_S` (the phase's
        ``healed_after_s``; a phase without it is judged)."""
        if self.phase.split("#")[0] not in self.NO_KICKOUT:
            return 0
        if float(self.notes.get("healed_after_s") or 0.0) >= self.GRACE_S:
            return 0
        return int(self.notes.get("kickouts") or 0)

    @property
    def bad(self) -> int:
        return sum(getattr(self, name) for name in self.BAD) + self.kicked

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["bad"] = self.bad
        return out


def verdict(sent: Sent, received: set[int]) -> str:
    """The name of the count ``sent`` goes to, given the msgids its number arrived under."""
    if len(received) >= 2:
        return "double"
    if sent.outcome in (PENDING, UNANSWERED):
        return "frozen" if sent.frozen and sent.outcome == UNANSWERED else "unanswered"
    if sent.outcome == OK:
        if not received:
            return "lost"
        return "delivered" if sent.msgid in received else "mismatch"
    if sent.outcome == REFUSED:
        return "refused_delivered" if received else "refused"
    return "delivered" if received else "unconfirmed"  # UNCERTAIN


class Ledger:
    """Every message sent and every arrival, by ``(kind, number)``."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], Sent] = {}
        self.received: dict[tuple[str, int], set[int]] = {}
        self._next = {kind: 0 for kind in KINDS}
        #: arrivals whose number was never sent (should stay 0)
        self.strays = 0

    def new(self, kind: str, phase: str, now: float) -> Sent:
        self._next[kind] += 1
        sent = Sent(kind, self._next[kind], phase, now)
        self.sent[(kind, sent.number)] = sent
        return sent

    def arrived(self, content: bytes, msgid: int) -> None:
        parsed = parse_content(content)
        if parsed is None or parsed not in self.sent:
            self.strays += 1
            return
        self.received.setdefault(parsed, set()).add(msgid)

    def pending(self, phase: str | None = None) -> list[Sent]:
        return [s for s in self.sent.values()
                if s.outcome == PENDING and (phase is None or s.phase == phase)]

    def excuse_frozen(self, phase: str, uids: set[int], start: float, end: float) -> int:
        """Mark the phase's unanswered messages whose last attempt a user of
        the frozen node sent between ``start`` and ``end``; how many."""
        count = 0
        for s in self.sent.values():
            if (s.phase == phase and s.outcome == UNANSWERED and s.sender in uids
                    and start <= s.last_attempt_at <= end):
                s.frozen = True
                count += 1
        return count

    def classify(self, phase: str) -> Row:
        return classify(phase, (s for s in self.sent.values() if s.phase == phase),
                        self.received)


def classify(phase: str, messages: Iterable[Sent],
             received: dict[tuple[str, int], set[int]]) -> Row:
    row = Row(phase)
    row.kinds = {kind: {name: 0 for name in Row.COUNTS} for kind in KINDS}
    for sent in messages:
        got = received.get((sent.kind, sent.number), set())
        name = verdict(sent, got)
        per_kind = row.kinds[sent.kind]
        for counter, amount in (("sent", 1), (name, 1), ("no_answer", sent.no_answer),
                                ("resends", max(0, sent.attempts - 1))):
            setattr(row, counter, getattr(row, counter) + amount)
            per_kind[counter] += amount
        if name in Row.BAD:
            examples = row.bad_examples.setdefault(name, [])
            if len(examples) < 10:
                examples.append(f"{sent.kind} {sent.number} (answer {sent.outcome}"
                                f" msgid {sent.msgid}, arrived as {sorted(got)},"
                                f" last error {sent.last_error or '-'})")
    return row

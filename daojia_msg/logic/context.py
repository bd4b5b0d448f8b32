# -*- test-case-name: tests.logic.test_service -*-
"""What the parts of logic share: the config, the clock, msgids, statistics,
the time limit of answers, and the two things a cluster node sets after start
(its peers, and whether it is a live member)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from daojia_msg.config import Config, Limits
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.answers import Answers
from daojia_msg.logic.interfaces import IPeers
from daojia_msg.metrics.delivery import Stats
from daojia_msg.protocol import errors


def _always() -> bool:
    return True


@dataclass(eq=False)
class Context:
    config: Config
    clock: IReactorTime
    ids: IdGenerator
    stats: Stats
    #: The other nodes (a cluster) or None (one node).
    peers: IPeers | None = None
    #: False while this node cannot prove it is a live cluster member (its
    #: lease is not renewed): C2C, S2C and ACK are then UNAVAILABLE.
    available: Callable[[], bool] = field(default=_always)
    #: False while this node cannot take logins though it serves its sessions
    #: (Redis, which holds the sessions, is unreachable): LOGIN is then
    #: UNAVAILABLE at once, not after the session store's timeout.
    logins: Callable[[], bool] = field(default=_always)
    #: False once logic stops: no background retry is scheduled then.
    running: bool = False
    #: The time limit of answers that wait on a backend (``store.answer_timeout_s``).
    answers: Answers = field(init=False)

    def __post_init__(self) -> None:
        self.answers = Answers(self.clock, self.config.store.answer_timeout_s)

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def node_id(self) -> int:
        return self.ids.node_id

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def pending_floor(self) -> int:
        """The smallest msgid not expired (``store.pending_ttl_days``): an
        older pending message is never pushed again."""
        return self.config.store.pending_floor(self.now_ms())

    def check_available(self) -> None:
        if not self.available():
            raise errors.Unavailable("this node is not a live cluster member right now")

    def check_logins(self) -> None:
        self.check_available()
        if not self.logins():
            raise errors.Unavailable("this node takes no logins right now (its session store "
                                     "is unreachable)")

# -*- test-case-name: tests.gate.test_protocol -*-
"""What a gate connection needs of its factory, as a type."""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IReactorTime

from daojia_msg.config import Limits
from daojia_msg.core.admission import Admission
from daojia_msg.logic.inbox import Inbox
from daojia_msg.logic.service import LogicService
from daojia_msg.metrics.counters import GateCounters


class ConnectionHost(TypingProtocol):
    """What a connection needs of its factory (:class:`~daojia_msg.gate.factory.GateFactory`).
    ``conn`` is the :class:`~daojia_msg.gate.protocol.GateProtocol` (typed
    ``Any`` here: this module is below the protocol's)."""

    logic: LogicService
    inbox: Inbox
    limits: Limits
    clock: IReactorTime
    #: True while the buses or the store lag: no connection reads its socket.
    pressure: bool
    #: The node's bound on C2C and C2S requests in work.
    admission: Admission
    #: What ``/metrics`` shows of the gate.
    counters: GateCounters
    #: Per appcode, the msgtypes whose pushes take the priority lane.
    priority_msgtypes: dict[int, frozenset[int]]

    def admit(self, conn: Any, host: str) -> bool: ...

    def connection_made(self, conn: Any) -> None: ...

    def connection_lost(self, conn: Any) -> None: ...

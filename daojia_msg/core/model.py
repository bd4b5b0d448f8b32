# -*- test-case-name: tests.store.test_sqlite -*-
"""The domain model: the records that cross the interfaces between layers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.IntEnum):
    """``Message.kind`` on the wire."""

    UNSPECIFIED = 0
    C2C = 1
    S2C = 2
    C2S = 3


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message to one recipient (a row of the ``messages`` table: docs/architecture.md §4)."""

    msgid: int
    from_uid: int
    from_appcode: int
    to_uid: int
    to_appcode: int
    msgtype: int
    kind: Kind
    content: bytes
    send_time_ms: int
    logid: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What :meth:`IMessageStore.store` takes: a message and what goes with it.

    ``client_msg_id`` (may be empty) de-duplicates sends under
    ``(message.from_uid, message.from_appcode)``. History rows are written for
    ``(from_system, from_uid)`` when ``from_system`` is set (not for S2C) and for
    ``(to_system, to_uid)``; one row when both are the same owner.
    """

    message: StoredMessage
    to_system: str
    from_system: str = ""
    client_msg_id: str = ""


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The answer for one :class:`NewMessage`: its ids, and whether it was a resend.

    For a resend (``duplicate``) ``msgid`` and ``logid`` are the first send's,
    and nothing was stored.
    """

    msgid: int
    logid: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class AckedMessage:
    """A message whose state an ACK changed from pending to delivered."""

    msgid: int
    msgtype: int
    kind: Kind
    send_time_ms: int
    logid: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    """A page of messages (PULL ascending, HISTORY descending) and whether more follow."""

    messages: list[StoredMessage]
    has_more: bool


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Where ``(uid, appcode)`` is online: the node, the session, since when."""

    uid: int
    appcode: int
    node_id: int
    session_id: str
    since_ms: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as the registry lists it."""

    node_id: int
    gate_host: str
    gate_port: int
    rpc_host: str
    rpc_port: int
    connections: int
    started_ms: int
    heartbeat_ms: int
    #: Logged-in sessions on the node (0 from a node that does not publish them).
    sessions: int = 0


@dataclass(frozen=True, slots=True)
class PurgeCutoffs:
    """What one purge round removes (docs/operations.md §13): pending rows with
    ``msgid < pending_before`` (expired), delivered rows, history rows with
    ``msgid < history_before``, de-dup keys created before ``dedup_before_ms``;
    at most ``batch`` rows per DELETE statement, at most ``max_rows_per_s``
    rows a second (0: no bound)."""

    pending_before: int
    history_before: int
    dedup_before_ms: int
    batch: int
    max_rows_per_s: float = 0.0


@dataclass(slots=True)
class PurgeCounts:
    """What a purge round removed. ``expired`` is per route ``(to_appcode,
    msgtype, kind)``; ``skipped`` names the shard tables another node was
    purging (a MySQL named lock held elsewhere); ``largest_batch`` is the most
    rows one DELETE statement removed."""

    expired: dict[tuple[int, int, Kind], int] = field(default_factory=dict)
    delivered: int = 0
    history: int = 0
    dedup: int = 0
    skipped: list[str] = field(default_factory=list)
    batches: int = 0
    largest_batch: int = 0

    @property
    def expired_total(self) -> int:
        return sum(self.expired.values())

    def batch(self, rows: int) -> None:
        """One DELETE transaction of ``rows`` rows ran."""
        self.batches += 1
        self.largest_batch = max(self.largest_batch, rows)


@dataclass(frozen=True, slots=True)
class StorageFigures:
    """Rows and bytes of the message store's tables, by kind (``pending``,
    ``history``, ``dedup``), and its oldest pending msgid (0: none).
    ``approximate``: MySQL's ``information_schema`` estimates, not counts."""

    rows: dict[str, int]
    bytes: dict[str, int | None]
    oldest_pending_msgid: int
    approximate: bool

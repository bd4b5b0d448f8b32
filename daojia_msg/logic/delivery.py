# -*- test-case-name: tests.logic.test_delivery -*-
"""Pushes waiting for their ACK on one connection, and their re-push timer.

Every entry waits the same ACK timeout, so insertion order is deadline order:
a dict (insertion-ordered) is the timer queue, and one DelayedCall per connection (for the
head) serves all of them. On timeout a message is pushed again on the same
connection, at most ``max_repush`` more times; then it is dropped from the
window and simply stays pending in the store for PULL (docs/protocol.md §6.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from daojia_msg import tracing
from daojia_msg.logic.interfaces import IClientConnection

#: The message path: stored, pushed, ACKed... (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.logic.delivery")


class _Entry:
    __slots__ = ("deadline", "attempts", "cmd", "msgtype", "body", "route", "logid")

    def __init__(self, deadline: float, cmd: int, msgtype: int, body: bytes, route: object,
                 logid: str) -> None:
        self.deadline = deadline
        self.attempts = 0
        self.cmd = cmd
        self.msgtype = msgtype
        self.body = body
        self.route = route
        self.logid = logid



def _recipient(conn: IClientConnection) -> dict[str, int]:
    """``uid`` and ``appcode`` of the session ``conn`` holds, for a log line."""
    session = conn.session
    return {} if session is None else {"uid": session.uid, "appcode": session.appcode}


class DeliveryWindow:
    """The un-ACKed pushes of one connection.

    ``on_repush(route)`` is called for each re-push, for statistics;
    ``oldest()`` gives the smallest msgid not expired: an expired one is
    dropped from the window, not pushed again (``store.pending_ttl_days``).

    One per logged-in connection, so it is slotted and its queue is a plain
    dict (an idle connection's window is ~0.3 KiB smaller than with an
    instance dict and an OrderedDict).
    """

    __slots__ = ("_clock", "_conn", "_timeout", "_max_repush", "_max_size", "_on_repush",
                 "_oldest", "_entries", "_timer")

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        conn: IClientConnection,
        ack_timeout: float,
        max_repush: int,
        max_size: int,
        on_repush: Callable[[object], None],
        oldest: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock
        self._conn = conn
        self._timeout = ack_timeout
        self._max_repush = max_repush
        self._max_size = max_size
        self._on_repush = on_repush
        self._oldest = oldest
        self._entries: dict[int, _Entry] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def routes(self) -> Iterator[object]:
        """The routes of the pushes awaiting their ACK (for the metrics)."""
        return (entry.route for entry in self._entries.values())

    def __contains__(self, msgid: int) -> bool:
        return msgid in self._entries

    def push(self, msgid: int, cmd: int, msgtype: int, body: bytes, route: object,
             logid: str = "") -> bool:
        """Push now and watch for the ACK; False (nothing pushed) when the window
        is full or the connection takes no pushes now (closing, peer not reading)."""
        if msgid in self._entries:
            return True
        if len(self._entries) >= self._max_size or not self._conn.push(cmd, msgtype, body):
            return False
        self._entries[msgid] = _Entry(self._clock.seconds() + self._timeout, cmd, msgtype, body,
                                      route, logid)
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._expire)
        return True

    def acked(self, msgids: Iterable[int]) -> None:
        entries = self._entries
        for msgid in msgids:
            entries.pop(msgid, None)
        if not entries and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """The connection is gone: forget everything (it stays pending in the store)."""
        self._entries.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        entries = self._entries
        oldest = self._oldest() if self._oldest is not None else 0
        while entries:
            msgid, entry = next(iter(entries.items()))
            if entry.deadline > now:
                break
            if msgid < oldest:
                del entries[msgid]
                self.log.info("{msgid} not ACKed and expired (store.pending_ttl_days): not "
                              "pushed again", msgid=msgid, logid=entry.logid,
                              peer=self._conn.peer, **_recipient(self._conn))
                continue
            if entry.attempts >= self._max_repush or not self._conn.connected:
                del entries[msgid]
                self.log.info("{msgid} not ACKed after {attempts} re-pushes: left pending for "
                              "PULL", msgid=msgid, logid=entry.logid, attempts=entry.attempts,
                              peer=self._conn.peer, **_recipient(self._conn))
                continue
            entry.attempts += 1
            entry.deadline = now + self._timeout
            del entries[msgid]  # to the end of the queue: its new deadline is the latest
            entries[msgid] = entry
            self._conn.push(entry.cmd, entry.msgtype, entry.body)
            self._on_repush(entry.route)
            if tracing.MESSAGES.listeners:
                trace.debug("{msgid} re-pushed (try {attempt})", msgid=msgid, logid=entry.logid,
                            attempt=entry.attempts + 1, peer=self._conn.peer,
                            **_recipient(self._conn))
        if entries:
            head = next(iter(entries.values()))
            self._timer = self._clock.callLater(max(0.0, head.deadline - now), self._expire)

# -*- test-case-name: tests.test_ids -*-
"""Snowflake-style message ids: unique per node id, trend-increasing in time.

Layout of the 64-bit id (the top bit is always 0, so ids fit a signed BIGINT):
41 bits of milliseconds since :data:`EPOCH_MS` (2020-01-01, good until 2089),
10 bits of node id, 12 bits of per-millisecond sequence.

The generator never goes backwards: if the clock steps back it keeps issuing
ids on its own last millisecond (borrowing from the future when a millisecond's
4,096 ids are used up) until the clock catches up. :meth:`IdGenerator.advance_past`
sets a floor, e.g. the largest stored msgid at start, so a clock stepped back
across a restart cannot repeat an id either.
"""

from __future__ import annotations

from collections.abc import Callable

EPOCH_MS = 1577836800000  # 2020-01-01T00:00:00Z
NODE_BITS = 10
SEQ_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQ = (1 << SEQ_BITS) - 1
TIME_SHIFT = NODE_BITS + SEQ_BITS


class IdGenerator:
    def __init__(self, node_id: int, now: Callable[[], float]) -> None:
        """``now`` returns Unix seconds (``reactor.seconds`` or ``task.Clock().seconds``)."""
        if not 0 <= node_id <= MAX_NODE:
            raise ValueError(f"node id must be from 0 to {MAX_NODE}, got {node_id}")
        self.node_id = node_id
        self._now = now
        self._last_ms = 0
        self._seq = 0

    def next_id(self) -> int:
        ms = int(self._now() * 1000) - EPOCH_MS
        if ms > self._last_ms:
            self._last_ms = ms
            self._seq = 0
        else:
            self._seq += 1
            if self._seq > MAX_SEQ:
                self._last_ms += 1
                self._seq = 0
        return (self._last_ms << TIME_SHIFT) | (self.node_id << SEQ_BITS) | self._seq

    def advance_past(self, msgid: int) -> None:
        """Never issue an id whose millisecond is at or below ``msgid``'s."""
        ms = msgid >> TIME_SHIFT
        if ms >= self._last_ms:
            self._last_ms = ms
            self._seq = MAX_SEQ  # the next id moves on to ms + 1

    @staticmethod
    def time_ms(msgid: int) -> int:
        """Unix milliseconds at which ``msgid`` was made."""
        return (msgid >> TIME_SHIFT) + EPOCH_MS

    @staticmethod
    def floor_for(time_ms: int) -> int:
        """The smallest id made at or after Unix ms ``time_ms``."""
        return max(0, time_ms - EPOCH_MS) << TIME_SHIFT

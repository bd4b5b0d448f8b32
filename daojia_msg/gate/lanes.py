# -*- test-case-name: tests.gate.test_lanes -*-
"""Priority lanes of a congested connection (docs/protocol.md, Back-pressure).

While a connection's socket is congested (the peer reads slower than the node
writes: the transport paused the connection as its producer), frames do not
go to the transport: they wait in three lanes, and leave in lane order once
the socket drains. First :data:`CONTROL` (Results: the answers to the
client's own requests), then :data:`PRIORITY` (pushes of a msgtype the
recipient app lists in ``[apps.<appcode>] priority_msgtypes``: a new order
for a driver), then :data:`NORMAL` (every other push: chat). So an order
overtakes the chat that queued before it. Each lane holds at most
``limits.lane_max`` frames: a connection whose lane overflows is closed, and
its messages stay pending for its next PULL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

#: The lanes, in the order they leave.
CONTROL, PRIORITY, NORMAL = range(3)


class Lanes:
    """Three bounded queues of encoded frames (see the module docstring)."""

    NAMES = ("control", "priority", "normal")
    __slots__ = ("max_frames", "_queues", "_count")

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._queues: tuple[deque[bytes], ...] = (deque(), deque(), deque())
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, lane: int, frame: bytes) -> bool:
        """Queue ``frame`` in ``lane``; False (not queued) when the lane is full."""
        queue = self._queues[lane]
        if len(queue) >= self.max_frames:
            return False
        queue.append(frame)
        self._count += 1
        return True

    def drain(self, write: Callable[[bytes], None], blocked: Callable[[], bool]) -> None:
        """``write`` the frames, lane by lane, until none is left or
        ``blocked()`` (a write may congest the socket again)."""
        for queue in self._queues:
            while queue:
                if blocked():
                    return
                self._count -= 1
                write(queue.popleft())

    def clear(self) -> None:
        for queue in self._queues:
            queue.clear()
        self._count = 0

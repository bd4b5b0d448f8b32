# -*- test-case-name: tests.gate.test_acks -*-
"""The ACK frames of one socket read, sent to the logic together.

A phone that received a burst of pushes ACKs each of them, and several of
those ACK frames usually arrive in one read (at 8 pushes in flight per
connection, ~8 frames a read). Each ACK alone is a store op, a Deferred, an
answer time limit and a callback chain; :class:`AckBatch` collects the
consecutive ACK frames of a read and hands them to the logic as one
(``ack_frames``: one store op, one Deferred), then answers each frame with
its own Result, in the order they came. A lone ACK goes the usual way. The
outcome for each frame is what it would have been alone: durable before OK,
BAD_REQUEST for a frame over ``limits.max_ack_ids``, the store's error
(TIMEOUT, UNAVAILABLE) to each frame the store failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from daojia_msg.protocol.codec import Frame

#: Answers a frame: ``(result, frame)`` with a Result, or ``(Failure, frame)``.
Answer = Callable[[Any, Frame], None]


class AckBatch:
    """Consecutive ACK frames (with their parsed bodies) waiting to go.

    The connection counts each frame in flight when it is added (so its
    per-connection limit sees it) and calls :meth:`send` before it handles
    any other frame and when its read is done."""

    __slots__ = ("frames", "bodies")

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.bodies: list[Sequence[int]] = []

    def __bool__(self) -> bool:
        return bool(self.frames)

    def add(self, frame: Frame, msgids: Sequence[int]) -> None:
        self.frames.append(frame)
        self.bodies.append(msgids)

    def send(self, logic: Any, session: Any, answer: Answer, failed: Answer) -> None:
        """One ``logic.ack`` for a lone frame, else one ``logic.ack_frames``;
        each frame answered through ``answer`` or ``failed``."""
        frames, bodies = self.frames, self.bodies
        self.frames, self.bodies = [], []
        if len(frames) == 1:
            d: Deferred[Any] = logic.ack(session, bodies[0])
            d.addCallbacks(answer, failed, callbackArgs=(frames[0],),
                           errbackArgs=(frames[0],))
            return
        logic.ack_frames(session, bodies).addCallbacks(
            _each, _all_failed, callbackArgs=(frames, answer, failed),
            errbackArgs=(frames, failed))


def _each(results: list[Any], frames: list[Frame], answer: Answer, failed: Answer) -> None:
    for frame, result in zip(frames, results, strict=True):
        if isinstance(result, BaseException):
            failed(Failure(result), frame)
        else:
            answer(result, frame)


def _all_failed(failure: Failure, frames: list[Frame], failed: Answer) -> None:
    for frame in frames:
        failed(failure, frame)

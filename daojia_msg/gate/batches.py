# -*- test-case-name: tests.gate.test_acks,tests.gate.test_c2c_batches -*-
"""The ACK frames, or the C2C frames, of one socket read sent to the logic together.

At several messages in flight per connection, several frames usually arrive
in one read (at 8 in flight, ~8 a read): a phone ACKs a burst of pushes, a
sender sends a burst of messages. Each frame alone is a store op, a
Deferred, an answer time limit and a callback chain; :class:`FrameBatch`
collects the consecutive frames of one such command in a read and hands them
to the logic as one (``ack_frames``, ``c2c_frames``: one store op, one
Deferred, one answer time limit), then answers each frame with its own
answer. A lone frame goes the usual way (``ack``, ``c2c``).

The outcome for each frame is what it would have been alone: durable before
OK; the refusal of its own content (BAD_REQUEST, NO_APPCODE..., and
RATE_LIMITED from admission control) to it alone; the store's error
(TIMEOUT, UNAVAILABLE) to each frame the store failed. A C2C whose push
waits on another node, or whose resend re-delivers, is answered when that is
done (its answer comes as a Deferred of its own in the batch's list).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from daojia_msg.protocol.codec import Frame
from daojia_msg.protocol.codes import Cmd

#: Answers a frame: ``(result, frame)`` with its answer, or ``(Failure, frame)``.
Answer = Callable[[Any, Frame], None]

#: The commands whose frames of a read go together.
BATCHED = frozenset({Cmd.ACK, Cmd.C2C})


class FrameBatch:
    """Consecutive frames of one command (with their parsed bodies) waiting
    to go.

    The connection counts each frame in flight when it is added (so its
    per-connection limit sees it) and calls :meth:`send` before it handles a
    frame of any other command and when its read is done."""

    __slots__ = ("cmd", "frames", "bodies", "session")

    def __init__(self) -> None:
        #: The command of the frames (0 while empty).
        self.cmd = 0
        self.frames: list[Frame] = []
        self.bodies: list[Any] = []
        #: The session the frames came in (kept: a later frame of the same
        #: read may close the connection, and these still go).
        self.session: Any = None

    def __bool__(self) -> bool:
        return bool(self.frames)

    def add(self, frame: Frame, body: Any, session: Any) -> None:
        """Add ``frame`` of ``session``: the caller sent the batch first if it
        held another command's."""
        self.cmd = frame.cmd
        self.session = session
        self.frames.append(frame)
        self.bodies.append(body)

    def send(self, logic: Any, answer: Answer, failed: Answer) -> None:
        """One ``logic.ack`` or ``logic.c2c`` for a lone frame, else one
        ``logic.ack_frames`` or ``logic.c2c_frames``; each frame answered
        through ``answer`` or ``failed``."""
        frames, bodies, cmd, session = self.frames, self.bodies, self.cmd, self.session
        self.frames, self.bodies, self.cmd, self.session = [], [], 0, None
        try:
            if len(frames) > 1:
                if cmd == Cmd.ACK:
                    d: Deferred[Any] = logic.ack_frames(session, bodies)
                else:
                    d = logic.c2c_frames(session, [(f.msgtype, b) for f, b
                                                   in zip(frames, bodies, strict=True)])
            elif cmd == Cmd.ACK:
                d = logic.ack(session, bodies[0])
            else:
                d = logic.c2c(session, frames[0].msgtype, bodies[0])
        except Exception:  # a bug: still one answer (INTERNAL) per frame
            d = fail()
        if len(frames) == 1:
            d.addCallbacks(answer, failed, callbackArgs=(frames[0],), errbackArgs=(frames[0],))
        else:
            d.addCallbacks(_each, _all_failed, callbackArgs=(frames, answer, failed),
                           errbackArgs=(frames, failed))


def _each(results: list[Any], frames: list[Frame], answer: Answer, failed: Answer) -> None:
    for frame, result in zip(frames, results, strict=True):
        if isinstance(result, Deferred):
            result.addCallbacks(answer, failed, callbackArgs=(frame,), errbackArgs=(frame,))
        elif isinstance(result, BaseException):
            failed(Failure(result), frame)
        else:
            answer(result, frame)


def _all_failed(failure: Failure, frames: list[Frame], failed: Answer) -> None:
    for frame in frames:
        failed(failure, frame)

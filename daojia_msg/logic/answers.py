# -*- test-case-name: tests.logic.test_answers -*-
"""Bounded answers (docs/protocol.md §7.4): a request that waits on a stalled
backend is answered within ``store.answer_timeout_s``, and its work goes on.

The answer and the work are two Deferreds. The time limit cancels only the
answer, never the work: a database that stalled may still commit, and then
the message is stored and pushed (or pending) as usual, and its de-dup key
with it (one transaction), so a resend with the same ``client_msg_id`` finds
it. A C2C, S2C or ACK whose answer timed out is answered TIMEOUT (it may or
may not be done); a LOGIN, PULL or HISTORY, UNAVAILABLE (nothing of it is
kept).

Per message (C2C, ACK, PULL, HISTORY: watched when the frame is read) one
:class:`~daojia_msg.deadlines.Deadlines` queue times every answer on one
timer; a request counted from an earlier moment (an HTTP push: from when its
request was read; the steps of a LOGIN) gets a timer of its own
(:func:`~daojia_msg.deadlines.within`). Both run on the node's reactor, with
the rule for a stalled node (a timer that ran late gives one more period).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.deadlines import Deadlines, within
from daojia_msg.protocol.errors import RequestError

T = TypeVar("T")

log = Logger()

#: How much later than its time limit an answer on the per-message path may
#: come, as a share of the limit, for it to be timed on the shared queue
#: (:meth:`Answers.bound_since`).
SLACK = 0.1


def _forward(result: Any, answer: Deferred[Any]) -> None:
    """The work is done: its result to the answer, unless that was given up."""
    if not answer.called:
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)
    elif isinstance(result, Failure):
        _late_failure(result)
    elif isinstance(result, list):
        # A batch's answers (Sending.c2c_frames), some still waiting on their
        # own work: nobody takes them now, so their failures end here.
        for item in result:
            if isinstance(item, Deferred):
                item.addErrback(_late_failure)
    # A late RequestError was logged where it was raised (and answered nothing).


def _late_failure(failure: Failure) -> None:
    if not failure.check(RequestError):
        log.failure("work whose answer had timed out failed", failure)


def each_answer(batch: Deferred[Any], answers: list[Any]) -> Deferred[list[Any]]:
    """The answers of a batch of frames, in order: ``answers`` holds each
    frame's own refusal, answered at once (as the frame alone would be), or
    None for the frames whose answers ``batch`` gives: a list of them, or one
    answer for all, or a request error for all (TIMEOUT, UNAVAILABLE); a
    failure that is no request error (a bug) fails them. At least one frame
    waits on ``batch``; when none was refused (the usual case) the answers
    come together, as ``batch``'s callback."""
    waiting = answers.count(None)
    if waiting == len(answers):
        return batch.addBoth(_fill, answers)
    given = iter(spread(batch.addBoth(_fill, [None] * waiting), waiting))
    return succeed([next(given) if a is None else a for a in answers])


def _fill(result: Any, answers: list[Any]) -> list[Any]:
    """``answers`` with each None replaced by the next item of ``result`` (a
    list), or by ``result`` (one answer for all), or by its request error."""
    given: Iterator[Any]
    if isinstance(result, Failure):
        result.trap(RequestError)
        given = repeat(result.value)
    elif isinstance(result, list):
        given = iter(result)
    else:
        given = repeat(result)
    return [next(given) if a is None else a for a in answers]


def spread(batch: Deferred[list[Any]], count: int) -> list[Deferred[Any]]:
    """One Deferred for each of the ``count`` answers ``batch`` will give (a
    list of answers: values, exceptions, or Deferreds of their own), so that
    other answers of the same frames can go before it; a failure of ``batch``
    fails each."""
    each: list[Deferred[Any]] = [Deferred() for _ in range(count)]
    batch.addBoth(_spread, each)
    return each


def _spread(result: list[Any] | Failure, each: list[Deferred[Any]]) -> None:
    if isinstance(result, Failure):
        for d in each:
            d.errback(result)
        return
    for answer, d in zip(result, each, strict=True):
        if isinstance(answer, Deferred):
            answer.chainDeferred(d)
        elif isinstance(answer, BaseException):
            d.errback(answer)
        else:
            d.callback(answer)


def follow(work: Deferred[T], error: Callable[[], Exception]) -> Deferred[T]:
    """A Deferred with ``work``'s result, whose cancellation fails it with
    ``error()`` and leaves ``work`` alone (it goes on; its late result is
    dropped, a late unexpected failure logged)."""
    answer: Deferred[T] = Deferred(lambda d: d.errback(error()))
    work.addBoth(_forward, answer)
    return answer


class Answers:
    """The time limit of answers: ``timeout`` seconds of ``clock``.

    :ivar timeouts: answers given up on so far (``/metrics``).
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.timeouts = 0
        self._deadlines = Deadlines(clock, timeout, "answers")
        self._cancellers: dict[Callable[[], Exception], Callable[[Deferred[Any]], None]] = {}

    def _counted(self, error: Callable[[], Exception]) -> Callable[[], Exception]:
        def timed_out() -> Exception:
            self.timeouts += 1
            return error()

        return timed_out

    def _canceller(self, error: Callable[[], Exception]) -> Callable[[Deferred[Any]], None]:
        """The canceller of an answer that fails with ``error()``, counted as
        a timeout (one per ``error``: a request's answer takes no closure of
        its own)."""
        canceller = self._cancellers.get(error)
        if canceller is None:
            counted = self._counted(error)

            def canceller(answer: Deferred[Any]) -> None:
                answer.errback(counted())

            if len(self._cancellers) < 64:  # the errors are module-level functions
                self._cancellers[error] = canceller
        return canceller

    def bound(self, work: Deferred[T], error: Callable[[], Exception]) -> Deferred[T]:
        """``work``'s result if it comes within the timeout from now, else a
        failure with ``error()``; ``work`` itself is never cancelled (as
        :func:`follow`, and timed as by ``Deadlines.watch``, with one callback
        on ``work`` in all: this runs for every C2C, C2S and ACK). Work done at
        once (the common case) is returned as it is, with no timer."""
        if work.called:
            return work
        answer: Deferred[T] = Deferred(self._canceller(error))
        work.addBoth(self._arrived, answer, self._deadlines.add(answer))
        return answer

    def _arrived(self, result: Any, answer: Deferred[Any], key: int) -> None:
        self._deadlines.discard(key)
        _forward(result, answer)

    def bound_from(self, started: float, work: Deferred[T],
                   error: Callable[[], Exception]) -> Deferred[T]:
        """The same, counted from ``started`` (seconds of the clock): the
        time left then (none left: ``error()`` unless ``work`` is done)."""
        if work.called:
            return work
        answer = follow(work, self._counted(error))
        left = started + self.timeout - self.clock.seconds()
        if left <= 0:
            answer.cancel()
            return answer
        return within(answer, left, self.clock)

    def bound_since(self, started: float, work: Deferred[T],
                    error: Callable[[], Exception]) -> Deferred[T]:
        """:meth:`bound_from` for answers on the per-message path (a C2C of a
        batch whose push waits on another node): when ``started`` is within
        :data:`SLACK` of the timeout from now, the answer is timed on the
        shared queue from now (no timer of its own), so it may come up to that
        share of the timeout later than ``started + timeout``; otherwise it
        counts from ``started`` exactly. Past the timeout already (a store
        that confirmed late: the batch's own answer was TIMEOUT, unless a
        stall gave it more time), it is timed from now too, rather than
        given up at once: the push goes on, and a late answer is dropped
        (:func:`_forward`)."""
        waited = self.clock.seconds() - started
        if waited <= self.timeout * SLACK or waited >= self.timeout:
            return self.bound(work, error)
        return self.bound_from(started, work, error)

    def stop(self) -> None:
        """Forget the timer: what still waits is no longer timed."""
        self._deadlines.stop()

# -*- test-case-name: tests.test_turns -*-
"""The calls of one reactor turn gathered into one.

When the node handles many frames in one turn of its event loop (a read of
several frames, a group commit's flush answering hundreds of messages), the
look-ups they each start can go to Redis as one call instead of one each:
:class:`PerTurn` collects them until the end of the turn (the reactor's next
run of its timers) and fans the one answer out. A turn with a single call
makes it alone, as before, so a lightly loaded node waits for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

K = TypeVar("K")
V = TypeVar("V")


class PerTurn(Generic[K, V]):
    """``call(key)`` fires with what ``one(key)`` would, but the keys of one
    reactor turn are asked with a single ``many(keys)`` (its answer in the
    keys' order; a failure fails each of them). At most ``most`` keys go in
    one ``many``: one more starts the next."""

    __slots__ = ("_clock", "_one", "_many", "_most", "_keys", "_waiting")

    def __init__(self, clock: IReactorTime, one: Callable[[K], Deferred[V]],
                 many: Callable[[list[K]], Deferred[list[V]]], most: int = 512) -> None:
        self._clock = clock
        self._one = one
        self._many = many
        self._most = most
        self._keys: list[K] = []
        self._waiting: list[Deferred[V]] = []

    def call(self, key: K) -> Deferred[V]:
        if not self._keys:
            self._clock.callLater(0, self._send)
        d: Deferred[V] = Deferred()
        self._keys.append(key)
        self._waiting.append(d)
        if len(self._keys) >= self._most:
            self._send()
        return d

    def _send(self) -> None:
        keys, waiting = self._keys, self._waiting
        if not keys:
            return  # sent already, when it had the most keys
        self._keys, self._waiting = [], []
        if len(keys) == 1:
            self._one(keys[0]).chainDeferred(waiting[0])
            return
        self._many(keys).addCallbacks(_each, _fail_each, callbackArgs=(waiting,),
                                      errbackArgs=(waiting,))


def _each(values: list[Any], waiting: list[Deferred[Any]]) -> None:
    if len(values) != len(waiting):
        _fail_each(Failure(ValueError(f"{len(values)} answers for {len(waiting)} keys")), waiting)
        return
    for value, d in zip(values, waiting, strict=True):
        d.callback(value)


def _fail_each(failure: Failure, waiting: list[Deferred[Any]]) -> None:
    for d in waiting:
        d.errback(failure)

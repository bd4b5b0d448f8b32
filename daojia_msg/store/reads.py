# -*- test-case-name: tests.store.test_reads -*-
"""Reads that queue while one is out share the next trip to the database.

Every read of a SQL store runs on the pool's thread: a hand-off to the thread
and a wake-up of the reactor per read, which under a burst of logins (each
asks ``count_pending``) costs more than the query itself. :class:`ReadBatcher`
sends the first read at once (no added latency) and merges the reads that
arrive while it is out into one interaction, which runs them one after the
other in one transaction and hands each caller its own result. Reads of one
kind that know how to answer many at once (an interaction with a ``many``,
e.g. the MySQL store's ``count_pending``: one ``GROUP BY`` query for a burst
of logins) are merged into one query.

When a batch fails because the database is unavailable, every read of it
fails with that error (running each again alone would only hold the pool's
threads for as many more connect timeouts). When it fails otherwise (a bug or
a bad value in one of its reads), each of its reads is run again on its own,
so every caller gets the error its own read gives, never another read's.

A :class:`ReadStats` shared by a store's batchers counts its reads in flight
(queued or out) and the reads that failed, by kind, for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from daojia_msg.core.errors import StoreUnavailable

T = TypeVar("T")

#: ``interaction, *args`` of one read; the interaction takes the cursor first.
Read = tuple[Callable[..., Any], tuple[Any, ...]]

#: ``PoolRunner.run`` (or anything with its signature).
RunInteraction = Callable[..., "Deferred[Any]"]

#: Reads per batch at most.
MAX_READS = 200


def read_batch_txn(txn: Any, reads: list[Read]) -> list[Any]:
    """The interaction of one batch: every read, in order; the reads whose
    interaction has a ``many`` (a function of the transaction and a list of
    argument tuples, returning one result per tuple) are answered together by
    one call of it, after the others (reads do not see each other's work)."""
    results: list[Any] = [None] * len(reads)
    merged: dict[Callable[..., list[Any]], list[int]] = {}
    for i, (interaction, args) in enumerate(reads):
        many = getattr(interaction, "many", None)
        if many is None:
            results[i] = interaction(txn, *args)
        else:
            merged.setdefault(many, []).append(i)
    for many, indexes in merged.items():
        answers = many(txn, [reads[i][1] for i in indexes])
        for i, answer in zip(indexes, answers, strict=True):
            results[i] = answer
    return results


class ReadStats:
    """Reads of one store: ``in_flight`` (queued or out) and ``errors`` by
    kind (``unavailable``: the database was; ``error``: anything else)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.errors: dict[str, int] = {"unavailable": 0, "error": 0}

    def failed(self, failure: Failure) -> Failure:
        """Count ``failure`` (an errback: returns it)."""
        kind = "unavailable" if failure.check(StoreUnavailable) else "error"
        self.errors[kind] += 1
        return failure


class ReadBatcher:
    """Run reads through ``run``, at most ``max_in_flight`` batches at a time.

    :ivar batches: how many interactions ran (retries of a failed batch included).
    """

    def __init__(self, run: RunInteraction, max_in_flight: int = 1,
                 max_reads: int = MAX_READS, stats: ReadStats | None = None) -> None:
        if max_in_flight < 1 or max_reads < 1:
            raise ValueError("max_in_flight and max_reads must be >= 1")
        self._run = run
        self._max_in_flight = max_in_flight
        self._max_reads = max_reads
        self._queue: list[tuple[Read, Deferred[Any]]] = []
        self._in_flight = 0
        self.batches = 0
        self.stats = stats if stats is not None else ReadStats()

    def read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Fires with ``interaction(txn, *args)``'s result, or its failure."""
        d: Deferred[T] = Deferred()
        self._queue.append(((interaction, args), d))
        self.stats.in_flight += 1
        if self._in_flight < self._max_in_flight:
            self._send()
        return d

    def _send(self) -> None:
        batch = self._queue[: self._max_reads]
        del self._queue[: self._max_reads]
        self._in_flight += 1
        self.batches += 1
        if len(batch) == 1:  # alone: the read's own interaction, errors and all
            [((interaction, args), _)] = batch
            d = self._call(interaction, *args)
        else:
            d = self._call(read_batch_txn, [read for read, _ in batch])
        d.addBoth(self._answered, batch)

    def _call(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            return self._run(interaction, *args)
        except Exception:
            return fail()

    def _answered(self, result: Any, batch: list[tuple[Read, Deferred[Any]]]) -> None:
        self._in_flight -= 1
        stats = self.stats
        if len(batch) == 1:
            stats.in_flight -= 1
            d = batch[0][1]
            if isinstance(result, Failure):
                d.errback(stats.failed(result))
            else:
                d.callback(result)
        elif isinstance(result, Failure) and result.check(StoreUnavailable):
            stats.in_flight -= len(batch)
            for _, d in batch:  # the database is down: each alone would fail the same
                d.errback(stats.failed(result))
        elif isinstance(result, Failure):
            for (interaction, args), d in batch:  # each on its own, for its own error
                self._call(interaction, *args).addBoth(self._alone).chainDeferred(d)
        else:
            stats.in_flight -= len(batch)
            for (_, d), value in zip(batch, result, strict=True):
                d.callback(value)
        while self._queue and self._in_flight < self._max_in_flight:
            self._send()

    def _alone(self, result: Any) -> Any:
        """A read of a failed batch, run again on its own, is answered."""
        self.stats.in_flight -= 1
        return self.stats.failed(result) if isinstance(result, Failure) else result

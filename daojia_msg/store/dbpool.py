# -*- test-case-name: tests.store.test_sqlite -*-
"""What the SQL stores need around ``twisted.enterprise.adbapi``.

- :class:`PoolRunner` runs interactions on a pool, turns driver errors into
  :class:`StoreUnavailable` and knows when none is in flight (for ``stop()``).
- :class:`StoreLife` is a store's start and stop, and :func:`close_pool` the
  closing of its pools.
- :class:`InlineConnectionPool` is a pool for unit tests: each interaction runs
  at once in the calling thread, so tests on ``task.Clock`` are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.core.errors import StoreUnavailable

T = TypeVar("T")

log = Logger()


class PoolRunner:
    """Run interactions on ``pool``; a driver error fails the Deferred with
    :class:`StoreUnavailable` (chained to the driver's exception) and is logged.

    Errors that are not the driver's (a bug, a :class:`StoreError`) pass through.
    """

    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, name: str) -> None:
        self.pool = pool
        self.name = name
        self._backend_errors: tuple[type[BaseException], ...] = (
            pool.dbapi.Error,
            adbapi.ConnectionLost,
        )
        self._in_flight = 0
        self._idle_waiters: list[Deferred[None]] = []

    def run(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``pool.runInteraction(interaction, *args)``, with errors mapped."""
        operation = getattr(interaction, "__name__", repr(interaction))
        if not self.pool.running:
            # A closed adbapi pool accepts work and never runs it: refuse here.
            return fail(StoreUnavailable(f"{self.name}: the connection pool is closed"))
        try:
            d: Deferred[Any] = self.pool.runInteraction(interaction, *args)
        except Exception:
            d = fail()
        self._in_flight += 1
        d.addBoth(self._finished)
        d.addErrback(self._map_error, operation)
        return d

    def when_idle(self) -> Deferred[None]:
        """Fires once no interaction started by :meth:`run` is in flight."""
        if not self._in_flight:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _finished(self, result: object) -> object:
        self._in_flight -= 1
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def _map_error(self, failure: Failure, operation: str) -> Failure:
        if not failure.check(*self._backend_errors):
            return failure
        error = failure.value
        self.log.error(
            "{store} {operation} failed: {error}",
            store=self.name,
            operation=operation,
            error=repr(error),
        )
        raise StoreUnavailable(f"{self.name} {operation}: {error!r}") from error


class StoreLife:
    """A store's state: new -> starting -> started -> stopping -> stopped.

    :meth:`start` opens the store once; :meth:`stop` lets the writes and
    interactions in flight finish, then closes it, and fires for every caller.
    """

    def __init__(self) -> None:
        self.state = "new"
        self._stop_waiters: list[Deferred[None]] = []

    def start(
        self, open_store: Callable[[], Deferred[T]], opened: Callable[[T], None]
    ) -> Deferred[None]:
        """Unless started before: ``open_store()``, then ``opened`` with its
        result (unless :meth:`stop` was called meanwhile). A failed
        ``open_store`` leaves the store new, to start again."""
        if self.state != "new":
            return succeed(None)
        self.state = "starting"

        def started(found: T) -> None:
            if self.state != "starting":  # stop() was called meanwhile
                return
            self.state = "started"
            opened(found)

        def failed(failure: Failure) -> Failure:
            if self.state == "starting":
                self.state = "new"
            return failure

        return open_store().addCallbacks(started, failed)

    def stop(self, drain: Callable[[], Deferred[Any]], close: Callable[[], None]) -> Deferred[None]:
        """Fires once ``drain()`` (the writes and interactions in flight) is
        over and ``close()`` has run, which happens once."""
        if self.state == "stopped":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self.state != "stopping":
            self.state = "stopping"
            drain().addCallback(lambda _: self._stopped(close))
        return d

    def _stopped(self, close: Callable[[], None]) -> None:
        close()
        self.state = "stopped"
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def started(self) -> bool:
        return self.state == "started"

    def not_running(self) -> Deferred[Any]:
        """What a call answers unless :attr:`started`: :class:`StoreUnavailable`."""
        return fail(StoreUnavailable(f"the message store is not running ({self.state})"))


def close_pool(pool: adbapi.ConnectionPool, name: str) -> None:
    """Close ``pool`` (of the store ``name``) unless it is closed: a closed
    adbapi pool cannot be closed again (its thread pool refuses); one never
    started may still wait for the reactor (``startID``). A failure is logged."""
    if pool.running or getattr(pool, "startID", None) is not None:
        try:
            pool.close()
        except Exception:
            log.failure("closing the pool of {store} failed", store=name)


class _NoReactor:
    """The part of a reactor ``ConnectionPool.__init__`` touches: start at once."""

    def callWhenRunning(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class InlineConnectionPool(adbapi.ConnectionPool):
    """A ``ConnectionPool`` whose interactions run at once in the calling thread.

    ``runInteraction`` calls the pool's own ``_runInteraction`` (same commit and
    rollback as the threaded pool) and returns an already-fired Deferred. It
    has no threads and needs no reactor; ``cp_reactor`` is ignored.

    :meth:`hold` makes interactions wait (as if a thread were busy) until the
    function it returns is called: that is how a test gets writes queued
    behind one in flight. :ivar interactions: how many interactions were asked for.
    """

    def __init__(self, dbapiName: str, *connargs: Any, **connkw: Any) -> None:
        connkw.pop("cp_reactor", None)
        self.interactions = 0
        self._held: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] | None = None
        super().__init__(dbapiName, *connargs, cp_reactor=_NoReactor(), **connkw)

    def start(self) -> None:
        self.running = True

    def finalClose(self) -> None:
        self.running = False
        for conn in self.connections.values():
            self._close(conn)
        self.connections.clear()

    def runInteraction(
        self, interaction: Callable[..., Any], *args: Any, **kw: Any
    ) -> Deferred[Any]:
        self.interactions += 1
        if self._held is not None:
            d: Deferred[Any] = Deferred()
            self._held.append((d, lambda: self._run_now(interaction, *args, **kw)))
            return d
        return self._run_now(interaction, *args, **kw)

    def runWithConnection(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        if not self.running:
            return fail(adbapi.ConnectionLost("the connection pool is closed"))
        return maybeDeferred(self._runWithConnection, func, *args, **kw)

    def hold(self) -> Callable[[], None]:
        """Make interactions wait; returns the function that runs them, in order,
        and stops holding."""
        if self._held is None:
            self._held = []

        def release() -> None:
            held, self._held = self._held or [], None
            for d, run in held:
                run().chainDeferred(d)

        return release

    def _run_now(self, interaction: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        if not self.running:
            return fail(adbapi.ConnectionLost("the connection pool is closed"))
        return maybeDeferred(self._runInteraction, interaction, *args, **kw)

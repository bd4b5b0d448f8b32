# -*- test-case-name: tests.logic.test_positions -*-
"""Live positions: what a C2S on a geo route reports, and who is nearby.

A geo route's C2S content must be a position (:mod:`daojia_msg.core.geo`),
else BAD_REQUEST and nothing is stored or published. Each online uid's latest
position per appcode is kept (:class:`IPositions`), dropped when its session
ends (logout, close, kick: at once) or after ``geo.max_age_s`` without a
report (a sweep every :data:`SWEEP_S`, and every query skips older ones).
``nearby`` answers only uids whose session is still registered, so a node
that died without dropping its positions is not believed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.core.errors import StoreError
from daojia_msg.core.geo import Located, PositionError, parse_position
from daojia_msg.logic.context import Context
from daojia_msg.logic.interfaces import IPositions, ISessionStore
from daojia_msg.protocol import errors

if TYPE_CHECKING:
    from daojia_msg.logic.sessions import Session

#: Seconds between two sweeps of positions past ``geo.max_age_s``.
SWEEP_S = 1.0
#: ``GET /v1/nearby``'s bounds: answers per query, and the radius in metres.
NEARBY_LIMIT_MAX = 100
NEARBY_RADIUS_MAX_M = 50_000.0


class Positions:
    log = Logger()

    def __init__(self, ctx: Context, store: IPositions | None, sessions: ISessionStore) -> None:
        self.ctx = ctx
        #: None: positions are checked, not kept (tests of other things).
        self.store = store
        self.sessions = sessions
        #: The appcodes that have a geo route: the only ones swept.
        self.appcodes = frozenset(r.appcode for r in ctx.config.routes if r.geo)
        self.max_age_ms = int(ctx.config.geo.max_age_s * 1000)
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = ctx.clock
        #: Positions reported (kept or not), and reports and drops the backend refused.
        self.reports = 0
        self.failures = 0
        #: The last sweep failed (its warning is logged once per outage).
        self._failing = False

    def start(self) -> None:
        if self.store is not None and self.appcodes and not self._sweep.running:
            self._sweep.start(SWEEP_S, now=False).addErrback(
                lambda f: self.log.failure("the positions sweep stopped", f))

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        if self.store is not None:
            self.store.stop().addErrback(self._failed)

    def report(self, session: Session, content: bytes) -> None:
        """Record the position ``content`` carries for ``session``; BAD_REQUEST
        when it carries none. The backend's answer is not awaited (it may
        batch reports): a lost report is made good by the next one."""
        try:
            lat, lon = parse_position(content)
        except PositionError as e:
            raise errors.BadRequest(f"position: {e}") from None
        self.reports += 1
        if self.store is None:
            return
        session.located = True
        self.store.update(session.appcode, session.uid, session.record.session_id, lat, lon,
                          self.ctx.now_ms()).addErrback(self._failed)

    def left(self, session: Session) -> None:
        """``session`` ended: forget its position if it reported one."""
        if session.located and self.store is not None:
            session.located = False
            self.store.drop(session.appcode, session.uid,
                            session.record.session_id).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        failure.trap(StoreError)
        self.failures += 1

    def sweep(self) -> Deferred[None]:
        """Drop the positions past ``geo.max_age_s``."""
        assert self.store is not None
        d = self.store.expire(self.appcodes, self.ctx.now_ms() - self.max_age_ms)
        return d.addCallbacks(self._swept, self._sweep_failed)

    def _swept(self, _: object) -> None:
        if self._failing:
            self._failing = False
            self.log.info("old positions are expired again", failed_reports=self.failures)

    def _sweep_failed(self, failure: Failure) -> None:
        """Logged once per outage, not every second."""
        failure.trap(StoreError)
        if not self._failing:
            self._failing = True
            self.log.warn("could not expire old positions: {error}", error=str(failure.value),
                          failed_reports=self.failures)

    async def nearby(self, appcode: int, lat: float, lon: float, radius_m: float,
                     limit: int) -> list[Located]:
        """Up to ``limit`` online uids of ``appcode`` within ``radius_m`` of
        ``(lat, lon)``, nearest first."""
        if self.store is None:
            return []
        try:
            found = await self.store.nearby(appcode, lat, lon, radius_m, limit,
                                            self.ctx.now_ms() - self.max_age_ms)
            if not found:
                return []
            records = await self.sessions.lookup_many([(p.uid, appcode) for p in found])
        except StoreError:
            raise errors.Unavailable("the positions store is unavailable") from None
        return [p for p, r in zip(found, records, strict=True) if r is not None]

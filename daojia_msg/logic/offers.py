# -*- test-case-name: tests.logic.test_offers -*-
"""Nearby order offers (docs/protocol.md §7.6, docs/operations.md).

``POST /v1/offers`` stores an offer (:class:`~daojia_msg.logic.interfaces.IOfferStore`:
memory on one node, Redis in a cluster) and answers at once. Wave ``k`` runs
``after_s`` seconds after creation: it pushes the offer (a durable S2C, the
content as given) to up to ``count`` online uids of the appcode within
``radius_m`` that no earlier wave reached, nearest first
(:meth:`Positions.nearby <daojia_msg.logic.positions.Positions.nearby>`).

Every node runs a ticker (every :data:`TICK_S`) that claims the offers whose
work is due, from the store, for :data:`LEASE_S`: a wave, the expiry, or
telling an outcome. So the waves and the deadline of an offer go on when the
node that created it dies; work a node took and did not finish is taken again
by any node when its lease ends. A wave's recipients are recorded before they
are pushed, and each push carries an idempotency key of the offer and the
uid (``offer:<id>:<uid>``), so a wave taken again after a crash (or by a
second node while the first is still slow at it) is pushed to the same uids
without duplicates: the lease is short (the next wave of a dead node's offer
is then late by a second at most). Telling an outcome, which publishes on
the bus, is leased for :data:`OUTCOME_LEASE_S` by the accept or the expiry
that decided it, so that it is published twice only if its node dies first.

A C2S of ``offers.accept_msgtype`` whose content is an offer id is an accept,
whether or not a route exists for that msgtype; it is never published. The
store decides it in one step (the first accept of an offered uid before the
deadline wins; else "offer taken", "not offered", "offer expired"; content
that is no offer id is "not offered"; the winner accepting again is OK). The
outcome (accepted or expired) is told by S2C of ``offers.result_msgtype``
(``{"offer_id", "state": "won" | "taken" | "expired"}``) to every uid pushed to,
and published once as JSON ``{"offer_id", "state", "winner_uid"?}`` on the
default bus, topic :data:`TOPIC`, with the media type :data:`CONTENT_TYPE`
(not the C2S envelope's protobuf); the node that accepted or expired the offer
does it at once, and any node again if it died first (its result pushes are
then de-duplicated by their idempotency keys: ``offer:<id>:<uid>:outcome``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from daojia_msg.config import Route
from daojia_msg.core.convert import MAX_ID
from daojia_msg.core.errors import BusError, StoreError, Unavailable
from daojia_msg.core.offers import ACCEPTED, EXPIRED, OPEN, AcceptResult, NewOffer, Offer, Wave
from daojia_msg.logic.context import Context
from daojia_msg.logic.interfaces import IOfferStore, IPublisher
from daojia_msg.logic.positions import Positions
from daojia_msg.logic.sending import PushItem, PushOutcome, Sending
from daojia_msg.logic.sessions import Session
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: Seconds between two claims of due offer work on a node.
TICK_S = 0.2
#: How long a claim holds an offer's work before another node may take it.
LEASE_S = 1.0
#: How long an accept or the expiry holds the telling of its outcome, beyond
#: the longest the telling may take (``store.answer_timeout_s`` for the
#: outcome pushes, then ``bus.publish_timeout_s`` for the publication): a
#: telling still under way is never taken over by another node's claim.
OUTCOME_LEASE_S = 3.0
#: Offers claimed by one tick at most.
CLAIM_BATCH = 100
#: The bus topic of the outcomes (on the default bus).
TOPIC = "offers"
#: The media type of the outcomes published on :data:`TOPIC`.
CONTENT_TYPE = "application/json"
#: ``POST /v1/offers``'s limits.
MAX_WAVES = 10
MAX_COUNT = 100
MAX_RADIUS_M = 50_000.0
MAX_DEADLINE_S = 3600.0

C2S = Callable[[Session, int, pb.C2SRequest], "Deferred[pb.Result]"]


def _offer_id(content: bytes) -> int | None:
    text = content.strip()
    if not text.isdigit() or len(text) > 20 or not 0 < int(text) <= MAX_ID:
        return None
    return int(text)


def _raise_unavailable(results: Sequence[PushOutcome | errors.RequestError]) -> None:
    """A push the store did not take (or confirm): the work is done again
    later (the pushes that were stored are then de-duplicated)."""
    for r in results:
        if isinstance(r, errors.Unavailable | errors.Timeout):
            raise r


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Offers:
    log = Logger()

    def __init__(self, ctx: Context, store: IOfferStore | None, positions: Positions,
                 sending: Sending, bus: IPublisher) -> None:
        self.ctx = ctx
        #: None: offers are off (no store, or ``[offers]`` not configured).
        self.store = store if ctx.config.offers.accept_msgtype else None
        self.positions = positions
        self.sending = sending
        self.bus = bus
        self.lease_ms = round(LEASE_S * 1000)
        config = ctx.config
        self.outcome_lease_ms = round((OUTCOME_LEASE_S + config.store.answer_timeout_s
                                       + config.bus.publish_timeout_s) * 1000)
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = ctx.clock
        #: Offers this node is working on now, and those to work on again
        #: once that is done (an accept that came meanwhile: its outcome is
        #: told then, not after the lease).
        self.working: set[int] = set()
        self._again: set[int] = set()
        #: Counters for the metrics: offers created, accepted, expired, wave
        #: pushes made; and work that failed on a backend (done again later).
        self.created = self.accepted = self.expired = self.pushes = self.failures = 0
        #: Claims, and the work of offers, are failing now (each logged once
        #: per outage, and when it works again).
        self._failing = {"claim": False, "work": False}

    def start(self) -> None:
        if self.store is not None and not self._ticker.running:
            self._ticker.start(TICK_S, now=False).addErrback(
                lambda f: self.log.failure("the offers ticker stopped", f))

    def stop(self) -> None:
        if self._ticker.running:
            self._ticker.stop()

    def wrap_c2s(self, c2s: C2S) -> C2S:
        """``c2s``, with the accepts taken out first (when offers are on)."""
        if self.store is None:
            return c2s
        accept_msgtype = self.ctx.config.offers.accept_msgtype

        def c2s_or_accept(session: Session, msgtype: int, req: pb.C2SRequest
                          ) -> Deferred[pb.Result]:
            if msgtype == accept_msgtype:
                return Deferred.fromCoroutine(self.accept(session, req.content))
            return c2s(session, msgtype, req)

        return c2s_or_accept

    # -- the app server's side ---------------------------------------------

    async def create(self, appcode: int, lat: float, lon: float, msgtype: int, content: bytes,
                     waves: Sequence[Wave], accept_deadline_s: float) -> NewOffer:
        """Store a new offer (already checked against the limits) and run
        its first wave now if it is due now; fires with the offer."""
        if self.store is None:
            raise errors.BadRequest("offers are not configured on this node ([offers])")
        # As a push would be refused at wave time (a rich msgtype's content).
        self.sending._check_rich(content, msgtype, self.ctx.config.app(appcode))
        self.ctx.check_available()
        offer_id = self.ctx.ids.next_id()
        now = self.ctx.now_ms()
        offer = NewOffer(offer_id, appcode, lat, lon, msgtype, content, format(offer_id, "x"),
                         tuple(sorted(waves, key=lambda w: w.after_s)), now,
                         now + round(accept_deadline_s * 1000))
        run_now = offer.wave_due_ms(0) <= now
        try:
            await self.store.create(offer, now + self.lease_ms if run_now else offer.wave_due_ms(0))
        except StoreError as e:
            raise errors.Unavailable(f"the offers store is unavailable: {e}") from None
        self.created += 1
        self.log.info("offer {offer_id} created for appcode {appcode}: {waves} waves, "
                      "deadline in {deadline_s} s", offer_id=offer_id, appcode=appcode,
                      waves=len(waves), deadline_s=accept_deadline_s, logid=offer.logid)
        if run_now:
            self._start(offer_id)
        return offer

    async def view(self, offer_id: int) -> tuple[Offer, str] | None:
        """The offer and its state now (``GET /v1/offers/{id}``), or None."""
        if self.store is None:
            return None
        try:
            offer = await self.store.load(offer_id)
        except StoreError:
            raise errors.Unavailable("the offers store is unavailable") from None
        return None if offer is None else (offer, offer.state_at(self.ctx.now_ms()))

    # -- the recipients' side -------------------------------------------------

    async def accept(self, session: Session, content: bytes) -> pb.Result:
        """An accept C2S: OK for the winner (the outcome is then told in the
        background), else BAD_REQUEST with the reason."""
        assert self.store is not None
        self.ctx.check_available()
        offer_id = _offer_id(content)
        if offer_id is None:
            raise errors.BadRequest(AcceptResult.NOT_OFFERED.value)
        now = self.ctx.now_ms()
        try:
            result = await self.store.accept(offer_id, session.appcode, session.uid, now,
                                             now + self.outcome_lease_ms)
        except StoreError:
            raise errors.Unavailable("the offers store is unavailable") from None
        if result is AcceptResult.WON:
            self.accepted += 1
            self.log.info("offer {offer_id} accepted by {uid}", offer_id=offer_id,
                          uid=session.uid, appcode=session.appcode)
            # After this turn: the winner's Result is written before its outcome.
            self.ctx.clock.callLater(0, self._start, offer_id)
        elif result is not AcceptResult.AGAIN:
            raise errors.BadRequest(result.value)
        return pb.Result(code=Code.OK, server_time_ms=self.ctx.now_ms())

    # -- the work of every node -------------------------------------------------

    def tick(self) -> Deferred[None]:
        """Claim the due work and start it (not awaited: one slow offer does
        not hold up the others)."""
        return Deferred.fromCoroutine(self._tick())

    async def _tick(self) -> None:
        assert self.store is not None
        now = self.ctx.now_ms()
        try:
            ids = await self.store.claim(now, now + self.lease_ms, CLAIM_BATCH)
        except StoreError as e:
            self._failed("claim", e)
            return
        self._recovered("claim")
        for offer_id in ids:
            self._start(offer_id)

    def _failed(self, what: str, e: Exception) -> None:
        """Counted, and logged once per outage."""
        self.failures += 1
        if not self._failing[what]:
            self._failing[what] = True
            self.log.warn("offer {what} failed on a backend (done again later): {error}",
                          what=what, error=str(e))

    def _recovered(self, what: str) -> None:
        if self._failing[what]:
            self._failing[what] = False
            self.log.info("offer {what} works again", what=what)

    def _start(self, offer_id: int) -> None:
        if offer_id in self.working:
            self._again.add(offer_id)
            return
        self.working.add(offer_id)
        d = Deferred.fromCoroutine(self._work(offer_id))
        d.addErrback(lambda f: self.log.failure("offer {offer_id}: its work failed", f,
                                                offer_id=offer_id))
        d.addBoth(self._worked, offer_id)

    def _worked(self, _: object, offer_id: int) -> None:
        self.working.discard(offer_id)
        if offer_id in self._again:
            self._again.discard(offer_id)
            self._start(offer_id)

    async def _work(self, offer_id: int) -> None:
        """Whatever is due for the offer: tell its outcome, expire it, or run
        its next wave. A backend failure leaves it to the next claim."""
        try:
            await self._due(offer_id)
        except (StoreError, Unavailable, errors.Unavailable, errors.Timeout, BusError) as e:
            self._failed("work", e)
        else:
            self._recovered("work")

    async def _due(self, offer_id: int) -> None:
        store = self.store
        assert store is not None
        offer = await store.load(offer_id)
        if offer is None:
            await store.forget(offer_id)
            return
        if offer.state != OPEN:
            if offer.notified:
                await store.forget(offer_id)
            else:  # a node died (or failed) before telling it: hold it as long as a telling takes
                await store.hold(offer_id, self.ctx.now_ms() + self.outcome_lease_ms)
                await self._notify(offer)
            return
        now = self.ctx.now_ms()
        spec = offer.spec
        if now >= spec.deadline_ms:
            if await store.expire(offer_id, now, now + self.outcome_lease_ms):
                self.expired += 1
                self.log.info("offer {offer_id} expired", offer_id=offer_id, logid=spec.logid,
                              appcode=spec.appcode)
                await self._notify(replace(offer, state=EXPIRED))
            return
        if offer.pushing >= 0:  # recorded by a node that may have died before pushing
            await self._push_wave(offer, offer.pushing, list(offer.wave_uids))
            return
        k = offer.next_wave
        due = spec.wave_due_ms(k)
        if due > now:  # taken early (another node's clock), or only the expiry is left
            await store.reschedule(offer_id, due)
            return
        wave = spec.waves[k]
        pushed = set(offer.pushed_to)
        found = await self.positions.nearby(spec.appcode, spec.lat, spec.lon, wave.radius_m,
                                            wave.count + len(pushed))
        uids = [p.uid for p in found if p.uid not in pushed][:wave.count]
        if await store.begin_wave(offer_id, k, uids, now):
            await self._push_wave(offer, k, uids)

    async def _push_wave(self, offer: Offer, k: int, uids: list[int]) -> None:
        spec = offer.spec
        if uids:
            results = await self.sending.push_s2c(
                [PushItem(uid, spec.appcode, spec.msgtype, spec.content, spec.logid,
                          f"offer:{spec.offer_id}:{uid}") for uid in uids], spec.appcode)
            _raise_unavailable(results)
            self.pushes += sum(1 for r in results if isinstance(r, PushOutcome))
        self.log.info("offer {offer_id} wave {wave} pushed to {uids}", offer_id=spec.offer_id,
                      wave=k, uids=uids, logid=spec.logid, appcode=spec.appcode)
        assert self.store is not None
        await self.store.end_wave(spec.offer_id, k, spec.wave_due_ms(k + 1))

    async def _notify(self, offer: Offer) -> None:
        """Tell the outcome to every uid pushed to, publish it, and record
        that it was told (a failure leaves it to the next claim)."""
        spec = offer.spec
        oid = str(spec.offer_id)
        event: dict[str, object] = {"offer_id": oid, "state": offer.state}
        if offer.state == ACCEPTED:
            event["winner_uid"] = offer.winner_uid

        def told(uid: int) -> str:
            if offer.state != ACCEPTED:
                return "expired"
            return "won" if uid == offer.winner_uid else "taken"

        result_msgtype = self.ctx.config.offers.result_msgtype
        items = [PushItem(uid, spec.appcode, result_msgtype,
                          _json({"offer_id": oid, "state": told(uid)}), spec.logid,
                          f"offer:{oid}:{uid}:outcome") for uid in offer.pushed_to]
        if items:
            _raise_unavailable(await self.sending.push_s2c(items, spec.appcode))
        await self.bus.publish(Route(spec.appcode, 0, TOPIC), _json(event), spec.logid,
                               CONTENT_TYPE)
        assert self.store is not None
        await self.store.notified(spec.offer_id)

# -*- test-case-name: tests.logic.test_escalation -*-
"""Offline escalation (docs/operations.md §14): a push with
``escalate_after_s`` that is not ACKed that many seconds after it became
durable is POSTed to its app's ``escalation_url``, once per message across
the cluster.

- Scheduling: once the push is durable (before it is answered) its entry
  goes to the node's schedule (:class:`~daojia_msg.logic.interfaces.IEscalations`:
  an SQLite file on one node, Redis in a cluster). A schedule that fails (Redis
  down) keeps the entries in this node's memory and writes them at the next
  poll (lost only if the node dies before Redis answers again).
- Every :data:`POLL_S` the node claims due entries for :data:`LEASE_S`:
  enough to fill its :data:`CONCURRENCY` POST slots and as many again
  waiting their turn, and claims again as soon as that much room frees
  while the last claim was full (a backlog goes at the receiver's pace, not
  a claim per poll): a node that dies with claims leaves them to the other
  nodes once the lease runs out.
- At due time the message store says whether the message is still pending:
  an ACK on any node cancels without coordination (with a schedule in
  memory the ACK also drops the entry at once, keeping memory bounded by
  what is un-ACKed).
- The POST: ``{"msgid", "logid", "to_uid", "to_appcode", "msgtype",
  "content_b64"}`` with ``X-Msgplatform-Signature``, the hex HMAC-SHA256 of
  the body keyed by the app's secret (never logged). A 2xx finishes the
  entry (the token check makes the claim that finishes it the only one);
  anything else (any status, no answer within :data:`TIMEOUT_S`) is retried
  after an exponential backoff with jitter (:func:`backoff`), until an hour
  (:data:`GIVE_UP_S`) after the first due time, then given up and counted.
- Counted: ``escalated`` per route in the delivery statistics (a 2xx), and
  :attr:`Escalator.counts` (posted, failed, gave_up, cancelled) on ``/metrics``.

At most one successful POST per message holds while the nodes' clocks agree
within :data:`LEASE_MARGIN_S` less the attempt's limit (a POST starts only
with that much of its lease left); a node that dies after the receiver
answered 2xx but before it finished the entry leaves it to be POSTed again
(receivers de-duplicate by ``msgid``).
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg import tracing
from daojia_msg.core.convert import recipient_fields
from daojia_msg.core.errors import StoreError
from daojia_msg.core.escalation import SIGNATURE_HEADER, Escalation, EscalationClaim, signature
from daojia_msg.core.model import StoredMessage
from daojia_msg.logic.context import Context
from daojia_msg.logic.interfaces import IEscalationPoster, IEscalations, IMessageStore

trace = tracing.MESSAGES.logger("daojia_msg.logic.escalation")

#: Seconds between two claims of due entries (a POST starts within this of its due time).
POLL_S = 0.5
#: Seconds a claim keeps other nodes off an entry: well above one attempt.
LEASE_S = 30.0
#: Seconds one POST may take, its answer read.
TIMEOUT_S = 5.0
#: A POST starts only while its claim holds this much longer (the attempt and
#: clock differences between nodes): else it is left to a later claim.
LEASE_MARGIN_S = 2 * TIMEOUT_S
#: POSTs under way at once on a node.
CONCURRENCY = 16
#: The first retry waits about this long, each next one twice as long, at most BACKOFF_CAP_S.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
#: Seconds after the first due time past which a failing escalation is given up.
GIVE_UP_S = 3600.0
#: After a 2xx, the first wait before marking it done again when the
#: schedule failed to (doubling to 2 s, for as long as the claim lasts).
FINISH_RETRY_S = 0.1
#: Entries a failed schedule keeps in memory at most (beyond: dropped, logged).
MAX_UNSAVED = 100_000
#: ``escalate_after_s`` bounds (docs/openapi.yaml).
MIN_AFTER_S, MAX_AFTER_S = 1, 3600


def backoff(attempts: int, rng: random.Random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: half
    of ``BACKOFF_BASE_S * 2**(attempts-1)`` (at most the cap) plus a random
    share of the other half, so nodes retrying together spread out."""
    step = min(BACKOFF_BASE_S * 2 ** min(max(attempts - 1, 0), 32), BACKOFF_CAP_S)
    return step / 2 + rng.random() * step / 2


def body_of(msg: StoredMessage) -> bytes:
    """The JSON body POSTed for ``msg`` (ids as the HTTP API gives them)."""
    return json.dumps({
        "msgid": str(msg.msgid), "logid": msg.logid, "to_uid": msg.to_uid,
        "to_appcode": msg.to_appcode, "msgtype": msg.msgtype,
        "content_b64": base64.b64encode(msg.content).decode("ascii"),
    }, separators=(",", ":")).encode("ascii")


class Escalator(Service):
    """Schedules escalations and works off the due ones (module docstring).
    ``cancel_on_ack``: drop an entry at its ACK (cheap in memory; in Redis
    the due-time check does it without a call per ACK)."""

    log = Logger()

    def __init__(self, ctx: Context, schedule: IEscalations, messages: IMessageStore,
                 poster: IEscalationPoster, *, cancel_on_ack: bool = False,
                 rng: random.Random | None = None) -> None:
        self.ctx = ctx
        self.schedule_store = schedule
        self.messages = messages
        self.poster = poster
        self.cancel_on_ack = cancel_on_ack
        self.rng = rng or random.Random()
        #: This node's claims carry it (plus a sequence number).
        self.token = secrets.token_hex(8)
        self._claims = 0
        self._loop = LoopingCall(self.poll)
        self._loop.clock = ctx.clock
        self._polling = False
        self._backlog = False
        #: Why claims ("claim") or the work on a claim ("store") last failed
        #: on a backend, while they do.
        self._outages: dict[str, str] = {}
        self._working: set[Deferred[None]] = set()
        #: Claimed, waiting for a free slot (at most CONCURRENCY: well within the lease).
        self._claimed: deque[EscalationClaim] = deque()
        self._unsaved: list[Escalation] = []
        #: The entries of this reactor turn, written together at its end.
        self._batch: list[Escalation] = []
        self._written: Deferred[None] | None = None
        self._writing = False
        #: What happened to escalations on this node (``/metrics``).
        self.counts = {"posted": 0, "failed": 0, "gave_up": 0, "cancelled": 0}

    # -- scheduling ------------------------------------------------------------

    def schedule(self, pushes: Sequence[tuple[StoredMessage, int]]) -> Deferred[None]:
        """Schedule ``(message, escalate_after_s)`` pushes just made durable;
        fires once written (or kept in memory, the schedule refusing).

        Group commit: the pushes of one reactor turn are written in one
        call, and those that come while a write is under way wait for it and
        go together in the next one (on SQLite a write costs ~165 us of CPU
        for one entry, ~20 us an entry for 16: docs/operations.md §14)."""
        now = self.ctx.now_ms()
        self._batch += [Escalation(m.msgid, m.to_uid, m.to_appcode, now + after_s * 1000)
                        for m, after_s in pushes]
        if self._written is None:
            self._written = Deferred()
            if not self._writing:
                self.ctx.clock.callLater(0, self._write)
        done: Deferred[None] = Deferred()
        self._written.addCallback(_fire, done)
        return done

    def _write(self) -> None:
        entries, self._batch = self._batch, []
        written, self._written = self._written, None
        self._writing = True
        d = self.schedule_store.schedule(entries)
        d.addErrback(self._not_written, entries)
        d.addCallback(self._wrote)
        if written is not None:
            d.chainDeferred(written)

    def _wrote(self, _: object) -> None:
        self._writing = False
        if self._written is not None:  # came while this write was under way
            self._write()

    def _not_written(self, failure: Failure, entries: list[Escalation]) -> None:
        """Kept in memory, written at the next poll (never fails the push)."""
        if not failure.check(StoreError):
            self.log.failure("scheduling {count} escalations failed", failure,
                             count=len(entries))
        self._keep(entries, str(failure.value))

    def _keep(self, entries: list[Escalation], why: str) -> None:
        room = MAX_UNSAVED - len(self._unsaved)
        self._unsaved += entries[:room]
        self.log.warn("{count} escalations not scheduled ({why}): kept on this node, "
                      "{lost} dropped", count=len(entries), why=why,
                      lost=max(0, len(entries) - room))

    def acked(self, msgids: Iterable[int]) -> None:
        """Messages ACKed on this node: their entries go (``cancel_on_ack``)."""
        if self.cancel_on_ack:
            self.schedule_store.cancel(msgids)

    # -- the loop --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop.start(POLL_S, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop claiming; POSTs under way are cancelled (their claims run out,
        as they may have reached the receiver, and another node, or this
        one's next start, takes them again then); claims not started yet and
        escalations the schedule refused so far go back to the schedule at
        once, so a rolling restart does not hold them for a lease; then the
        HTTP client and the schedule close."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        waiting = list(self._claimed)
        self._claimed.clear()
        for d in list(self._working):
            d.cancel()
        d = Deferred.fromCoroutine(self._hand_back(waiting))
        d.addBoth(lambda _: DeferredList([self.poster.stop(), self.schedule_store.stop()],
                                         consumeErrors=True))
        return d.addCallback(lambda _: None)

    async def _hand_back(self, waiting: list[EscalationClaim]) -> None:
        """At stop: the unsaved escalations written, the claims not started
        due again now (as a retry: their attempt count grows by one)."""
        try:
            await self._save_unsaved()
            now = self.ctx.now_ms()
            for claim in waiting:
                await self.schedule_store.retry(claim, now)
        except StoreError as e:
            self.log.warn("escalations not handed back at stop (their claims run out "
                          "instead): {why}", why=str(e))

    def poll(self) -> Deferred[None] | None:
        if self._polling or not self.running:
            return None
        self._polling = True
        d = Deferred.fromCoroutine(self._poll())
        d.addErrback(lambda f: self.log.failure("escalation poll failed", f))
        return d.addBoth(self._polled)

    def _polled(self, _: object) -> None:
        self._polling = False
        if self._backlog and self._room() >= CONCURRENCY:  # it all went while claiming
            self.ctx.clock.callLater(0, self.poll)

    def _room(self) -> int:
        """Claims this node may take now: its slots and as many waiting."""
        return 2 * CONCURRENCY - len(self._working) - len(self._claimed)

    async def _save_unsaved(self) -> None:
        """Write the escalations the schedule refused so far; those it refuses
        again stay (first) for the next try."""
        if not self._unsaved:
            return
        entries, self._unsaved = self._unsaved, []
        try:
            await self.schedule_store.schedule(entries)
        except StoreError:
            self._unsaved = entries + self._unsaved
            raise

    async def _poll(self) -> None:
        try:
            await self._save_unsaved()
        except StoreError as e:
            self.log.debug("escalations still not scheduled: {why}", why=str(e))
        free = self._room()
        if free < CONCURRENCY:
            return
        self._claims += 1
        try:
            claims = await self.schedule_store.claim(
                self.ctx.now_ms(), int(LEASE_S * 1000), free, f"{self.token}:{self._claims}")
        except StoreError as e:
            self._trouble("claim", f"cannot claim escalations: {e}")
            return
        self._recovered("claim")
        #: A full claim: more may be due, claimed again as soon as room frees.
        self._backlog = len(claims) == free
        self._claimed.extend(claims)
        self._start()

    def _start(self) -> None:
        """Start claimed escalations while fewer than :data:`CONCURRENCY` are under way."""
        while self._claimed and len(self._working) < CONCURRENCY and self.running:
            claim = self._claimed.popleft()
            d = Deferred.fromCoroutine(self._escalate(claim))
            self._working.add(d)
            d.addErrback(self._failed, claim).addBoth(self._worked, d)

    def settled(self) -> Deferred[None]:
        """Fires once the escalations under way now are done (tests)."""
        return DeferredList(list(self._working), consumeErrors=True).addCallback(lambda _: None)

    def _worked(self, _: object, d: Deferred[None]) -> None:
        self._working.discard(d)
        self._start()
        if self._backlog:
            self.poll()

    def _failed(self, failure: Failure, claim: EscalationClaim) -> None:
        if failure.check(CancelledError):
            return  # stopping: the lease runs out and the entry is claimed again
        if failure.check(StoreError):  # the same, once the store or schedule answers
            self._trouble("store", f"escalations wait for a backend: {failure.value}")
            return
        self.log.failure("escalation of {msgid} failed", failure, msgid=claim.msgid)

    def _trouble(self, kind: str, why: str) -> None:
        """A backend refused (``kind``: claims, or the work on a claim): said
        once per outage (the polls go on)."""
        if kind not in self._outages:
            self.log.warn("{why} (said once until it works again)", why=why)
        self._outages[kind] = why

    def _recovered(self, kind: str) -> None:
        why = self._outages.pop(kind, None)
        if why is not None:
            self.log.info("escalations work again (after: {why})", why=why)

    # -- one escalation --------------------------------------------------------

    async def _escalate(self, claim: EscalationClaim) -> None:
        msg = await self.messages.pending_message(claim.to_uid, claim.msgid)
        self._recovered("store")
        if msg is None:  # ACKed (or expired): nothing to do
            self.counts["cancelled"] += 1
            await self.schedule_store.finish(claim)
            if tracing.MESSAGES.listeners:
                trace.debug("{msgid} ACKed before its escalation", msgid=claim.msgid,
                            uid=claim.to_uid, appcode=claim.to_appcode)
            return
        app = self.ctx.config.app(msg.to_appcode)
        if app is None or not app.escalation_url:
            self.log.warn("escalation of {msgid} dropped: app {appcode} has no "
                          "escalation_url now", msgid=msg.msgid, logid=msg.logid,
                          **recipient_fields(msg))
            await self.schedule_store.finish(claim)
            return
        if self.ctx.now_ms() + LEASE_MARGIN_S * 1000 > claim.leased_until_ms:
            # Too late in its lease (a store that stalled): another claim may
            # take it meanwhile, so this one leaves it (the lease runs out).
            self.log.info("escalation of {msgid} left to a later claim: its lease is nearly "
                          "over", msgid=msg.msgid, logid=msg.logid, **recipient_fields(msg))
            return
        body = body_of(msg)
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: signature(app.secret, body)}
        try:
            code = await self.poster.post(app.escalation_url, body, headers)
        except CancelledError:
            raise
        except Exception as e:
            why = "no complete answer in time" if isinstance(e, TimeoutError) else (
                f"{type(e).__name__}: {e}")
        else:
            if 200 <= code < 300:
                await self._posted(claim, msg, app.escalation_url)
                return
            why = f"HTTP {code}"
        await self._retry(claim, msg, app.escalation_url, why)

    async def _posted(self, claim: EscalationClaim, msg: StoredMessage, url: str) -> None:
        self.counts["posted"] += 1
        self.ctx.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "escalated")
        self.log.info("escalated {msgid} to {url}", msgid=msg.msgid, logid=msg.logid,
                      url=_shown(url), attempt=claim.attempts + 1, **recipient_fields(msg))
        # Finished at once; a schedule that fails now (Redis blipping) is tried
        # again, 0.1 s later doubling to 2 s, as long as the lease lasts, so no
        # other node POSTs it again.
        delay = FINISH_RETRY_S
        while True:
            try:
                held = await self.schedule_store.finish(claim)
            except StoreError as e:
                why = str(e)
                if self.ctx.now_ms() + delay * 1000 >= claim.leased_until_ms:
                    break
                await deferLater(self.ctx.clock, delay, lambda: None)
                delay = min(2 * delay, 2.0)
                continue
            if not held:
                self.log.warn("escalation of {msgid} POSTed after its claim ran out: another "
                              "node may POST it too", msgid=msg.msgid, logid=msg.logid,
                              **recipient_fields(msg))
            return
        self.log.warn("escalation of {msgid} POSTed but not marked done ({why}): it may be "
                      "POSTed again", msgid=msg.msgid, logid=msg.logid, why=why,
                      **recipient_fields(msg))

    async def _retry(self, claim: EscalationClaim, msg: StoredMessage, url: str,
                     why: str) -> None:
        self.counts["failed"] += 1
        now = self.ctx.now_ms()
        attempts = claim.attempts + 1
        delay_ms = int(backoff(attempts, self.rng) * 1000)
        if now + delay_ms - claim.first_due_ms > GIVE_UP_S * 1000:
            self.counts["gave_up"] += 1
            self.log.warn("escalation of {msgid} to {url} given up after {attempts} attempts "
                          "over an hour: {why}", msgid=msg.msgid, logid=msg.logid,
                          url=_shown(url), attempts=attempts, why=why, **recipient_fields(msg))
            await self.schedule_store.finish(claim)
            return
        self.log.info("escalation of {msgid} to {url} failed ({why}): attempt {attempts}, "
                      "next in {delay:.1f} s", msgid=msg.msgid, logid=msg.logid,
                      url=_shown(url), why=why, attempts=attempts, delay=delay_ms / 1000,
                      **recipient_fields(msg))
        await self.schedule_store.retry(claim, now + delay_ms)


def _fire(result: object, d: Deferred[None]) -> object:
    d.callback(None)
    return result


def _shown(url: str) -> str:
    """``url`` fit for a log: without userinfo, query or fragment."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"

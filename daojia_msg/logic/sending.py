# -*- test-case-name: tests.logic.test_service -*-
"""Sending: C2S to the bus, C2C and S2C made durable then routed, and ACKs.

A C2C or S2C is made durable as pending, its push is handed over if the
recipient is online, then the sender is answered (see
:meth:`Sending._c2c_stored` for why in this order); an ACK turns it
delivered (docs/protocol.md §6.3). C2S, C2C and ACK run per message: they are
plain callbacks on one Deferred, not coroutines (docs/architecture.md §5).

An answer that waits on a stalled backend longer than
``store.answer_timeout_s`` is TIMEOUT while the work goes on
(:mod:`daojia_msg.logic.answers`, docs/protocol.md §7.4); UNAVAILABLE only
when the store refused before it wrote anything. An app server's push may
carry an idempotency key: its de-dup key is ``(0, 0, "idem:<appcode>:<key>")``
(``<appcode>``: the app whose API key pushed), a key space of its own beside
the C2C senders' (whose uid is never 0), in the same store table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg import tracing
from daojia_msg.config import AppConfig
from daojia_msg.content.richtext import RichTextError, validate
from daojia_msg.core.convert import MAX_ID, check_uid, sender_fields
from daojia_msg.core.errors import BusError, BusTimeout, StoreError, StoreUncertain
from daojia_msg.core.model import AckedMessage, Kind, NewMessage, StoredMessage, StoreOutcome
from daojia_msg.logic.answers import each_answer
from daojia_msg.logic.context import Context
from daojia_msg.logic.escalation import Escalator
from daojia_msg.logic.interfaces import IMessageStore, IPublisher
from daojia_msg.logic.positions import Positions
from daojia_msg.logic.routing import Routing
from daojia_msg.logic.sessions import Session
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The message path: stored, published, ACKed (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.logic.sending")

#: A client-chosen logid goes into every log line: keep it short and plain.
LOGID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def _store_failed(failure: Failure) -> NoReturn:
    """An ACK the store failed: TIMEOUT when it may have been done, else UNAVAILABLE."""
    failure.trap(StoreError)
    if failure.check(StoreUncertain):
        raise errors.Timeout("the message store failed during its commit: the ACK may or may "
                             "not be recorded; ACK again")
    raise errors.Unavailable("message store unavailable")


def _too_many_ids(msgids: Sequence[int], limit: int) -> errors.BadRequest | None:
    """The refusal of an ACK naming more than ``limit`` msgids, or None."""
    if len(msgids) > limit:
        return errors.BadRequest(f"at most {limit} msgids per ACK")
    return None


def _c2c_timeout() -> errors.Timeout:
    return errors.Timeout("the message store did not confirm in time: the message may or may "
                          "not be stored; resend with the same client_msg_id")


def _push_timeout() -> errors.Timeout:
    return errors.Timeout("the message store did not confirm in time: the message may or may "
                          "not be stored; resend with the same idempotency key")


def _ack_timeout() -> errors.Timeout:
    return errors.Timeout("the message store did not confirm in time: the ACK may or may not "
                          "be recorded; ACK again")


def push_dedup_id(appcode: int, key: str) -> str:
    """The de-dup ``client_msg_id`` (under sender ``(0, 0)``) of an app
    server's push with idempotency key ``key``, pushed with an API key of app
    ``appcode``; "" (none) without a key."""
    return f"idem:{appcode}:{key}" if key else ""


def _c2c_result(outcome: StoreOutcome, msg: StoredMessage) -> pb.Result:
    return pb.Result(code=Code.OK, msgid=outcome.msgid, logid=outcome.logid,
                     server_time_ms=msg.send_time_ms)


@dataclass(frozen=True, slots=True)
class PushItem:
    """One S2C push from an app server (``POST /v1/push``), already shape-checked."""

    to_uid: int
    to_appcode: int
    msgtype: int
    content: bytes
    logid: str = ""
    #: The app server's idempotency key ("": none), checked by the HTTP API.
    idempotency_key: str = ""
    #: Seconds after which the push, not ACKed, is escalated (0: never;
    #: :mod:`daojia_msg.logic.escalation`), checked by the HTTP API.
    escalate_after_s: int = 0


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """A push stored (or found stored: a repeat of its idempotency key, then
    ``online`` is False: it was not pushed again)."""

    msgid: int
    logid: str
    online: bool


class Sending:
    log = Logger()

    def __init__(self, ctx: Context, messages: IMessageStore, bus: IPublisher,
                 routing: Routing, positions: Positions) -> None:
        self.ctx = ctx
        #: The msgtypes that are rich for some app: only these need a closer look.
        self._rich_msgtypes = frozenset().union(
            *(app.rich_msgtypes for app in ctx.config.apps.values()))
        self.messages = messages
        self.bus = bus
        self.routing = routing
        #: Live positions of geo routes.
        self.positions = positions
        #: Offline escalation (set by the node; None: pushes are not escalated).
        self.escalator: Escalator | None = None

    def _check_content(self, content: bytes) -> None:
        if len(content) > self.ctx.limits.max_content:
            raise errors.BadRequest(f"content is over {self.ctx.limits.max_content} bytes")

    @staticmethod
    def _check_rich(content: bytes, msgtype: int, *apps: AppConfig | None) -> None:
        """Content of a msgtype that is rich for any of ``apps`` must be rich
        text (docs/protocol.md §7.2); it is then stored as sent."""
        if any(app is not None and msgtype in app.rich_msgtypes for app in apps):
            try:
                validate(content)
            except RichTextError as e:
                raise errors.BadRequest(f"rich content: {e}") from None

    def _logid(self, given: str, msgid: int) -> str:
        if not given:
            return format(msgid, "x")
        if not LOGID_RE.fullmatch(given):
            raise errors.BadRequest("logid must be 1 to 64 of A-Z a-z 0-9 . _ : -")
        return given

    def c2s(self, session: Session, msgtype: int, req: pb.C2SRequest) -> Deferred[pb.Result]:
        """Publish to the topic of ``(appcode, msgtype)``; answer once the bus
        accepted it. On a geo route the content must be a position: it is
        kept as the sender's latest first (:mod:`daojia_msg.logic.positions`)."""
        try:
            self.ctx.check_available()  # it takes a msgid
            self._check_content(req.content)
            route = self.ctx.config.route_for(session.appcode, msgtype)
            if route is None:
                raise errors.NoRoute(f"no topic for appcode {session.appcode} msgtype {msgtype}")
            if route.geo:
                self.positions.report(session, req.content)
            msgid = self.ctx.ids.next_id()
            logid = self._logid(req.logid, msgid)
            now = self.ctx.now_ms()
            envelope = pb.Message(
                msgid=msgid, from_uid=session.uid, from_appcode=session.appcode, msgtype=msgtype,
                content=req.content, send_time_ms=now, logid=logid, kind=pb.C2S,
            ).SerializeToString()
            d = self.bus.publish(route, envelope, logid)
        except Exception:
            return fail()
        return d.addCallbacks(self._c2s_published, self._c2s_refused,
                              callbackArgs=(session, msgtype, msgid, logid, route.topic, now),
                              errbackArgs=(session, msgid, logid, route.topic))

    def _c2s_published(self, _: object, session: Session, msgtype: int, msgid: int, logid: str,
                       topic: str, now: int) -> pb.Result:
        self.ctx.stats.add((session.appcode, msgtype, Kind.C2S), "accepted")
        if tracing.MESSAGES.listeners:
            trace.debug("c2s {msgid} published to {topic}", msgid=msgid, topic=topic, logid=logid,
                        uid=session.uid, appcode=session.appcode)
        return pb.Result(code=Code.OK, msgid=msgid, logid=logid, server_time_ms=now)

    def _c2s_refused(self, failure: Failure, session: Session, msgid: int, logid: str,
                     topic: str) -> NoReturn:
        failure.trap(BusError)
        timed_out = failure.check(BusTimeout) is not None
        self.log.warn("c2s {msgid} to {topic} {what} by the bus: {error}", msgid=msgid,
                      topic=topic, logid=logid, uid=session.uid, appcode=session.appcode,
                      what="not confirmed in time" if timed_out else "refused",
                      error=str(failure.value))
        if timed_out:
            raise errors.Timeout("the message bus did not confirm in time: the message may or "
                                 "may not be published")
        raise errors.Unavailable("message bus unavailable")

    def _c2c_message(self, session: Session, msgtype: int, req: pb.C2CRequest) -> NewMessage:
        """The message a C2C asks to store, or its refusal (a RequestError)."""
        to_app = self.ctx.config.app(req.to_appcode)
        if to_app is None:
            raise errors.UnknownAppcode(f"no app {req.to_appcode}")
        check_uid(req.to_uid, "to_uid")
        if (req.to_uid, req.to_appcode) == (session.uid, session.appcode):
            raise errors.BadRequest("cannot send to oneself")
        self._check_content(req.content)
        if msgtype in self._rich_msgtypes:  # no app look-up for the other msgtypes
            self._check_rich(req.content, msgtype, self.ctx.config.app(session.appcode), to_app)
        if len(req.client_msg_id) > self.ctx.limits.max_id_len:
            raise errors.BadRequest(
                f"client_msg_id is over {self.ctx.limits.max_id_len} characters")
        msgid = self.ctx.ids.next_id()
        msg = StoredMessage(
            msgid, session.uid, session.appcode, req.to_uid, req.to_appcode, msgtype,
            Kind.C2C, req.content, self.ctx.now_ms(), self._logid(req.logid, msgid),
        )
        return NewMessage(msg, to_app.usersystem, session.usersystem, req.client_msg_id)

    def c2c(self, session: Session, msgtype: int, req: pb.C2CRequest) -> Deferred[pb.Result]:
        """Store durably (de-duplicated by client_msg_id), push, then answer."""
        try:
            self.ctx.check_available()
            new = self._c2c_message(session, msgtype, req)
            d = self._store([new])
        except Exception:
            return fail()
        return self.ctx.answers.bound(
            d.addCallback(self._c2c_stored, session, req, new.message), _c2c_timeout)

    def c2c_frames(self, session: Session, items: Sequence[tuple[int, pb.C2CRequest]]
                   ) -> Deferred[list[pb.Result | Exception | Deferred[pb.Result]]]:
        """The C2C frames of one socket read (``(msgtype, request)`` each),
        as one write: each frame's answer, in order. A frame refused for its
        own content gets its RequestError alone; the others are stored in one
        batch under one answer time limit (a failure of the store answers each
        of them with it), then each is pushed as :meth:`c2c` would; a frame
        whose push goes to another node, or whose resend re-delivers, is
        answered by a Deferred of its own, within the same time limit. The
        same outcome as :meth:`c2c` per frame, for one store op and one
        Deferred for the lot."""
        try:
            self.ctx.check_available()
            answers: list[Any] = []
            batch: list[NewMessage] = []
            stored: list[tuple[pb.C2CRequest, StoredMessage]] = []
            for msgtype, req in items:
                try:
                    new = self._c2c_message(session, msgtype, req)
                except errors.RequestError as e:
                    answers.append(e)
                    continue
                answers.append(None)
                batch.append(new)
                stored.append((req, new.message))
            if not batch:
                return succeed(answers)
            d = self._store(batch).addCallback(self._c2c_batch_stored, session, stored,
                                               self.ctx.clock.seconds())
        except Exception:
            return fail()
        return each_answer(self.ctx.answers.bound(d, _c2c_timeout), answers)

    def _c2c_batch_stored(self, outcomes: list[StoreOutcome], session: Session,
                          stored: list[tuple[pb.C2CRequest, StoredMessage]],
                          started: float) -> list[pb.Result | Deferred[pb.Result]]:
        """Durable: :meth:`_c2c_stored` for each, a pending answer bounded by
        the time limit counted from ``started`` (when the batch was read; on
        the shared timer when that was a moment ago: ``Answers.bound_since``)."""
        answers: list[pb.Result | Deferred[pb.Result]] = []
        for outcome, (req, msg) in zip(outcomes, stored, strict=True):
            answer = self._c2c_stored([outcome], session, req, msg)
            if isinstance(answer, Deferred):
                answer = self.ctx.answers.bound_since(started, answer, _c2c_timeout)
            answers.append(answer)
        return answers

    def _c2c_stored(self, outcomes: list[StoreOutcome], session: Session, req: pb.C2CRequest,
                    msg: StoredMessage) -> pb.Result | Deferred[pb.Result]:
        """Durable: hand the push over, then answer the sender.

        The sender's Result waits until the push is written to the local
        session, or accepted by the node that holds it (or found impossible:
        offline, unreachable). So a node that dies between storing a message
        and handing its push over has not answered either: the sender resends
        (same ``client_msg_id``), and the resend, answered from the de-dup key
        by any node, pushes the message again (:meth:`_redeliver`). Answering
        first would leave such a message pending until its recipient's next
        login, though the recipient is online."""
        [outcome] = outcomes
        if not outcome.duplicate and self.routing.push_if_local(msg):  # the common case, at once
            return _c2c_result(outcome, msg)
        return Deferred.fromCoroutine(self._c2c_deliver(session, req, msg, outcome))

    async def _c2c_deliver(self, session: Session, req: pb.C2CRequest, msg: StoredMessage,
                           outcome: StoreOutcome) -> pb.Result:
        if outcome.duplicate:
            self.log.info("c2c resend of {client_msg_id} answered with {msgid}",
                          client_msg_id=req.client_msg_id, msgid=outcome.msgid, logid=outcome.logid,
                          uid=session.uid, appcode=session.appcode)
            await self._redeliver(req.to_uid, req.to_appcode, outcome.msgid, outcome.logid)
        else:
            await self.routing.deliver(msg)
        return _c2c_result(outcome, msg)

    async def _redeliver(self, to_uid: int, to_appcode: int, msgid: int, logid: str) -> None:
        """A resend means the sender never saw its answer: the node that stored
        the first send may have died before pushing it. If it is still pending,
        push it now, so an online recipient does not wait for its next login."""
        try:
            msg = await self.messages.pending_message(to_uid, msgid)
        except StoreError as e:
            self.log.info("{msgid} not re-delivered on its resend: {error}", msgid=msgid,
                          logid=logid, uid=to_uid, appcode=to_appcode, error=str(e))
            return  # it stays pending for PULL
        if msg is not None:
            await self.routing.deliver(msg)

    async def push_s2c(self, items: Sequence[PushItem], pusher: int = 0,
                       started: float | None = None) -> list[PushOutcome | errors.RequestError]:
        """App-server pushes, in order: stored as one batch, then pushed.

        Each item gets its outcome, or the error that refused it alone. A
        store that fails or does not confirm within ``store.answer_timeout_s``
        of ``started`` (the clock's seconds when the request was read; default
        now) gives every stored item the same error (UNAVAILABLE: nothing was
        stored; TIMEOUT: it may be, and the store goes on). ``pusher`` is the
        app whose API key pushed: the key space of the items' idempotency keys.
        """
        self.ctx.check_available()
        if started is None:
            started = self.ctx.clock.seconds()
        results: list[PushOutcome | errors.RequestError | None] = []
        accepted: list[tuple[int, StoredMessage, NewMessage]] = []
        escalate: dict[int, int] = {}  # msgid -> escalate_after_s
        now = self.ctx.now_ms()
        for i, item in enumerate(items):
            try:
                to_app = self.ctx.config.app(item.to_appcode)
                if to_app is None:
                    raise errors.UnknownAppcode(f"no app {item.to_appcode}")
                check_uid(item.to_uid, "to_uid")
                self._check_content(item.content)
                self._check_rich(item.content, item.msgtype, to_app)
                msgid = self.ctx.ids.next_id()
                msg = StoredMessage(msgid, 0, 0, item.to_uid, item.to_appcode, item.msgtype,
                                    Kind.S2C, item.content, now, self._logid(item.logid, msgid))
            except errors.RequestError as e:
                results.append(e)
                continue
            results.append(None)  # filled in once the batch is durable
            if item.escalate_after_s:
                escalate[msgid] = item.escalate_after_s
            accepted.append((i, msg, NewMessage(
                msg, to_app.usersystem, client_msg_id=push_dedup_id(pusher, item.idempotency_key))))
        if accepted:
            work = Deferred.fromCoroutine(self._push_stored([(m, n) for _, m, n in accepted],
                                                            escalate))
            outcomes: list[PushOutcome] | None = None
            try:
                outcomes = await self.ctx.answers.bound_from(started, work, _push_timeout)
            except (errors.Unavailable, errors.Timeout) as e:
                for i, _, _ in accepted:
                    results[i] = e
            if outcomes is not None:
                for (i, _, _), outcome in zip(accepted, outcomes, strict=True):
                    results[i] = outcome
        return [r for r in results if r is not None]

    async def _push_stored(self, batch: list[tuple[StoredMessage, NewMessage]],
                           escalate: dict[int, int] | None = None) -> list[PushOutcome]:
        """Store a batch of pushes, schedule the escalations they ask for
        (``escalate``: msgid -> seconds), then push each new one (a repeat of
        an idempotency key is answered with the first push's ids, not pushed
        nor escalated again)."""
        stored = await self._store([new for _, new in batch])
        fresh = [msg for (msg, _), outcome in zip(batch, stored, strict=True)
                 if not outcome.duplicate]
        if escalate and self.escalator is not None:
            await self.escalator.schedule([(m, escalate[m.msgid]) for m in fresh
                                           if m.msgid in escalate])
        offline = await self.routing.offline(fresh)
        outcomes: list[PushOutcome] = []
        for (msg, _), outcome in zip(batch, stored, strict=True):
            if outcome.duplicate:
                pushed = False
            elif msg.msgid in offline:  # as deliver would find, without asking again
                self.routing.stored_offline(msg)
                pushed = False
            else:
                pushed = await self.routing.deliver(msg)
            outcomes.append(PushOutcome(outcome.msgid, outcome.logid, pushed))
        return outcomes

    def _store(self, batch: list[NewMessage]) -> Deferred[list[StoreOutcome]]:
        return self.messages.store(batch).addCallbacks(
            self._stored, self._not_stored, callbackArgs=(batch,), errbackArgs=(batch,))

    def _stored(self, outcomes: list[StoreOutcome], batch: list[NewMessage]) -> list[StoreOutcome]:
        for new, outcome in zip(batch, outcomes, strict=True):
            if not outcome.duplicate:
                msg = new.message
                self.ctx.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "accepted")
                if tracing.MESSAGES.listeners:
                    trace.debug("{kind} {msgid} stored for {to_uid}@{to_appcode}",
                                kind=msg.kind.name, msgid=msg.msgid, logid=msg.logid,
                                to_uid=msg.to_uid, to_appcode=msg.to_appcode, **sender_fields(msg))
        return outcomes

    def _not_stored(self, failure: Failure, batch: list[NewMessage]) -> NoReturn:
        failure.trap(StoreError)
        uncertain = failure.check(StoreUncertain) is not None
        for new in batch:
            self.log.warn("message {msgid} {what}", msgid=new.message.msgid,
                          logid=new.message.logid, to_uid=new.message.to_uid,
                          to_appcode=new.message.to_appcode,
                          what="may or may not be stored: the store failed during its commit"
                          if uncertain else "not stored: store unavailable",
                          **sender_fields(new.message))
        if uncertain:
            raise errors.Timeout("the message store failed during its commit: the message may "
                                 "or may not be stored; resend it the same way")
        raise errors.Unavailable("message store unavailable")

    def ack(self, session: Session, msgids: Sequence[int]) -> Deferred[pb.Result]:
        """Mark pushed messages delivered; answered once that is durable."""
        try:
            self.ctx.check_available()
            error = _too_many_ids(msgids, self.ctx.limits.max_ack_ids)
            if error is not None:
                raise error
            return self._store_ack(session, msgids)
        except Exception:
            return fail()

    def _store_ack(self, session: Session, msgids: Sequence[int]) -> Deferred[pb.Result]:
        """The store's ACK of ``msgids`` (larger ids than any msgid name no
        message), answered once durable, within the answer time limit."""
        known = [m for m in msgids if m <= MAX_ID]
        d = self.messages.ack(session.uid, session.appcode, known)
        return self.ctx.answers.bound(
            d.addCallbacks(self._acked, _store_failed, callbackArgs=(session, msgids)),
            _ack_timeout)

    def ack_frames(self, session: Session,
                   frames: Sequence[Sequence[int]]) -> Deferred[list[Any]]:
        """The ACK frames of one socket read, as one write: each frame's
        answer, in order (a frame over ``max_ack_ids`` gets its BadRequest
        alone; the others share one store ACK and one answer time limit, so a
        failure of the store answers each of them with it). The same outcome
        as :meth:`ack` per frame, for one store op and one Deferred in all."""
        try:
            self.ctx.check_available()
            limit = self.ctx.limits.max_ack_ids
            answers: list[pb.Result | Exception | None] = [
                _too_many_ids(msgids, limit) for msgids in frames]
            if all(a is not None for a in answers):
                return succeed(answers)
            valid = [m for msgids, a in zip(frames, answers, strict=True) if a is None
                     for m in msgids]
            d = self._store_ack(session, list(dict.fromkeys(valid)))
        except Exception:
            return fail()
        return each_answer(d, answers)

    def _acked(self, acked: list[AckedMessage], session: Session,
               msgids: Sequence[int]) -> pb.Result:
        session.window.acked(msgids)
        if self.escalator is not None and acked:
            self.escalator.acked(a.msgid for a in acked)
        now = self.ctx.now_ms()
        for a in acked:
            route = (session.appcode, a.msgtype, a.kind)
            self.ctx.stats.add(route, "acked")
            self.ctx.stats.observe_ack_latency(route, (now - a.send_time_ms) / 1000.0)
            if tracing.MESSAGES.listeners:
                trace.debug("{msgid} acked by {uid}@{appcode}", msgid=a.msgid, logid=a.logid,
                            uid=session.uid, appcode=session.appcode)
        return pb.Result(code=Code.OK, server_time_ms=now)

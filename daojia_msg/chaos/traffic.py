# -*- test-case-name: tests.chaos.test_traffic -*-
"""The fault suite's traffic: numbered C2C between users connected through
HAProxy, numbered S2C pushes over the HTTP API, numbered C2S to the Redis
Streams bus, each resent the way a careful client would, every answer
written in the :class:`~daojia_msg.chaos.ledger.Ledger`.

- C2C: the same ``client_msg_id`` on every resend, after TIMEOUT, UNAVAILABLE,
  RATE_LIMITED, no answer, or a lost connection (the server de-duplicates).
- S2C: ``POST /v1/push`` with the same ``Idempotency-Key`` on every resend,
  after 504, 503, 429, no answer or a connection error.
- C2S (and C2S-AMQP, a second msgtype routed to RabbitMQ when the run has
  one, read back from a durable queue): a C2S goes on a geo route, so its
  content is a position that carries its number (:func:`position_for`; the
  C2S-AMQP content stays plain); resent only when it certainly was
  not published (UNAVAILABLE, or not connected); after TIMEOUT or a lost connection a resend would be a new
  message (docs/operations.md §7), so the outcome stays uncertain.

A message is retried until ``give_up_s`` after it was first sent; then its last
attempt decides: no answer -> unanswered, TIMEOUT or a lost connection ->
uncertain, UNAVAILABLE -> refused.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from daojia_msg.auth import mint_token
from daojia_msg.chaos.ledger import (
    OK,
    REFUSED,
    UNANSWERED,
    UNCERTAIN,
    Ledger,
    Sent,
    content_for,
)
from daojia_msg.client.client import MsgClient
from daojia_msg.client.errors import (
    ConnectionLost,
    NotConnected,
    RequestTimeout,
    ResultError,
    resend_delay,
)
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: Codes after which a C2C is resent (with its client_msg_id).
RESEND_CODES = frozenset({Code.TIMEOUT, Code.UNAVAILABLE, Code.RATE_LIMITED, Code.INTERNAL})
#: Share of each kind in the offered rate.
def position_for(number: int) -> bytes:
    """The content of C2S ``number``: a position on the geo route (a walk
    around Shanghai) whose ``ref`` is its ledger content."""
    step = number % 10_000
    return b'{"lat": %.6f, "lon": %.6f, "ref": "%s"}' % (
        31.2 + step * 1e-5, 121.4 + step * 1e-5, content_for("c2s", number))


MIX = (("c2c", 0.5), ("s2c", 0.25), ("c2s", 0.25))
#: With a RabbitMQ route: its C2S take half of the C2S share.
MIX_AMQP = (("c2c", 0.5), ("s2c", 0.25), ("c2s", 0.125), ("c2s-amqp", 0.125))
TICK_S = 0.05


def json_field(answer: Any, name: str) -> Any:
    return answer[name]


def backoff(attempt: int) -> float:
    """Reconnect delay of the users' clients: 0.2 s growing to 2 s, with jitter."""
    return min(0.2 * 1.5 ** attempt, 2.0) * random.uniform(0.8, 1.2)


class Traffic:
    """Users, the pushes' HTTP client and the stream tail; :meth:`run_phase`
    offers numbered messages at ``rate`` per second for one phase."""

    def __init__(self, reactor: Any, ledger: Ledger, *, gate: int, api: int, users: int,
                 appcode: int, secret: str, api_key: str, c2s_msgtype: int,
                 answer_s: float, give_up_s: float, log: Callable[[str], None],
                 amqp_msgtype: int | None = None) -> None:
        self.reactor = reactor
        self.ledger = ledger
        self.gate = gate
        self.api_url = f"http://127.0.0.1:{api}/v1/push"
        self.appcode = appcode
        self.secret = secret
        self.api_key = api_key
        self.c2s_msgtype = c2s_msgtype
        self.msgtypes = {"c2s": c2s_msgtype}
        self.mix: tuple[tuple[str, float], ...] = MIX
        if amqp_msgtype is not None:
            self.msgtypes["c2s-amqp"] = amqp_msgtype
            self.mix = MIX_AMQP
        self.answer_s = answer_s
        self.give_up_s = give_up_s
        self.log = log
        self.uids = list(range(1, users + 1))
        self.clients: dict[int, MsgClient] = {}
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.outstanding: set[Deferred[None]] = set()
        #: KICKOUTs the users received, and logged-in connections they lost
        self.kickouts = 0
        self.disconnects = 0
        self.phase = ""
        self.rate = 0.0
        self._credit = 0.0
        self._loop: LoopingCall | None = None

    # -- users

    async def connect(self) -> None:
        for uid in self.uids:
            def token(uid: int = uid) -> str:
                return mint_token(self.secret, self.appcode, uid, int(self.reactor.seconds()) + 86400)

            client = MsgClient(self.reactor, TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.gate),
                               uid, self.appcode, token, on_message=self.on_message,
                               on_kickout=self._kicked, on_disconnect=self._dropped,
                               request_timeout=self.answer_s, send_retries=0, backoff=backoff)
            client.startService()
            self.clients[uid] = client
        await gatherResults([c.when_ready().addTimeout(60, self.reactor)
                             for c in self.clients.values()])

    def _kicked(self, code: int, reason: str) -> None:
        self.kickouts += 1

    def _dropped(self) -> None:
        self.disconnects += 1

    def on_message(self, message: pb.Message) -> None:
        self.ledger.arrived(message.content, message.msgid)

    def on_envelope(self, envelope: Any) -> None:
        self.ledger.arrived(envelope.message.content, envelope.message.msgid)

    async def drain(self, timeout: float = 60.0) -> int:
        """PULL every user's pending messages until none is left (ACKing them)."""
        async def one(client: MsgClient) -> int:
            for _ in range(10):
                try:
                    return int(await client.drain().addTimeout(timeout / 4, self.reactor))
                except Exception:
                    await deferLater(self.reactor, 0.5, lambda: None)
            return 0
        counts = await gatherResults([Deferred.fromCoroutine(one(c))
                                      for c in self.clients.values()])
        return sum(counts)

    async def where(self, http_port: int, host: str = "127.0.0.1") -> dict[int, int]:
        """uid -> the node id of its session (any node's HTTP API sees them all)."""
        found: dict[int, int] = {}
        for uid in self.uids:
            response = await treq.get(
                f"http://{host}:{http_port}/v1/sessions?uid={uid}",
                headers=Headers({b"Authorization": [f"Bearer {self.api_key}".encode()]}), pool=self.pool,
                timeout=self.answer_s)
            for session in (await response.json())["sessions"]:
                found[uid] = int(session["node"])
        return found

    async def close(self) -> None:
        await gatherResults([c.stopService() for c in self.clients.values()])
        await self.pool.closeCachedConnections()

    # -- offering load

    def start(self, phase: str, rate: float) -> None:
        self.phase, self.rate, self._credit = phase, rate, 0.0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK_S, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    async def settle(self) -> None:
        """Until every message sent so far has its final outcome."""
        while self.outstanding:
            await gatherResults(list(self.outstanding), consumeErrors=True)

    async def closed_loop(self, phase: str, concurrency: int, seconds: float) -> float:
        """``concurrency`` senders, each sending its next message (of the usual
        mix) as soon as the last one has its outcome, for ``seconds``; the rate
        of OK answers per second: the cluster's capacity for this mix."""
        self.phase = phase
        started = self.reactor.seconds()
        end = started + seconds

        async def worker() -> None:
            while self.reactor.seconds() < end:
                await self.send_one(self._pick())

        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
        ok = sum(1 for s in self.ledger.sent.values() if s.phase == phase and s.outcome == OK)
        return ok / (self.reactor.seconds() - started)

    def _tick(self) -> None:
        self._credit += self.rate * TICK_S
        while self._credit >= 1.0:
            self._credit -= 1.0
            self.send_one(self._pick())

    def _pick(self) -> str:
        x = random.random()
        for kind, share in self.mix:
            if x < share:
                return kind
            x -= share
        return self.mix[-1][0]

    def send_one(self, kind: str) -> Deferred[None]:
        sent = self.ledger.new(kind, self.phase, self.reactor.seconds())
        send = {"c2c": self._c2c, "s2c": self._s2c, "c2s": self._c2s, "c2s-amqp": self._c2s}[kind]
        d = Deferred.fromCoroutine(send(sent))
        d.addErrback(lambda f: self.log(f"sender of {kind} {sent.number} failed: {f.value!r}"))
        self.outstanding.add(d)
        d.addBoth(lambda _: self.outstanding.discard(d))
        return d

    def _late(self, sent: Sent) -> bool:
        return self.reactor.seconds() - sent.sent_at >= self.give_up_s

    async def _pause(self, attempt: int) -> None:
        await deferLater(self.reactor, resend_delay(attempt), lambda: None)

    async def _ready(self, client: MsgClient, sent: Sent) -> Any:
        left = max(0.1, self.give_up_s - (self.reactor.seconds() - sent.sent_at))
        return await client.when_ready().addTimeout(left, self.reactor)

    async def _again(self, sent: Sent, no_answer: bool) -> bool:
        """After a failed attempt: False past the give-up time (the outcome
        then set), else True after the pause before the resend."""
        if self._late(sent):
            self._give_up(sent, no_answer)
            return False
        await self._pause(max(1, sent.attempts))
        return True

    def _give_up(self, sent: Sent, no_answer: bool) -> None:
        if no_answer:
            outcome = UNANSWERED
        elif sent.last_error == "UNAVAILABLE":
            outcome = REFUSED
        else:
            outcome = UNCERTAIN
        sent.settle(outcome, self.reactor.seconds())

    async def _c2c(self, sent: Sent) -> None:
        sender = random.choice(self.uids)
        to = self.uids[sender % len(self.uids)]
        client = self.clients[sender]
        sent.sender = sender
        content = content_for("c2c", sent.number)
        client_msg_id = f"chaos-c2c-{sent.number}"
        while True:
            no_answer = False
            try:
                proto = await self._ready(client, sent)
                sent.attempts += 1
                sent.last_attempt_at = self.reactor.seconds()
                result = await proto.c2c(to, self.appcode, 7, content, client_msg_id,
                                         f"chaos-c2c-{sent.number}")
                sent.settle(OK, self.reactor.seconds(), result.msgid)
                return
            except ResultError as e:
                sent.last_error = e.code_name
                if e.code not in RESEND_CODES:
                    sent.settle(REFUSED, self.reactor.seconds())
                    return
            except RequestTimeout:
                sent.no_answer += 1
                sent.last_error, no_answer = "no answer", True
            except (ConnectionLost, NotConnected) as e:
                sent.last_error = "connection lost" if isinstance(e, ConnectionLost) else sent.last_error
            except TimeoutError:  # no logged-in connection until give-up
                sent.last_error, no_answer = "not connected", True
            if not await self._again(sent, no_answer):
                return

    async def _c2s(self, sent: Sent) -> None:
        sent.sender = random.choice(self.uids)
        client = self.clients[sent.sender]
        content = (position_for(sent.number) if sent.kind == "c2s"
                   else content_for(sent.kind, sent.number))
        msgtype = self.msgtypes[sent.kind]
        while True:
            try:
                proto = await self._ready(client, sent)
                sent.attempts += 1
                sent.last_attempt_at = self.reactor.seconds()
                result = await proto.c2s(msgtype, content, f"chaos-{sent.kind}-{sent.number}")
                sent.settle(OK, self.reactor.seconds(), result.msgid)
                return
            except ResultError as e:
                sent.last_error = e.code_name
                if e.code not in (Code.UNAVAILABLE, Code.RATE_LIMITED):
                    # TIMEOUT: may be published; a resend would be a new message.
                    sent.settle(UNCERTAIN if e.code == Code.TIMEOUT else REFUSED,
                                self.reactor.seconds())
                    return
            except RequestTimeout:
                sent.no_answer += 1
                sent.last_error = "no answer"
                sent.settle(UNANSWERED, self.reactor.seconds())
                return
            except ConnectionLost:
                sent.last_error = "connection lost"
                sent.settle(UNCERTAIN, self.reactor.seconds())
                return
            except NotConnected:
                sent.last_error = "not connected"
            except TimeoutError:
                sent.last_error = "not connected"
                sent.settle(UNANSWERED, self.reactor.seconds())
                return
            if not await self._again(sent, False):
                return

    async def _s2c(self, sent: Sent) -> None:
        to = random.choice(self.uids)
        body = {"to_uid": to, "to_appcode": self.appcode, "msgtype": 8,
                "content": content_for("s2c", sent.number).decode(),
                "logid": f"chaos-s2c-{sent.number}"}
        headers = Headers({b"Authorization": [f"Bearer {self.api_key}".encode()],
                           b"Idempotency-Key": [f"chaos-s2c-{sent.number}".encode()]})
        while True:
            no_answer = False
            sent.attempts += 1
            started = self.reactor.seconds()
            try:
                response = await treq.post(self.api_url, json=body, headers=headers,
                                           pool=self.pool, timeout=self.answer_s)
                status = response.code
                answer = await response.json() if status == 200 else await response.text()
            except Exception as e:  # no answer in time, or the connection failed
                if self.reactor.seconds() - started >= self.answer_s - 0.05:
                    sent.no_answer += 1
                    sent.last_error, no_answer = "no answer", True
                else:
                    sent.last_error = f"connection: {type(e).__name__}"
            else:
                if status == 200:
                    sent.settle(OK, self.reactor.seconds(), int(json_field(answer, "msgid")))
                    return
                sent.last_error = f"HTTP {status}"
                if status == 503:
                    sent.last_error = "UNAVAILABLE"
                elif status not in (504, 429):
                    sent.settle(REFUSED, self.reactor.seconds())
                    return
            if not await self._again(sent, no_answer):
                return

# -*- test-case-name: tests.bench.test_bench -*-
"""The scenarios on the gate alone: ``connect``, ``login``, ``c2s`` and ``c2c``."""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.task import deferLater

from daojia_msg.bench.base import Job, Scenario, now_us, open_loop
from daojia_msg.bench.report import HELD_BACK
from daojia_msg.bench.wire import BenchClient, result_code
from daojia_msg.client.backoff import SendBackoff
from daojia_msg.protocol.codec import Frame
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: Closed loop: how long a sender waits after a RATE_LIMITED answer.
REFUSED_BACKOFF_S = 0.05
#: C2C content starts with the intended send time (monotonic µs).
_STAMP = struct.Struct("!q")


def login_order(jobs: Sequence[Job], seed: int) -> list[Job]:
    """The log-ins of the C2C pairs in a shuffled order (the same for the
    same ``seed``).

    A balancer spreads connections in the order they arrive (HAProxy's
    ``leastconn`` as shipped, round robin, LVS alike): logged in strictly
    sender, receiver, sender, receiver..., the two of every pair would land on
    different nodes and every message would cross the internal RPC; with
    several worker processes logging in at once, the share depended on their
    timing. Phones placed at random cross it for half the messages on two
    nodes (``1 - 1/N`` on N); shuffled, the pairs do too, whatever the timing."""
    order = list(jobs)
    random.Random(seed).shuffle(order)
    return order


class Connect(Scenario):
    """Log in the worker's connections; hold them idle until told to stop."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        lo, hi = spec["lo"], spec["hi"]
        jobs: list[Job] = [(i, spec["uid_base"] + i, self.token(spec["uid_base"] + i), None)
                for i in range(lo, hi)]
        t0 = time.monotonic()
        await self.login_many(jobs)
        return {"t_start": t0, "t_end": time.monotonic(), "logged_in": len(self.clients),
                "failed": self.failures()}

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        await self.stopped
        alive = sum(1 for c in self.clients if c.connected)
        kicked = sum(1 for c in self.clients if c.kicked is not None)
        return {"t_start": t0, "t_end": time.monotonic(), "held": len(self.clients),
                "still_connected": alive, "kicked": kicked}


class Login(Scenario):
    """Connect and log in as fast as the concurrency allows (the timed part)."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        self.jobs: list[Job] = [
            (i, spec["uid_base"] + i, self.token(spec["uid_base"] + i), None)
            for i in range(spec["lo"], spec["hi"])]
        return {}

    async def run(self) -> dict[str, Any]:
        self.latencies: list[int] = []
        t0 = time.monotonic()

        async def timed(index: int, uid: int, token: str, client: Any) -> Any:
            start = now_us()
            got = await self.login_one(index, uid, token, client)
            if got is not None:
                self.latencies.append(now_us() - start)
            return got

        sem = DeferredSemaphore(max(1, self.spec.get("concurrency", 64)))
        def job(j: Job) -> Deferred[Any]:
            return Deferred.fromCoroutine(timed(*j))

        await DeferredList([sem.run(job, j) for j in self.jobs], consumeErrors=True)
        t1 = time.monotonic()
        return {"t_start": t0, "t_end": t1, "ok": len(self.clients), "failed": self.failures(),
                "latency_us": self.latencies}


#: People's Square, Shanghai: the point the docs' examples and ``msgctl
#: drivers`` use, and the centre of :func:`gps_content`'s grid.
GPS_CENTRE = (31.2304, 121.4737)


def _from_centre(k: int) -> int:
    """The ``k``-th row or column of the grid, counted from its centre: 0, -1,
    1, -2, 2, ... (-50 to 49 for ``k`` from 0 to 99)."""
    return k // 2 if k % 2 == 0 else -(k + 1) // 2


def gps_content(uid: int, step: int) -> bytes:
    """Driver ``uid``'s position at its ``step``-th report: drivers start on a
    100 x 100 grid of ~100 m cells centred on People's Square, Shanghai
    (:data:`GPS_CENTRE`), the first uids of a block nearest it (the first 100
    on the square's row, within ~5 km east and west), and each moves ~1.5 m
    north-east per report (a geo route's ``"<lat>,<lon>"``)."""
    cell = uid % 10_000
    lat, lon = GPS_CENTRE
    return b"%.6f,%.6f" % (lat + _from_centre(cell // 100) * 0.0009 + step * 1e-5,
                           lon + _from_centre(cell % 100) * 0.00105 + step * 1e-5)


class C2S(Scenario):
    """C2S frames on ``conns`` connections: open loop at ``rate`` frames/s,
    or closed loop (``rate`` 0) with ``window`` in flight per connection.
    With ``gps`` each frame is its driver's next position (:func:`gps_content`,
    for a geo route) instead of the same ``size`` bytes."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        jobs: list[Job] = [(i, spec["uid_base"] + i, self.token(spec["uid_base"] + i), None)
                for i in range(spec["lo"], spec["hi"])]
        await self.login_many(jobs)
        self.body = pb.C2SRequest(content=b"3" * spec.get("size", 32)).SerializeToString()
        return {"logged_in": len(self.clients), "failed": self.failures()}

    def again(self, code: int, send: Any, target: Any) -> None:
        """Closed loop: the next request at once, or after :data:`REFUSED_BACKOFF_S`
        when this one was refused RATE_LIMITED (the protocol's "retry after a
        backoff": resending at once would only measure the refusals)."""
        if code == Code.RATE_LIMITED:
            self.reactor.callLater(REFUSED_BACKOFF_S, lambda: send(target, now_us()))
        else:
            send(target, now_us())

    def refused(self, code: int | str, intended_us: int) -> None:
        """An answer other than OK (or :data:`~daojia_msg.bench.report.HELD_BACK`):
        counted by code, and how long it took."""
        key = code if isinstance(code, str) else f"code {code}"
        self.errors[key] = self.errors.get(key, 0) + 1
        self.refused_latencies.append(now_us() - intended_us)

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        clients = [c for c in self.clients if c.connected]
        self.sent = self.ok = 0
        self.errors: dict[str, int] = {}
        self.latencies: list[int] = []
        self.refused_latencies: list[int] = []
        self.send_lags: list[int] = []
        if not clients:
            return {"sent": 0, "ok": 0, "errors": {}, "latency_us": [], "t_start": None,
                    "t_end": None}
        msgtype, body = spec.get("msgtype", 2), self.body
        steps: dict[int, int] | None = {} if spec.get("gps") else None
        deadline = time.monotonic() + spec["duration"]
        closed = not spec["rate"]

        def send(client: BenchClient, intended_us: int) -> None:
            self.sent += 1

            def answered(frame: Frame) -> None:
                code = result_code(frame)
                if code == 0:
                    self.ok += 1
                    self.progress += 1
                    self.latencies.append(now_us() - intended_us)
                else:
                    self.refused(code, intended_us)
                if closed and time.monotonic() < deadline and client.connected:
                    self.again(code, send, client)

            if steps is None:
                client.request(Cmd.C2S, body, answered, msgtype)
                return
            step = steps[client.uid] = steps.get(client.uid, -1) + 1
            content = gps_content(client.uid, step)
            client.request(Cmd.C2S, pb.C2SRequest(content=content).SerializeToString(), answered,
                           msgtype)

        t0 = time.monotonic()
        if closed:
            for client in clients:
                for _ in range(spec.get("window", 8)):
                    send(client, now_us())
            await deferLater(self.reactor, spec["duration"], lambda: None)
        else:
            await open_loop(self.reactor, spec["rate"], spec["duration"], clients, send,
                            self.send_lags)
        t_sent = time.monotonic()
        await self._drain(lambda: self.ok + sum(self.errors.values()) >= self.sent)
        t1 = time.monotonic()
        return {"t_start": t0, "t_send_end": t_sent, "t_end": t1, "sent": self.sent,
                "ok": self.ok, "errors": self.errors, "latency_us": self.latencies,
                "refused_latency_us": self.refused_latencies, "send_lag_us": self.send_lags,
                "missing": self.sent - self.ok - sum(self.errors.values())}


class C2C(C2S):
    """``P`` sender/receiver pairs; receivers ACK every push."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        self.pushes = self.acked = self.duplicates = 0
        #: msgids put in ACK frames so far (a re-pushed one again), answered or not.
        self.acks_sent = 0
        self.push_latencies: list[int] = []
        self.seen: set[int] = set()
        ack_each = spec.get("ack", "each") == "each"
        jobs: list[Job] = []
        self.pairs: list[tuple[BenchClient, BenchClient]] = []
        for k in range(spec["lo"], spec["hi"]):
            sender_uid = spec["uid_base"] + 2 * k
            sender = BenchClient(sender_uid, spec["appcode"])
            receiver = BenchClient(sender_uid + 1, spec["appcode"], on_push=self._pushed)
            if not ack_each:
                receiver.after_read = self._flush_acks
            self.pairs.append((sender, receiver))
            jobs.append((2 * k, sender_uid, self.token(sender_uid), sender))
            jobs.append((2 * k + 1, sender_uid + 1, self.token(sender_uid + 1), receiver))
        self.ack_each = ack_each
        await self.login_many(login_order(jobs, spec["uid_base"] + spec["lo"]))
        self.pairs = [(s, r) for s, r in self.pairs if s.connected and r.connected]
        self.content_pad = b"c" * max(0, spec.get("size", 32) - _STAMP.size)
        self.run_tag = f"{spec['uid_base']}-{spec['lo']}"
        return {"pairs": len(self.pairs), "failed": self.failures()}

    def _pushed(self, client: BenchClient, frame: Frame) -> None:
        msg = pb.Message()
        msg.ParseFromString(frame.body)
        msgid = msg.msgid
        if msgid in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(msgid)
            self.pushes += 1
            self.push_latencies.append(now_us() - _STAMP.unpack_from(msg.content)[0])
        if self.ack_each:
            client.ack([msgid], self._make_ack_cb(1))
        else:
            client.pending_acks.append(msgid)

    def _flush_acks(self, client: BenchClient) -> None:
        ids = client.pending_acks
        while ids:
            chunk, ids[:] = ids[:1000], ids[1000:]
            client.ack(chunk, self._make_ack_cb(len(chunk)))

    def _make_ack_cb(self, n: int) -> Any:
        self.acks_sent += n

        def acked(frame: Frame) -> None:
            if result_code(frame) == 0:
                self.acked += n
                self.progress += n
            else:
                self.errors["ack"] = self.errors.get("ack", 0) + n
        return acked

    def _drained(self) -> bool:
        """Every C2C answered, every message answered OK pushed, and every
        ACK sent answered (OK or not: a refused ACK is counted under
        ``errors["ack"]``, and waiting for it would only run out the drain)."""
        errors = self.errors
        ack_errors = errors.get("ack", 0)
        return (self.ok + sum(errors.values()) - ack_errors >= self.sent
                and self.pushes >= self.ok
                and self.acked + ack_errors >= self.acks_sent)

    def send(self, pair: tuple[BenchClient, BenchClient], intended_us: int) -> None:
        """One C2C from the pair's sender, stamped with its intended time; with
        a backoff (open loop), refused by the sender itself during a pause."""
        sender, receiver = pair
        n = self.sent = self.sent + 1
        backoff = self.backoffs.get(sender)
        if backoff is not None and backoff.paused():
            self.refused(HELD_BACK, intended_us)  # as the client library would
            return
        spec = self.spec
        body = pb.C2CRequest(to_uid=receiver.uid, to_appcode=spec["appcode"],
                             content=_STAMP.pack(intended_us) + self.content_pad,
                             client_msg_id=f"{self.run_tag}-{n}").SerializeToString()
        sent_at = self.reactor.seconds()

        def answered(frame: Frame) -> None:
            code = result_code(frame)
            if code == 0:
                self.ok += 1
                self.latencies.append(now_us() - intended_us)
                if backoff is not None:
                    backoff.accepted(sent_at)
            else:
                self.refused(code, intended_us)
                if backoff is not None and code == Code.RATE_LIMITED:
                    backoff.refused(sent_at)
            if self.closed and time.monotonic() < self.deadline and sender.connected:
                self.again(code, self.send, pair)

        sender.request(Cmd.C2C, body, answered, spec.get("msgtype", 7))

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        self.sent = self.ok = 0
        self.errors = {}
        self.latencies = []
        self.refused_latencies = []
        self.send_lags = []
        if not self.pairs:
            return {"sent": 0, "ok": 0, "errors": {}, "latency_us": [], "push_latency_us": [],
                    "pushes": 0, "acked": 0, "t_start": None, "t_end": None}
        self.deadline = time.monotonic() + spec["duration"]
        closed = self.closed = not spec["rate"]
        #: Open loop with ``backoff``: each sender's pause after RATE_LIMITED.
        self.backoffs = ({s: SendBackoff(self.reactor) for s, _ in self.pairs}
                         if spec.get("backoff") and not closed else {})
        send = self.send

        # The stamp is the intended send time (monotonic µs); the receiver
        # (in this process) subtracts it from its own monotonic clock.
        t0 = time.monotonic()
        if closed:
            for pair in self.pairs:
                for _ in range(spec.get("window", 8)):
                    send(pair, now_us())
            await deferLater(self.reactor, spec["duration"], lambda: None)
        else:
            await open_loop(self.reactor, spec["rate"], spec["duration"], self.pairs, send,
                            self.send_lags)
        t_sent = time.monotonic()
        await self._drain(self._drained)
        t1 = time.monotonic()
        return {"t_start": t0, "t_send_end": t_sent, "t_end": t1, "sent": self.sent,
                "ok": self.ok, "errors": self.errors, "pushes": self.pushes,
                "duplicates": self.duplicates, "acked": self.acked,
                "missing_results": self.sent - self.ok - sum(
                    v for k, v in self.errors.items() if k != "ack"),
                "latency_us": self.latencies, "push_latency_us": self.push_latencies,
                "refused_latency_us": self.refused_latencies, "send_lag_us": self.send_lags}

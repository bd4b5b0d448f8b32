# -*- test-case-name: tests.bench.test_httpscenarios -*-
"""The scenarios through the HTTP API: ``push`` (S2C) and ``pull`` (a backlog seeded
over HTTP, drained on the gate)."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from daojia_msg.bench.base import Scenario, dumps, now_us, open_loop
from daojia_msg.bench.httpclients import Http, RawHttp
from daojia_msg.bench.report import GOODPUT_WITHIN_S
from daojia_msg.bench.wire import result_code
from daojia_msg.protocol.codec import Frame
from daojia_msg.protocol.codes import Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb


class Push(Scenario):
    """S2C through the HTTP API: ``/v1/push`` (batch 1) or ``/v1/push/batch``,
    ``concurrency`` requests in flight; open loop at ``rate`` messages/s or
    closed loop (``rate`` 0). Recipients are offline: each push is stored."""

    async def setup(self) -> dict[str, Any]:
        self.http = RawHttp(self.reactor, self.spec)
        return {}

    def _message(self, n: int) -> dict[str, Any]:
        spec = self.spec
        message = {"to_uid": spec["uid_base"] + n % spec.get("recipients", 1000),
                   "to_appcode": spec["appcode"], "msgtype": 5,
                   "content": "o" * spec.get("size", 32)}
        if spec.get("escalate_after_s"):
            message["escalate_after_s"] = spec["escalate_after_s"]
        return message

    def _request(self, n: int, batch: int) -> bytes:
        """The HTTP request of messages ``n`` to ``n + batch - 1``."""
        if batch == 1:
            return self.http.build("/v1/push", dumps(self._message(n)))
        return self.http.build("/v1/push/batch", dumps(
            {"messages": [self._message(n + i) for i in range(batch)]}))

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        batch = spec.get("batch", 1)
        concurrency = max(1, spec.get("concurrency", 16))
        self.sent = self.ok = self.requests = self.good = 0
        self.errors: dict[str, int] = {}
        latencies: list[int] = []
        refused: list[int] = []
        good_us = spec.get("goodput_within", GOODPUT_WITHIN_S) * 1e6
        sem = DeferredSemaphore(concurrency)
        deadline = time.monotonic() + spec["duration"]
        closed = not spec["rate"]

        async def one(intended_us: int) -> None:
            n0 = self.sent
            self.sent += batch
            self.requests += 1
            try:
                code, content = await self.http.send(self._request(n0, batch))
                if code != 200:
                    self.errors[f"http {code}"] = self.errors.get(f"http {code}", 0) + batch
                    refused.append(now_us() - intended_us)
                    return
                good = 1 if batch == 1 else sum(
                    1 for r in json.loads(content)["results"] if "msgid" in r)
            except Exception as e:
                self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + batch
                return
            self.ok += good
            self.progress += good
            if good < batch:
                self.errors["item"] = self.errors.get("item", 0) + batch - good
            took = now_us() - intended_us
            latencies.append(took)
            if took <= good_us:
                self.good += good

        t0 = time.monotonic()
        if closed:
            async def worker() -> None:
                while time.monotonic() < deadline:
                    await one(now_us())
            await DeferredList([Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
        else:
            # A request's Deferred from sem.run is "called" as soon as it holds
            # the semaphore, not when it is answered: count the unanswered ones.
            pending = 0
            sending = True
            drained: Deferred[None] = Deferred()

            def finished(_: object) -> None:
                nonlocal pending
                pending -= 1
                if not pending and not sending and not drained.called:
                    drained.callback(None)

            def send(_target: Any, intended_us: int) -> None:
                nonlocal pending
                pending += 1
                sem.run(lambda: Deferred.fromCoroutine(one(intended_us))).addBoth(finished)

            req_rate = spec["rate"] / batch
            await open_loop(self.reactor, req_rate, spec["duration"], [None], send)
            t_sent = time.monotonic()
            sending = False
            if pending:  # bounded: what is still unanswered then counts as missing
                def give_up_waiting() -> None:
                    if not drained.called:
                        drained.callback(None)

                give_up = self.reactor.callLater(spec.get("drain_s", 10), give_up_waiting)
                await drained
                if give_up.active():
                    give_up.cancel()
        t1 = time.monotonic()
        # Open loop: requests still unanswered when the drain gave up, those
        # that never got a slot of the concurrency included.
        missing = 0 if closed else pending * batch
        return {"t_start": t0, "t_send_end": t_sent if not closed else t1, "t_end": t1,
                "requests": self.requests, "sent": self.sent, "ok": self.ok, "good": self.good,
                "missing": missing,
                "errors": self.errors, "batch": batch, "latency_us": latencies,
                "refused_latency_us": refused}

    def close(self) -> None:
        super().close()
        self.reactor.callLater(0, lambda: Deferred.fromCoroutine(self.http.close()))


class Pull(Scenario):
    """Seed ``n`` pending messages for one user (HTTP batch push), then log in
    and drain them: PULL pages of ``page`` with ACKs pipelined behind them."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        self.uid = spec["uid_base"]
        http = Http(self.reactor, spec)
        seeded = 0
        t0 = time.monotonic()
        try:
            n = spec["n"]
            while seeded < n:
                count = min(1000, n - seeded)
                code, answer = await http.post("/v1/push/batch", {"messages": [
                    {"to_uid": self.uid, "to_appcode": spec["appcode"], "msgtype": 5,
                     "content": "p" * spec.get("size", 32)} for _ in range(count)]})
                if code != 200:
                    raise RuntimeError(f"seeding failed: HTTP {code} {answer}")
                seeded += sum(1 for r in answer["results"] if "msgid" in r)
                self.progress = seeded
        finally:
            await http.close()
        return {"seeded": seeded, "seed_s": round(time.monotonic() - t0, 3)}

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        page = spec.get("page", 100)
        t0 = time.monotonic()
        client = await self.login_one(0, self.uid, self.token(self.uid))
        if client is None:
            return {"error": "login failed", "failed": self.failures()}
        t_login = time.monotonic()
        self.progress = 0
        state = {"pulled": 0, "pages": 0, "acked": 0, "acks_out": 0, "more": True}
        done: Deferred[None] = Deferred()

        def maybe_done() -> None:
            if not state["more"] and state["acks_out"] == 0 and not done.called:
                done.callback(None)

        def ack_answered(n: int) -> Any:
            def cb(frame: Frame) -> None:
                state["acks_out"] -= 1
                if result_code(frame) == 0:
                    state["acked"] += n
                    self.progress += n
                maybe_done()
            return cb

        def page_answered(frame: Frame) -> None:
            response = pb.PullResponse()
            response.ParseFromString(frame.body)
            state["pages"] += 1
            ids = [m.msgid for m in response.messages]
            state["pulled"] += len(ids)
            if response.code != 0:
                state["more"] = False
                state["error"] = response.code
            else:
                state["more"] = bool(response.has_more and ids)
            if ids:
                state["acks_out"] += 1
                client.ack(ids, ack_answered(len(ids)))
            if state["more"]:
                pull(ids[-1])
            maybe_done()

        def pull(after: int) -> None:
            client.request(Cmd.PULL, pb.PullRequest(after_msgid=after, limit=page)
                           .SerializeToString(), page_answered)

        pull(0)
        await done.addTimeout(spec.get("drain_s", 60), self.reactor)
        t1 = time.monotonic()
        left = await client.call(Cmd.PULL, pb.PullRequest(limit=page).SerializeToString(),
                                 pb.PullResponse).addTimeout(10, self.reactor)
        return {"t_start": t_login, "t_end": t1, "login_s": round(t_login - t0, 4),
                "pulled": state["pulled"], "acked": state["acked"], "pages": state["pages"],
                "left_after": len(left.messages), "error": state.get("error")}

# -*- test-case-name: tests.bench.test_bench -*-
"""The scenarios, as one worker process runs its share of them.

Each scenario has ``setup()`` (connect and log in, seed data: not timed),
``run()`` (the measured part; returns a JSON-able dict) and ``close()``.
``progress`` counts units of work for the parent's progress bar. Every wait
is bounded: connections time out, and the drain after a run stops after
``drain_s`` even when answers are missing (they are then counted as missing).

Times are ``time.monotonic()`` seconds: one clock for all processes of the
machine, so the parent can merge the windows of several workers.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from daojia_msg.auth import mint_token
from daojia_msg.bench.wire import BenchClient, connect, result_code, source_address
from daojia_msg.protocol.codec import Frame
from daojia_msg.protocol.codes import Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: A connection to log in: (connection index, uid, token, client or None).
Job = tuple[int, int, str, "BenchClient | None"]
_STAMP = struct.Struct("!q")
#: The open-loop scheduler's tick: sends due within a tick go out together.
TICK_S = 0.002


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _now_us() -> int:
    return time.monotonic_ns() // 1000


async def open_loop(reactor: Any, rate: float, duration: float, targets: list[Any],
                    send: Callable[[Any, int], None]) -> None:
    """Call ``send(target, intended_us)`` at ``rate`` per second for ``duration``
    s, round robin over ``targets``. Each send carries its *intended* time, so
    a late generator or a slow node shows as latency (no coordinated omission)."""
    t0_us = _now_us()
    total = int(rate * duration)
    done = 0
    n = len(targets)

    def tick() -> None:
        nonlocal done
        due = min(total, int((_now_us() - t0_us) * rate / 1e6) + 1)
        while done < due:
            send(targets[done % n], t0_us + int(done * 1e6 / rate))
            done += 1
        if done >= total:
            loop.stop()

    loop = LoopingCall(tick)
    loop.clock = reactor
    await loop.start(TICK_S, now=True)


class Scenario:
    """Base: the spec, the reactor, identities and bounded log-ins."""

    def __init__(self, reactor: Any, spec: dict[str, Any]) -> None:
        self.reactor = reactor
        self.spec = spec
        self.progress = 0
        self.clients: list[BenchClient] = []
        self.login_failures: dict[str, int] = {}
        self.stopped: Deferred[None] = Deferred()

    # -- helpers ---------------------------------------------------------------

    def token(self, uid: int) -> str:
        spec = self.spec
        return mint_token(spec["secret"], spec["appcode"], uid, int(time.time()) + 3600)

    def source(self, index: int) -> str:
        return source_address(index, self.spec["per_address"], self.spec["source_first"])

    async def login_one(self, index: int, uid: int, token: str,
                        client: BenchClient | None = None) -> BenchClient | None:
        """Connect connection number ``index`` (it picks the source address)
        as ``uid`` and log in; ``None`` (counted) when that fails."""
        spec = self.spec
        client = client or BenchClient(uid, spec["appcode"])
        try:
            await connect(self.reactor, spec["gate_host"], spec["gate_port"], client,
                          self.source(index), timeout=spec.get("connect_timeout", 30))
            response = await client.login(token).addTimeout(
                spec.get("connect_timeout", 30), self.reactor)
        except Exception as e:  # counted, the run goes on
            name = type(e).__name__
            self.login_failures[name] = self.login_failures.get(name, 0) + 1
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]
            return None
        if response.code != 0:
            name = f"code {response.code}"
            self.login_failures[name] = self.login_failures.get(name, 0) + 1
            client.transport.loseConnection()  # type: ignore[union-attr]
            return None
        self.clients.append(client)
        self.progress += 1
        return client

    async def login_many(self, jobs: Sequence[Job]) -> list[BenchClient | None]:
        """Log in ``(index, uid, token, client)`` jobs, at most
        ``concurrency`` connecting at once."""
        sem = DeferredSemaphore(max(1, self.spec.get("concurrency", 64)))
        ds = [sem.run(self._login_job, j) for j in jobs]
        results = await DeferredList(ds, consumeErrors=True)
        return [value if ok else None for ok, value in results]

    def _login_job(self, job: Job) -> Deferred[BenchClient | None]:
        return Deferred.fromCoroutine(self.login_one(*job))

    def failures(self) -> dict[str, int]:
        return dict(self.login_failures)

    # -- the three phases ------------------------------------------------------

    async def setup(self) -> dict[str, Any]:
        return {}

    async def run(self) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        """The parent said stop (``connect`` holds its connections until then)."""
        if not self.stopped.called:
            self.stopped.callback(None)

    def close(self) -> None:
        """Reset every connection (RST): a polite close leaves each 4-tuple in
        TIME_WAIT for a minute, and the next run, from the same source
        addresses and ports, then meets some of them: its SYN is answered with
        an ACK for the old connection and retried a second later (runs of
        15,000 logins took 17 s instead of 4)."""
        for client in self.clients:
            if client.transport is not None and client.connected:
                client.transport.abortConnection()  # type: ignore[attr-defined]
        self.clients = []

    async def _drain(self, done: Any) -> None:
        """Wait until ``done()`` or ``drain_s`` passed (checked every 20 ms)."""
        deadline = time.monotonic() + self.spec.get("drain_s", 10)
        while not done() and time.monotonic() < deadline:
            await deferLater(self.reactor, 0.02, lambda: None)


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
            start = _now_us()
            got = await self.login_one(index, uid, token, client)
            if got is not None:
                self.latencies.append(_now_us() - start)
            return got

        sem = DeferredSemaphore(max(1, self.spec.get("concurrency", 64)))
        def job(j: Job) -> Deferred[Any]:
            return Deferred.fromCoroutine(timed(*j))

        await DeferredList([sem.run(job, j) for j in self.jobs], consumeErrors=True)
        t1 = time.monotonic()
        return {"t_start": t0, "t_end": t1, "ok": len(self.clients), "failed": self.failures(),
                "latency_us": self.latencies}


class C2S(Scenario):
    """C2S frames on ``conns`` connections: open loop at ``rate`` frames/s,
    or closed loop (``rate`` 0) with ``window`` in flight per connection."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        jobs: list[Job] = [(i, spec["uid_base"] + i, self.token(spec["uid_base"] + i), None)
                for i in range(spec["lo"], spec["hi"])]
        await self.login_many(jobs)
        self.body = pb.C2SRequest(content=b"3" * spec.get("size", 32)).SerializeToString()
        return {"logged_in": len(self.clients), "failed": self.failures()}

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        clients = [c for c in self.clients if c.connected]
        self.sent = self.ok = 0
        self.errors: dict[str, int] = {}
        self.latencies: list[int] = []
        if not clients:
            return {"sent": 0, "ok": 0, "errors": {}, "latency_us": [], "t_start": None,
                    "t_end": None}
        msgtype, body = spec.get("msgtype", 1), self.body
        deadline = time.monotonic() + spec["duration"]
        closed = not spec["rate"]

        def send(client: BenchClient, intended_us: int) -> None:
            self.sent += 1

            def answered(frame: Frame) -> None:
                code = result_code(frame)
                if code == 0:
                    self.ok += 1
                    self.progress += 1
                    self.latencies.append(_now_us() - intended_us)
                else:
                    self.errors[f"code {code}"] = self.errors.get(f"code {code}", 0) + 1
                if closed and time.monotonic() < deadline and client.connected:
                    send(client, _now_us())

            client.request(Cmd.C2S, body, answered, msgtype)

        t0 = time.monotonic()
        if closed:
            for client in clients:
                for _ in range(spec.get("window", 8)):
                    send(client, _now_us())
            await deferLater(self.reactor, spec["duration"], lambda: None)
        else:
            await open_loop(self.reactor, spec["rate"], spec["duration"], clients, send)
        t_sent = time.monotonic()
        await self._drain(lambda: self.ok + sum(self.errors.values()) >= self.sent)
        t1 = time.monotonic()
        return {"t_start": t0, "t_send_end": t_sent, "t_end": t1, "sent": self.sent,
                "ok": self.ok, "errors": self.errors, "latency_us": self.latencies,
                "missing": self.sent - self.ok - sum(self.errors.values())}

class C2C(C2S):
    """``P`` sender/receiver pairs; receivers ACK every push."""

    async def setup(self) -> dict[str, Any]:
        spec = self.spec
        self.pushes = self.acked = self.duplicates = 0
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
        await self.login_many(jobs)
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
            self.push_latencies.append(_now_us() - _STAMP.unpack_from(msg.content)[0])
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
        def acked(frame: Frame) -> None:
            if result_code(frame) == 0:
                self.acked += n
                self.progress += n
            else:
                self.errors["ack"] = self.errors.get("ack", 0) + n
        return acked

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        self.sent = self.ok = 0
        self.errors = {}
        self.latencies = []
        if not self.pairs:
            return {"sent": 0, "ok": 0, "errors": {}, "latency_us": [], "push_latency_us": [],
                    "pushes": 0, "acked": 0, "t_start": None, "t_end": None}
        deadline = time.monotonic() + spec["duration"]
        closed = not spec["rate"]
        to_appcode, msgtype, pad, tag = spec["appcode"], spec.get("msgtype", 7), \
            self.content_pad, self.run_tag

        def send(pair: tuple[BenchClient, BenchClient], intended_us: int) -> None:
            sender, receiver = pair
            n = self.sent = self.sent + 1
            body = pb.C2CRequest(to_uid=receiver.uid, to_appcode=to_appcode,
                                 content=_STAMP.pack(intended_us) + pad,
                                 client_msg_id=f"{tag}-{n}").SerializeToString()

            def answered(frame: Frame) -> None:
                code = result_code(frame)
                if code == 0:
                    self.ok += 1
                    self.latencies.append(_now_us() - intended_us)
                else:
                    self.errors[f"code {code}"] = self.errors.get(f"code {code}", 0) + 1
                if closed and time.monotonic() < deadline and sender.connected:
                    send(pair, _now_us())

            sender.request(Cmd.C2C, body, answered, msgtype)

        # The stamp is the intended send time (monotonic µs); the receiver
        # (in this process) subtracts it from its own monotonic clock.
        t0 = time.monotonic()
        if closed:
            for pair in self.pairs:
                for _ in range(spec.get("window", 8)):
                    send(pair, _now_us())
            await deferLater(self.reactor, spec["duration"], lambda: None)
        else:
            await open_loop(self.reactor, spec["rate"], spec["duration"], self.pairs, send)
        t_sent = time.monotonic()
        await self._drain(lambda: self.ok + sum(self.errors.values()) >= self.sent
                          and self.acked >= self.ok)
        t1 = time.monotonic()
        return {"t_start": t0, "t_send_end": t_sent, "t_end": t1, "sent": self.sent,
                "ok": self.ok, "errors": self.errors, "pushes": self.pushes,
                "duplicates": self.duplicates, "acked": self.acked,
                "missing_results": self.sent - self.ok - sum(
                    v for k, v in self.errors.items() if k != "ack"),
                "latency_us": self.latencies, "push_latency_us": self.push_latencies}


class Http:
    """A persistent HTTP pool and a JSON POST (treq)."""

    def __init__(self, reactor: Any, spec: dict[str, Any]) -> None:
        import treq
        from twisted.web.client import HTTPConnectionPool

        self.treq = treq
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max(2, spec.get("concurrency", 16))
        self.base = spec["http_url"].rstrip("/")
        self.headers: Any = {"Authorization": [f"Bearer {spec['api_key']}"],
                        "Content-Type": ["application/json"]}

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        response = await self.treq.post(self.base + path, data=json.dumps(body).encode(),
                                         headers=self.headers, pool=self.pool)
        content = await self.treq.content(response)
        return response.code, json.loads(content) if content else None

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


class HttpResponseError(Exception):
    """An HTTP answer the raw client cannot read (no Content-Length, bad status line)."""


class HttpConnection(Protocol):
    """One keep-alive HTTP/1.1 client connection, one request at a time, for
    the push generator: it writes pre-built request bytes and reads answers
    that carry a ``Content-Length`` (as the node's API always does). Much
    cheaper per request than treq, so the generator is not what limits a
    single-push run."""

    def __init__(self) -> None:
        self.closed = False
        self._buffer = b""
        self._waiting: Deferred[tuple[int, bytes]] | None = None
        self._status = 0
        self._length = -1  # of the body being read; -1 while reading a head
        self._close_after = False

    def request(self, data: bytes) -> Deferred[tuple[int, bytes]]:
        """Send a whole request; fires with the answer's ``(status, body)``."""
        assert self._waiting is None and not self.closed, "one request at a time"
        d: Deferred[tuple[int, bytes]] = Deferred(self._cancel)
        self._waiting = d
        self.transport.write(data)  # type: ignore[union-attr]
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._waiting is not None:
            if self._length < 0:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buffer[:end].lower()
                self._buffer = self._buffer[end + 4:]
                try:
                    self._status, self._length, self._close_after = parse_response_head(head)
                except HttpResponseError as e:
                    self._fail(Failure(e))
                    return
            if len(self._buffer) < self._length:
                return
            body, self._buffer = self._buffer[:self._length], self._buffer[self._length:]
            self._length = -1
            d, self._waiting = self._waiting, None
            if self._close_after:
                self._close()
            d.callback((self._status, body))

    def _cancel(self, d: Deferred[tuple[int, bytes]]) -> None:
        # A timeout: this connection's answer is lost, drop the connection.
        self._waiting = None
        self._close()

    def _fail(self, reason: Failure) -> None:
        d, self._waiting = self._waiting, None
        self._close()
        if d is not None:
            d.errback(reason)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.errback(reason)


def parse_response_head(head: bytes) -> tuple[int, int, bool]:
    """``(status, content length, close after)`` of a lowercased response head."""
    if not head.startswith(b"http/1.") or len(head) < 12 or not head[9:12].isdigit():
        raise HttpResponseError(f"bad status line {head[:40]!r}")
    status = int(head[9:12])
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        raise HttpResponseError("an answer without Content-Length")
    end = head.find(b"\r\n", start + 2)
    value = head[start + 17:end if end >= 0 else len(head)].strip()
    if not value.isdigit():
        raise HttpResponseError(f"bad Content-Length {value!r}")
    close = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
    return status, int(value), close


class RawHttp:
    """JSON POSTs over a pool of :class:`HttpConnection`: an idle connection
    is reused, else a new one is opened (the callers bound how many requests
    are in flight, hence how many connections there are). Each request is
    bounded by ``timeout`` seconds (its connection is then dropped)."""

    def __init__(self, reactor: Any, spec: dict[str, Any], timeout: float = 30.0) -> None:
        url = urlsplit(spec["http_url"])
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"the push generator speaks plain http://, not {spec['http_url']}")
        self.reactor = reactor
        self.host = url.hostname
        self.port = url.port or 80
        self.base = url.path.rstrip("/").encode("ascii")
        self.timeout = timeout
        self.idle: list[HttpConnection] = []
        self.connections: set[HttpConnection] = set()
        self._head = (b"Host: %s\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " % (
                          url.netloc.encode("ascii"), spec["api_key"].encode("ascii")))

    def build(self, path: str, body: bytes) -> bytes:
        """The bytes of one POST of ``body`` (JSON) to ``path``."""
        return (b"POST %s%s HTTP/1.1\r\n" % (self.base, path.encode("ascii")) + self._head
                + b"%d\r\n\r\n" % len(body) + body)

    async def _connection(self) -> HttpConnection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=10)
        connection = await connectProtocol(endpoint, HttpConnection())
        self.connections.add(connection)
        return connection

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send pre-built ``request`` bytes (:meth:`build`): ``(status, body)``."""
        connection = await self._connection()
        d = connection.request(request)
        d.addTimeout(self.timeout, self.reactor)
        try:
            return await d
        finally:
            if connection.closed:
                self.connections.discard(connection)
            else:
                self.idle.append(connection)

    async def close(self) -> None:
        self.idle = []
        for connection in list(self.connections):
            connection._close()
        self.connections.clear()


class Push(Scenario):
    """S2C through the HTTP API: ``/v1/push`` (batch 1) or ``/v1/push/batch``,
    ``concurrency`` requests in flight; open loop at ``rate`` messages/s or
    closed loop (``rate`` 0). Recipients are offline: each push is stored."""

    async def setup(self) -> dict[str, Any]:
        self.http = RawHttp(self.reactor, self.spec)
        return {}

    def _message(self, n: int) -> dict[str, Any]:
        spec = self.spec
        return {"to_uid": spec["uid_base"] + n % spec.get("recipients", 1000),
                "to_appcode": spec["appcode"], "msgtype": 5,
                "content": "o" * spec.get("size", 32)}

    def _request(self, n: int, batch: int) -> bytes:
        """The HTTP request of messages ``n`` to ``n + batch - 1``."""
        if batch == 1:
            return self.http.build("/v1/push", _dumps(self._message(n)))
        return self.http.build("/v1/push/batch", _dumps(
            {"messages": [self._message(n + i) for i in range(batch)]}))

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        batch = spec.get("batch", 1)
        concurrency = max(1, spec.get("concurrency", 16))
        self.sent = self.ok = self.requests = 0
        self.errors: dict[str, int] = {}
        latencies: list[int] = []
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
            latencies.append(_now_us() - intended_us)

        t0 = time.monotonic()
        if closed:
            async def worker() -> None:
                while time.monotonic() < deadline:
                    await one(_now_us())
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
        return {"t_start": t0, "t_end": t1, "requests": self.requests, "sent": self.sent,
                "ok": self.ok, "errors": self.errors, "batch": batch,
                "latency_us": latencies}

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


SCENARIOS: dict[str, type[Scenario]] = {
    "connect": Connect, "login": Login, "c2s": C2S, "c2c": C2C, "push": Push, "pull": Pull,
}

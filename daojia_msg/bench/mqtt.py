# -*- test-case-name: tests.bench.test_mqtt,tests.bench.test_mqtt_codec -*-
"""One-to-one QoS1 load against an MQTT broker (the Mosquitto baseline).

Shaped like msgplatform's C2C loop so that the two can be divided:

* ``pairs`` pairs; sender *i* publishes QoS1 to ``bench/<run>/<i>`` and
  receiver *i* is subscribed QoS1 to it (clean session, MQTT 3.1.1).
* The broker's PUBACK to the sender stands for msgplatform's C2C ``Result``;
  the PUBLISH delivered to receiver *i* stands for the C2C push, and the
  receiver's PUBACK (sent as soon as the delivery is read) stands for the
  ``ACK``.
* Latency is publish -> delivery (c2c's ``push_latency_us``): the sender puts
  a ``time.monotonic_ns()`` stamp in the first 8 bytes of the payload and the
  receiver (in the same process) subtracts it on delivery; publish -> broker
  PUBACK (c2c's ``latency_us``, the Result) is reported as ``result_p*_ms``.
  The payload is padded to ``payload_size`` bytes.
* Closed loop (``rate == 0``): each sender keeps at most ``window`` messages in
  flight (default 8, like c2c).  As in c2c, a message leaves the window with
  its Result (the broker PUBACK); ``release="delivery"`` also waits for the
  delivery.  The stamp is the actual publish time.
  Open loop (``rate > 0``): ``rate`` msgs/s in all, spread over the processes
  by their share of pairs and round robin over the pairs; the stamp is the
  *intended* send time, so a late generator shows as latency (no coordinated
  omission), as c2c's open loop does.
* Publishing runs for ``duration`` seconds; then the load waits (at most
  ``drain`` seconds) for what is still in flight.  ``throughput`` counts the
  deliveries inside the window, divided by its length; the percentiles are
  over every message published in the window (those delivered during the
  drain included, so slow ones are not dropped).  ``delivered_per_s`` is
  c2c's ``acked_per_s`` instead: every delivery over the window plus the
  drain (``elapsed_s``); ``msgplatform-bench versus`` divides by that one.
* The generator's sockets set TCP_NODELAY (``nodelay=False`` leaves Nagle on).

The load runs in ``procs`` worker processes (pairs dealt round-robin; a pair's
sender and receiver live in the same process, so one clock is used), each with
its own asyncio loop.  The MQTT client is this module's own, lean like
msgplatform's generator (``wire.py``): a pure MQTT 3.1.1 codec
(:class:`Decoder`, ``*_packet``) that writes pre-encoded packets (one PUBLISH
prefix per topic; a message is prefix + packet id + payload) and parses only
CONNACK, SUBACK, PUBLISH, PUBACK and PINGRESP, and an asyncio protocol
(:class:`_Conn`) whose writes are coalesced once per loop pass.  (It replaced
paho-mqtt, which kept the generator busier than the broker.)  Anything else
from the broker (a malformed packet, an unexpected type, a refused CONNECT or
SUBSCRIBE, a PUBACK for an id not in flight) ends the run with that error.
Each worker reports its CPU time (``resource.getrusage``) over the measuring
window, so a saturated generator shows up as ``busy`` close to 1.0.

Manual run::

    python -m daojia_msg.bench.mqtt --pairs 200 --duration 10
    python -m daojia_msg.bench.mqtt --pairs 200 --duration 10 --rate 5000 --procs 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import resource
import socket
import struct
import sys
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daojia_msg.bench.mqttcodec import (
    CONNACK,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    U16,
    Decoder,
    MalformedPacket,
    connect_packet,
    parse_connack,
    parse_puback,
    parse_publish,
    parse_suback,
    publish_prefix,
    subscribe_packet,
)

#: Payload header: publish time (``time.monotonic_ns()``) and per-pair sequence.
HEADER = struct.Struct("<qI")
MIN_PAYLOAD = HEADER.size
#: msgplatform's C2C content limit (docs/protocol.md §6.3); kept the same here.
MAX_PAYLOAD = 65_000
#: A process may hold at most 20,000 open files on the test machine (keep a margin),
#: ~28,000 ephemeral ports per source address and destination.
MAX_SOCKETS_PER_PROC = 19_000
PORTS_PER_SOURCE = 28_000


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    pairs: int
    payload_size: int
    duration: float
    rate: float  # total msgs/s; 0 = closed loop
    window: int
    procs: int
    count: int | None = None  # total messages (smoke tests); None = timed run
    run_id: str = ""
    bind_addresses: tuple[str, ...] = ()
    connect_timeout: float = 30.0
    drain: float = 5.0
    keepalive: int = 60
    nodelay: bool = True
    release: str = "result"  # closed loop: "result" (PUBACK) or "delivery" (PUBACK + push)

    @property
    def mode(self) -> str:
        if self.count is not None:
            return "count"
        return "open" if self.rate > 0 else "closed"


def make_plan(
    host: str,
    port: int,
    pairs: int,
    payload_size: int,
    duration: float,
    rate: float,
    window: int,
    procs: int,
    *,
    count: int | None = None,
    run_id: str | None = None,
    bind_addresses: tuple[str, ...] | list[str] = (),
    connect_timeout: float = 30.0,
    drain: float = 5.0,
    nodelay: bool = True,
    release: str = "result",
) -> Plan:
    """Check the arguments and return a :class:`Plan`; ``ValueError`` if bad."""
    if not host:
        raise ValueError("host is empty")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    if not MIN_PAYLOAD <= payload_size <= MAX_PAYLOAD:
        raise ValueError(
            f"payload_size must be {MIN_PAYLOAD}..{MAX_PAYLOAD} bytes "
            f"(the first {MIN_PAYLOAD} carry the publish time), not {payload_size}"
        )
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError("duration must be a positive number of seconds")
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError("rate must be >= 0 (0 = closed loop)")
    if window < 1:
        raise ValueError("window must be at least 1")
    if procs < 1:
        raise ValueError("procs must be at least 1")
    if procs > pairs:
        raise ValueError(f"procs ({procs}) must not exceed pairs ({pairs})")
    if release not in ("result", "delivery"):
        raise ValueError(f"release must be 'result' or 'delivery', not {release!r}")
    if count is not None and count < 1:
        raise ValueError("count must be at least 1")
    per_proc = 2 * math.ceil(pairs / procs)
    if per_proc > MAX_SOCKETS_PER_PROC:
        raise ValueError(
            f"{per_proc} connections in one process exceeds the {MAX_SOCKETS_PER_PROC} "
            "open-file budget: use more --procs"
        )
    sources = max(1, len(bind_addresses))
    if 2 * pairs > PORTS_PER_SOURCE * sources:
        raise ValueError(
            f"{2 * pairs} connections need more than {sources} source address(es) "
            f"(~{PORTS_PER_SOURCE} ephemeral ports each): add --bind 127.0.0.x"
        )
    return Plan(
        host=host,
        port=port,
        pairs=pairs,
        payload_size=payload_size,
        duration=float(duration),
        rate=float(rate),
        window=window,
        procs=procs,
        count=count,
        run_id=run_id or uuid.uuid4().hex[:8],
        bind_addresses=tuple(bind_addresses),
        connect_timeout=connect_timeout,
        drain=drain,
        nodelay=nodelay,
        release=release,
    )


def split_pairs(pairs: int, procs: int) -> list[list[int]]:
    """Deal pair indexes round-robin over the processes."""
    return [list(range(k, pairs, procs)) for k in range(procs)]


def split_count(count: int, pairs: int) -> list[int]:
    """Messages per pair so that they add up to ``count``."""
    base, extra = divmod(count, pairs)
    return [base + (1 if i < extra else 0) for i in range(pairs)]


def summarize(
    latencies_ns: list[np.ndarray],
    *,
    duration: float,
    delivered_in_window: int,
) -> dict[str, Any]:
    """Throughput and latency percentiles (ms, numpy's default linear method).

    ``None`` for the percentiles when nothing was delivered.
    """
    lat = np.concatenate(latencies_ns) if latencies_ns else np.empty(0, dtype=np.int64)
    out: dict[str, Any] = {
        "throughput": delivered_in_window / duration if duration > 0 else 0.0,
        "samples": int(lat.size),
    }
    if lat.size:
        ms = lat.astype(np.float64) / 1e6
        p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
        out.update(
            p50_ms=float(p50),
            p99_ms=float(p99),
            p999_ms=float(p999),
            mean_ms=float(ms.mean()),
            max_ms=float(ms.max()),
        )
    else:
        out.update(p50_ms=None, p99_ms=None, p999_ms=None, mean_ms=None, max_ms=None)
    return out


def cpu_entry(proc: int, pairs: int, user: float, system: float, window: float) -> dict[str, Any]:
    """One process's CPU over the measuring window; ``busy`` 1.0 = a full core."""
    cpu = user + system
    return {
        "proc": proc,
        "pairs": pairs,
        "user_s": round(user, 3),
        "sys_s": round(system, 3),
        "cpu_s": round(cpu, 3),
        "busy": round(cpu / window, 3) if window > 0 else None,
    }


# --------------------------------------------------------------------------
# worker process


@dataclass
class _Stats:
    sent: int = 0
    broker_acked: int = 0
    delivered: int = 0
    delivered_in_window: int = 0
    acked_in_window: int = 0
    disconnects: int = 0
    errors: list[str] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    """One MQTT connection of a pair: the sender or the receiver.

    Writes are queued and flushed by the worker once per loop pass, so the
    PUBACKs for all the PUBLISHes of one read (or the refills for all the
    PUBACKs of one read) leave in one ``send``.
    """

    def __init__(self, worker: _Worker, j: int, receiver: bool, client_id: str) -> None:
        self.worker = worker
        self.j = j
        self.receiver = receiver
        self.client_id = client_id
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.connacked = False
        self.subscribed = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if self.worker.plan.nodelay and sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send(connect_packet(self.client_id, self.worker.plan.keepalive))

    def send(self, data: bytes) -> None:
        if not self.out:
            self.worker.dirty.append(self)
            self.worker.schedule_flush()
        self.out.append(data)

    def data_received(self, data: bytes) -> None:
        w = self.worker
        if w.fatal is not None:
            return
        try:
            for ptype, flags, body in self.decoder.feed(data):
                if ptype == PUBLISH and self.receiver and self.connacked:
                    qos, pid, off = parse_publish(flags, body)
                    if qos:  # the receiver's PUBACK (c2c's ACK), at once
                        self.send(b"\x40\x02" + body[off - 2:off])
                    if len(body) - off < MIN_PAYLOAD:
                        raise MalformedPacket(f"PUBLISH payload of {len(body) - off} bytes")
                    w.on_message(self.j, HEADER.unpack_from(body, off)[0])
                elif ptype == PUBACK and not self.receiver and self.connacked:
                    w.on_puback(self.j, parse_puback(flags, body))
                elif ptype == CONNACK and not self.connacked:
                    rc = parse_connack(flags, body)
                    if rc:
                        raise MalformedPacket(f"connect refused: return code {rc}")
                    self.connacked = True
                    w.on_connack(self)
                elif ptype == SUBACK and self.receiver and self.connacked and not self.subscribed:
                    _pid, codes = parse_suback(flags, body)
                    if 0x80 in codes:
                        raise MalformedPacket(f"subscribe refused: {codes}")
                    self.subscribed = True
                    w.on_suback()
                elif ptype == PINGRESP and self.connacked and not flags and not body:
                    pass
                else:
                    raise MalformedPacket(
                        f"unexpected packet type {ptype} (flags {flags}, {len(body)} bytes) "
                        f"on {'receiver' if self.receiver else 'sender'} {self.client_id}")
        except MalformedPacket as e:
            w.fail(f"{self.client_id}: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.worker.on_lost(self, exc)


class _Worker:
    """The pairs of one process, driven by one asyncio loop."""

    def __init__(self, plan: Plan, proc: int, pair_ids: list[int]) -> None:
        self.plan = plan
        self.proc = proc
        self.pair_ids = pair_ids
        n = len(pair_ids)
        self.topics = [f"bench/{plan.run_id}/{i}" for i in pair_ids]
        self.prefixes = [publish_prefix(t, plan.payload_size) for t in self.topics]
        self.pad = b"\0" * (plan.payload_size - MIN_PAYLOAD)
        self.sent = [0] * n
        self.acked = [0] * n  # broker PUBACKs to the sender (the Result)
        self.got = [0] * n  # deliveries to the receiver (the push; PUBACK = ACK)
        self.next_pid = [0] * n
        if plan.count is not None:
            quotas = split_count(plan.count, plan.pairs)
            self.quota: list[int] | None = [quotas[i] for i in pair_ids]
        else:
            self.quota = None
        self.closed_loop = plan.rate == 0 or self.quota is not None
        self.stats = _Stats()
        self.lat = array("q")  # publish -> delivery (the push)
        self.result_lat = array("q")  # publish -> broker PUBACK (the Result)
        self.stamps: list[dict[int, int]] = [{} for _ in pair_ids]
        self.release = plan.release
        self.publishing = False
        self.in_window = False
        self.connected = 0
        self.subscribed = 0
        self.senders: list[_Conn] = []
        self.receivers: list[_Conn] = []
        self.loop: Any = None  # the running loop (a fake one in tests)
        self.dirty: list[_Conn] = []
        self.flush_pending = False
        self.idle = asyncio.Event()
        #: Set (with ``fatal``) when the broker sent something this client
        #: cannot go on from: the run ends with that error instead of hanging.
        self.failed = asyncio.Event()
        self.fatal: str | None = None
        self.closing = False

    # -- I/O plumbing

    def schedule_flush(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        batch, self.dirty = self.dirty, []
        if self.fatal is not None:
            return
        for c in batch:
            out = c.out
            if c.transport is not None and not c.lost:
                c.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def fail(self, why: str) -> None:
        """End the run: the broker's stream cannot be followed any further."""
        if self.fatal is None:
            self.fatal = why
            self.stats.errors.insert(0, why)
            self.failed.set()
        self.publishing = False
        for c in self.senders + self.receivers:
            if c.transport is not None:
                c.transport.abort()

    def on_connack(self, c: _Conn) -> None:
        self.connected += 1

    def on_suback(self) -> None:
        self.subscribed += 1

    def on_lost(self, c: _Conn, exc: Exception | None) -> None:
        if self.closing or self.fatal is not None:
            return
        self.stats.disconnects += 1
        if len(self.stats.errors) < 10:
            self.stats.errors.append(f"disconnected: {c.client_id}: {exc or 'closed by the broker'}")

    # -- the load

    def on_puback(self, j: int, pid: int) -> None:
        stamp = self.stamps[j].pop(pid, None)
        if stamp is None:
            raise MalformedPacket(f"PUBACK for packet id {pid}, which is not in flight")
        self.result_lat.append(time.monotonic_ns() - stamp)
        self.acked[j] += 1
        self.stats.broker_acked += 1
        if self.in_window:
            self.stats.acked_in_window += 1
        if self.closed_loop:
            self._fill(j)
        else:
            self._check_idle()

    def on_message(self, j: int, t0: int) -> None:
        self.lat.append(time.monotonic_ns() - t0)
        self.got[j] += 1
        self.stats.delivered += 1
        if self.in_window:
            self.stats.delivered_in_window += 1
        if self.closed_loop:
            self._fill(j)
        else:
            self._check_idle()

    def _publish(self, j: int, stamp_ns: int = 0) -> None:
        seq = self.sent[j]
        self.sent[j] = seq + 1
        self.stats.sent += 1
        stamp = stamp_ns or time.monotonic_ns()
        pid = self.next_pid[j] % 0xFFFF + 1  # 1..65535 (2.3.1: never 0)
        self.next_pid[j] = pid
        stamps = self.stamps[j]
        if pid in stamps:
            self.fail(f"pair {self.pair_ids[j]}: 65,535 messages in flight, packet ids exhausted")
            return
        stamps[pid] = stamp
        self.senders[j].send(self.prefixes[j] + U16.pack(pid) + HEADER.pack(stamp, seq) + self.pad)

    def _fill(self, j: int) -> None:
        """Closed loop: top sender j's window up (a message leaves the window
        with its broker PUBACK, or with release="delivery" once the receiver
        also got it)."""
        if self.publishing:
            window = self.plan.window
            quota = self.quota[j] if self.quota is not None else None
            done = self.acked[j] if self.release == "result" else min(self.acked[j], self.got[j])
            while self.sent[j] - done < window:
                if quota is not None and self.sent[j] >= quota:
                    break
                self._publish(j)
        self._check_idle()

    def _check_idle(self) -> None:
        if self.publishing and self.quota is None:
            return
        if self.stats.broker_acked == self.stats.sent and self.stats.delivered == self.stats.sent:
            if self.quota is None or self.stats.sent == sum(self.quota):
                self.idle.set()

    def _raise_if_failed(self) -> None:
        if self.fatal is not None:
            raise RuntimeError(f"proc {self.proc}: {self.fatal}")

    async def _wait_event(self, event: asyncio.Event, timeout: float) -> None:
        """Until ``event`` is set or ``timeout`` passes; raise if the run failed."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.failed.wait())]
        try:
            await asyncio.wait(waits, timeout=max(0.0, timeout),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in waits:
                f.cancel()
        self._raise_if_failed()

    async def _pacer(self, rate: float, start: float, end: float) -> None:
        """Open loop: publish at ``rate`` msgs/s over this process's pairs,
        round robin. Each message carries its *intended* send time, so a late
        generator shows as latency (no coordinated omission), as in c2c."""
        n = len(self.pair_ids)
        nxt = 0
        done = 0
        total = int(rate * (end - start))
        t0_ns = int(start * 1e9)
        step_ns = 1e9 / rate
        while done < total:
            self._raise_if_failed()
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while done < due:
                self._publish(nxt, t0_ns + int(done * step_ns))
                nxt = (nxt + 1) % n
                done += 1
            await asyncio.sleep(0.001)

    async def _keepalive(self) -> None:
        """A PINGREQ on every connection each half keepalive (3.1.2.10)."""
        while True:
            await asyncio.sleep(self.plan.keepalive / 2)
            for c in self.senders + self.receivers:
                c.send(PINGREQ_PACKET)

    async def connect(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        plan = self.plan
        binds = plan.bind_addresses or ("",)
        deadline = time.monotonic() + plan.connect_timeout
        for j, i in enumerate(self.pair_ids):
            self.senders.append(_Conn(self, j, False, f"bench-{plan.run_id}-s{i}"))
            self.receivers.append(_Conn(self, j, True, f"bench-{plan.run_id}-r{i}"))

        async def dial(c: _Conn, k: int) -> None:
            bind = binds[(2 * self.pair_ids[c.j] + k) % len(binds)]
            await loop.create_connection(lambda: c, plan.host, plan.port,
                                         local_addr=(bind, 0) if bind else None)

        conns = [(c, k) for j in range(len(self.pair_ids))
                 for k, c in enumerate((self.senders[j], self.receivers[j]))]
        try:
            for b in range(0, len(conns), 100):  # a burst the listen backlog takes
                await asyncio.wait_for(
                    asyncio.gather(*(dial(c, k) for c, k in conns[b:b + 100])),
                    timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise RuntimeError(f"proc {self.proc}: timed out connecting to "
                               f"{plan.host}:{plan.port}") from None
        except OSError as e:
            raise RuntimeError(f"proc {self.proc}: cannot connect to "
                               f"{plan.host}:{plan.port}: {e}") from None
        await self._wait(lambda: self.connected == 2 * len(self.pair_ids), "CONNACK", deadline)
        for j, r in enumerate(self.receivers):
            r.send(subscribe_packet(1, self.topics[j], 1))
        await self._wait(lambda: self.subscribed == len(self.pair_ids), "SUBACK",
                         time.monotonic() + plan.connect_timeout)

    async def _wait(self, cond: Any, what: str, deadline: float) -> None:
        while not cond():
            self._raise_if_failed()
            if self.stats.errors:
                raise RuntimeError(f"proc {self.proc}: {self.stats.errors[0]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"proc {self.proc}: timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def run(self, start_at: float) -> dict[str, Any]:
        pinger = asyncio.ensure_future(self._keepalive())
        try:
            return await self._run(start_at)
        finally:
            pinger.cancel()
            self.closing = True
            for c in self.senders + self.receivers:
                if c.transport is not None and not c.lost:
                    if self.fatal is None:
                        c.transport.write(b"".join(c.out) + DISCONNECT_PACKET)
                    c.transport.close()
            await asyncio.sleep(0)

    async def _run(self, start_at: float) -> dict[str, Any]:
        plan = self.plan
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        self._raise_if_failed()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t_start = time.monotonic()
        end = t_start + (plan.connect_timeout + plan.duration if plan.count else plan.duration)
        self.publishing = True
        self.in_window = True
        if plan.mode == "open":
            share = plan.rate * len(self.pair_ids) / plan.pairs
            await self._pacer(share, t_start, end)
        else:
            for j in range(len(self.pair_ids)):
                self._fill(j)
            if plan.count is not None:
                await self._wait_event(self.idle, end - time.monotonic())
            else:
                await self._wait_event(asyncio.Event(), end - time.monotonic())
        t_end = time.monotonic()
        self.publishing = False
        self.in_window = plan.count is not None  # count mode: every delivery counts
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self._check_idle()
        if not self.idle.is_set():
            await self._wait_event(self.idle, plan.drain)
        t_done = time.monotonic()
        window = t_end - t_start
        if plan.count is not None:
            window = time.monotonic() - t_start
        ru2 = resource.getrusage(resource.RUSAGE_SELF)
        st = self.stats
        return {
            "proc": self.proc,
            "pairs": len(self.pair_ids),
            "sent": st.sent,
            "broker_acked": st.broker_acked,
            "delivered": st.delivered,
            "delivered_in_window": st.delivered_in_window,
            "acked_in_window": st.acked_in_window,
            "result_lat": np.frombuffer(self.result_lat, dtype=np.int64).copy(),
            "disconnects": st.disconnects,
            "errors": st.errors[:10],
            "window_s": window,
            "t_start": t_start,
            "t_done": t_done,
            "cpu": cpu_entry(
                self.proc, len(self.pair_ids),
                ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime, t_end - t_start,
            ),
            "cpu_total_s": round(ru2.ru_utime + ru2.ru_stime, 3),
            "lat": np.frombuffer(self.lat, dtype=np.int64).copy(),
        }


def _worker_main(plan: Plan, proc: int, pair_ids: list[int], conn: Any) -> None:
    async def go() -> None:
        w = _Worker(plan, proc, pair_ids)
        await w.connect()
        conn.send(("ready", None))
        loop = asyncio.get_running_loop()
        start_at = await loop.run_in_executor(None, conn.recv)
        conn.send(("done", await w.run(start_at)))

    try:
        asyncio.run(go())
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except OSError:
            pass
    finally:
        conn.close()


# --------------------------------------------------------------------------
# parent


def process_cpu_s(pid: int) -> float | None:
    """utime+stime of another process from /proc (e.g. the broker), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def find_pid(name: str) -> int | None:
    """The first process whose comm is ``name`` (e.g. ``mosquitto``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        return int(entry)
            except OSError:
                continue
    return None


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """utime+stime of every process now: {pid: (comm, seconds)}."""
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[int(entry)] = (comm, (int(fields[11]) + int(fields[12])) / tck)
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return float(total - idle), float(total)


def others_cpu(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    exclude: set[int],
    window: float,
    min_s: float = 0.05,
) -> list[dict[str, Any]]:
    """Other processes that used at least ``min_s`` CPU seconds in the window
    (those that ended inside the window are not seen)."""
    out = []
    for pid, (comm, t1) in after.items():
        if pid in exclude:
            continue
        d = t1 - before[pid][1] if pid in before else t1  # started in the window
        if d >= min_s:
            out.append({"pid": pid, "comm": comm, "cpu_s": round(d, 2),
                        "busy": round(d / window, 3) if window > 0 else None})
    return sorted(out, key=lambda e: -e["cpu_s"])


def _recv(conn: Any, timeout: float, proc: int) -> tuple[str, Any]:
    if not conn.poll(timeout):
        raise RuntimeError(f"worker {proc} did not answer within {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"worker {proc} died") from None


def run_mqtt(
    host: str,
    port: int,
    pairs: int,
    payload_size: int,
    duration: float,
    rate: float,
    window: int,
    procs: int,
    *,
    count: int | None = None,
    broker_pid: int | None = None,
    run_id: str | None = None,
    bind_addresses: tuple[str, ...] | list[str] = (),
    connect_timeout: float = 30.0,
    drain: float = 5.0,
    nodelay: bool = True,
    release: str = "result",
) -> dict[str, Any]:
    """Run the load and return the figures (see the module docstring).

    ``rate`` 0 = closed loop with ``window`` in flight per sender.  ``count``
    (tests) sends exactly that many messages in all, closed loop, and waits
    for them (``duration`` is then only added to the time limit).
    ``broker_pid``: also report that process's CPU over the window.
    """
    plan = make_plan(
        host, port, pairs, payload_size, duration, rate, window, procs,
        count=count, run_id=run_id, bind_addresses=bind_addresses,
        connect_timeout=connect_timeout, drain=drain, nodelay=nodelay,
        release=release,
    )
    ctx = mp.get_context("spawn")
    workers = []
    try:
        for k, ids in enumerate(split_pairs(plan.pairs, plan.procs)):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(plan, k, ids, child), daemon=True)
            p.start()
            child.close()
            workers.append((p, parent))
        for k, (_, conn) in enumerate(workers):
            kind, payload = _recv(conn, plan.connect_timeout + 30, k)
            if kind != "ready":
                raise RuntimeError(f"worker {k}: {payload}")
        start_at = time.monotonic() + 0.2
        broker0 = process_cpu_s(broker_pid) if broker_pid else None
        snap0, mach0 = cpu_snapshot(), machine_busy()
        for _, conn in workers:
            conn.send(start_at)
        limit = plan.duration + plan.drain + 30 + (plan.connect_timeout if count else 0)
        results: list[dict[str, Any]] = []
        broker1 = None
        for k, (_, conn) in enumerate(workers):
            kind, payload = _recv(conn, limit, k)
            if not results:  # the first worker done: about the end of the window
                broker1 = process_cpu_s(broker_pid) if broker_pid else None
                snap1, mach1 = cpu_snapshot(), machine_busy()
            if kind != "done":
                raise RuntimeError(f"worker {k}: {payload}")
            results.append(payload)
    finally:
        for p, conn in workers:
            conn.close()
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()

    # the publishing window (open loop: longer than duration if the generator lagged)
    window_s = max(r["window_s"] for r in results)
    out: dict[str, Any] = {
        "mode": plan.mode,
        "broker": f"{host}:{port}",
        "pairs": plan.pairs,
        "payload_size": plan.payload_size,
        "duration": plan.duration,
        "rate": plan.rate,
        "window": plan.window,
        "release": plan.release,
        "procs": plan.procs,
        "nodelay": plan.nodelay,
        "run_id": plan.run_id,
    }
    out.update(
        summarize(
            [r["lat"] for r in results],
            duration=window_s,
            delivered_in_window=sum(r["delivered_in_window"] for r in results),
        )
    )
    res = summarize(
        [r["result_lat"] for r in results],
        duration=window_s,
        delivered_in_window=sum(r["acked_in_window"] for r in results),
    )
    out.update(
        result_rate=res["throughput"],
        result_p50_ms=res["p50_ms"],
        result_p99_ms=res["p99_ms"],
        result_p999_ms=res["p999_ms"],
    )
    sent = sum(r["sent"] for r in results)
    delivered = sum(r["delivered"] for r in results)
    # c2c's acked_per_s: every message, over the window and the drain
    elapsed_s = max(r["t_done"] for r in results) - min(r["t_start"] for r in results)
    out.update(
        sent=sent,
        delivered=delivered,
        elapsed_s=round(elapsed_s, 3),
        delivered_per_s=round(delivered / elapsed_s, 1) if elapsed_s > 0 else None,
        delivered_in_window=sum(r["delivered_in_window"] for r in results),
        broker_acked=sum(r["broker_acked"] for r in results),
        lost=sent - delivered,
        offered_rate=plan.rate if plan.mode == "open" else None,
        achieved_send_rate=sent / window_s if window_s > 0 else 0.0,
        disconnects=sum(r["disconnects"] for r in results),
        errors=[e for r in results for e in r["errors"]][:10],
        generator_cpu=[r["cpu"] for r in results],
        generator_cpu_total_s=[r["cpu_total_s"] for r in results],
    )
    exclude = {os.getpid(), *(p.pid for p, _ in workers if p.pid is not None)}
    if broker_pid:
        exclude.add(broker_pid)
    out["others_cpu"] = others_cpu(snap0, snap1, exclude, window_s)
    ncpu = os.cpu_count() or 1
    busy_j, total_j = mach1[0] - mach0[0], mach1[1] - mach0[1]
    out["machine_busy_cores"] = round(ncpu * busy_j / total_j, 2) if total_j > 0 else None
    out["machine_cores"] = ncpu
    if broker_pid:
        cpu = (broker1 - broker0) if broker0 is not None and broker1 is not None else None
        out["broker_cpu"] = {
            "pid": broker_pid,
            "cpu_s": round(cpu, 3) if cpu is not None else None,
            "busy": round(cpu / window_s, 3) if cpu is not None else None,
        }
    return out


def _format(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"mqtt {r['mode']} loop against {r['broker']}: {r['pairs']} pairs, "
        f"{r['payload_size']} B, {r['duration']:g} s, "
        + (f"rate {r['rate']:g}/s" if r["mode"] == "open" else f"window {r['window']}")
        + f", {r['procs']} proc(s)",
        f"  throughput {r['throughput']:.0f} msgs/s delivered+acked "
        f"(sent {r['sent']}, delivered {r['delivered']}, broker PUBACKs {r['broker_acked']}, "
        f"lost {r['lost']})",
        f"  latency publish->delivery ms: p50 {ms(r['p50_ms'])}  p99 {ms(r['p99_ms'])}  "
        f"p99.9 {ms(r['p999_ms'])}  max {ms(r['max_ms'])}",
        f"  broker PUBACKs (the Result) {r['result_rate']:.0f}/s, publish->PUBACK ms: "
        f"p50 {ms(r['result_p50_ms'])}  p99 {ms(r['result_p99_ms'])}  "
        f"p99.9 {ms(r['result_p999_ms'])}",
    ]
    for c in r["generator_cpu"]:
        lines.append(
            f"  generator proc {c['proc']} ({c['pairs']} pairs): cpu {c['cpu_s']} s "
            f"(user {c['user_s']}, sys {c['sys_s']}), busy {c['busy']}"
        )
    if "broker_cpu" in r:
        b = r["broker_cpu"]
        lines.append(f"  broker pid {b['pid']}: cpu {b['cpu_s']} s, busy {b['busy']}")
    lines.append(f"  machine: {r['machine_busy_cores']} of {r['machine_cores']} cores busy; others: "
                 + (", ".join(f"{o['comm']}[{o['pid']}] {o['cpu_s']} s" for o in r["others_cpu"][:6])
                    or "none above 0.05 s"))
    if r["errors"]:
        lines.append(f"  errors: {r['errors']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m daojia_msg.bench.mqtt",
        description="One-to-one QoS1 load against an MQTT broker (msgplatform c2c baseline).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--payload", type=int, default=64, help="payload bytes (>= 12)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open loop: total msgs/s over all pairs (0 = closed loop)")
    p.add_argument("--window", type=int, default=8,
                   help="closed loop: in flight per sender (c2c's default is 8)")
    p.add_argument("--release", choices=("result", "delivery"), default="result",
                   help="closed loop: a message leaves the window with its broker PUBACK "
                        "(result, like c2c) or once also delivered (delivery)")
    p.add_argument("--procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--count", type=int, default=None,
                   help="send exactly this many messages in all and wait for them")
    p.add_argument("--bind", action="append", default=[], metavar="ADDR",
                   help="source address(es) for the connections, e.g. 127.0.0.2 (repeatable)")
    p.add_argument("--broker-pid", type=int, default=None,
                   help="report this process's CPU (default: the local 'mosquitto', if any)")
    p.add_argument("--no-nodelay", dest="nodelay", action="store_false",
                   help="leave Nagle on for the generator's sockets (default: TCP_NODELAY)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    broker_pid = args.broker_pid
    if broker_pid is None and args.host.startswith("127."):
        broker_pid = find_pid("mosquitto")
    try:
        result = run_mqtt(
            args.host, args.port, args.pairs, args.payload, args.duration, args.rate,
            args.window, args.procs, count=args.count, broker_pid=broker_pid,
            bind_addresses=args.bind, nodelay=args.nodelay,
            release=args.release,
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(_format(result))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

# -*- test-case-name: tests.bench.test_mqttworker -*-
"""One process of the Mosquitto baseline: its pairs' MQTT connections on one asyncio loop.

The client is this module's own, lean like msgplatform's generator (``wire.py``):
the pure MQTT 3.1.1 codec of :mod:`.mqttcodec` writes pre-encoded packets (one
PUBLISH prefix per topic; a message is prefix + packet id + payload) and parses
only CONNACK, SUBACK, PUBLISH, PUBACK and PINGRESP; :class:`Conn`'s writes are
coalesced once per loop pass. Anything else from the broker (a malformed packet, an
unexpected type, a refused CONNECT or SUBSCRIBE, a PUBACK for an id not in flight)
ends the run with that error. The process reports its CPU time
(``resource.getrusage``) over the measuring window, so a saturated generator shows
up as ``busy`` close to 1.0.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
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
from daojia_msg.bench.mqttplan import HEADER, MIN_PAYLOAD, Plan, cpu_entry, split_count


@dataclass
class _Stats:
    sent: int = 0
    broker_acked: int = 0
    delivered: int = 0
    delivered_in_window: int = 0
    acked_in_window: int = 0
    disconnects: int = 0
    errors: list[str] = field(default_factory=list)


class Conn(asyncio.Protocol):
    """One MQTT connection of a pair: the sender or the receiver.

    Writes are queued and flushed by the worker once per loop pass, so the
    PUBACKs for all the PUBLISHes of one read (or the refills for all the
    PUBACKs of one read) leave in one ``send``.
    """

    def __init__(self, worker: Worker, j: int, receiver: bool, client_id: str) -> None:
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


class Worker:
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
        self.senders: list[Conn] = []
        self.receivers: list[Conn] = []
        self.loop: Any = None  # the running loop (a fake one in tests)
        self.dirty: list[Conn] = []
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

    def on_connack(self, c: Conn) -> None:
        self.connected += 1

    def on_suback(self) -> None:
        self.subscribed += 1

    def on_lost(self, c: Conn, exc: Exception | None) -> None:
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

    async def _pacer(self, rate: float, start: float, seconds: float) -> None:
        """Open loop: publish at ``rate`` msgs/s over this process's pairs for
        ``seconds`` from ``start``, round robin. Each message carries its
        *intended* send time, so a late generator shows as latency (no
        coordinated omission), as in c2c. (The count comes from ``seconds``
        itself: when ``start`` is just below a power of two, ``(start +
        seconds) - start`` is rounded a hair short, and 200/s for 1 s sent 199.)"""
        n = len(self.pair_ids)
        nxt = 0
        done = 0
        total = int(rate * seconds)
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
            self.senders.append(Conn(self, j, False, f"bench-{plan.run_id}-s{i}"))
            self.receivers.append(Conn(self, j, True, f"bench-{plan.run_id}-r{i}"))

        async def dial(c: Conn, k: int) -> None:
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
        window = plan.connect_timeout + plan.duration if plan.count else plan.duration
        end = t_start + window
        self.publishing = True
        self.in_window = True
        if plan.mode == "open":
            share = plan.rate * len(self.pair_ids) / plan.pairs
            await self._pacer(share, t_start, window)
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


def worker_main(plan: Plan, proc: int, pair_ids: list[int], conn: Any) -> None:
    """A worker process: connect its pairs, say ``ready`` on the pipe ``conn``, wait for
    the start time, run, and send ``done`` with the result (or ``error``)."""
    async def go() -> None:
        w = Worker(plan, proc, pair_ids)
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

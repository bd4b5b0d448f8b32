# -*- test-case-name: tests.chaos.test_cli -*-
"""One run of the fault suite: start the private cluster, then per phase
offer traffic, inject the phase's fault, heal it, let every message settle,
drain every receiver and classify; at the end drain once more and
classify every phase again (a late arrival only moves "lost" to "delivered").
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from daojia_msg.chaos import amqp_queue, netns, servers
from daojia_msg.chaos.faults import FAULTS, sleep
from daojia_msg.chaos.ledger import OK, Ledger, Row
from daojia_msg.chaos.traffic import Traffic


@dataclass(frozen=True)
class Settings:
    nodes: int = 3
    rate: float = 100.0
    faults: tuple[str, ...] = tuple(FAULTS)
    fault_seconds: float = 5.0
    pre_seconds: float = 3.0
    post_seconds: float = 5.0
    users: int = 12
    answer_timeout_s: float = 3.0   # the nodes' store.answer_timeout_s (the default)
    margin_s: float = 2.0           # a request unanswered after timeout + margin: no answer
    give_up_s: float = 30.0
    #: closed-loop capacity phase before the faults (0: none), and its senders
    capacity_seconds: float = 0.0
    capacity_concurrency: int = 64
    #: with a capacity phase: offer this fraction of it (instead of ``rate``)
    load: float | None = None


class Cluster:
    """The private Redis, MariaDB, nodes and HAProxy of one run, in ``directory``;
    with ``rabbitmq``, a private RabbitMQ too, the bus of one C2S route; with
    ``partition``, each node in a network namespace of its own
    (:mod:`daojia_msg.chaos.netns`), the servers on the run's bridge too."""

    def __init__(self, reactor: Any, programs: dict[str, str], directory: str, nodes: int,
                 log: Callable[[str], None], faketime: bool = False,
                 rabbitmq: bool = False, partition: bool = False) -> None:
        self.reactor = reactor
        self.programs = programs
        self.directory = directory
        self.size = nodes
        self.log = log
        self.nodes: list[servers.Proc] = []
        self.redis: servers.Proc | None = None
        self.mariadb: servers.Proc | None = None
        self.haproxy: servers.Proc | None = None
        self.rabbitmq: servers.Proc | None = None
        ports = servers.free_ports(6 + 3 * nodes)
        self.redis_port, self.mysql_port, self.gate, self.api = ports[:4]
        #: the private RabbitMQ's AMQP port (None: no RabbitMQ) and its Erlang distribution port
        self.amqp_port: int | None = ports[4] if rabbitmq else None
        self.dist_port = ports[5]
        self.node_ports = [tuple(ports[6 + 3 * i: 9 + 3 * i]) for i in range(nodes)]
        #: the last node's wall clock follows this file (libfaketime), if set
        self.clock_file = os.path.join(directory, "faketime.rc") if faketime else None
        self.network: netns.Network | None = None
        if partition:
            removed = netns.remove_leftovers(programs["ip-netns"])
            if removed:
                log(f"removed what dead runs left: {', '.join(removed)}")
            self.network = netns.new_network(programs["ip-netns"], nodes)

    def node_address(self, i: int) -> str:
        """Where node ``i`` listens (its namespace's address, or loopback)."""
        return self.network.addresses[i] if self.network else "127.0.0.1"

    async def start(self) -> None:
        r, d = self.reactor, self.directory
        also = None
        if self.network is not None:
            self.network.setup()
            also = self.network.host
            self.log(f"bridge {self.network.bridge} at {also}, nodes in namespaces "
                     f"{', '.join(self.network.namespaces)}")
        host = also or "127.0.0.1"
        rabbit_ready = None
        if self.amqp_port is not None:  # it starts slowest: meanwhile the others
            self.rabbitmq = servers.rabbitmq_proc(r, self.programs["rabbitmq-server"], d,
                                                  self.amqp_port, self.dist_port, also)
            rabbit_ready = self.rabbitmq.start(timeout=120)
        self.redis = servers.redis_proc(r, self.programs["redis-server"], d, self.redis_port, also)
        await self.redis.start()
        self.log(f"redis-server on 127.0.0.1:{self.redis_port}")
        self.mariadb = servers.mariadb_proc(r, self.programs, d, self.mysql_port, also)
        await self.mariadb.start(timeout=90)
        url = servers.create_database(self.mysql_port, "chaos", host)
        self.log(f"mariadbd on 127.0.0.1:{self.mysql_port}")
        if rabbit_ready is not None:
            await rabbit_ready
            await servers.wait_port(r, self.amqp_port or 0)
            amqp_queue.declare(servers.amqp_url(self.amqp_port or 0), servers.AMQP_QUEUE,
                               servers.AMQP_TOPIC)
            self.log(f"rabbitmq-server on 127.0.0.1:{self.amqp_port} (distribution port "
                     f"{self.dist_port})")
        for i, (gate, http, rpc) in enumerate(self.node_ports):
            config = servers.node_config(d, i, self.redis_port, url, self.amqp_port, host)
            env = None
            if self.clock_file is not None and i == self.size - 1:
                env = servers.faketime_env(self.programs["libfaketime"], self.clock_file)
            prefix = self.network.prefix(i) if self.network else ()
            self.nodes.append(servers.node_proc(r, d, i, config, gate, http, rpc, env,
                                                self.node_address(i), prefix))
        await gatherResults([n.start(timeout=90) for n in self.nodes])
        self.log(f"{self.size} nodes serving")
        self.haproxy = servers.haproxy_proc(r, self.programs["haproxy"], d, self.gate, self.api,
                                            [(g, h) for g, h, _ in self.node_ports],
                                            [self.node_address(i) for i in range(self.size)])
        await self.haproxy.start()
        await servers.wait_port(r, self.gate)
        await servers.wait_port(r, self.api)
        await sleep(r, 1.0)  # the first health checks
        self.log(f"haproxy: phones on 127.0.0.1:{self.gate}, HTTP API on 127.0.0.1:{self.api}")

    async def read_queue(self, arrived: Callable[[bytes, int], None]) -> int | None:
        """Read the RabbitMQ route's queue empty (None: the run has no RabbitMQ)."""
        if self.amqp_port is None:
            return None
        return await amqp_queue.drain(self.reactor, servers.amqp_url(self.amqp_port),
                                      servers.AMQP_QUEUE, arrived, self.log)

    async def stop(self) -> None:
        await gatherResults([Deferred.fromCoroutine(n.stop(signal.SIGTERM, 30)) for n in self.nodes],
                            consumeErrors=True)
        for proc in (self.haproxy, self.redis, self.mariadb, self.rabbitmq):
            if proc is not None:
                await proc.stop(signal.SIGTERM, 30)
        if self.network is not None:
            self.network.teardown()

    def kill_now(self) -> None:
        """At interpreter exit: nothing of ours may outlive the run."""
        for proc in [*self.nodes, self.haproxy, self.redis, self.mariadb, self.rabbitmq]:
            if proc is not None and proc.running:
                proc.send(signal.SIGCONT)
                proc.send(signal.SIGKILL)
        if self.network is not None:
            self.network.teardown()


def latency(ledger: Ledger, phase: str) -> dict[str, float]:
    """Seconds from first send to an OK, over the phase's messages: p50, p99, max."""
    times = sorted(s.answered_at - s.sent_at for s in ledger.sent.values()
                   if s.phase == phase and s.outcome == OK and s.answered_at is not None)
    if not times:
        return {}

    def pick(q: float) -> float:
        return round(times[min(len(times) - 1, int(q * len(times)))], 3)

    return {"ok_p50_s": pick(0.5), "ok_p99_s": pick(0.99), "ok_max_s": round(times[-1], 3)}


async def run(reactor: Any, settings: Settings, programs: dict[str, str], directory: str,
              log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """The whole run; the final rows and facts about the run."""
    cluster = Cluster(reactor, programs, directory, settings.nodes, log,
                      faketime="clock-step" in settings.faults,
                      rabbitmq="rabbitmq-restart" in settings.faults,
                      partition="node-partition" in settings.faults)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", cluster.kill_now)
    ledger = Ledger()
    started = reactor.seconds()
    traffic: Traffic | None = None
    notes: dict[str, dict[str, Any]] = {}
    try:
        await cluster.start()
        traffic = Traffic(
            reactor, ledger, gate=cluster.gate, api=cluster.api, users=settings.users,
            appcode=servers.APP, secret=servers.SECRET, api_key=servers.API_KEY,
            c2s_msgtype=servers.C2S_MSGTYPE,
            answer_s=settings.answer_timeout_s + settings.margin_s,
            give_up_s=settings.give_up_s, log=log,
            amqp_msgtype=servers.AMQP_MSGTYPE if cluster.amqp_port else None)
        await traffic.connect()
        from daojia_msg.consumer import consume

        stop_tail = await consume(reactor, f"redis://127.0.0.1:{cluster.redis_port}/0",
                                  servers.TOPIC, traffic.on_envelope)
        setup_s = reactor.seconds() - started
        log(f"set up in {setup_s:.1f} s; {settings.users} users logged in")
        capacity = None
        if settings.capacity_seconds > 0:
            capacity = await measure(reactor, traffic, ledger, settings, log)
            notes["capacity"] = capacity
            if settings.load is not None:
                rate = round(settings.load * capacity["capacity_per_s"], 1)
                settings = dataclasses.replace(settings, rate=rate)
                log(f"offering {settings.load:.0%} of it: {rate:g} msgs/s")
        for n, name in enumerate(settings.faults):
            phase = name if name not in notes else f"{name}#{n}"
            notes[phase] = await run_phase(reactor, cluster, traffic, ledger, settings,
                                           phase, name, n, log)
        await sleep(reactor, 1.0)
        late = await traffic.drain()
        queued = await cluster.read_queue(ledger.arrived)
        log(f"final drain: {late} more messages" + (
            f", {queued} more from the RabbitMQ queue" if queued is not None else ""))
        await stop_tail()
        await traffic.close()
        traffic = None
    finally:
        if traffic is not None:
            await traffic.close()
        await cluster.stop()
        reactor.removeSystemEventTrigger(trigger)
    rows = []
    for phase, facts in notes.items():
        row = ledger.classify(phase)
        row.notes = facts
        rows.append(row)
    return rows, {"setup_s": round(setup_s, 1), "run_s": round(reactor.seconds() - started, 1),
                  "strays": ledger.strays, "directory": directory, "rate": settings.rate,
                  "capacity_per_s": (capacity or {}).get("capacity_per_s")}


async def measure(reactor: Any, traffic: Traffic, ledger: Ledger, settings: Settings,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """The closed-loop phase "capacity": its rate of OK answers and latencies."""
    log(f"capacity: {settings.capacity_concurrency} closed-loop senders for "
        f"{settings.capacity_seconds:g} s")
    per_s = await traffic.closed_loop("capacity", settings.capacity_concurrency,
                                      settings.capacity_seconds)
    await traffic.settle()
    facts: dict[str, Any] = {"capacity_per_s": round(per_s, 1),
                             "concurrency": settings.capacity_concurrency,
                             "drained": await traffic.drain()}
    facts.update(latency(ledger, "capacity"))
    log(f"capacity: {per_s:.0f} msgs/s answered OK ({facts})")
    return facts


async def run_phase(reactor: Any, cluster: Cluster, traffic: Traffic, ledger: Ledger,
                    settings: Settings, phase: str, name: str, n: int,
                    log: Callable[[str], None]) -> dict[str, Any]:
    log(f"phase {phase}: traffic at {settings.rate:g}/s")
    kicks, drops = traffic.kickouts, traffic.disconnects
    traffic.start(phase, settings.rate)
    await sleep(reactor, settings.pre_seconds)
    frozen_uids = await on_frozen_node(cluster, traffic, name, n) if name == "node-stop" else set()
    at = reactor.seconds()
    log(f"phase {phase}: fault for {settings.fault_seconds:g} s")
    facts = await FAULTS[name](cluster, settings.fault_seconds, n)
    healed = reactor.seconds()
    facts["healed_after_s"] = round(healed - at, 2)
    log(f"phase {phase}: healed ({facts})")
    await sleep(reactor, settings.post_seconds)
    traffic.stop()
    await traffic.settle()
    if frozen_uids:
        facts["users_on_frozen_node"] = len(frozen_uids)
        # An attempt out while its node was stopped had no process to answer it.
        ledger.excuse_frozen(phase, frozen_uids, at - settings.answer_timeout_s
                             - settings.margin_s, healed)
    await sleep(reactor, 1.0)
    queued = await cluster.read_queue(ledger.arrived)
    if queued is not None:
        facts["amqp_read"] = queued
    facts["drained"] = await traffic.drain()
    await sleep(reactor, 0.5)
    facts["kickouts"] = traffic.kickouts - kicks
    facts["disconnects"] = traffic.disconnects - drops
    facts.update(latency(ledger, phase))
    row = ledger.classify(phase)
    row.notes = facts  # its KICKOUTs may be bad (Row.kicked)
    log(f"phase {phase}: sent {row.sent}, delivered {row.delivered}, bad {row.bad}, "
        f"refused {row.refused}, unconfirmed {row.unconfirmed}, no-answer attempts "
        f"{row.no_answer}, kickouts {facts['kickouts']}, disconnects {facts['disconnects']}")
    return facts


async def on_frozen_node(cluster: Cluster, traffic: Traffic, name: str, n: int) -> set[int]:
    """The users connected to the node that fault ``name`` number ``n`` stops."""
    index = n % len(cluster.nodes)
    match = re.search(rb"node (\d+) serving", cluster.nodes[index].ready_line)
    if match is None:
        return set()
    other = (index + 1) % len(cluster.nodes)
    where = await traffic.where(cluster.node_ports[other][1], cluster.node_address(other))
    return {uid for uid, node in where.items() if node == int(match.group(1))}


def check_faults(names: Sequence[str]) -> list[str]:
    """The names that are not faults."""
    return [name for name in names if name not in FAULTS]


def base_directory(keep: bool, root: str | None) -> str:
    import tempfile

    # Short: the MariaDB socket path must fit 107 bytes.
    return tempfile.mkdtemp(prefix="msgp-chaos-", dir=root or "/tmp")


def remove_directory(path: str) -> None:
    import shutil

    if os.path.basename(path).startswith("msgp-chaos-"):
        shutil.rmtree(path, ignore_errors=True)

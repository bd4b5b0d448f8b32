# -*- test-case-name: tests.test_e2e,tests.test_cluster -*-
"""One node: builds the parts from a :class:`Config` and runs them in order.

Start:

1. open the backends: the message store (SQLite, or MySQL with ``mysql.url``),
   the bus and, in a cluster (``redis.url``), Redis;
2. in a cluster, lease the node id and register (heartbeat, msgid high-water
   mark), and purge sessions an earlier holder of the id left behind;
3. bind the listeners (gate, HTTP and, in a cluster, the internal RPC), so an
   open port means ready; then publish the bound addresses and start the
   gate detector.

A Redis outage (cluster): the node keeps its connections for up to
``cluster.redis_outage_grace_s`` and serves them (LOGIN is UNAVAILABLE); once
Redis answers it re-registers them and pushes what became pending
(:mod:`daojia_msg.cluster.rejoin`); past the grace, or if another node took
its id, it kicks them with SHUTDOWN (:mod:`daojia_msg.cluster.registry`).

Stop (SIGTERM): ``/healthz`` turns 503 at once; in a cluster the node waits
``cluster.drain_grace_s`` so the balancer stops sending it connections; then
every connection gets KICKOUT SHUTDOWN, the listeners close, the node leaves
the registry and the backends close. Un-ACKed pushes stay pending.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

from google.protobuf.internal import api_implementation
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from daojia_msg import tls, tracing
from daojia_msg.admin.manhole import AdminNamespace, make_manhole_factory
from daojia_msg.bus.escalation import HttpEscalationPoster
from daojia_msg.bus.router import BusRouter
from daojia_msg.cluster.detector import GateDetector
from daojia_msg.cluster.ops import OpsView
from daojia_msg.cluster.registry import NodeRegistry
from daojia_msg.cluster.rejoin import Rejoin
from daojia_msg.cluster.rpc import RpcPeers, RpcServerFactory, registry_addresses
from daojia_msg.cluster.stats import ClusterStats, StatsFlusher
from daojia_msg.config import MANHOLE_TRACE_BUFFER, Config, ConfigError
from daojia_msg.core.errors import StoreError
from daojia_msg.gate.factory import GateFactory
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.escalation import TIMEOUT_S as ESCALATION_TIMEOUT_S
from daojia_msg.logic.escalation import Escalator
from daojia_msg.logic.inbox import Inbox
from daojia_msg.logic.interfaces import (
    IEscalations,
    ILoginThrottle,
    IMessageStore,
    IOfferStore,
    IPositions,
    ISessionStore,
)
from daojia_msg.logic.service import LogicService
from daojia_msg.metrics.bus import register_bus_metrics
from daojia_msg.metrics.cluster import LeaseCollector, RedisCollector, register_rpc_metrics
from daojia_msg.metrics.delivery import Stats
from daojia_msg.metrics.escalation import EscalationsCollector
from daojia_msg.metrics.lifecycle import LifecycleCollector
from daojia_msg.metrics.offers import OffersCollector
from daojia_msg.metrics.positions import PositionsCollector
from daojia_msg.metrics.reactorlag import ReactorLag, lag_histogram
from daojia_msg.metrics.registry import AdmissionGauges, DeliveryGauges, make_registry
from daojia_msg.metrics.store import ReadsCollector, StoreMetrics
from daojia_msg.processes import SHARED, ReusePortReactor
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import KickReason
from daojia_msg.redisconn import Redis, connect
from daojia_msg.sockets import is_loopback, listen_interface
from daojia_msg.store.datadir import DataDirLock
from daojia_msg.store.escalations import MemoryEscalations, RedisEscalations, SQLiteEscalations
from daojia_msg.store.login_throttle import MemoryLoginThrottle, RedisLoginThrottle
from daojia_msg.store.memory import MemorySessionStore
from daojia_msg.store.offers import MemoryOffers, RedisOffers
from daojia_msg.store.positions import MemoryPositions, RedisPositions
from daojia_msg.store.redis import RedisSessionStore
from daojia_msg.store.sqlite import SQLiteMessageStore
from daojia_msg.web.httpmetrics import HttpMetrics
from daojia_msg.web.site import make_site
from daojia_msg.webedge import make_edge_site

WILDCARDS = ("0.0.0.0", "::", "")


class Node(MultiService):
    log = Logger()

    store: IMessageStore
    sessions: ISessionStore
    ids: IdGenerator
    logic: LogicService
    inbox: Inbox
    gate: GateFactory
    ops: OpsView

    def __init__(self, config: Config, reactor: Any, *, reuse_port: bool = False) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: A worker of several processes: the gate and ws listeners share
        #: their port with the other workers (SO_REUSEPORT, daojia_msg/processes.py).
        self.reuse_port = reuse_port
        self.clustered = bool(config.redis.url)
        self.node_id = config.node_id if config.node_id is not None else 0
        if not config.mysql.url:
            os.makedirs(config.data_dir, exist_ok=True)
        self.router = BusRouter(config, reactor)
        self.bus = self.router.default
        self.stats = Stats(now=reactor.seconds, window_s=config.stats.window_s,
                           track_deltas=self.clustered)
        self.redis: Redis | None = None
        #: The node registry's own connection (cluster only).
        self.lease_redis: Redis | None = None
        self.registry: NodeRegistry | None = None
        self.detector: GateDetector | None = None
        self.rejoin: Rejoin | None = None
        self.stats_flusher: StatsFlusher | None = None
        self.peers: RpcPeers | None = None
        self.rpc: RpcServerFactory | None = None
        #: The recent log events about messages, by logid (GET /v1/trace, the
        #: manhole's trace()); filled only when log.trace_buffer or a manhole asks.
        buffered = config.log.trace_buffer or (
            MANHOLE_TRACE_BUFFER if config.listen.manhole else 0)
        self.trace = tracing.TraceBuffer(buffered or 1)
        self.tracing = buffered > 0
        self._tracing_off: list[Callable[[], None]] = []
        self.ports: dict[str, IListeningPort] = {}
        #: The TLS certificates a SIGHUP reloads (:meth:`reload_tls`): ssl: listeners, RPC.
        self.tls: list[tls.ServerTLS | tls.ClientTLS] = []
        self.manhole: WrappingFactory | None = None
        self._data_lock: DataDirLock | None = None
        self.draining = False
        #: Fires with None once serving, or fails with why the node could not start.
        self.ready: Deferred[None] = Deferred()

    # -- what the HTTP API asks ---------------------------------------------------

    def serving(self) -> bool:
        """``/healthz``: up, not draining, and (in a cluster) a live member."""
        live = self.registry is None or self.registry.available()
        return bool(self.running) and not self.draining and "gate" in self.ports and live

    def gate_address(self) -> tuple[str, int]:
        """Where phones reach this node's gate: ``listen.public_gate`` or the bound address."""
        if self.config.listen.public_gate:
            host, _, port = self.config.listen.public_gate.rpartition(":")
            return host, int(port)
        address: Any = self.ports["gate"].getHost()
        return address.host, address.port

    async def dispatch(self) -> tuple[str, int]:
        """The least-loaded live node's public gate (one node: this one);
        Unavailable (503) when Redis cannot say."""
        if self.registry is None:
            return self.gate_address()
        try:
            best = await self.registry.least_loaded()
        except StoreError:
            raise errors.Unavailable("the node registry (Redis) is unavailable") from None
        if best is None:
            raise errors.Unavailable("no live node")
        return best.gate_host, best.gate_port

    # -- start ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.chainDeferred(self.ready)

    async def _start(self) -> None:
        config = self.config
        if not self.clustered:
            tracing.set_node(self.node_id)  # a cluster node learns its id from its lease
        if self.tracing:  # read by GET /v1/trace and the manhole's trace(logid)
            self._tracing_off.append(self.trace.attach())
        if config.log.json_file:
            try:
                self._tracing_off.append(tracing.install(config.log.json_file))
            except OSError as e:
                raise ConfigError(f"cannot write {config.log.json_file!r}: {e.strerror}",
                                  ("log", "json_file")) from None
        backend = api_implementation.Type()
        self.log.info("protobuf backend: {backend}", backend=backend)
        if backend != "upb":
            self.log.warn("protobuf runs its slow {backend} backend, not upb", backend=backend)
        if config.demo:
            self.log.warn("running the development-only demo apps 1001 and 1002: "
                          "do not expose this node")
        if not config.mysql.url and not self.clustered:  # one node 0 to a data directory
            self._data_lock = DataDirLock(config.data_dir)
            self._data_lock.acquire()
        self.store = self._message_store()
        await self.store.start()
        await self.router.start()
        if self.clustered:
            await self._join()
        else:
            self.sessions = MemorySessionStore()
            self.ids = IdGenerator(self.node_id, self.reactor.seconds)
        self.ids.advance_past(await self.store.max_msgid())
        ip_failures = config.limits.login_ip_failures
        throttle: ILoginThrottle = (
            RedisLoginThrottle(self.redis, ip_failures) if self.redis is not None
            else MemoryLoginThrottle(self.reactor, ip_failures))
        positions: IPositions = (RedisPositions(self.redis) if self.redis is not None
                                 else MemoryPositions())
        offers: IOfferStore = RedisOffers(self.redis) if self.redis is not None else MemoryOffers()
        self.logic = LogicService(config, self.reactor, self.sessions, self.store, self.router,
                                  self.ids, self.stats, throttle, positions, offers)
        self.logic.setServiceParent(self)
        self.inbox = Inbox(self.store, config.limits, self.stats, self.logic.answers)
        self.gate = GateFactory(self.logic, self.inbox, config.limits, self.reactor)
        self.router.on_pressure = self.gate.set_pressure
        registry = make_registry(self.stats, self._connections, lambda: len(self.logic.local),
                                 self.logic.sessions.throttled, self.gate.counters,
                                 self.gate.transports)
        routes = self.logic.routing.routes
        registry.register(DeliveryGauges(self.logic.unacked_by_kind,
                                         self.logic.routing.retries_waiting,
                                         lambda: (routes.results.counts, len(routes))))
        admission = self.gate.admission
        registry.register(AdmissionGauges(lambda: (admission.limit, admission.inflight)))
        store_metrics = StoreMetrics(registry)
        registry.register(ReadsCollector(getattr(self.store, "read_stats", None),
                                         lambda: self.logic.answers.timeouts))
        register_bus_metrics(registry, self.router.published, self.router.errors,
                             lambda: self.router.pending, config.bus.max_pending,
                             self.router.reconnects)
        register_rpc_metrics(registry, lambda: (self.peers.calls, self.peers.latency)
                             if self.peers is not None else None)
        registry.register(RedisCollector(
            lambda: (self.redis.latency, self.redis.errors) if self.redis is not None else None))
        registry.register(LeaseCollector(lambda: self.registry, config.cluster.ttl_s))
        registry.register(PositionsCollector(self.logic.positions))
        registry.register(OffersCollector(self.logic.offers))
        await self._escalation(registry)
        committer = getattr(self.store, "committer", None)
        if committer is not None:  # the SQL stores: their write queue
            committer.on_pressure = functools.partial(self.gate.set_pressure, source="store")
            committer.on_flushed = store_metrics.flushed
            store_metrics.watch_waiting(lambda: committer.waiting)
        ReactorLag(self.reactor, lag_histogram(registry)).setServiceParent(self)
        registry.register(LifecycleCollector(self.logic.lifecycle))
        cluster_stats = (ClusterStats(self.redis, self.reactor, config.stats.window_s)
                         if self.redis is not None else None)
        # GET /v1/nodes and /v1/trace/{logid} (the dashboard at /ops/).
        self.ops = OpsView(node_id=self.node_id, gate=self.gate_address,
                           connections=self._connections, sessions=self._sessions,
                           started_ms=int(self.reactor.seconds() * 1000), registry=self.registry,
                           peers=lambda: self.peers,
                           records=self.trace.find if self.tracing else None)
        site = make_site(self.logic, config, serving=self.serving, dispatch=self.dispatch,
                         registry=registry, reactor=self.reactor,
                         stats=cluster_stats.snapshot if cluster_stats else None,
                         nodes=self.ops.nodes, trace=self.ops.trace,
                         http_metrics=HttpMetrics(registry))
        site.noisy = False
        if self.registry is not None:
            await self._serve_rpc()
        self.ports["gate"] = await self._listen("gate", self.gate)
        if config.listen.ws:  # the gate over WebSocket, and the console (daojia_msg/webedge.py)
            self.ports["ws"] = await self._listen("ws", make_edge_site(
                self.gate, config, self.reactor, listener=lambda: self.ports.get("ws")))
        self.ports["http"] = await self._listen("http", site)
        if config.listen.manhole:
            # Wrapped to know its open sessions: they are closed at stop, before
            # the stores and Redis they would reach.
            self.manhole = WrappingFactory(make_manhole_factory(
                self._admin_namespace(), config.admin.manhole_password, self.reactor))
            self.manhole.noisy = False
            self.ports["manhole"] = await self._listen("manhole", self.manhole)
        for name, port in self.ports.items():
            address: Any = port.getHost()
            self.log.info("{name} listening on {address}", name=name,
                          address=f"{address.host}:{address.port}" if hasattr(address, "port")
                          else getattr(address, "name", address))
        self._log_pages()
        if self.registry is not None:
            await self._announce()
        elif self.gate_address()[0] in WILDCARDS:
            self.log.warn("the gate listens on every interface: GET /v1/dispatch will answer "
                          "{host}; set listen.public_gate to the address phones use",
                          host=self.gate_address()[0])
        self.log.info("node {node_id} serving", node_id=self.node_id)

    def _log_pages(self) -> None:
        """Say where the browser pages are (the console, the dashboard)."""
        for name, page in (("ws", "console"), ("http", "ops")):
            port = self.ports.get(name)
            if port is None:
                continue
            address: Any = port.getHost()
            if not hasattr(address, "port"):
                continue
            scheme = "https" if getattr(self.config.listen, name).startswith("ssl:") else "http"
            host = "127.0.0.1" if address.host in WILDCARDS else address.host
            host = f"[{host}]" if ":" in host else host
            self.log.info("{page} page at {url}", page=page,
                          url=f"{scheme}://{host}:{address.port}/{page}/")

    async def _escalation(self, registry: Any) -> None:
        """Offline escalation, when an app has an ``escalation_url``: its
        schedule in Redis in a cluster (any node POSTs), else beside the
        embedded store (``escalations.db``), else in memory."""
        escalator: Escalator | None = None
        if any(app.escalation_url for app in self.config.apps.values()):
            schedule: IEscalations = (
                RedisEscalations(self.redis) if self.redis is not None
                else MemoryEscalations() if self.config.mysql.url
                else SQLiteEscalations(os.path.join(self.config.data_dir, "escalations.db"),
                                       self.reactor))
            await schedule.start()
            escalator = Escalator(self.logic.ctx, schedule, self.store,
                                  HttpEscalationPoster(self.reactor, ESCALATION_TIMEOUT_S),
                                  cancel_on_ack=isinstance(schedule, MemoryEscalations))
            self.logic.sending.escalator = escalator
            escalator.setServiceParent(self)
        registry.register(EscalationsCollector(lambda: escalator.counts if escalator else None))

    def _message_store(self) -> IMessageStore:
        if self.config.mysql.url:
            from daojia_msg.store.mysql import MySQLMessageStore

            return MySQLMessageStore(self.config.mysql, self.reactor,
                                     retention=self.config.store)
        data_dir = os.path.abspath(self.config.data_dir)
        self.log.info("data directory {data_dir} (node.data_dir)", data_dir=data_dir)
        return SQLiteMessageStore(os.path.join(data_dir, "messages.db"), self.reactor,
                                  retention=self.config.store)

    async def _listen(self, name: str, factory: Any) -> IListeningPort:
        """Listen on ``listen.<name>``; one that cannot be bound stops start-up
        with a line that names the key."""
        description = getattr(self.config.listen, name)
        reactor = (ReusePortReactor(self.reactor) if self.reuse_port and name in SHARED
                   else self.reactor)
        try:
            endpoint, server_tls = tls.server_endpoint(reactor, description, name)
        except tls.TLSError as e:
            raise ConfigError(str(e), ("listen", name)) from None
        if server_tls is not None:
            self.tls.append(server_tls)
        try:
            port: IListeningPort = await endpoint.listen(factory)
        except CannotListenError as e:
            raise ConfigError(f"cannot listen on {description!r}: {e.socketError}",
                              ("listen", name)) from None
        return port

    async def _join(self) -> None:
        """Connect to Redis, lease the node id and register (cluster)."""
        config = self.config
        self.redis = await connect(config.redis)
        # The lease and the registration on a connection of their own: their
        # commands never wait behind a backlog of per-message ones, nor fail
        # with a pooled connection dropped for a late reply under load.
        self.lease_redis = await connect(dataclasses.replace(config.redis, pool_size=1))
        sessions = RedisSessionStore(self.redis, self.node_id)
        self.sessions = sessions
        self.registry = NodeRegistry(
            self.lease_redis, config.cluster, self.reactor, wanted_id=config.node_id,
            gate=("", 0), rpc=("", 0),  # published once the listeners are bound
            connections=self._connections, sessions=self._sessions,
            on_purged=self._purged, on_rejoin=self._rejoin,
        )
        self.node_id = await self.registry.start()
        tracing.set_node(self.node_id)
        sessions.node_id = self.node_id
        assert self.registry.ids is not None
        self.ids = self.registry.ids
        stale = await sessions.purge_node(self.node_id)
        if stale:
            self.log.info("purged {count} sessions an earlier node {node_id} left behind",
                          count=stale, node_id=self.node_id)

    async def _serve_rpc(self) -> None:
        config = self.config
        assert self.registry is not None
        self.rpc = RpcServerFactory(self.logic, self.reactor, config.cluster.rpc_secret,
                                    max_content=config.limits.max_content,
                                    trace=self.ops.local_events)
        server_tls, client_tls = rpc_tls(config)
        if server_tls is not None and client_tls is not None:
            self.tls += [server_tls, client_tls]
            self.ports["rpc"] = await self._listen("rpc", TLSMemoryBIOFactory(
                server_tls, False, self.rpc))
        else:
            self.ports["rpc"] = await self._listen("rpc", self.rpc)
        self.peers = RpcPeers(self.reactor, registry_addresses(self.registry),
                              node_id=self.node_id, secret=config.cluster.rpc_secret,
                              timeout=config.cluster.rpc_timeout_s, tls=client_tls)
        self.logic.peers = self.peers
        # Serving (msgids, its own sessions) through a Redis outage within the
        # grace; LOGIN only while a live member that reaches Redis.
        self.logic.available = self.registry.serving
        self.logic.ctx.logins = self.registry.available
        sessions = self.sessions
        assert isinstance(sessions, RedisSessionStore)
        logic = self.logic
        self.rejoin = Rejoin(
            lambda: self.node_id, sessions, self.store, logic,
            live=lambda: [s.record for s in logic.local.values() if s.conn.connected],
            lease=self.registry.lease_guard, peers=lambda: self.peers)

    async def _announce(self) -> None:
        """Publish the bound addresses (joining dispatch) and start the detector."""
        assert self.registry is not None and self.redis is not None
        rpc: Any = self.ports["rpc"].getHost()
        self.registry.gate = self.gate_address()
        self.registry.rpc = (rpc.host, rpc.port)
        await self.registry.heartbeat()
        sessions = self.sessions
        assert isinstance(sessions, RedisSessionStore)
        redis = self.redis

        def purge_dead(node_id: int) -> Deferred[int]:
            return sessions.purge_dead_node(node_id, redis.key("node", node_id))

        self.detector = GateDetector(self.redis, self.registry, purge_dead, self.reactor,
                                     self.config.cluster)
        self.detector.start()
        self.stats_flusher = StatsFlusher(self.redis, self.stats, self.reactor,
                                          self.config.stats.flush_s)
        self.stats_flusher.start()

    def _admin_namespace(self) -> dict[str, Any]:
        """What the admin manhole offers: online, kick, stats, nodes, trace."""
        cluster_stats = (ClusterStats(self.redis, self.reactor, self.config.stats.window_s)
                         if self.redis is not None else None)
        return AdminNamespace(
            lookup_uid=self.sessions.lookup_uid,
            kickout=self.logic.kickout,
            stats=cluster_stats.snapshot if cluster_stats else self.stats.snapshot,
            this_node=lambda: {"node_id": self.node_id, "gate_host": self.gate_address()[0],
                               "gate_port": self.gate_address()[1],
                               "connections": self._connections()},
            live_nodes=self.registry.live_nodes if self.registry is not None else None,
            trace=self.trace.find,
        ).namespace()

    def reload_tls(self) -> int:
        """Read every TLS certificate and key again (SIGHUP): new handshakes
        use them, open connections keep theirs; a file that cannot be used is
        logged and the one in use kept. How many were reloaded."""
        if not self.tls:
            self.log.info("SIGHUP: no TLS certificate to reload")
            return 0
        reloaded = sum(1 for t in self.tls if t.reload())
        self.log.info("SIGHUP: reloaded {reloaded} of {count} TLS certificates",
                      reloaded=reloaded, count=len(self.tls))
        return reloaded

    def _connections(self) -> int:
        return len(self.gate.connections) if hasattr(self, "gate") else 0

    def _sessions(self) -> int:
        return len(self.logic.local) if hasattr(self, "logic") else 0

    def _purged(self) -> None:
        """The registry gives this node's connections up (cut off from Redis
        past the grace, or its id taken): their sessions were dropped
        cluster-wide, so they go, and reconnect to nodes that can serve them."""
        if not hasattr(self, "logic"):
            return
        kicked = self.logic.kick_all(KickReason.SHUTDOWN, "node re-registering")
        self.log.warn("this node gave its connections up: kicked {count} sessions",
                      count=kicked)

    async def _rejoin(self) -> None:
        """The registry holds the lease again after an outage: re-register the
        sessions, push them what is pending (nothing to do while starting)."""
        if self.rejoin is not None:
            await self.rejoin()

    # -- stop -----------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        self.draining = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.registry is not None and "gate" in self.ports:
            # Out of GET /v1/dispatch at once; the RPC address stays: other
            # nodes still deliver to the sessions here.
            await self.registry.withdraw_gate()
        if self.registry is not None and "gate" in self.ports and self.config.cluster.drain_grace_s:
            self.log.info("draining: /healthz is 503; KICKOUT SHUTDOWN in {grace} s",
                          grace=self.config.cluster.drain_grace_s)
            await deferLater(self.reactor, self.config.cluster.drain_grace_s, lambda: None)
        if hasattr(self, "logic"):
            kicked = self.logic.kick_all(KickReason.SHUTDOWN, "server shutting down")
            self.log.info("stopping: kicked {count} sessions", count=kicked)
        await DeferredList([Deferred.fromCoroutine(_stop_port(p)) for p in self.ports.values()])
        self.ports.clear()
        if self.manhole is not None:
            for session in list(self.manhole.protocols):
                session.transport.abortConnection()
        if hasattr(self, "gate"):
            # Kicked connections close politely; the rest are closed now. Each
            # aborts by itself after limits.close_grace_s if its peer lingers.
            for conn in list(self.gate.connections):
                conn.close()
            await self.gate.when_empty()
        if self.detector is not None:
            await self.detector.stop()
        if self.rejoin is not None:
            await self.rejoin.stop()
        if self.registry is not None:
            await self.registry.stop()
        if self.peers is not None:
            await self.peers.close()
        if self.rpc is not None:
            await self.rpc.disconnect_all()
        stopped: Any = super().stopService()
        if stopped is not None:
            await stopped
        await self.router.stop()
        if self.stats_flusher is not None:  # after the last count (logic, buses stopped)
            await self.stats_flusher.stop()
        if hasattr(self, "store"):
            await self.store.stop()
        if self._data_lock is not None:
            self._data_lock.release()
        for redis in (self.redis, self.lease_redis):
            if redis is not None:
                await redis.close()
        for off in reversed(self._tracing_off):
            off()
        self._tracing_off.clear()


async def _stop_port(port: IListeningPort) -> None:
    stopped: Any = port.stopListening()
    if stopped is not None:
        await stopped


def rpc_tls(config: Config) -> tuple[tls.ServerTLS | None, tls.ClientTLS | None]:
    """The internal RPC's mutual TLS (``cluster.rpc_tls_*``), or (None, None);
    a file that cannot be used is a ConfigError naming its key."""
    cluster = config.cluster
    if not cluster.rpc_tls_cert:
        return None, None
    try:
        return (tls.ServerTLS("rpc", cluster.rpc_tls_cert, cluster.rpc_tls_key,
                              ca=cluster.rpc_tls_ca),
                tls.ClientTLS("rpc client", cluster.rpc_tls_cert, cluster.rpc_tls_key,
                              cluster.rpc_tls_ca))
    except tls.TLSError as e:
        raise ConfigError(str(e), ("cluster", f"rpc_tls_{e.role or 'cert'}")) from None


def check_cluster_config(config: Config) -> None:
    """What only makes sense for a cluster, checked before anything starts."""
    if not config.redis.url:
        return
    if tls.is_tls(config.listen.rpc):
        raise ConfigError("the internal RPC takes TLS from cluster.rpc_tls_cert, rpc_tls_key "
                          "and rpc_tls_ca (mutual TLS) on a tcp: listener", ("listen", "rpc"))
    host = listen_interface(config.listen.rpc) or ""
    if host in WILDCARDS:
        raise ConfigError("in a cluster the RPC listener must name the interface other nodes "
                          "reach (tcp:PORT:interface=ADDRESS)", ("listen", "rpc"))
    rpc_tls(config)
    if not config.cluster.rpc_secret and not config.cluster.rpc_tls_cert and not is_loopback(host):
        raise ConfigError("required when listen.rpc is not a loopback address",
                          ("cluster", "rpc_secret"))

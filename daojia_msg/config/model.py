# -*- test-case-name: tests.config.test_model -*-
"""The configuration's typed, frozen objects and the built-in default (the demo apps)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daojia_msg.ids import IdGenerator

__all__ = [
    "DEMO_APPS",
    "DEMO_GATE",
    "DEMO_OFFERS",
    "DEMO_ROUTES",
    "DEFAULT_WS",
    "MANHOLE_TRACE_BUFFER",
    "MAX_TRACE_BUFFER",
    "DEMO_TRACE_BUFFER",
    "MAX_NODE_ID",
    "MAX_PROCESSES",
    "AdminConfig",
    "AppConfig",
    "BusConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "GeoConfig",
    "OffersConfig",
    "Limits",
    "ListenConfig",
    "LogConfig",
    "MySQLConfig",
    "RedisConfig",
    "Route",
    "StatsConfig",
    "StoreConfig",
    "WsConfig",
    "default_config",
]

MAX_NODE_ID = 1023
#: ``node.processes``: node processes on one host (docs/operations.md §3).
MAX_PROCESSES = 64


class ConfigError(Exception):
    """A bad configuration value; ``path`` is the key path, e.g. ``("limits", "max_body")``."""

    def __init__(self, msg: str, path: Iterable[str] = ()) -> None:
        self.msg = msg
        self.path = tuple(path)
        super().__init__(f"{'.'.join(self.path)}: {msg}" if self.path else msg)


@dataclass(frozen=True, slots=True)
class AppConfig:
    appcode: int
    usersystem: str
    name: str = ""
    secret: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    #: msgtypes whose content is rich text (docs/protocol.md §7.2).
    rich_msgtypes: frozenset[int] = frozenset()
    #: msgtypes whose pushes overtake the others on a congested connection
    #: (the priority lane: docs/protocol.md, Back-pressure).
    priority_msgtypes: frozenset[int] = frozenset()
    #: Where a push with ``escalate_after_s`` not ACKed in time is POSTed
    #: (docs/operations.md §14); "": pushes to this app
    #: cannot ask for escalation.
    escalation_url: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """C2S ``(appcode, msgtype) -> topic`` on a bus: ``bus`` names one of
    ``[buses.<name>]``, or is "" for the default ``[bus] url``."""

    appcode: int
    msgtype: int
    topic: str
    bus: str = ""
    #: The content is a position, kept as the sender's latest (docs/protocol.md §7.5).
    geo: bool = False


@dataclass(frozen=True, slots=True)
class BusConfig:
    """The default C2S bus and the knobs of every bus (``[bus]``)."""

    url: str = field(default="memory:", repr=False)  # may carry a password
    #: C2S frames waiting for their bus, all buses together; beyond it the gate
    #: stops reading client sockets until the buses catch up (back-pressure).
    max_pending: int = 10000
    #: Redis Streams: XADD ... MAXLEN ~ this.
    stream_maxlen: int = 1_000_000
    #: RabbitMQ: the topic exchange C2S messages are published to.
    amqp_exchange: str = "msgplatform.c2s"
    #: Webhooks: seconds per attempt, attempts after the first, requests at once per route.
    #: Every attempt must fit in publish_timeout_s: timeout x (1 + retries) < it.
    webhook_timeout_s: float = 1.0
    webhook_retries: int = 3
    webhook_concurrency: int = 16
    #: A publish that the bus has not accepted after this long is TIMEOUT.
    publish_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin manhole (``[admin]``); it refuses to start without a password."""

    manhole_password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``json_file``: also write every log event as one JSON object a line to
    this file (with logid, uid, appcode, msgid and node as fields; ``msgctl
    trace`` reads it), beside twistd's text log. "" = off.

    ``trace_buffer``: keep the last this many events that carry a logid in
    memory, for ``GET /v1/trace/{logid}`` (the dashboard) and the manhole's
    ``trace()``. 0 = none, unless the manhole is on (it keeps
    :data:`MANHOLE_TRACE_BUFFER`); a try-out node with the demo apps keeps
    :data:`DEMO_TRACE_BUFFER`, so that the dashboard's logid search works from
    the first message. Filling it costs CPU on every message (about 7% of C2C
    throughput), which is why a configured node keeps none by default."""

    json_file: str = ""
    trace_buffer: int = 0


#: The trace buffer a manhole keeps when ``log.trace_buffer`` is 0.
MANHOLE_TRACE_BUFFER = 10000
#: The trace buffer of the built-in default (the demo apps, no config file).
DEMO_TRACE_BUFFER = 10000
#: The largest ``log.trace_buffer`` (and ``--trace-buffer``).
MAX_TRACE_BUFFER = 1_000_000


@dataclass(frozen=True, slots=True)
class StatsConfig:
    """``window_s``: the sliding window of the delivery rate; ``flush_s``: how
    often a node adds its counts to the cluster-wide ones in Redis."""

    window_s: float = 300.0
    flush_s: float = 1.0


@dataclass(frozen=True, slots=True)
class ListenConfig:
    gate: str = "tcp:7000"
    http: str = "tcp:8080:interface=127.0.0.1"
    rpc: str = "tcp:7100:interface=127.0.0.1"
    manhole: str = ""
    public_gate: str = ""
    #: The gate over WebSocket (docs/protocol.md §7.3); "" = off. Config files
    #: and the built-in default get :data:`DEFAULT_WS`; a Config built in code
    #: opens no extra port unless it asks (nodes sharing a host need distinct ones).
    ws: str = ""


#: ``listen.ws`` unless a config file says otherwise.
DEFAULT_WS = "tcp:7070:interface=127.0.0.1"


@dataclass(frozen=True, slots=True)
class WsConfig:
    """``[ws]``: ``allowed_origins``, origins (``scheme://host[:port]``) a
    browser page may open the WebSocket gate from, beside the endpoint's own."""

    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = 65536
    max_content: int = 65000
    login_timeout_s: float = 10.0
    heartbeat_s: int = 60
    idle_timeout_s: float = 180.0
    ack_timeout_s: float = 10.0
    max_repush: int = 3
    rate_per_s: float = 500.0
    rate_burst: int = 1000
    abuse_excess: int = 1000
    abuse_window_s: float = 10.0
    max_conn_per_ip: int = 5000
    login_ip_failures: int = 100
    max_inflight: int = 256
    #: C2C and C2S requests in work at once on the whole node (admission
    #: control); beyond, new ones are answered RATE_LIMITED at once. 0 = no bound.
    node_max_inflight: int = 2000
    #: The latency admission aims at: the bound in force follows the time
    #: admitted C2C and C2S take to be answered, between 32 and
    #: ``node_max_inflight`` (HTTP pushes: up to ``http_max_inflight``) (:class:`~daojia_msg.core.admission.Admission`).
    #: 0 = a fixed count. 150 ms, not more: a message under overload waits
    #: like this at its sender's node and again on its way to the recipient
    #: (the push, the other node), and the platform's promise is within a
    #: second end to end (two nodes at twice their capacity: push p99
    #: 0.65-1.1 s at 150 ms but for one run of twelve, 1.2-2.5 s at 250;
    #: BENCHMARKS.md, "The admission target at 150 ms").
    admission_target_ms: float = 150.0
    #: HTTP pushes (single and batch requests) in work at once on the node;
    #: beyond, 429 with Retry-After. 0 = no bound.
    http_max_inflight: int = 256
    page_default: int = 20
    page_cap: int = 100
    max_ack_ids: int = 1000
    max_id_len: int = 128
    http_max_body: int = 8 * 1024 * 1024
    push_batch_max: int = 1000
    close_grace_s: float = 5.0
    write_stall_s: float = 60.0
    #: Frames a congested connection's lane holds at most (Results, priority
    #: pushes, other pushes: each its own lane); past it the connection is closed.
    lane_max: int = 1000


@dataclass(frozen=True, slots=True)
class StoreConfig:
    dedup_days: float = 7.0
    #: A C2C, S2C or ACK that waits on the message store (or a delivery) longer
    #: than this, counted from when its frame or request was read, is answered
    #: TIMEOUT (HTTP 504); a LOGIN, PULL or HISTORY, UNAVAILABLE.
    answer_timeout_s: float = 3.0
    #: A pending message older than this (by its msgid's time) is expired: never
    #: pushed, pulled or counted again, counted ``expired``, then purged.
    pending_ttl_days: float = 30.0
    #: How often the purger runs (expired, delivered, old history, de-dup keys).
    purge_interval_s: float = 60.0
    #: History rows older than this are deleted, and never returned by HISTORY.
    history_days: float = 180.0
    #: At most this many rows per DELETE statement (each its own transaction).
    purge_batch: int = 100
    #: A node purges at most this many rows a second (it waits after each
    #: batch for its share): the purge's load on the database stays bounded
    #: however large the backlog. 0 = as fast as the database goes.
    purge_max_rows_per_s: float = 1000.0

    @property
    def pending_ttl_ms(self) -> int:
        return int(self.pending_ttl_days * 86_400_000)

    @property
    def history_ms(self) -> int:
        return int(self.history_days * 86_400_000)

    def pending_floor(self, now_ms: int) -> int:
        """The smallest msgid not expired at Unix ms ``now_ms`` (a msgid
        embeds its time): older pending messages are never served again."""
        return IdGenerator.floor_for(now_ms - self.pending_ttl_ms)

    def history_floor(self, now_ms: int) -> int:
        """The smallest msgid whose history rows are kept at Unix ms ``now_ms``."""
        return IdGenerator.floor_for(now_ms - self.history_ms)


@dataclass(frozen=True, slots=True)
class GeoConfig:
    """Live positions of geo routes (``[geo]``)."""

    #: A position not reported again for this long is dropped (at least 5).
    max_age_s: float = 60.0


@dataclass(frozen=True, slots=True)
class OffersConfig:
    """Nearby order offers (``[offers]``): 0 and 0 = off (``POST /v1/offers`` is 400)."""

    #: A C2S of this msgtype is an accept of the offer its content names.
    accept_msgtype: int = 0
    #: The msgtype of the outcome S2C (won, taken, expired).
    result_msgtype: int = 0


#: The demo apps' offers: accepts on msgtype 3, outcomes on msgtype 4.
DEMO_OFFERS = OffersConfig(accept_msgtype=3, result_msgtype=4)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Sessions and the node registry in Redis (``[redis]``); ``url`` "" = off."""

    url: str = field(default="", repr=False)  # may carry a password
    reply_timeout_s: float = 2.0
    key_prefix: str = "msgp:"
    pool_size: int = 4


@dataclass(frozen=True, slots=True)
class MySQLConfig:
    """Messages in MySQL (``[mysql]``); ``url`` "" = SQLite under ``node.data_dir``.

    Pending and history rows are spread over ``shards`` tables in each database
    (``url`` first, then ``databases``), by the owner's uid.
    """

    url: str = field(default="", repr=False)
    databases: tuple[str, ...] = field(default=(), repr=False)
    shards: int = 16
    pool_min: int = 3
    pool_max: int = 10
    #: Group-commit transactions in flight at once per node (lanes by uid), at
    #: most ``pool_max``: one flush's round trips and commit overlap the next.
    flushes_in_flight: int = 2
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    write_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Timers of a cluster of nodes (``[cluster]``), used only with ``[redis] url``."""

    heartbeat_s: float = 2.0
    ttl_s: float = 6.0
    rpc_timeout_s: float = 3.0
    drain_grace_s: float = 5.0
    #: While Redis is unreachable a node keeps its connections and serves them
    #: (LOGIN is UNAVAILABLE) for this long after its last heartbeat; then it
    #: kicks them with SHUTDOWN (docs/operations.md §3, "Redis outages").
    redis_outage_grace_s: float = 30.0
    #: A recipient found on another node is pushed to again without a session
    #: look-up for this long (0: a look-up each time; docs/operations.md §3).
    route_ttl_s: float = 1.0
    #: Shared secret of the internal RPC; required unless listen.rpc is loopback
    #: or the RPC runs over mutual TLS.
    rpc_secret: str = field(default="", repr=False)
    #: Mutual TLS on the internal RPC (all three or none; PEM files): this
    #: node's certificate and key, and the CA that signed every node's.
    rpc_tls_cert: str = ""
    rpc_tls_key: str = ""
    rpc_tls_ca: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    node_id: int | None = None
    data_dir: str = "./var"
    #: Node processes on this host sharing the gate's port (1: this process
    #: is the node; more: a supervisor and that many workers, a cluster).
    processes: int = 1
    listen: ListenConfig = ListenConfig()
    limits: Limits = Limits()
    store: StoreConfig = StoreConfig()
    redis: RedisConfig = RedisConfig()
    mysql: MySQLConfig = MySQLConfig()
    cluster: ClusterConfig = ClusterConfig()
    bus: BusConfig = BusConfig()
    #: Named buses of ``[buses.<name>]``: name -> URL.
    buses: Mapping[str, str] = field(default_factory=dict, repr=False)
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    stats: StatsConfig = StatsConfig()
    ws: WsConfig = WsConfig()
    geo: GeoConfig = GeoConfig()
    offers: OffersConfig = OffersConfig()
    apps: Mapping[int, AppConfig] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    demo: bool = False

    def app(self, appcode: int) -> AppConfig | None:
        return self.apps.get(appcode)

    def route_for(self, appcode: int, msgtype: int) -> Route | None:
        for route in self.routes:
            if route.appcode == appcode and route.msgtype == msgtype:
                return route
        return None

    def topic_for(self, appcode: int, msgtype: int) -> str | None:
        route = self.route_for(appcode, msgtype)
        return route.topic if route is not None else None

    def bus_url(self, name: str) -> str:
        """The URL of bus ``name`` ("" is the default bus)."""
        return self.buses[name] if name else self.bus.url

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


DEMO_APPS = {
    1001: AppConfig(1001, "demo", "demo customer app", "demo-secret-1001", "demo-key-1001",
                    frozenset({10})),
    1002: AppConfig(1002, "demo", "demo driver app", "demo-secret-1002", "demo-key-1002",
                    frozenset({10}), priority_msgtypes=frozenset({5})),  # 5: new orders
}
DEMO_ROUTES = tuple(
    Route(appcode, msgtype, topic, geo=geo)
    for appcode in DEMO_APPS
    for msgtype, topic, geo in ((1, "gps", True), (2, "order-events", False))
)


#: The gate while the demo apps run, unless a gate is given: their secrets are
#: public, so by default only this machine reaches it (``--demo`` allows more).
DEMO_GATE = "tcp:7000:interface=127.0.0.1"


def default_config() -> Config:
    """What ``twistd msgplatform`` runs with no ``--config``: the demo apps included."""
    return Config(apps=dict(DEMO_APPS), routes=DEMO_ROUTES, demo=True, offers=DEMO_OFFERS,
                  listen=ListenConfig(gate=DEMO_GATE, ws=DEFAULT_WS),
                  log=LogConfig(trace_buffer=DEMO_TRACE_BUFFER))



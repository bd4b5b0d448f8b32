# -*- test-case-name: tests.config.test_parse -*-
"""TOML text to :class:`~daojia_msg.config.model.Config`, every key checked."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from typing import Any

from daojia_msg.config.model import (
    DEFAULT_WS,
    DEMO_APPS,
    DEMO_GATE,
    DEMO_TRACE_BUFFER,
    MAX_NODE_ID,
    MAX_PROCESSES,
    MAX_TRACE_BUFFER,
    AdminConfig,
    AppConfig,
    BusConfig,
    ClusterConfig,
    Config,
    ConfigError,
    GeoConfig,
    Limits,
    ListenConfig,
    LogConfig,
    MySQLConfig,
    OffersConfig,
    RedisConfig,
    Route,
    StatsConfig,
    StoreConfig,
    WsConfig,
)
from daojia_msg.config.urls import check_http_url, check_urls


class _Table:
    """Reads one TOML table, checking each key; :meth:`done` rejects the rest."""

    def __init__(self, data: Any, path: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a table, got {data!r}", path)
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    # Before int/float/str: below them, ``str`` in an annotation names the method.
    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"expected an array of strings, got {value!r}", (*self.path, key))
        return tuple(value)

    def int_set(self, key: str, lo: int, hi: int) -> frozenset[int]:
        value = self._get(key)
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value):
            raise ConfigError(f"expected an array of integers from {lo} to {hi}, got {value!r}",
                              (*self.path, key))
        return frozenset(value)

    def table(self, key: str) -> _Table:
        value = self._get(key)
        return _Table({} if value is None else value, (*self.path, key))

    def int(self, key: str, default: int | None, lo: int = 0, hi: int = 2**63 - 1) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"expected an integer from {lo} to {hi}, got {value!r}", (*self.path, key))
        return value

    def float(self, key: str, default: float, lo: float = 0.0) -> float:
        value = self._get(key)
        if value is None:
            return default
        # ``not value >= lo`` refuses NaN too (TOML allows ``nan``).
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= lo:
            raise ConfigError(f"expected a number >= {lo:g}, got {value!r}", (*self.path, key))
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", (*self.path, key))
        return value

    def str(self, key: str, default: str, required: bool = False) -> str:
        value = self._get(key)
        if value is None:
            if required:
                # A misspelt key reads as a missing one: name the key that is there.
                unread = [k for k in self.data if k not in self.seen]
                for typo in difflib.get_close_matches(key, unread, n=1):
                    raise ConfigError(f"unknown key (did you mean {key!r}?)", (*self.path, typo))
                raise ConfigError("is required", (*self.path, key))
            return default
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", (*self.path, key))
        return value

    def done(self) -> None:
        for key in self.data:
            if key not in self.seen:
                near = difflib.get_close_matches(key, sorted(self.seen), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"unknown key{hint}", (*self.path, key))


def _limits(t: _Table) -> Limits:
    d = Limits()
    heartbeat = t.int("heartbeat_s", d.heartbeat_s, 1, 3600)
    limits = Limits(
        max_body=t.int("max_body", d.max_body, 64, 64 * 1024 * 1024),
        max_content=t.int("max_content", d.max_content, 1, 64 * 1024 * 1024),
        login_timeout_s=t.float("login_timeout_s", d.login_timeout_s, 0.1),
        heartbeat_s=heartbeat,
        idle_timeout_s=t.float("idle_timeout_s", 3.0 * heartbeat, 1.0),
        ack_timeout_s=t.float("ack_timeout_s", d.ack_timeout_s, 0.01),
        max_repush=t.int("max_repush", d.max_repush, 0, 100),
        rate_per_s=t.float("rate_per_s", d.rate_per_s, 0.001),
        rate_burst=t.int("rate_burst", d.rate_burst, 1),
        abuse_excess=t.int("abuse_excess", d.abuse_excess, 1),
        abuse_window_s=t.float("abuse_window_s", d.abuse_window_s, 0.001),
        max_conn_per_ip=t.int("max_conn_per_ip", d.max_conn_per_ip, 1),
        login_ip_failures=t.int("login_ip_failures", d.login_ip_failures, 0, 10_000_000),
        max_inflight=t.int("max_inflight", d.max_inflight, 1, 100000),
        node_max_inflight=t.int("node_max_inflight", d.node_max_inflight, 0, 10_000_000),
        admission_target_ms=t.float("admission_target_ms", d.admission_target_ms, 0.0),
        http_max_inflight=t.int("http_max_inflight", d.http_max_inflight, 0, 1_000_000),
        page_default=t.int("page_default", d.page_default, 1, 10000),
        page_cap=t.int("page_cap", d.page_cap, 1, 10000),
        max_ack_ids=t.int("max_ack_ids", d.max_ack_ids, 1, 100000),
        max_id_len=t.int("max_id_len", d.max_id_len, 1, 4096),
        http_max_body=t.int("http_max_body", d.http_max_body, 1024, 1024**3),
        push_batch_max=t.int("push_batch_max", d.push_batch_max, 1, 100000),
        close_grace_s=t.float("close_grace_s", d.close_grace_s, 0.0),
        write_stall_s=t.float("write_stall_s", d.write_stall_s, 1.0),
        lane_max=t.int("lane_max", d.lane_max, 1, 1_000_000),
    )
    t.done()
    if limits.page_default > limits.page_cap:
        raise ConfigError(
            f"must not exceed limits.page_cap ({limits.page_cap})", (*t.path, "page_default")
        )
    if limits.max_content > limits.max_body - 256:
        # A pushed Message (content + header fields) must fit one frame body.
        raise ConfigError(
            f"must leave 256 bytes of limits.max_body ({limits.max_body}) for the Message fields",
            (*t.path, "max_content"),
        )
    return limits


def _apps(data: Any) -> dict[int, AppConfig]:
    apps: dict[int, AppConfig] = {}
    keys: dict[str, int] = {}
    top = _Table(data, ("apps",))
    for name in data:
        try:
            appcode = int(name)
        except ValueError:
            appcode = -1
        if not 1 <= appcode <= 2**32 - 1 or str(appcode) != name:
            raise ConfigError("an app's key is its appcode, an integer from 1 to 4294967295", ("apps", name))
        t = top.table(name)
        app = AppConfig(
            appcode=appcode,
            usersystem=t.str("usersystem", "", required=True),
            name=t.str("name", ""),
            secret=t.str("secret", "", required=True),
            api_key=t.str("api_key", ""),
            rich_msgtypes=t.int_set("rich_msgtypes", 0, 2**32 - 1),
            priority_msgtypes=t.int_set("priority_msgtypes", 0, 2**32 - 1),
            escalation_url=t.str("escalation_url", ""),
        )
        t.done()
        if not app.usersystem or len(app.usersystem.encode()) > 255:
            raise ConfigError("expected 1 to 255 bytes", ("apps", name, "usersystem"))
        if len(app.secret) < 8:
            raise ConfigError("must be at least 8 characters", ("apps", name, "secret"))
        if app.escalation_url:
            check_http_url(app.escalation_url, ("apps", name, "escalation_url"))
        if app.api_key:
            if app.api_key in keys:
                raise ConfigError(f"is the same as apps.{keys[app.api_key]}.api_key", ("apps", name, "api_key"))
            keys[app.api_key] = appcode
        apps[appcode] = app
    return apps


def _routes(data: Any, apps: Mapping[int, AppConfig], buses: Mapping[str, str]
            ) -> tuple[Route, ...]:
    if not isinstance(data, list):
        raise ConfigError(f"expected an array of tables ([[routes]]), got {data!r}", ("routes",))
    routes: list[Route] = []
    seen: set[tuple[int, int]] = set()
    for i, item in enumerate(data):
        t = _Table(item, ("routes", str(i)))
        route = Route(
            appcode=t.int("appcode", None, 1, 2**32 - 1),
            msgtype=t.int("msgtype", None, 0, 2**32 - 1),
            topic=t.str("topic", "", required=True),
            bus=t.str("bus", ""),
            geo=t.flag("geo", False),
        )
        t.done()
        if route.appcode is None or route.msgtype is None:
            raise ConfigError("is required", (*t.path, "appcode" if route.appcode is None else "msgtype"))
        if route.appcode not in apps:
            raise ConfigError(f"no app {route.appcode} is configured", (*t.path, "appcode"))
        if not route.topic or len(route.topic) > 200:
            raise ConfigError("expected a topic name of 1 to 200 characters", (*t.path, "topic"))
        if route.bus and route.bus not in buses:
            raise ConfigError(f"no bus {route.bus!r} is configured ([buses.{route.bus}])",
                              (*t.path, "bus"))
        if (route.appcode, route.msgtype) in seen:
            raise ConfigError("a route for this (appcode, msgtype) is already configured", t.path)
        seen.add((route.appcode, route.msgtype))
        routes.append(route)
    return tuple(routes)


def _bus(t: _Table) -> BusConfig:
    d = BusConfig()
    bus = BusConfig(
        url=t.str("url", d.url),
        max_pending=t.int("max_pending", d.max_pending, 1, 10_000_000),
        stream_maxlen=t.int("stream_maxlen", d.stream_maxlen, 1),
        amqp_exchange=t.str("amqp_exchange", d.amqp_exchange),
        webhook_timeout_s=t.float("webhook_timeout_s", d.webhook_timeout_s, 0.1),
        webhook_retries=t.int("webhook_retries", d.webhook_retries, 0, 100),
        webhook_concurrency=t.int("webhook_concurrency", d.webhook_concurrency, 1, 10000),
        publish_timeout_s=t.float("publish_timeout_s", d.publish_timeout_s, 0.1),
    )
    t.done()
    attempts = bus.webhook_timeout_s * (1 + bus.webhook_retries)
    if attempts >= bus.publish_timeout_s:
        raise ConfigError(
            f"{bus.webhook_retries + 1} webhook attempts of {bus.webhook_timeout_s:g} s "
            f"({attempts:g} s) must fit in bus.publish_timeout_s ({bus.publish_timeout_s:g} s)",
            (*t.path, "webhook_timeout_s"),
        )
    return bus


def _buses(t: _Table) -> dict[str, str]:
    buses = {}
    for name in t.data:
        sub = t.table(name)
        buses[name] = sub.str("url", "", required=True)
        sub.done()
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("a bus name is letters, digits, - and _", sub.path)
    return buses


def _redis(t: _Table) -> RedisConfig:
    d = RedisConfig()
    redis = RedisConfig(
        url=t.str("url", d.url),
        reply_timeout_s=t.float("reply_timeout_s", d.reply_timeout_s, 0.01),
        key_prefix=t.str("key_prefix", d.key_prefix),
        pool_size=t.int("pool_size", d.pool_size, 1, 256),
    )
    t.done()
    return redis


def _mysql(t: _Table) -> MySQLConfig:
    d = MySQLConfig()
    mysql = MySQLConfig(
        url=t.str("url", d.url),
        databases=t.str_list("databases"),
        shards=t.int("shards", d.shards, 1, 1024),
        pool_min=t.int("pool_min", d.pool_min, 1, 1000),
        pool_max=t.int("pool_max", d.pool_max, 1, 1000),
        flushes_in_flight=t.int("flushes_in_flight", d.flushes_in_flight, 1, 1000),
        connect_timeout_s=t.float("connect_timeout_s", d.connect_timeout_s, 0.1),
        read_timeout_s=t.float("read_timeout_s", d.read_timeout_s, 0.1),
        write_timeout_s=t.float("write_timeout_s", d.write_timeout_s, 0.1),
    )
    t.done()
    if mysql.pool_min > mysql.pool_max:
        raise ConfigError(f"must not exceed mysql.pool_max ({mysql.pool_max})", (*t.path, "pool_min"))
    if mysql.flushes_in_flight > mysql.pool_max:
        raise ConfigError(
            f"must not exceed mysql.pool_max ({mysql.pool_max})", (*t.path, "flushes_in_flight")
        )
    return mysql


#: ``cluster.route_ttl_s`` at most: longer, a route kept across a newer login
#: elsewhere would keep reaching the old session for as long as its node holds it.
MAX_ROUTE_TTL_S = 60.0


def _cluster(t: _Table) -> ClusterConfig:
    d = ClusterConfig()
    cluster = ClusterConfig(
        heartbeat_s=t.float("heartbeat_s", d.heartbeat_s, 0.1),
        ttl_s=t.float("ttl_s", d.ttl_s, 0.3),
        rpc_timeout_s=t.float("rpc_timeout_s", d.rpc_timeout_s, 0.01),
        drain_grace_s=t.float("drain_grace_s", d.drain_grace_s, 0.0),
        redis_outage_grace_s=t.float("redis_outage_grace_s", d.redis_outage_grace_s, 0.0),
        route_ttl_s=t.float("route_ttl_s", d.route_ttl_s, 0.0),
        rpc_secret=t.str("rpc_secret", d.rpc_secret),
        rpc_tls_cert=t.str("rpc_tls_cert", d.rpc_tls_cert),
        rpc_tls_key=t.str("rpc_tls_key", d.rpc_tls_key),
        rpc_tls_ca=t.str("rpc_tls_ca", d.rpc_tls_ca),
    )
    t.done()
    tls_keys = ("rpc_tls_cert", "rpc_tls_key", "rpc_tls_ca")
    given = [k for k in tls_keys if getattr(cluster, k)]
    if given and len(given) < len(tls_keys):
        missing = next(k for k in tls_keys if not getattr(cluster, k))
        raise ConfigError(f"required with cluster.{given[0]}: mutual TLS on the internal RPC "
                          "takes rpc_tls_cert, rpc_tls_key and rpc_tls_ca, or none of them",
                          (*t.path, missing))
    if cluster.route_ttl_s > MAX_ROUTE_TTL_S:
        raise ConfigError(f"expected at most {MAX_ROUTE_TTL_S:g} s (a kept route is a recipient's "
                          "node as it was)", (*t.path, "route_ttl_s"))
    if cluster.rpc_secret and len(cluster.rpc_secret) < 16:
        raise ConfigError("must be at least 16 characters", (*t.path, "rpc_secret"))
    if cluster.ttl_s < 2 * cluster.heartbeat_s:
        raise ConfigError(
            f"must be at least twice cluster.heartbeat_s ({cluster.heartbeat_s:g})",
            (*t.path, "ttl_s"),
        )
    return cluster


def parse_config(text: str) -> Config:
    """The :class:`Config` that TOML ``text`` describes, or :class:`ConfigError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
    top = _Table(data, ())
    node = top.table("node")
    node_id = node.int("id", None, 0, MAX_NODE_ID)
    data_dir = node.str("data_dir", Config().data_dir)
    processes = node.int("processes", 1, 1, MAX_PROCESSES)
    node.done()
    lt = top.table("listen")
    d = ListenConfig()
    listen = ListenConfig(
        gate=lt.str("gate", ""),  # unset: the default below, once the apps are known
        http=lt.str("http", d.http),
        rpc=lt.str("rpc", d.rpc),
        manhole=lt.str("manhole", d.manhole),
        public_gate=lt.str("public_gate", d.public_gate),
        ws=lt.str("ws", DEFAULT_WS),
    )
    lt.done()
    limits = _limits(top.table("limits"))
    st = top.table("store")
    sd = StoreConfig()
    store = StoreConfig(dedup_days=st.float("dedup_days", sd.dedup_days, 7.0),
                        answer_timeout_s=st.float("answer_timeout_s", sd.answer_timeout_s, 0.1),
                        pending_ttl_days=st.float("pending_ttl_days", sd.pending_ttl_days, 1e-5),
                        purge_interval_s=st.float("purge_interval_s", sd.purge_interval_s, 0.1),
                        history_days=st.float("history_days", sd.history_days, 1e-5),
                        purge_batch=st.int("purge_batch", sd.purge_batch, 1, 100_000),
                        purge_max_rows_per_s=st.float("purge_max_rows_per_s",
                                                      sd.purge_max_rows_per_s, 0.0))
    st.done()
    redis = _redis(top.table("redis"))
    mysql = _mysql(top.table("mysql"))
    cluster = _cluster(top.table("cluster"))
    bus = _bus(top.table("bus"))
    buses = _buses(top.table("buses"))
    at = top.table("admin")
    admin = AdminConfig(manhole_password=at.str("manhole_password", ""))
    at.done()
    lg = top.table("log")
    json_file = lg.str("json_file", LogConfig().json_file)
    trace_buffer: int | None = lg.int("trace_buffer", None, 0, MAX_TRACE_BUFFER)
    lg.done()
    sc = top.table("stats")
    stats = StatsConfig(window_s=sc.float("window_s", StatsConfig().window_s, 10.0),
                        flush_s=sc.float("flush_s", StatsConfig().flush_s, 0.1))
    sc.done()
    wt = top.table("ws")
    ws = WsConfig(allowed_origins=wt.str_list("allowed_origins"))
    wt.done()
    gt = top.table("geo")
    geo = GeoConfig(max_age_s=gt.float("max_age_s", GeoConfig().max_age_s, 5.0))
    gt.done()
    offers = _offers(top.table("offers"))
    top.seen.update({"apps", "routes"})
    top.done()  # a misspelt table ("[limts]") is named before what its absence causes
    apps = _apps(data.get("apps", {}))
    if not apps:
        raise ConfigError("at least one app must be configured ([apps.<appcode>])", ("apps",))
    routes = _routes(data.get("routes", []), apps, buses)
    demo = any(app.secret == demo.secret for app in apps.values() for demo in DEMO_APPS.values())
    if not listen.gate:
        listen = dataclasses.replace(listen, gate=DEMO_GATE if demo else ListenConfig().gate)
    if trace_buffer is None:  # unset: the demo apps' try-out node traces, others pay nothing
        trace_buffer = DEMO_TRACE_BUFFER if demo else LogConfig().trace_buffer
    log = LogConfig(json_file=json_file, trace_buffer=trace_buffer)
    config = Config(
        node_id=node_id,
        data_dir=data_dir,
        processes=processes,
        listen=listen,
        limits=limits,
        store=store,
        redis=redis,
        mysql=mysql,
        cluster=cluster,
        bus=bus,
        buses=buses,
        admin=admin,
        log=log,
        stats=stats,
        ws=ws,
        geo=geo,
        offers=offers,
        apps=apps,
        routes=routes,
        demo=demo,
    )
    check_urls(config)
    return config


def _offers(t: _Table) -> OffersConfig:
    """``[offers]``: both msgtypes set (and different) or neither."""
    offers = OffersConfig(accept_msgtype=t.int("accept_msgtype", 0, 0, 2**32 - 1),
                          result_msgtype=t.int("result_msgtype", 0, 0, 2**32 - 1))
    t.done()
    if (offers.accept_msgtype == 0) != (offers.result_msgtype == 0):
        missing = "result_msgtype" if offers.result_msgtype == 0 else "accept_msgtype"
        raise ConfigError("expected both accept_msgtype and result_msgtype (or neither)",
                          (*t.path, missing))
    if offers.accept_msgtype and offers.accept_msgtype == offers.result_msgtype:
        raise ConfigError("expected a msgtype other than accept_msgtype",
                          (*t.path, "result_msgtype"))
    return offers


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r} is not UTF-8: {e.reason}") from None
    return parse_config(text)



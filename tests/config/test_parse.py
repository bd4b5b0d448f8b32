"""TOML parsed key by key: values, types, unknown keys, apps, routes, errors that name the key."""

from __future__ import annotations

import os
from pathlib import Path

from daojia_msg.config import (
    DEFAULT_WS,
    DEMO_APPS,
    AppConfig,
    ConfigError,
    Limits,
    ListenConfig,
    Route,
    WsConfig,
    load_config,
    parse_config,
)
from tests.config.helpers import APP, TWO_APPS, ConfigTestCase


class GateDefaultTests(ConfigTestCase):
    def test_own_apps_listen_on_every_interface(self) -> None:
        self.assertEqual(parse_config(APP).listen.gate, "tcp:7000")

    def test_the_demo_apps_listen_on_loopback(self) -> None:
        demo = '[apps.1001]\nusersystem = "demo"\nsecret = "demo-secret-1001"\n'
        config = parse_config(demo)
        self.assertTrue(config.demo)
        self.assertEqual(config.listen.gate, "tcp:7000:interface=127.0.0.1")

    def test_a_gate_given_is_kept(self) -> None:
        demo = '[listen]\ngate = "tcp:7001"\n[apps.1001]\nusersystem = "d"\nsecret = "demo-secret-1001"\n'
        self.assertEqual(parse_config(demo).listen.gate, "tcp:7001")


class HeartbeatTests(ConfigTestCase):
    def test_idle_is_three_heartbeats(self) -> None:
        limits = parse_config("[limits]\nheartbeat_s = 10\n" + APP).limits
        self.assertEqual((limits.heartbeat_s, limits.idle_timeout_s), (10, 30.0))

    def test_explicit_idle_wins(self) -> None:
        limits = parse_config("[limits]\nheartbeat_s = 10\nidle_timeout_s = 45\n" + APP).limits
        self.assertEqual((limits.heartbeat_s, limits.idle_timeout_s), (10, 45.0))
        self.assertIsInstance(limits.idle_timeout_s, float)

    def test_idle_alone(self) -> None:
        limits = parse_config("[limits]\nidle_timeout_s = 100.5\n" + APP).limits
        self.assertEqual((limits.heartbeat_s, limits.idle_timeout_s), (60, 100.5))


class ValueTests(ConfigTestCase):
    def test_full_file(self) -> None:
        config = parse_config(
            """
[node]
id = 1023
data_dir = "/var/lib/msgplatform"

[listen]
gate = "tcp:9000"
http = "tcp:9080"
rpc = "tcp:9100"
manhole = "tcp:9200:interface=127.0.0.1"
public_gate = "gate1.example.com:9000"
ws = "tcp:9070"

[limits]
max_body = 1024
max_content = 512
login_timeout_s = 5
rate_per_s = 2.5
page_default = 10
page_cap = 10

[store]
dedup_days = 8
answer_timeout_s = 1.5
pending_ttl_days = 0.0001
purge_interval_s = 2
history_days = 0.5
purge_batch = 50

[bus]
url = "memory:"

[[routes]]
appcode = 2001
msgtype = 0
topic = "t0"

[[routes]]
appcode = 2002
msgtype = 7
topic = "t7"
"""
            + TWO_APPS
        )
        self.assertEqual(config.node_id, 1023)
        self.assertEqual(config.data_dir, "/var/lib/msgplatform")
        self.assertEqual(
            config.listen,
            ListenConfig(
                "tcp:9000",
                "tcp:9080",
                "tcp:9100",
                "tcp:9200:interface=127.0.0.1",
                "gate1.example.com:9000",
                "tcp:9070",
            ),
        )
        self.assertEqual(
            config.limits,
            Limits(
                max_body=1024,
                max_content=512,
                login_timeout_s=5.0,
                rate_per_s=2.5,
                page_default=10,
                page_cap=10,
            ),
        )
        self.assertEqual(config.store.dedup_days, 8.0)
        self.assertEqual(config.store.answer_timeout_s, 1.5)
        self.assertEqual((config.store.pending_ttl_days, config.store.purge_interval_s,
                          config.store.history_days, config.store.purge_batch),
                         (0.0001, 2.0, 0.5, 50))
        self.assertEqual(config.store.pending_ttl_ms, 8640)
        self.assertEqual(config.routes, (Route(2001, 0, "t0"), Route(2002, 7, "t7")))
        self.assertEqual(
            config.app(2002), AppConfig(2002, "drivers", "", "a-long-secret-2002", "key-2002")
        )
        self.assertIsNone(config.app(2003))

    def test_topic_for(self) -> None:
        config = parse_config(
            TWO_APPS
            + """
[[routes]]
appcode = 2001
msgtype = 1
topic = "gps"

[[routes]]
appcode = 2001
msgtype = 2
topic = "orders"

[[routes]]
appcode = 2002
msgtype = 1
topic = "driver-gps"
"""
        )
        self.assertEqual(config.topic_for(2001, 1), "gps")
        self.assertEqual(config.topic_for(2001, 2), "orders")
        self.assertEqual(config.topic_for(2002, 1), "driver-gps")
        self.assertIsNone(config.topic_for(2002, 2))
        self.assertIsNone(config.topic_for(2003, 1))
        self.assertIsNone(config.topic_for(2001, 0))

    def test_demo_flag(self) -> None:
        """A config that uses a demo app's secret is flagged as demo."""
        self.assertFalse(parse_config(APP).demo)
        demo = DEMO_APPS[1001]
        config = parse_config(f'[apps.1001]\nusersystem = "demo"\nsecret = "{demo.secret}"\n')
        self.assertTrue(config.demo)
        config = parse_config(
            APP + f'[apps.5]\nusersystem = "x"\nsecret = "{DEMO_APPS[1002].secret}"\n'
        )
        self.assertTrue(config.demo)

    def test_node_id_range(self) -> None:
        self.assertEqual(parse_config("[node]\nid = 0\n" + APP).node_id, 0)
        self.assertConfigError(
            "[node]\nid = 1024\n" + APP, "node.id: expected an integer from 0 to 1023, got 1024"
        )
        self.assertConfigError("[node]\nid = -1\n" + APP, "node.id: ")


class UnknownKeyTests(ConfigTestCase):
    def test_a_misspelt_required_key_is_named_as_unknown(self) -> None:
        """``secrte`` for ``secret``: the error names the key that is there."""
        self.assertConfigError(
            '[apps.2001]\nusersystem = "u"\nsecrte = "a-long-secret"\n',
            "apps.2001.secrte: unknown key (did you mean 'secret'?)")

    def test_an_unknown_key_near_a_known_one_gets_a_hint(self) -> None:
        self.assertConfigError(APP + "[limits]\nmax_bodyy = 100\n",
                               "limits.max_bodyy: unknown key (did you mean 'max_body'?)")

    def test_a_missing_key_with_nothing_like_it_is_required(self) -> None:
        self.assertConfigError('[apps.2001]\nusersystem = "u"\ncolour = "red"\n',
                               "apps.2001.secret: is required")

    def test_top_level(self) -> None:
        self.assertConfigError("bogus = 1\n" + APP, "bogus: unknown key")

    def test_in_limits(self) -> None:
        self.assertConfigError("[limits]\nbogus = 1\n" + APP, "limits.bogus: unknown key")

    def test_in_each_table(self) -> None:
        for table in ("node", "listen", "store", "redis", "mysql", "bus"):
            self.assertConfigError(f"[{table}]\nbogus = 1\n" + APP, f"{table}.bogus: unknown key")

    def test_in_app(self) -> None:
        self.assertConfigError(
            '[apps.1001]\nusersystem = "u"\nsecret = "12345678"\ncolour = "red"\n',
            "apps.1001.colour: unknown key",
        )

    def test_in_route(self) -> None:
        self.assertConfigError(
            APP + '[[routes]]\nappcode = 2001\nmsgtype = 1\ntopic = "t"\nqueue = "q"\n',
            "routes.0.queue: unknown key",
        )

    def test_path_attribute(self) -> None:
        exc = self.assertConfigError("[limits]\nbogus = 1\n" + APP, "limits.bogus")
        self.assertEqual(exc.path, ("limits", "bogus"))
        self.assertEqual(exc.msg, "unknown key")


class TypeTests(ConfigTestCase):
    def test_string_for_int(self) -> None:
        exc = self.assertConfigError(
            '[limits]\nmax_body = "x"\n' + APP, "limits.max_body: expected an integer"
        )
        self.assertIn("'x'", str(exc))

    def test_bool_for_int(self) -> None:
        self.assertConfigError(
            "[limits]\nmax_body = true\n" + APP, "limits.max_body: expected an integer"
        )
        self.assertConfigError("[node]\nid = false\n" + APP, "node.id: expected an integer")

    def test_float_for_int(self) -> None:
        self.assertConfigError(
            "[limits]\nheartbeat_s = 1.5\n" + APP, "limits.heartbeat_s: expected an integer"
        )

    def test_bad_number(self) -> None:
        self.assertConfigError(
            '[limits]\nack_timeout_s = "10"\n' + APP, "limits.ack_timeout_s: expected a number"
        )
        self.assertConfigError(
            "[limits]\nack_timeout_s = true\n" + APP, "limits.ack_timeout_s: expected a number"
        )
        self.assertConfigError(
            "[limits]\nack_timeout_s = 0\n" + APP, "limits.ack_timeout_s: expected a number"
        )
        self.assertConfigError(
            "[limits]\nack_timeout_s = nan\n" + APP, "limits.ack_timeout_s: expected a number"
        )
        self.assertConfigError("[limits]\nlogin_timeout_s = -1\n" + APP, "limits.login_timeout_s: ")
        self.assertConfigError(
            "[store]\ndedup_days = 6.9\n" + APP, "store.dedup_days: expected a number >= 7"
        )
        self.assertConfigError("[store]\npending_ttl_days = 0\n" + APP,
                               "store.pending_ttl_days: expected a number >= 1e-05")
        self.assertConfigError("[store]\npurge_batch = 0\n" + APP,
                               "store.purge_batch: expected an integer from 1 to 100000")
        self.assertConfigError(
            "[store]\nanswer_timeout_s = 0\n" + APP, "store.answer_timeout_s: expected a number >= 0.1"
        )

    def test_int_for_string(self) -> None:
        self.assertConfigError(
            "[listen]\ngate = 7000\n" + APP, "listen.gate: expected a string, got 7000"
        )
        self.assertConfigError("[node]\ndata_dir = 1\n" + APP, "node.data_dir: expected a string")

    def test_value_for_table(self) -> None:
        self.assertConfigError("limits = 5\n" + APP, "limits: expected a table")
        self.assertConfigError("limits = false\n" + APP, "limits: expected a table")
        self.assertConfigError('node = ""\n' + APP, "node: expected a table")
        self.assertConfigError("listen = []\n" + APP, "listen: expected a table")
        self.assertConfigError("apps = 5\n", "apps: expected a table")
        self.assertConfigError('[apps]\n1001 = "x"\n', "apps.1001: expected a table")

    def test_out_of_range(self) -> None:
        self.assertConfigError(
            "[limits]\nmax_body = 63\n" + APP, "limits.max_body: expected an integer from 64 to"
        )
        self.assertConfigError("[limits]\nheartbeat_s = 0\n" + APP, "limits.heartbeat_s: ")
        self.assertConfigError("[limits]\nheartbeat_s = 3601\n" + APP, "limits.heartbeat_s: ")
        self.assertConfigError("[limits]\nmax_repush = 101\n" + APP, "limits.max_repush: ")

    def test_cross_field_limits(self) -> None:
        self.assertConfigError(
            "[limits]\npage_default = 101\n" + APP,
            "limits.page_default: must not exceed limits.page_cap (100)",
        )
        self.assertConfigError(
            "[limits]\nmax_body = 1024\n" + APP, "limits.max_content: must leave 256 bytes"
        )
        parse_config("[limits]\nmax_body = 1280\nmax_content = 1024\n" + APP)
        self.assertConfigError(
            "[limits]\nmax_body = 1280\nmax_content = 1025\n" + APP, "limits.max_content: "
        )


class AppTests(ConfigTestCase):
    def test_no_apps(self) -> None:
        self.assertConfigError("", "apps: at least one app must be configured")
        self.assertConfigError("[node]\nid = 1\n", "apps: ")
        self.assertConfigError("[apps]\n", "apps: ")

    def test_a_misspelt_table_is_named_before_the_missing_apps(self) -> None:
        """A file of one misspelt table names the typo, not what it left out."""
        self.assertConfigError("[limts]\nmax_body = 1000\n",
                               "limts: unknown key (did you mean 'limits'?)")
        self.assertConfigError("[app.1001]\nsecret = 'x'\n",
                               "app: unknown key (did you mean 'apps'?)")

    def test_rich_msgtypes(self) -> None:
        config = parse_config('[apps.1001]\nusersystem = "u"\nsecret = "12345678"\n'
                              "rich_msgtypes = [10, 11]\n")
        self.assertEqual(config.apps[1001].rich_msgtypes, frozenset({10, 11}))
        self.assertEqual(parse_config(APP).apps[2001].rich_msgtypes, frozenset())
        for bad in ('"10"', '["10"]', "[-1]", "[true]", "[4294967296]"):
            self.assertConfigError(
                f'[apps.1001]\nusersystem = "u"\nsecret = "12345678"\nrich_msgtypes = {bad}\n',
                "apps.1001.rich_msgtypes: expected an array of integers from 0 to 4294967295")

    def test_missing_secret(self) -> None:
        self.assertConfigError('[apps.1001]\nusersystem = "u"\n', "apps.1001.secret: is required")

    def test_short_secret(self) -> None:
        parse_config('[apps.1001]\nusersystem = "u"\nsecret = "12345678"\n')
        self.assertConfigError(
            '[apps.1001]\nusersystem = "u"\nsecret = "1234567"\n',
            "apps.1001.secret: must be at least 8 characters",
        )

    def test_missing_or_empty_usersystem(self) -> None:
        self.assertConfigError(
            '[apps.1001]\nsecret = "12345678"\n', "apps.1001.usersystem: is required"
        )
        self.assertConfigError(
            '[apps.1001]\nusersystem = ""\nsecret = "12345678"\n',
            "apps.1001.usersystem: expected 1 to 255 bytes",
        )

    def test_bad_appcode(self) -> None:
        for key in ("abc", "0", "01001", "4294967296", "-5", "1_001"):
            self.assertConfigError(
                f'[apps."{key}"]\nusersystem = "u"\nsecret = "12345678"\n',
                f"apps.{key}: an app's key is its appcode",
            )
        parse_config('[apps.4294967295]\nusersystem = "u"\nsecret = "12345678"\n')

    def test_duplicate_api_key(self) -> None:
        text = APP + '[apps.2002]\nusersystem = "u"\nsecret = "12345678"\napi_key = "key-2001"\n'
        self.assertConfigError(text, "apps.2002.api_key: is the same as apps.2001.api_key")

    def test_empty_api_keys_may_repeat(self) -> None:
        text = '[apps.1]\nusersystem = "u"\nsecret = "12345678"\n[apps.2]\nusersystem = "u"\nsecret = "12345678"\n'
        self.assertEqual(set(parse_config(text).apps), {1, 2})


class RouteTests(ConfigTestCase):
    def test_route_to_unconfigured_app(self) -> None:
        self.assertConfigError(
            APP + '[[routes]]\nappcode = 2002\nmsgtype = 1\ntopic = "t"\n',
            "routes.0.appcode: no app 2002 is configured",
        )

    def test_duplicate_route(self) -> None:
        route = '[[routes]]\nappcode = 2001\nmsgtype = 1\ntopic = "{}"\n'
        self.assertConfigError(
            APP + route.format("a") + route.format("b"),
            "routes.1: a route for this (appcode, msgtype) is already configured",
        )

    def test_route_fields_required(self) -> None:
        self.assertConfigError(
            APP + '[[routes]]\nmsgtype = 1\ntopic = "t"\n', "routes.0.appcode: is required"
        )
        self.assertConfigError(
            APP + '[[routes]]\nappcode = 2001\ntopic = "t"\n', "routes.0.msgtype: is required"
        )
        self.assertConfigError(
            APP + "[[routes]]\nappcode = 2001\nmsgtype = 1\n", "routes.0.topic: is required"
        )
        self.assertConfigError(
            APP + '[[routes]]\nappcode = 2001\nmsgtype = 1\ntopic = ""\n',
            "routes.0.topic: expected a topic name",
        )
        self.assertConfigError(
            APP + f'[[routes]]\nappcode = 2001\nmsgtype = 1\ntopic = "{"t" * 201}"\n',
            "routes.0.topic: ",
        )

    def test_routes_not_array_of_tables(self) -> None:
        self.assertConfigError(
            APP + "[routes]\nappcode = 2001\n", "routes: expected an array of tables"
        )
        self.assertConfigError("routes = [1]\n" + APP, "routes.0: expected a table")


class SyntaxAndFileTests(ConfigTestCase):
    def test_bad_toml(self) -> None:
        self.assertConfigError("[limits\nmax_body = 1\n", "not valid TOML: ")
        self.assertConfigError("x = = 1\n", "not valid TOML: ")
        self.assertConfigError(APP + APP, "not valid TOML: ")  # a table defined twice

    def test_load_missing_file(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "nope.toml")
        exc = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(repr(path), str(exc))
        self.assertIn("cannot read config file", str(exc))

    def test_load_not_utf8(self) -> None:
        path = self.mktemp()
        Path(path).write_bytes(b"\xff\xfe[node]\n")
        exc = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(repr(path), str(exc))

    def test_load_file(self) -> None:
        path = self.mktemp()
        Path(path).write_text(APP, encoding="utf-8")
        self.assertEqual(load_config(path), parse_config(APP))


class RpcTlsTests(ConfigTestCase):
    def test_the_three_files_of_mutual_tls(self) -> None:
        cluster = parse_config('[cluster]\nrpc_tls_cert = "node.pem"\nrpc_tls_key = "node.key"\n'
                               'rpc_tls_ca = "ca.pem"\n' + APP).cluster
        self.assertEqual((cluster.rpc_tls_cert, cluster.rpc_tls_key, cluster.rpc_tls_ca),
                         ("node.pem", "node.key", "ca.pem"))

    def test_none_is_plain_tcp(self) -> None:
        cluster = parse_config(APP).cluster
        self.assertEqual((cluster.rpc_tls_cert, cluster.rpc_tls_key, cluster.rpc_tls_ca),
                         ("", "", ""))

    def test_a_missing_one_is_named(self) -> None:
        self.assertConfigError('[cluster]\nrpc_tls_cert = "node.pem"\nrpc_tls_ca = "ca.pem"\n' + APP,
                               "cluster.rpc_tls_key: required with cluster.rpc_tls_cert")
        self.assertConfigError('[cluster]\nrpc_tls_key = "node.key"\n' + APP,
                               "cluster.rpc_tls_cert: required with cluster.rpc_tls_key")
        self.assertConfigError('[cluster]\nrpc_tls_cert = "n.pem"\nrpc_tls_key = "n.key"\n' + APP,
                               "cluster.rpc_tls_ca: required with cluster.rpc_tls_cert")


class WebSocketKeyTests(ConfigTestCase):
    def test_listen_ws_defaults_to_loopback_7070(self) -> None:
        self.assertEqual(parse_config(APP).listen.ws, DEFAULT_WS)
        self.assertEqual(DEFAULT_WS, "tcp:7070:interface=127.0.0.1")

    def test_listen_ws_given_or_off(self) -> None:
        self.assertEqual(parse_config('[listen]\nws = "tcp:9070"\n' + APP).listen.ws, "tcp:9070")
        self.assertEqual(parse_config('[listen]\nws = ""\n' + APP).listen.ws, "")

    def test_allowed_origins(self) -> None:
        self.assertEqual(parse_config(APP).ws, WsConfig())
        self.assertEqual(WsConfig().allowed_origins, ())
        config = parse_config('[ws]\nallowed_origins = ["https://a.example", "http://b:8000"]\n'
                              + APP)
        self.assertEqual(config.ws.allowed_origins, ("https://a.example", "http://b:8000"))

    def test_allowed_origins_must_be_strings(self) -> None:
        self.assertConfigError('[ws]\nallowed_origins = "https://a.example"\n' + APP,
                               "ws.allowed_origins: expected an array of strings")
        self.assertConfigError("[ws]\nallowed_origins = [1]\n" + APP,
                               "ws.allowed_origins: expected an array of strings")
        self.assertConfigError("[ws]\norigins = []\n" + APP, "ws.origins: unknown key")

"""Backend URLs (Redis, MySQL, buses): parsed and checked, naming the key."""

from __future__ import annotations

from daojia_msg.config import (
    ConfigError,
    MySQLURL,
    RedisURL,
    mysql_tls_required,
    parse_config,
    parse_mysql_url,
    parse_redis_url,
    shown,
)
from tests.config.helpers import APP, ConfigTestCase


class ShownTests(ConfigTestCase):
    def test_a_password_never_shows(self) -> None:
        self.assertEqual(shown("redis://:pw@h:1/2"), "redis://:***@h:1/2")
        self.assertEqual(shown("mysql://root:pw@db:3306/x"), "mysql://root:***@db:3306/x")
        self.assertEqual(shown("amqp://guest@h/"), "amqp://guest@h/")
        self.assertEqual(shown("redis://h:notaport"), "redis://h:notaport")
        self.assertEqual(shown("http://[::1"), "http:...")


class UrlTests(ConfigTestCase):
    def test_bus_urls(self) -> None:
        for url in ("memory:", "redis://127.0.0.1:6379/0", "amqp://guest:guest@h:5672/",
                    "https://hooks.example/c2s"):
            self.assertEqual(parse_config(f'[bus]\nurl = "{url}"\n' + APP).bus.url, url)
        for url in ("kafka://k:9092", "memory:x", "redis://h/x", "http:nope"):
            self.assertConfigError(f'[bus]\nurl = "{url}"\n' + APP, "bus.url: ")

    def test_named_buses_and_routes(self) -> None:
        config = parse_config(
            '[buses.orders]\nurl = "amqp://guest:guest@127.0.0.1:5672/"\n' + APP
            + '[[routes]]\nappcode = 2001\nmsgtype = 2\ntopic = "orders"\nbus = "orders"\n'
            + '[[routes]]\nappcode = 2001\nmsgtype = 1\ntopic = "gps"\n'
        )
        self.assertEqual(config.bus_url(config.route_for(2001, 2).bus),  # type: ignore[union-attr]
                         "amqp://guest:guest@127.0.0.1:5672/")
        self.assertEqual(config.bus_url(config.route_for(2001, 1).bus), "memory:")  # type: ignore[union-attr]
        self.assertNotIn("guest:guest", repr(config))
        self.assertConfigError(
            APP + '[[routes]]\nappcode = 2001\nmsgtype = 2\ntopic = "o"\nbus = "nope"\n',
            "routes.0.bus: no bus 'nope' is configured")
        self.assertConfigError('[buses.x]\nurl = "ftp://h"\n' + APP, "buses.x.url: ")
        # The error names the scheme, never the rest (a password).
        with self.assertRaises(ConfigError) as e:
            parse_config('[bus]\nurl = "rediss://:hunter2@h:6380/0"\n' + APP)
        self.assertNotIn("hunter2", str(e.exception))
        self.assertConfigError('[bus]\nwebhook_timeout_s = 2\n' + APP,
                               "bus.webhook_timeout_s: 4 webhook attempts of 2 s (8 s) must fit")
        self.assertConfigError('[log]\nformat = "xml"\n' + APP, "log.format: unknown key")
        self.assertEqual(parse_config('[log]\njson_file = "/tmp/x.json"\n' + APP).log.json_file,
                         "/tmp/x.json")

    def test_redis_url(self) -> None:
        config = parse_config('[redis]\nurl = "redis://:pw@localhost:6380/2"\n' + APP)
        self.assertEqual(parse_redis_url(config.redis.url), RedisURL("localhost", 6380, 2, "pw"))
        self.assertNotIn("pw", repr(config))
        self.assertEqual(parse_redis_url("redis://h"), RedisURL("h", 6379, 0))
        for bad in ("http://h", "redis://", "redis://h/x", "redis://h:99999"):
            self.assertConfigError(f'[redis]\nurl = "{bad}"\n' + APP, "redis.url: ")

    def test_mysql_tls_options(self) -> None:
        """``ssl-mode`` (as the MySQL client's ``--ssl-mode``) and ``ssl-ca``."""
        def tls(query: str) -> tuple[str, str]:
            u = parse_mysql_url(f"mysql://u@h/db{query}")
            return u.ssl_mode, u.ssl_ca

        self.assertEqual(tls(""), ("preferred", ""))
        self.assertEqual(tls("?ssl-mode=DISABLED"), ("disabled", ""))
        self.assertEqual(tls("?ssl-mode=required"), ("required", ""))
        self.assertEqual(tls("?ssl_mode=Verify-Identity"), ("verify_identity", ""))
        self.assertEqual(tls("?ssl-mode=verify_ca&ssl-ca=/etc/ca.pem"), ("verify_ca", "/etc/ca.pem"))
        # ssl-ca alone means verify_ca, as for the MySQL client.
        self.assertEqual(tls("?ssl-ca=%2Fetc%2Fca.pem"), ("verify_ca", "/etc/ca.pem"))
        self.assertFalse(mysql_tls_required(
            parse_mysql_url("mysql://u@h/db?ssl-mode=preferred").ssl_mode))
        self.assertTrue(mysql_tls_required(
            parse_mysql_url("mysql://u@h/db?ssl-mode=required").ssl_mode))
        for query, why in (
                ("?ssl-mode=on", "ssl-mode must be one of disabled, preferred, required, "
                                 "verify_ca, verify_identity, got 'on'"),
                ("?sslmode=require", "unknown URL option 'sslmode' (expected ssl-mode, ssl-ca)"),
                ("?ssl-mode=required&ssl-ca=/ca.pem", "ssl-ca needs a file and ssl-mode "
                                                      "verify_ca or verify_identity"),
                ("?ssl-ca=", "ssl-ca needs a file"),
                ("?ssl-mode=required&ssl-mode=disabled", "URL option 'ssl-mode' given twice"),
                ("?ssl-mode", "cannot parse the URL's options 'ssl-mode'")):
            self.assertConfigError(f'[mysql]\nurl = "mysql://u:pw@h/db{query}"\n' + APP,
                                   f"mysql.url: {why}")

    def test_mysql_url(self) -> None:
        config = parse_config('[mysql]\nurl = "mysql://u:p%40ss@h:3307/db_1"\n' + APP)
        self.assertEqual(parse_mysql_url(config.mysql.url), MySQLURL("h", 3307, "u", "db_1", "p@ss"))
        self.assertNotIn("p@ss", repr(config))
        for bad in ("mysql://h/db", "mysql://u@h", "mysql://u@h/db;drop", "pg://u@h/db"):
            self.assertConfigError(f'[mysql]\nurl = "{bad}"\n' + APP, "mysql.url: ")
        self.assertConfigError('[mysql]\ndatabases = ["mysql://u@h/d2"]\n' + APP,
                               "mysql.databases: needs mysql.url")
        self.assertConfigError(
            '[mysql]\nurl = "mysql://u@h/d"\ndatabases = ["nope"]\n' + APP, "mysql.databases.0: ")
        self.assertConfigError('[mysql]\npool_min = 5\npool_max = 2\n' + APP,
                               "mysql.pool_min: must not exceed")
        self.assertConfigError('[mysql]\nflushes_in_flight = 4\npool_max = 3\n' + APP,
                               "mysql.flushes_in_flight: must not exceed")
        self.assertConfigError('[mysql]\nflushes_in_flight = 0\n' + APP,
                               "mysql.flushes_in_flight: ")
        config = parse_config('[mysql]\nflushes_in_flight = 3\n' + APP)
        self.assertEqual(config.mysql.flushes_in_flight, 3)

    def test_cluster_timers(self) -> None:
        self.assertConfigError('[cluster]\nheartbeat_s = 4\nttl_s = 6\n' + APP,
                               "cluster.ttl_s: must be at least twice")
        config = parse_config('[cluster]\nheartbeat_s = 1\nttl_s = 3\n' + APP)
        self.assertEqual((config.cluster.heartbeat_s, config.cluster.ttl_s), (1.0, 3.0))

    def test_wrong_type(self) -> None:
        self.assertConfigError("[redis]\nurl = 5\n" + APP, "redis.url: expected a string")

"""The built-in default and the example files in etc/: what a node runs with."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import (
    DEFAULT_WS,
    AppConfig,
    Config,
    ConfigError,
    Limits,
    ListenConfig,
    StoreConfig,
    default_config,
    load_config,
    parse_config,
)
from tests.config.helpers import APP, EXAMPLE, ROOT, ConfigTestCase


class ExampleFileTests(SynchronousTestCase):
    def test_example_file_matches_default(self) -> None:
        """``etc/msgplatform.toml`` documents exactly what runs with no config file."""
        self.assertEqual(load_config(str(EXAMPLE)), default_config())


class DefaultTests(ConfigTestCase):
    def test_default_config(self) -> None:
        config = default_config()
        self.assertEqual(config.listen.gate, "tcp:7000:interface=127.0.0.1")  # demo apps
        self.assertEqual(config.listen.http, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.listen.ws, "tcp:7070:interface=127.0.0.1")
        self.assertEqual(config.ws.allowed_origins, ())
        self.assertEqual(config.limits.heartbeat_s, 60)
        self.assertEqual(config.limits.idle_timeout_s, 180.0)
        self.assertEqual(config.limits.max_body, 65536)
        self.assertEqual(config.limits.max_content, 65000)
        self.assertEqual(config.limits.login_timeout_s, 10.0)
        self.assertEqual(config.limits.ack_timeout_s, 10.0)
        self.assertEqual(config.limits.max_repush, 3)
        self.assertEqual(config.limits.page_default, 20)
        self.assertEqual(config.limits.page_cap, 100)
        self.assertEqual(config.limits.max_ack_ids, 1000)
        self.assertEqual(config.store.dedup_days, 7.0)
        self.assertEqual((config.store.pending_ttl_days, config.store.purge_interval_s,
                          config.store.history_days, config.store.purge_batch,
                          config.store.purge_max_rows_per_s),
                         (30.0, 60.0, 180.0, 100, 1000.0))
        self.assertEqual(config.bus.url, "memory:")
        self.assertEqual((config.redis.url, config.mysql.url), ("", ""))
        self.assertIsNone(config.node_id)
        self.assertTrue(config.demo)
        self.assertEqual(set(config.apps), {1001, 1002})
        self.assertEqual(config.topic_for(1001, 1), "gps")
        self.assertEqual(config.topic_for(1002, 2), "order-events")

    def test_minimal_file_takes_defaults(self) -> None:
        config = parse_config(APP)
        self.assertEqual(config.listen, ListenConfig(ws=DEFAULT_WS))
        self.assertEqual(config.limits, Limits())
        self.assertEqual(config.store, StoreConfig())
        self.assertEqual(config.data_dir, "./var")
        self.assertIsNone(config.node_id)
        self.assertEqual(config.bus.url, "memory:")
        self.assertEqual(config.routes, ())
        self.assertFalse(config.demo)
        self.assertEqual(
            dict(config.apps),
            {2001: AppConfig(2001, "customers", "customer iOS", "a-long-secret-2001", "key-2001")},
        )

    def test_default_is_fresh(self) -> None:
        # Each call gets its own apps dict: changing one does not change the next.
        self.assertIsNot(default_config().apps, default_config().apps)
        self.assertEqual(default_config(), default_config())

    def test_secret_not_in_repr(self) -> None:
        config = parse_config(APP)
        self.assertNotIn("a-long-secret-2001", repr(config))
        self.assertNotIn("key-2001", repr(config))

    def test_frozen(self) -> None:
        config = parse_config(APP)
        self.assertRaises(AttributeError, setattr, config, "node_id", 3)
        self.assertEqual(config.replace(node_id=3).node_id, 3)


class ConfigErrorTests(SynchronousTestCase):
    def test_text(self) -> None:
        self.assertEqual(str(ConfigError("boom", ("a", "b"))), "a.b: boom")
        self.assertEqual(str(ConfigError("boom")), "boom")
        self.assertEqual(ConfigError("boom", ["x"]).path, ("x",))

    def test_config_equality(self) -> None:
        self.assertEqual(Config(), Config())
        self.assertNotEqual(default_config(), Config())


class ClusterExampleTests(SynchronousTestCase):
    def test_cluster_example_is_valid(self) -> None:
        """etc/cluster.toml (tools/cluster-up.sh) parses and passes the cluster checks."""
        from daojia_msg.node import check_cluster_config

        config = load_config(str(ROOT / "etc" / "cluster.toml"))
        check_cluster_config(config)
        self.assertTrue(config.redis.url and config.mysql.url)
        self.assertTrue(config.listen.gate.startswith("haproxy:"))  # behind etc/haproxy.cfg

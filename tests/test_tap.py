"""twistd options, start-up errors, and the plugin."""

from __future__ import annotations

import importlib.metadata
import io
import os
import signal
import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet import utils
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

import daojia_msg
from daojia_msg.config import ConfigError
from daojia_msg.store.datadir import DataDirLock
from daojia_msg.tap import Options, build_config

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def options(*argv: str) -> Options:
    o = Options()
    o.parseOptions(list(argv))
    return o


class BuildConfigTests(SynchronousTestCase):
    def test_no_options_is_the_embedded_default(self) -> None:
        config = build_config(options())
        self.assertEqual(config.listen.gate, "tcp:7000:interface=127.0.0.1")
        self.assertEqual(config.listen.http, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.data_dir, "./var")
        self.assertEqual(sorted(config.apps), [1001, 1002])
        self.assertEqual(config.topic_for(1001, 1), "gps")
        self.assertEqual(config.topic_for(1002, 2), "order-events")
        self.assertIsNone(config.topic_for(1001, 3))
        self.assertTrue(config.demo)
        self.assertEqual(config.log.trace_buffer, 10000)  # the dashboard's logid search works

    def test_options_override(self) -> None:
        config = build_config(options("--demo", "--gate", "tcp:0", "--http", "tcp:0:interface=127.0.0.1",
                                      "--node-id", "7", "--data-dir", "/tmp/x", "--bus", "memory:",
                                      "--rpc", "tcp:7200:interface=127.0.0.1"))
        self.assertEqual((config.listen.gate, config.listen.http, config.node_id, config.data_dir),
                         ("tcp:0", "tcp:0:interface=127.0.0.1", 7, "/tmp/x"))
        self.assertEqual(config.listen.rpc, "tcp:7200:interface=127.0.0.1")

    def test_config_file_then_option(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[node]\nid = 3\n[listen]\ngate = "tcp:7001"\n'
                    '[apps.5]\nusersystem = "u"\nsecret = "s3cret-5!"\n')
        config = build_config(options("--config", path, "--gate", "tcp:7002"))
        self.assertEqual((config.node_id, config.listen.gate), (3, "tcp:7002"))
        self.assertEqual(list(config.apps), [5])
        self.assertFalse(config.demo)
        self.assertEqual(config.log.trace_buffer, 0)  # a configured node pays for none

    def test_trace_buffer_option(self) -> None:
        self.assertEqual(build_config(options("--trace-buffer", "0")).log.trace_buffer, 0)
        self.assertEqual(build_config(options("--trace-buffer", "500")).log.trace_buffer, 500)
        self.assertRefused(("--trace-buffer", "-1"),
                           "--trace-buffer: expected an integer from 0 to 1000000, got '-1'")
        self.assertRefused(("--trace-buffer", "1000001"),
                           "--trace-buffer: expected an integer from 0 to 1000000, got '1000001'")

    def assertRefused(self, argv: tuple[str, ...], text: str) -> None:
        with self.assertRaises(ConfigError) as e:
            build_config(options(*argv))
        self.assertEqual(str(e.exception), text)

    def test_bad_options(self) -> None:
        self.assertRefused(("--node-id", "1024"),
                           "--node-id: expected an integer from 0 to 1023, got '1024'")
        self.assertRefused(("--node-id", "-1"),
                           "--node-id: expected an integer from 0 to 1023, got '-1'")
        self.assertRefused(("--gate", "nope:1"),
                           "--gate: not a valid endpoint description 'nope:1': "
                           "Unknown endpoint type: 'nope'")
        self.assertRefused(("--bus", "kafka://x"),
                           "--bus: expected memory:, redis://, amqp(s):// or http(s):// URL, "
                           "got scheme 'kafka'")
        self.assertRefused(("--redis", "redis://127.0.0.1", "--rpc", "tcp:7100"),
                           "--rpc: in a cluster the RPC listener must name the interface "
                           "other nodes reach (tcp:PORT:interface=ADDRESS)")
        self.assertRefused(("--redis", "redis://127.0.0.1", "--rpc",
                            "tcp:7100:interface=10.1.2.3"),
                           "cluster.rpc_secret: required when listen.rpc is not a loopback "
                           "address")
        self.assertRefused(("--redis", "http://x"),
                           "--redis: expected redis://[:password@]host[:port][/db], "
                           "got 'http://x'")
        self.assertRefused(("--mysql", "mysql://nobody@h"),
                           "--mysql: expected mysql://user[:password]@host[:port]/database, "
                           "got 'mysql://nobody@h'")
        self.assertRefused(("--manhole", "tcp:7300:interface=127.0.0.1"),
                           "admin.manhole_password: required when listen.manhole is set (in a "
                           "config file, or as --manhole-password-file): the manhole refuses "
                           "to start without a password")

    def test_an_error_names_the_option_and_shows_its_value(self) -> None:
        """A value given as an option is named by the option (the user typed
        that, not a config key) and shown, with any password hidden."""
        self.assertRefused(("--gate", "7000"),
                           "--gate: not a valid endpoint description '7000': "
                           "Unknown endpoint type: '7000'")
        self.assertRefused(("--redis", "localhost:6379"),
                           "--redis: expected redis://[:password@]host[:port][/db], "
                           "got 'localhost:6379'")
        self.assertRefused(("--mysql", "mysql://root:hunter2@db"),
                           "--mysql: expected mysql://user[:password]@host[:port]/database, "
                           "got 'mysql://root:***@db'")

    def test_a_config_file_value_is_named_by_its_key(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[listen]\ngate = "7000"\n[apps.5]\nusersystem = "u"\nsecret = "s3cret-5!"\n')
        self.assertRefused(("--config", path),
                           "listen.gate: not a valid endpoint description '7000': "
                           "Unknown endpoint type: '7000'")

    def test_the_demo_apps_keep_their_gate_on_loopback(self) -> None:
        """Their secrets are public: a gate beyond loopback needs --demo."""
        refusal = ("the demo apps have public secrets, so their gate stays on loopback: pass "
                   "--demo to listen beyond it anyway, or use a config file with apps of your own")
        for gate in ("tcp:7000", "tcp:7000:interface=0.0.0.0", "tcp6:7000:interface=\\:\\:",
                     "haproxy:tcp:7000"):
            with self.subTest(gate=gate):
                self.assertRefused(("--gate", gate), f"--gate: {refusal}")
                self.assertEqual(build_config(options("--demo", "--gate", gate)).listen.gate, gate)
        for gate in ("tcp:7001:interface=127.0.0.1", "tcp6:7001:interface=\\:\\:1",
                     "unix:/tmp/msgp-gate.sock"):
            with self.subTest(gate=gate):
                self.assertEqual(build_config(options("--gate", gate)).listen.gate, gate)

    def test_a_config_file_with_the_demo_secrets_is_held_to_the_same_rule(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[listen]\ngate = "tcp:7000"\n'
                    '[apps.1001]\nusersystem = "d"\nsecret = "demo-secret-1001"\n')
        with self.assertRaises(ConfigError) as e:
            build_config(options("--config", path))
        self.assertTrue(str(e.exception).startswith("listen.gate: the demo apps"), e.exception)
        self.assertEqual(build_config(options("--config", path, "--demo")).listen.gate, "tcp:7000")

    def test_own_apps_may_listen_anywhere(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[apps.5]\nusersystem = "u"\nsecret = "s3cret-5!"\n')
        self.assertEqual(build_config(options("--config", path)).listen.gate, "tcp:7000")

    def test_the_manhole_password_from_a_file_keeps_the_demo_apps(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a-long-manhole-password\n")
        os.chmod(path, 0o600)
        config = build_config(options("--manhole", "tcp:7300:interface=127.0.0.1",
                                      "--manhole-password-file", path))
        self.assertEqual(config.admin.manhole_password, "a-long-manhole-password")
        self.assertTrue(config.demo)
        self.assertEqual(sorted(config.apps), [1001, 1002])

    def test_an_unusable_password_file_is_named(self) -> None:
        missing = os.path.abspath(self.mktemp())
        with self.assertRaises(ConfigError) as e:
            build_config(options("--manhole-password-file", missing))
        self.assertTrue(str(e.exception).startswith(
            f"--manhole-password-file: cannot read {missing!r}"), e.exception)
        empty = self.mktemp()
        open(empty, "w").close()
        os.chmod(empty, 0o600)
        with self.assertRaises(ConfigError) as e:
            build_config(options("--manhole-password-file", empty))
        self.assertIn("is empty: its first line is the password", str(e.exception))

    def test_a_password_file_others_may_read_is_refused(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("a-long-manhole-password\n")
        os.chmod(path, 0o644)
        with self.assertRaises(ConfigError) as e:
            build_config(options("--manhole-password-file", path))
        self.assertEqual(str(e.exception), f"--manhole-password-file: {path!r} may be read by "
                                           f"other users: chmod 600 it")

    def test_cluster_options(self) -> None:
        config = build_config(options("--redis", "redis://127.0.0.1:6379/2",
                                      "--mysql", "mysql://root@127.0.0.1/msgp"))
        self.assertEqual((config.redis.url, config.mysql.url),
                         ("redis://127.0.0.1:6379/2", "mysql://root@127.0.0.1/msgp"))

    def test_missing_config_file(self) -> None:
        with self.assertRaises(ConfigError) as e:
            build_config(options("--config", "/nonexistent/x.toml"))
        self.assertIn("/nonexistent/x.toml", str(e.exception))


class VersionTests(SynchronousTestCase):
    def test_version_prints_the_project_version_not_twisteds(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            options("--version")
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"msgplatform {daojia_msg.__version__}\n")

    def test_the_package_and_its_metadata_agree(self) -> None:
        self.assertEqual(importlib.metadata.version("msgplatform"), daojia_msg.__version__)


class PluginTests(SynchronousTestCase):
    def test_plugin_is_discovered(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("msgplatform", makers)
        self.assertEqual(makers["msgplatform"].options, Options)


class TwistdTests(TestCase):
    """Start-up errors through the real twistd: one line, exit status 1."""

    def run_twistd(self, *argv: str) -> object:
        if not os.path.exists(TWISTD):
            self.skipTest(f"no twistd beside {sys.executable}")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        return utils.getProcessOutputAndValue(
            TWISTD, ("-n", "--pidfile=", "msgplatform", *argv), env=dict(os.environ), path=cwd
        )

    async def test_bad_config_key(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[limits]\nmax_body = "big"\n[apps.1]\nusersystem = "u"\nsecret = "12345678"\n')
        out, err, code = await self.run_twistd("--config", path)  # type: ignore[misc]
        self.assertEqual(code, 1)
        self.assertEqual(
            err.decode().strip(),
            "msgplatform: limits.max_body: expected an integer from 64 to 67108864, got 'big'",
        )

    async def test_port_in_use_fails_startup(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        busy = port.getHost().port
        data = os.path.abspath(self.mktemp())
        out, err, code = await self.run_twistd(  # type: ignore[misc]
            "--gate", f"tcp:{busy}:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
            "--ws", "tcp:0:interface=127.0.0.1",
            "--data-dir", data,
        )
        self.assertEqual(code, 1)
        self.assertIn(b"start-up failed", out + err)
        self.assertIn(b"Address already in use", out + err)

    async def test_a_data_dir_another_node_holds_fails_startup(self) -> None:
        """Two nodes on one data directory would both be node 0 on one
        SQLite file: the second stops at start-up, naming the holder's pid
        (here this test's process holds the lock)."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        held = DataDirLock(data)
        held.acquire()
        self.addCleanup(held.release)
        out, err, code = await self.run_twistd(  # type: ignore[misc]
            "--gate", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
            "--ws", "tcp:0:interface=127.0.0.1", "--data-dir", data,
        )
        self.assertEqual(code, 1, (out, err))
        self.assertIn(f"node.data_dir: {data!r} is in use by another node (pid {os.getpid()})"
                      .encode(), out + err)


class DaemonTests(TestCase):
    """twistd without -n forks; its exit status must say whether the node started."""

    def daemon(self, *argv: str) -> tuple[Any, str, str]:
        if not os.path.exists(TWISTD):
            self.skipTest(f"no twistd beside {sys.executable}")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        pidfile, logfile = os.path.join(cwd, "node.pid"), os.path.join(cwd, "node.log")
        d = utils.getProcessOutputAndValue(
            TWISTD, (f"--pidfile={pidfile}", f"--logfile={logfile}", "msgplatform",
                     "--data-dir", os.path.join(cwd, "var"), *argv),
            env=dict(os.environ), path=cwd)
        return d, pidfile, logfile

    async def test_a_daemon_that_cannot_start_exits_1_and_leaves_no_pid_file(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        busy = port.getHost().port
        d, pidfile, logfile = self.daemon("--gate", f"tcp:{busy}:interface=127.0.0.1",
                                          "--http", "tcp:0:interface=127.0.0.1",
                                          "--ws", "tcp:0:interface=127.0.0.1")
        out, err, code = await d
        self.assertEqual(code, 1, (out, err))
        self.assertIn(b"cannot listen on", err)
        self.assertFalse(os.path.exists(pidfile))
        with open(logfile) as f:
            self.assertIn("start-up failed", f.read())

    async def test_a_daemon_that_started_exits_0_once_it_serves(self) -> None:
        d, pidfile, logfile = self.daemon("--gate", "tcp:0:interface=127.0.0.1",
                                          "--http", "tcp:0:interface=127.0.0.1",
                                          "--ws", "tcp:0:interface=127.0.0.1")
        out, err, code = await d
        self.assertEqual(code, 0, (out, err))
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(_stop, pid)
        with open(logfile) as f:
            self.assertIn("node 0 serving", f.read())


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

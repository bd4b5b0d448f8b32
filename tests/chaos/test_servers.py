"""The fault suite's private RabbitMQ: its environment and files, the
nodes' second bus and route, the read-back's decoding, the group kill
(nothing is started here)."""

from __future__ import annotations

import os
import signal

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.chaos import amqp_queue, servers
from daojia_msg.config.parse import load_config
from daojia_msg.protocol.pb import msgplatform_pb2 as pb


class RabbitMQTests(TestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_environment_and_files_are_its_own(self) -> None:
        self.patch(os, "environ", {"PATH": "/bin", "RABBITMQ_NODENAME": "rabbit@host",
                                   "ERL_EPMD_PORT": "1"})
        env = servers.rabbitmq_env(self.directory, 41000, 41001, "chaos-1@localhost")
        base = os.path.join(self.directory, "rabbitmq")
        self.assertEqual({k: v for k, v in env.items() if k.startswith("RABBITMQ_")}, {
            "RABBITMQ_NODENAME": "chaos-1@localhost", "RABBITMQ_NODE_PORT": "41000", "RABBITMQ_DIST_PORT": "41001",
            "RABBITMQ_MNESIA_BASE": f"{base}/mnesia", "RABBITMQ_LOG_BASE": f"{base}/log",
            "RABBITMQ_LOGS": "-", "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins"})
        self.assertEqual((env["HOME"], env["PATH"]), (f"{base}/home", "/bin"))
        self.assertNotIn("ERL_EPMD_PORT", env)
        with open(f"{base}/rabbitmq.conf") as f:
            self.assertIn("listeners.tcp.default = 127.0.0.1:41000\n", f.read())
        with open(f"{base}/enabled_plugins") as f:
            self.assertEqual(f.read(), "[].\n")
        servers.rabbitmq_env(self.directory, 41000, 41001, "chaos-1@localhost", "10.231.7.1")
        with open(f"{base}/rabbitmq.conf") as f:
            text = f.read()
        self.assertIn("listeners.tcp.bridge = 10.231.7.1:41000\nloopback_users = none\n", text)

    def test_started_in_a_session_of_its_own_and_killed_as_a_group(self) -> None:
        proc = servers.rabbitmq_proc(Clock(), "/r/rabbitmq-server", self.directory, 41000, 41001)
        self.assertEqual(proc.argv[1:], ["/r/rabbitmq-server"])
        self.assertTrue(proc.argv[0].endswith("setsid"))
        self.assertEqual(proc.ready_text, b"Server startup complete")
        self.assertRegex((proc.env or {})["RABBITMQ_NODENAME"], r"^chaos-\d+-41000@localhost$")
        killed: list[tuple[int, int]] = []
        self.patch(servers.os, "killpg", lambda pid, sig: killed.append((pid, sig)))
        proc.send(signal.SIGKILL)
        self.assertEqual(killed, [])  # not running
        proc.pid = 4242
        proc.ended = Deferred()  # running
        proc.send(signal.SIGKILL)
        self.assertEqual(killed, [(4242, signal.SIGKILL)])

    def test_the_nodes_route_one_msgtype_to_the_rabbitmq_bus(self) -> None:
        url = "mysql://root@127.0.0.1:3306/chaos"
        config = load_config(servers.node_config(self.directory, 0, 6390, url, 41000))
        self.assertEqual(config.buses, {"rabbit": "amqp://guest:guest@127.0.0.1:41000/"})
        routes = {(r.msgtype, r.topic, r.bus) for r in config.routes}
        self.assertEqual(routes, {(servers.C2S_MSGTYPE, servers.TOPIC, ""),
                                  (servers.AMQP_MSGTYPE, servers.AMQP_TOPIC, "rabbit")})
        plain = load_config(servers.node_config(self.directory, 1, 6390, url))
        self.assertEqual((dict(plain.buses), len(plain.routes)), ({}, 1))
        bridged = load_config(servers.node_config(self.directory, 2, 6390, url, 41000, "10.231.7.1"))
        self.assertEqual(bridged.buses, {"rabbit": "amqp://guest:guest@10.231.7.1:41000/"})
        self.assertIn("10.231.7.1:6390", bridged.redis.url)

    def test_the_clock_step_node_environment(self) -> None:
        """Only the wall clock follows the file, and libfaketime's monotonic
        workaround is off (with it the node's timed waits spin)."""
        self.patch(os, "environ", {"PATH": "/bin"})
        rc = os.path.join(self.directory, "faketime.rc")
        env = servers.faketime_env("/usr/lib/libfaketime.so.1", rc)
        with open(rc) as f:
            self.assertEqual(f.read(), "+0\n")
        self.assertEqual({k: v for k, v in env.items() if k != "PATH"}, {
            "LD_PRELOAD": "/usr/lib/libfaketime.so.1", "FAKETIME_TIMESTAMP_FILE": rc,
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DONT_FAKE_MONOTONIC": "1", "FAKETIME_FORCE_MONOTONIC_FIX": "0"})

    def test_nodes_in_a_namespace_listen_on_its_address(self) -> None:
        proc = servers.node_proc(Clock(), self.directory, 1, "n.toml", 1, 2, 3, None,
                                 "10.231.7.11", ["ip", "netns", "exec", "chaos1-1"])
        self.assertEqual(proc.argv[:4], ["ip", "netns", "exec", "chaos1-1"])
        self.assertIn("tcp:3:interface=10.231.7.11", proc.argv)
        servers.haproxy_proc(Clock(), "haproxy", self.directory, 5, 6, [(1, 2)], ["10.231.7.10"])
        with open(os.path.join(self.directory, "haproxy.cfg")) as f:
            text = f.read()
        self.assertIn("server node0 10.231.7.10:1 check port 2", text)
        self.assertIn("server node0 10.231.7.10:2 check", text)

    def test_read_back_decodes_envelopes_and_skips_the_rest(self) -> None:
        body = pb.Message(msgid=77, content=b"chaos c2s-amqp 3").SerializeToString()
        self.assertEqual(amqp_queue.messages([body, b"\xff\xff not a message"]),
                         [(b"chaos c2s-amqp 3", 77)])

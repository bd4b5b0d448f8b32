"""TLS at start-up: ssl: listeners and the RPC's mutual TLS checked with the
options and the config, before anything opens; an unusable file is named with
the option or key that gave it."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import (
    ClusterConfig,
    Config,
    ConfigError,
    ListenConfig,
    RedisConfig,
    default_config,
)
from daojia_msg.node import check_cluster_config
from daojia_msg.tap import Options, build_config
from tests.tlscerts import CA
from tests.tlsnodes import ssl_description


def options(*argv: str) -> Options:
    o = Options()
    o.parseOptions(list(argv))
    return o


class ListenerOptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CA(os.path.abspath(self.mktemp()))
        self.server = self.ca.issue("node", stem="server")

    def refused(self, *argv: str) -> str:
        with self.assertRaises(ConfigError) as e:
            build_config(options(*argv))
        return str(e.exception)

    def test_ssl_gate_and_http(self) -> None:
        gate = ssl_description(self.server, 7443)
        config = build_config(options("--gate", gate, "--http", ssl_description(self.server, 8443)))
        self.assertEqual(config.listen.gate, gate)

    def test_a_missing_file_names_the_option(self) -> None:
        self.assertEqual(
            self.refused("--gate", "ssl:7443:privateKey=missing.key:certKey=missing.pem"),
            "--gate: cannot read the certificate 'missing.pem': No such file or directory")
        self.assertEqual(
            self.refused("--http", f"ssl:8443:privateKey=missing.key:certKey={self.server.cert}"),
            "--http: cannot read the private key 'missing.key': No such file or directory")

    def test_old_tls_cannot_be_asked_for(self) -> None:
        self.assertIn("--gate: ssl: does not take sslmethod",
                      self.refused("--gate", ssl_description(self.server) + ":sslmethod=TLSv1_METHOD"))

    def test_haproxy_ssl_is_refused(self) -> None:
        self.assertIn("--gate: haproxy:ssl: is not supported",
                      self.refused("--gate", "haproxy:" + ssl_description(self.server)))


class ClusterTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CA(os.path.abspath(self.mktemp()))
        self.node = self.ca.issue("node", purpose="both", stem="node")

    def config(self, rpc: str = "tcp:7100:interface=10.0.0.11", **tls: str) -> Config:
        return default_config().replace(
            listen=ListenConfig(rpc=rpc),
            redis=RedisConfig(url="redis://127.0.0.1:6379/0"),
            cluster=ClusterConfig(**tls))

    def test_mutual_tls_stands_in_for_the_secret_off_loopback(self) -> None:
        check_cluster_config(self.config(
            rpc_tls_cert=self.node.cert, rpc_tls_key=self.node.key, rpc_tls_ca=self.ca.path))
        with self.assertRaises(ConfigError) as e:
            check_cluster_config(self.config())
        self.assertEqual(e.exception.path, ("cluster", "rpc_secret"))

    def test_an_unusable_file_names_its_key(self) -> None:
        for key, files in (("rpc_tls_cert", ("nope.pem", self.node.key, self.ca.path)),
                           ("rpc_tls_key", (self.node.cert, "nope.key", self.ca.path)),
                           ("rpc_tls_ca", (self.node.cert, self.node.key, "nope.pem"))):
            cert, keyfile, ca = files
            with self.assertRaises(ConfigError) as e:
                check_cluster_config(self.config(
                    rpc_tls_cert=cert, rpc_tls_key=keyfile, rpc_tls_ca=ca))
            self.assertEqual(e.exception.path, ("cluster", key))
            self.assertIn("'nope.", str(e.exception))

    def test_the_rpc_listener_is_not_an_ssl_one(self) -> None:
        with self.assertRaises(ConfigError) as e:
            check_cluster_config(self.config(rpc=ssl_description(self.node)))
        self.assertEqual(e.exception.path, ("listen", "rpc"))
        self.assertIn("cluster.rpc_tls_cert", str(e.exception))

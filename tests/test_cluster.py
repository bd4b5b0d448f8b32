"""Two nodes in one process, sharing real Redis (and one message store), over
real sockets: cross-node delivery, kickout, dispatch, HTTP push."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from typing import Any

import treq
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.client.errors import ResultError
from daojia_msg.client.protocol import MsgClientProtocol
from daojia_msg.config import ClusterConfig, ConfigError, ListenConfig, RedisConfig, default_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.node import Node
from daojia_msg.protocol.codes import Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.nodes import Inbox, NodeTestCase
from tests.servers import missing as missing_server
from tests.servers import redis_prefix, require_redis

R: Any = reactor
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TwoNodes(NodeTestCase):
    """Two nodes in this process on one Redis (a key prefix of the test's)."""

    async def start_cluster_node(self, data_dir: str, prefix: str, node_id: int | None = None,
                                 mysql: Any = None, drain_grace_s: float = 0.0,
                                 store: Any = None) -> Node:
        base = default_config()
        config = base.replace(
            node_id=node_id,
            data_dir=data_dir,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                               http="tcp:0:interface=127.0.0.1",
                               rpc="tcp:0:interface=127.0.0.1"),
            redis=RedisConfig(url=self.redis_url, key_prefix=prefix, reply_timeout_s=2.0),
            cluster=ClusterConfig(heartbeat_s=0.5, ttl_s=1.5, rpc_timeout_s=2.0,
                                  drain_grace_s=drain_grace_s,
                                  rpc_secret="a-test-rpc-secret-16+"),
            **({"mysql": mysql} if mysql is not None else {}),
            **({"store": store} if store is not None else {}),
        )
        node = Node(config, R)
        node.startService()
        await node.ready
        self.addCleanup(self.stop_node, node)
        return node

    def setUp(self) -> Any:
        self.redis_url = require_redis()
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def asyncSetUp(self) -> None:
        await self.start_pair()

    async def start_pair(self, mysql: Any = None, store: Any = None) -> None:
        """``node1`` and ``node2`` on the test's Redis key prefix (``prefix``),
        one data directory, and ``mysql`` and ``store`` when given."""
        self.prefix = redis_prefix(self)
        data = os.path.abspath(self.mktemp())
        self.node1 = await self.start_cluster_node(data, self.prefix, mysql=mysql, store=store)
        self.node2 = await self.start_cluster_node(data, self.prefix, mysql=mysql, store=store)

    async def client_on(self, node: Node, uid: int) -> tuple[Any, Inbox]:
        self.node = node
        return await self.client(uid)

    async def raw_login(self, node: Node, uid: int, token: str) -> int:
        """One LOGIN on a connection of its own; the code it is answered with."""
        self.node = node
        proto = MsgClientProtocol(R, uid, 1001, heartbeat_s=0)
        await connectProtocol(TCP4ClientEndpoint(R, "127.0.0.1", self.port("gate")), proto)
        try:
            response = await proto.login(token)
        except ResultError as e:
            return e.code
        finally:
            proto.transport.loseConnection()  # type: ignore[union-attr]
        return response.code


class ClusterTests(TwoNodes):

    async def test_nodes_lease_different_ids(self) -> None:
        self.assertNotEqual(self.node1.node_id, self.node2.node_id)
        assert self.node1.registry is not None
        live = await self.node1.registry.live_nodes()
        self.assertEqual(sorted(n.node_id for n in live),
                         sorted([self.node1.node_id, self.node2.node_id]))
        ports = {n.node_id: n.gate_port for n in live}
        self.assertEqual(ports[self.node2.node_id], self.node2.gate_address()[1])

    async def test_the_registry_has_a_connection_of_its_own(self) -> None:
        """The lease and registration commands never share a pooled connection
        with per-message ones (nor fail with one dropped for a late reply)."""
        registry, redis = self.node1.registry, self.node1.redis
        assert registry is not None and redis is not None
        self.assertIs(registry.redis, self.node1.lease_redis)
        self.assertIsNot(registry.redis, redis)
        self.assertTrue(registry.available())
        lease = registry.redis
        self.assertIn(await lease.call("PING"), ("PONG", b"PONG"))
        await self.stop_node(self.node1)
        with self.assertRaises(StoreUnavailable):  # closed with the node
            await lease.call("PING")

    async def test_chat_across_nodes(self) -> None:
        alice, _ = await self.client_on(self.node1, 1)
        bob, bob_inbox = await self.client_on(self.node2, 2)
        result = await alice.c2c(2, 1001, 7, b"across the cluster", logid="x-node")
        [msg] = await bob_inbox.wait(1)
        self.assertEqual((msg.msgid, msg.content, msg.logid),
                         (result.msgid, b"across the cluster", "x-node"))
        await bob.ack([msg.msgid])
        self.assertEqual(list((await bob.pull()).messages), [])
        # node 2 pushed it; node 1 accepted it
        self.assertEqual(self.node2.stats.totals()["pushed"], 1)
        self.assertEqual(self.node1.stats.totals()["accepted"], 1)
        # Counted cluster-wide: either node's /v1/stats shows both nodes' counts.
        for node in (self.node1, self.node2):
            assert node.stats_flusher is not None
            await node.stats_flusher.flush()
        self.node = self.node2
        code, stats = await self.http("GET", "/v1/stats")
        totals = stats["totals"]
        self.assertEqual((code, totals["accepted"], totals["pushed"], totals["acked"]),
                         (200, 1, 1, 1))
        self.assertEqual(stats["delivery_rate"], 1.0)
        # The delivery was an internal RPC from node 1 to node 2, on node 1's /metrics.
        self.node = self.node1
        assert self.node1.registry is not None
        await self.node1.registry.count_live_nodes()  # what each heartbeat does
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(await response.text())
                   for s in family.samples}
        peer = str(self.node2.node_id)
        self.assertGreaterEqual(
            samples[("msgplatform_rpc_calls_total", (("peer", peer), ("result", "ok")))], 1)
        self.assertGreaterEqual(
            samples[("msgplatform_rpc_call_seconds_count", (("peer", peer),))], 1)
        self.assertLess(samples[("msgplatform_lease_age_seconds", ())],
                        samples[("msgplatform_lease_ttl_seconds", ())])
        self.assertGreaterEqual(
            samples[("msgplatform_lease_renewals_total", (("result", "ok"),))], 1)
        self.assertEqual(samples[("msgplatform_cluster_nodes_live", ())], 2)
        redis_replies = sum(v for (name, _), v in samples.items()
                            if name == "msgplatform_redis_command_seconds_count")
        self.assertGreater(redis_replies, 3)  # logins, routing, at the least
        self.assertEqual(samples[("msgplatform_redis_errors_total", (("kind", "timeout"),))], 0)

    async def test_a_lockout_holds_on_every_node(self) -> None:
        """Five forged tokens on one node lock the identity out from that
        address on the other too: the counters are in Redis."""
        forged = f"{int(R.seconds()) + 600}:{'0' * 64}"
        codes = [await self.raw_login(self.node1, 42, forged) for _ in range(5)]
        self.assertEqual(codes, [Code.UNAUTHORIZED] * 5)
        good = mint_token("demo-secret-1001", 1001, 42, int(R.seconds()) + 600)
        self.assertEqual(await self.raw_login(self.node2, 42, good), Code.RATE_LIMITED)
        # Another identity from the same address is not locked (its token is
        # checked, and 42's token is wrong for it).
        self.assertEqual(await self.raw_login(self.node2, 43, good), Code.UNAUTHORIZED)

    async def test_login_on_another_node_kicks(self) -> None:
        _, first = await self.client_on(self.node1, 5)
        await self.client_on(self.node2, 5)
        self.assertEqual(await first.kicked.addTimeout(10, R), KickReason.LOGIN_ELSEWHERE)

    async def test_http_push_to_a_user_on_another_node(self) -> None:
        _, inbox = await self.client_on(self.node2, 9)
        self.node = self.node1  # the HTTP API of node 1
        code, answer = await self.http("POST", "/v1/push", {
            "to_uid": 9, "to_appcode": 1001, "msgtype": 5, "content": "order"})
        self.assertEqual((code, answer["online"]), (200, True))
        [msg] = await inbox.wait(1)
        self.assertEqual((str(msg.msgid), msg.kind), (answer["msgid"], pb.S2C))

    async def test_dispatch_least_loaded(self) -> None:
        await self.client_on(self.node1, 11)
        await self.client_on(self.node1, 12)
        assert self.node1.registry is not None and self.node2.registry is not None
        await self.node1.registry.heartbeat()
        await self.node2.registry.heartbeat()
        self.node = self.node1
        code, answer = await self.http("GET", "/v1/dispatch", key=None)
        self.assertEqual((code, answer["port"]), (200, self.node2.gate_address()[1]))

    async def test_sigterm_drains(self) -> None:
        """Stopping (SIGTERM): out of /v1/dispatch and /healthz 503 at once,
        KICKOUT SHUTDOWN after the grace period, then gone from the cluster."""
        node3 = await self.start_cluster_node(os.path.abspath(self.mktemp()), self.prefix,
                                              drain_grace_s=0.5)
        for node, uid in ((self.node1, 21), (self.node1, 22), (self.node2, 23),
                          (self.node2, 24)):
            await self.client_on(node, uid)
        self.node = node3
        _, inbox = await self.client(26)
        for node in (self.node1, self.node2, node3):
            assert node.registry is not None
            await node.registry.heartbeat()
        self.node = self.node1
        self.assertEqual((await self.http("GET", "/v1/dispatch", key=None))[1]["port"],
                         node3.gate_address()[1])  # the least loaded
        assert node3.registry is not None
        withdrawals: list[Deferred[None]] = []
        withdraw = node3.registry.withdraw_gate

        def watched() -> Deferred[None]:
            withdrawals.append(withdraw())
            return withdrawals[-1]

        node3.registry.withdraw_gate = watched  # type: ignore[method-assign]
        stopped = node3.stopService()
        self.assertFalse(node3.serving())
        await withdrawals[0]  # the stop's own: not the next heartbeat
        code, answer = await self.http("GET", "/v1/dispatch", key=None)
        self.assertEqual(code, 200)
        self.assertNotEqual(answer["port"], node3.gate_address()[1])
        self.assertEqual(inbox.kicks, [])  # not before the grace period
        self.assertEqual(await inbox.kicked.addTimeout(10, R), KickReason.SHUTDOWN)
        await stopped
        assert self.node1.registry is not None
        live = await self.node1.registry.live_nodes()
        self.assertNotIn(node3.node_id, [n.node_id for n in live])

    async def test_durable_message_is_ok_when_redis_fails_after_the_store(self) -> None:
        """The store took it, then the session look-up fails: OK, pending."""
        alice, _ = await self.client_on(self.node1, 31)
        _, bob_inbox = await self.client_on(self.node2, 32)
        self.node1.sessions.lookup = (  # type: ignore[method-assign]
            lambda uid, appcode: fail(StoreUnavailable("redis HGET: no reply within 2 s")))
        result = await alice.c2c(32, 1001, 7, b"durable first")
        self.assertEqual(result.code, Code.OK)
        self.assertEqual(await self.node1.store.count_pending(32, 1001), 1)
        self.assertEqual(bob_inbox.messages, [])

    async def test_dispatch_without_redis_is_503(self) -> None:
        assert self.node1.registry is not None
        self.node1.registry.least_loaded = (  # type: ignore[method-assign]
            lambda: fail(StoreUnavailable("redis: not connected")))
        self.node = self.node1
        code, answer = await self.http("GET", "/v1/dispatch", key=None)
        self.assertEqual(code, 503, answer)

    async def test_unreachable_node_leaves_it_pending(self) -> None:
        alice, _ = await self.client_on(self.node1, 1)
        _, bob_inbox = await self.client_on(self.node2, 2)
        # node 2's RPC listener goes away (a partition): node 1 cannot hand it over
        await self.node2.ports["rpc"].stopListening()
        assert self.node2.rpc is not None
        await self.node2.rpc.disconnect_all()
        result = await alice.c2c(2, 1001, 7, b"stays pending")
        self.assertEqual(result.code, Code.OK)
        self.assertEqual(await self.node1.store.count_pending(2, 1001), 1)
        self.assertEqual(bob_inbox.messages, [])
        self.assertEqual(self.node1.stats.totals()["stored"], 1)


class LeaseTests(TestCase):
    def setUp(self) -> None:
        self.redis_url = require_redis()

    async def test_node_id_held(self) -> None:
        prefix = redis_prefix(self)
        cluster = ClusterTests()
        cluster.redis_url = self.redis_url
        cluster.mktemp = self.mktemp  # type: ignore[method-assign]
        cluster.addCleanup = self.addCleanup  # type: ignore[method-assign]
        data = os.path.abspath(self.mktemp())
        first = await cluster.start_cluster_node(data, prefix, node_id=77)
        self.assertEqual(first.node_id, 77)
        config = dataclasses.replace(first.config)
        second = Node(config, R)
        second.startService()
        self.addCleanup(second.stopService)
        with self.assertRaises(ConfigError) as e:
            await second.ready
        self.assertEqual(str(e.exception), "node.id: node id 77 is held by a live node")


#: Names a PromQL expression uses that are the node's: ours, and the collectors'.
OUR_METRIC = re.compile(r"\b(?:msgplatform_|python_gc_|python_info)\w*")


def expressions() -> dict[str, str]:
    """Every PromQL expression of the shipped alert rules and dashboard, by where it is."""
    found: dict[str, str] = {}
    with open(os.path.join(ROOT, "etc", "prometheus", "alerts.yml")) as f:
        for group in yaml.safe_load(f)["groups"]:
            for rule in group["rules"]:
                found[f"alert {rule['alert']}"] = rule["expr"]
    with open(os.path.join(ROOT, "etc", "grafana", "msgplatform.json")) as f:
        for panel in json.load(f)["panels"]:
            for target in panel.get("targets", []):
                found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return found


class ObservabilityTests(TwoNodes):
    """The shipped alert rules and dashboard use only what nodes export."""

    async def test_alerts_and_dashboard_use_exported_metrics(self) -> None:
        # Traffic of every kind, across the two nodes.
        alice, alice_inbox = await self.client_on(self.node1, 1)
        bob, bob_inbox = await self.client_on(self.node2, 2)
        await alice.c2c(2, 1001, 7, b"across")
        await bob_inbox.wait(1)
        await bob.c2c(1, 1001, 7, b"and back")  # ACKed on node 1: its ACK latency
        await alice_inbox.wait(1)
        await alice.c2s(1, b"31.2,121.4")
        self.node = self.node1
        await self.http("POST", "/v1/push", {"to_uid": 2, "to_appcode": 1001, "msgtype": 5,
                                             "content": "order"})
        await bob_inbox.wait(2)
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        text = await response.text()
        families = list(text_string_to_metric_families(text))
        # Sample names, and the gauges declared without a sample yet (the
        # last purge's time, before the first round).
        exported = {s.name for family in families for s in family.samples} | {
            family.name for family in families if family.type == "gauge"}
        missing = {where: sorted(set(OUR_METRIC.findall(expr)) - exported)
                   for where, expr in expressions().items()}
        self.assertEqual({k: v for k, v in missing.items() if v}, {})
        self.assertGreater(len(missing), 30)  # the files were read
        promtool = shutil.which("promtool")
        if promtool is None:
            missing_server("promtool (Debian's prometheus package) is not installed")
        checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                                 capture_output=True, check=False)
        self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, b""))
        rules = subprocess.run([promtool, "check", "rules",
                                os.path.join(ROOT, "etc", "prometheus", "alerts.yml")],
                               capture_output=True, check=False)
        self.assertEqual(rules.returncode, 0, rules.stdout + rules.stderr)

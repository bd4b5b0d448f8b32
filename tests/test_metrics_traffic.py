"""Every metric family of a node moves under traffic of every kind, or is
listed with what moves it (a fault, time): a family added without a place in
:data:`MOVES`, :data:`ON_FAULTS` or :data:`LEVELS` fails this test, so none
ships that nothing exercises."""

from __future__ import annotations

from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from tests.nodes import R
from tests.test_cluster import TwoNodes

#: Counters and histograms that ordinary traffic on a node moves (a C2C across
#: the two nodes and back, a C2S, an HTTP push, an offline message and its
#: PULL, a HISTORY, a kick, forged logins and a lockout, an offer won).
MOVES = frozenset({
    "msgplatform_messages_accepted", "msgplatform_messages_pushed",
    "msgplatform_messages_acked", "msgplatform_messages_stored",
    "msgplatform_messages_pulled", "msgplatform_ack_latency_seconds",
    "msgplatform_logins", "msgplatform_kickouts", "msgplatform_frames_refused",
    "msgplatform_login_throttled", "msgplatform_requests",
    "msgplatform_gate_bytes_received", "msgplatform_gate_bytes_sent",
    "msgplatform_store_flush_seconds", "msgplatform_store_flush_writes",
    "msgplatform_bus_publish_seconds", "msgplatform_rpc_calls",
    "msgplatform_rpc_call_seconds", "msgplatform_redis_command_seconds",
    "msgplatform_lease_renewals", "msgplatform_http_requests",
    "msgplatform_http_request_seconds", "msgplatform_process_cpu_seconds",
    "msgplatform_positions_reported", "msgplatform_offers", "msgplatform_offer_pushes",
})

#: Counters that only faults or the passing of time move (this test takes
#: less than a reactor-lag period), and the tests that move them.
ON_FAULTS = {
    "msgplatform_messages_repushed": "tests.logic (an ACK timeout)",
    "msgplatform_messages_expired": "tests.store (the purge of expired pending rows)",
    "msgplatform_store_purged_rows": "tests.store (the purger)",
    "msgplatform_store_flush_errors": "tests.metrics.test_store",
    "msgplatform_store_read_errors": "tests.store.test_reads",
    "msgplatform_answer_timeouts": "tests.logic.test_answers",
    "msgplatform_route_pushes": "tests.logic.test_routes (a second message within the TTL)",
    "msgplatform_bus_errors": "tests.metrics.test_bus",
    "msgplatform_bus_reconnects": "tests.bus.test_amqp, tests.bus.test_redis_streams",
    "msgplatform_redis_errors": "tests.cluster (a Redis that does not answer)",
    "msgplatform_reactor_lag_seconds": "tests.metrics.test_reactorlag (a sample every 0.5 s)",
    "msgplatform_position_failures": "tests.logic.test_positions (a backend that refuses)",
    "msgplatform_offer_failures": "tests.logic.test_offers (a backend that refuses)",
    "msgplatform_messages_escalated": "tests.logic.test_escalation (a push not ACKed in time)",
    "msgplatform_escalations": "tests.logic.test_escalation (posted, failed, given up, cancelled)",
}

#: Gauges and information: a level, present with a sample.
LEVELS = frozenset({
    "msgplatform_connections", "msgplatform_sessions", "msgplatform_gate_connections",
    "msgplatform_messages_unacked", "msgplatform_delivery_retries_waiting",
    "msgplatform_store_writes_waiting", "msgplatform_store_reads_in_flight",
    "msgplatform_bus_pending", "msgplatform_bus_max_pending",
    "msgplatform_lease_age_seconds", "msgplatform_lease_ttl_seconds",
    "msgplatform_cluster_nodes_live", "msgplatform_delivery_rate",
    "msgplatform_delivery_rate_total", "msgplatform_store_rows", "msgplatform_store_bytes",
    "msgplatform_store_oldest_pending_age_seconds",
    "msgplatform_store_last_purge_timestamp_seconds",
    "msgplatform_process_virtual_memory_bytes", "msgplatform_process_resident_memory_bytes",
    "msgplatform_process_start_time_seconds", "msgplatform_process_open_fds",
    "msgplatform_process_max_fds", "msgplatform_admission_limit",
    "msgplatform_admission_inflight", "msgplatform_routes_kept",
})

Families = dict[str, dict[str, Any]]


def families(text: str) -> Families:
    """Our families by name: their type and the sum of their counts (a
    counter's ``_total`` samples, a histogram's ``_count``), and whether they
    have samples."""
    found: Families = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("msgplatform_") or family.name.endswith("_created"):
            continue  # (prometheus_client's creation times parse as families of their own)
        counted = [s.value for s in family.samples
                   if s.name.endswith(("_total", "_count"))]
        found[family.name] = {"type": family.type, "count": sum(counted),
                              "samples": len(family.samples)}
    return found


class EveryFamilyMovesTests(TwoNodes):
    async def scrape(self) -> Families:
        self.node = self.node1
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        return families(await response.text())

    async def traffic(self) -> None:
        """Traffic of every kind on node 1 (and across to node 2)."""
        alice, alice_inbox = await self.client_on(self.node1, 1)
        bob, bob_inbox = await self.client_on(self.node2, 2)
        await alice.c2c(2, 1001, 7, b"across")              # RPC 1 -> 2
        await bob_inbox.wait(1)
        await bob.c2c(1, 1001, 7, b"and back")              # ACKed on node 1
        await alice_inbox.wait(1)
        await alice.c2s(1, b"31.2,121.4")                   # the bus
        self.node = self.node1                              # an offer alice wins
        _, offer = await self.http("POST", "/v1/offers", {
            "appcode": 1001, "lat": 31.2, "lon": 121.4, "msgtype": 5, "content": "order",
            "waves": [{"radius_m": 100, "count": 1, "after_s": 0}], "accept_deadline_s": 60})
        await alice_inbox.wait(2)
        await alice.c2s(3, offer["offer_id"].encode())
        await alice.c2c(3, 1001, 7, b"for later")           # stored: 3 is offline
        carol, _ = await self.client_on(self.node1, 3)
        await carol.pull()
        await alice.history()
        await self.client_on(self.node1, 1)                 # kicks the first alice
        self.node = self.node1
        await self.http("POST", "/v1/push", {"to_uid": 2, "to_appcode": 1001, "msgtype": 5,
                                             "content": "order"})
        await bob_inbox.wait(2)
        forged = f"{int(R.seconds()) + 600}:{'0' * 64}"
        for _ in range(5):                                  # refused, then locked out
            await self.raw_login(self.node1, 42, forged)
        await self.raw_login(self.node1, 42, mint_token("demo-secret-1001", 1001, 42,
                                                         int(R.seconds()) + 600))
        assert self.node1.registry is not None
        await self.node1.registry.heartbeat()

    async def test_every_family_moves_or_is_accounted_for(self) -> None:
        before = await self.scrape()
        await self.traffic()
        after = await self.scrape()
        known = MOVES | set(ON_FAULTS) | LEVELS
        self.assertEqual(sorted(set(after) - known), [],
                         "families nothing here moves: add them to MOVES, ON_FAULTS or LEVELS")
        self.assertEqual(sorted(MOVES - set(after)), [], "families not exported")
        still = sorted(name for name in MOVES
                       if after[name]["count"] <= before.get(name, {"count": 0})["count"])
        self.assertEqual(still, [], "families the traffic did not move")
        empty = sorted(name for name in LEVELS & set(after)
                       if after[name]["samples"] == 0 and name not in OPTIONAL_LEVELS)
        self.assertEqual(empty, [], "levels without a sample")


#: Levels with no sample until something happened (a purge).
OPTIONAL_LEVELS = frozenset({"msgplatform_store_last_purge_timestamp_seconds"})

"""Routes: a recipient found on another node is pushed to again without a
session look-up for ``cluster.route_ttl_s``, and a record gone stale is
looked up again. The fake peer nodes answer as real ones do: pushed when they
hold that very session id, "not held" otherwise."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import ConfigError, default_config, parse_config
from daojia_msg.core.errors import PeerUnavailable, StoreUnavailable
from daojia_msg.core.model import SessionRecord, StoredMessage
from daojia_msg.logic.routing import Routes
from daojia_msg.logic.service import PushItem
from daojia_msg.metrics.registry import DeliveryGauges
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.config.helpers import APP
from tests.helpers import Stack
from tests.logic.test_cluster import FakePeers, remote

ROUTE_TTL_S = default_config().cluster.route_ttl_s


class HoldingPeers(FakePeers):
    """Peer nodes that push only to a session they hold (``held``: node id ->
    session ids), as ``Routing.deliver_local`` does; an exception in
    ``answers`` for a node that cannot be reached."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[int, set[str]] = {}

    def deliver(self, record: SessionRecord, message: StoredMessage) -> Deferred[bool]:
        self.delivered.append((record, message))
        answer = self.answers.get(record.node_id)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(record.session_id in self.held.get(record.node_id, set()))


class CachedRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack(node_id=1)
        self.peers = HoldingPeers()
        self.stack.logic.peers = self.peers
        self.alice = self.stack.login(1)
        self.lookups: list[tuple[int, int]] = []
        store = self.stack.logic.routing.session_store
        real = store.lookup

        def counted(uid: int, appcode: int) -> Deferred[SessionRecord | None]:
            self.lookups.append((uid, appcode))
            return real(uid, appcode)

        store.lookup = counted  # type: ignore[method-assign]

    def online(self, node: int, session: str = "s-remote") -> None:
        """User 2 logs in on ``node``: its record in the session store, its
        session held there."""
        self.successResultOf(self.stack.sessions.register(remote(2, node=node, session=session)))
        self.peers.held.setdefault(node, set()).add(session)

    def offline(self, node: int, session: str = "s-remote") -> None:
        self.stack.sessions.unregister(remote(2, node=node, session=session))
        self.peers.held[node].discard(session)

    def pushed_to(self) -> list[tuple[int, str]]:
        return [(r.node_id, r.session_id) for r, _ in self.peers.delivered]

    def stored(self) -> int:
        return self.stack.logic.stats.totals()["stored"]

    def test_one_look_up_for_a_run_of_messages(self) -> None:
        self.online(2)
        for text in (b"a", b"b", b"c"):
            self.assertEqual(self.alice.c2c(2, text).code, Code.OK)
        self.assertEqual(self.lookups, [(2, 1001)])
        self.assertEqual(self.pushed_to(), [(2, "s-remote")] * 3)
        self.assertEqual(self.stack.logic.routing.routes.results.counts, {"hit": 2, "stale": 0})

    def test_looked_up_again_after_the_ttl(self) -> None:
        self.online(2)
        self.alice.c2c(2)
        self.stack.clock.advance(ROUTE_TTL_S - 0.01)
        self.alice.c2c(2)
        self.assertEqual(len(self.lookups), 1)
        self.stack.clock.advance(0.01)
        self.alice.c2c(2)
        self.assertEqual(len(self.lookups), 2)
        self.assertEqual(len(self.peers.delivered), 3)

    def test_a_session_that_moved_is_followed(self) -> None:
        """Node 2 no longer holds the session the kept record names: looked up
        again, pushed to node 3, and node 3 is what is kept now."""
        self.online(2, "old")
        self.alice.c2c(2)
        self.offline(2, "old")
        self.online(3, "new")
        self.assertEqual(self.alice.c2c(2).code, Code.OK)
        self.alice.c2c(2)
        self.assertEqual(self.pushed_to(), [(2, "old"), (2, "old"), (3, "new"), (3, "new")])
        self.assertEqual(len(self.lookups), 2)
        self.assertEqual(self.stack.logic.routing.routes.results.counts, {"hit": 1, "stale": 1})
        self.assertEqual(self.stored(), 0)

    def test_a_recipient_who_went_offline(self) -> None:
        self.online(2)
        self.alice.c2c(2)
        self.offline(2)
        self.alice.c2c(2)
        self.assertEqual(self.stored(), 1)
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 2)
        # Nothing is kept of a recipient not found: the next one looks up again.
        self.alice.c2c(2)
        self.assertEqual(len(self.lookups), 3)
        self.assertEqual(len(self.peers.delivered), 2)

    def test_an_unreachable_node_is_not_tried_twice_for_one_message(self) -> None:
        self.stack.logic.startService()  # (retries are scheduled by a running service)
        self.addCleanup(self.stack.logic.stopService)
        self.online(2)
        self.alice.c2c(2)
        self.peers.answers[2] = PeerUnavailable("node 2 down")
        self.assertEqual(self.alice.c2c(2).code, Code.OK)
        # The kept record failed; the look-up found the same one: not tried again,
        # left pending and retried later, as without a kept record.
        self.assertEqual(len(self.peers.delivered), 2)
        self.assertEqual(self.stored(), 1)
        self.assertEqual(self.stack.logic.routing.retries_waiting(), 1)
        self.assertEqual(len(self.stack.logic.routing.routes), 0)

    def test_a_recipient_who_logs_in_is_pushed_at_once(self) -> None:
        self.alice.c2c(2)  # offline: stored, nothing kept
        self.online(2)
        self.alice.c2c(2)
        self.assertEqual(self.pushed_to(), [(2, "s-remote")])
        self.assertEqual(len(self.lookups), 2)

    def test_a_recipient_who_logs_in_here_is_pushed_here(self) -> None:
        self.online(2)
        self.alice.c2c(2)
        bob = self.stack.login(2)
        self.alice.c2c(2, b"local now")
        self.assertEqual(len(self.peers.delivered), 1)
        self.assertEqual([m.content for m in bob.pushed_messages()], [b"local now"])

    def test_a_refused_push_is_not_kept(self) -> None:
        # A record in the session store that node 2 does not hold (stale).
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        self.alice.c2c(2)
        self.alice.c2c(2)
        # Two look-ups each (the first, and the one after "not held"), as
        # without routes: the second message did not start from a kept record.
        self.assertEqual(len(self.lookups), 4)
        self.assertEqual(len(self.peers.delivered), 2)


    def test_the_window_after_a_newer_login_elsewhere(self) -> None:
        """The price, pinned: node 2 still holds the old session (its kick has
        not arrived) while the recipient's newer login on node 3 is registered:
        until the kept route expires, pushes go to the old session, and they
        stay pending until ACKed; then the look-up finds node 3."""
        self.online(2, "old")
        self.alice.c2c(2)
        self.online(3, "new")  # registered: the session store now names node 3
        self.alice.c2c(2)
        self.stack.clock.advance(ROUTE_TTL_S)
        self.alice.c2c(2)
        self.assertEqual(self.pushed_to(), [(2, "old"), (2, "old"), (3, "new")])
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 3)

    def test_expiry_counts_from_the_look_up(self) -> None:
        """A push that took long to be answered does not stretch the route's life."""
        self.online(2)
        slow: Deferred[bool] = Deferred()
        real = self.peers.deliver
        self.peers.deliver = lambda record, message: slow  # type: ignore[method-assign]
        self.alice.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x"))
        self.stack.clock.advance(ROUTE_TTL_S * 0.75)
        slow.callback(True)
        self.assertEqual(len(self.alice.received()), 1)  # its Result, once pushed there
        self.peers.deliver = real  # type: ignore[method-assign]
        self.stack.clock.advance(ROUTE_TTL_S * 0.25)
        self.alice.c2c(2)
        self.assertEqual(len(self.lookups), 2)

    def slow_pushes(self) -> list[Deferred[bool]]:
        """From now on each push waits for its answer (the list, in order)."""
        answers: list[Deferred[bool]] = []

        def deliver(record: SessionRecord, message: StoredMessage) -> Deferred[bool]:
            self.peers.delivered.append((record, message))
            answers.append(Deferred())
            return answers[-1]

        self.peers.deliver = deliver  # type: ignore[method-assign]
        return answers

    def send(self, text: bytes = b"x") -> None:
        self.alice.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=text))

    def test_kept_while_the_first_push_is_in_flight(self) -> None:
        """Under load a push's answer takes a few turns: the messages to the
        same recipient meanwhile go the way the look-up found, without one of
        their own."""
        self.online(2)
        answers = self.slow_pushes()
        for text in (b"a", b"b", b"c"):
            self.send(text)
        self.assertEqual(self.lookups, [(2, 1001)])
        self.assertEqual(self.pushed_to(), [(2, "s-remote")] * 3)
        for answer in answers:
            answer.callback(True)
        self.assertEqual([Code.OK] * 3, [pb.Result.FromString(f.body).code
                                         for f in self.alice.received()])
        self.assertEqual(self.stack.logic.routing.routes.results.counts, {"hit": 2, "stale": 0})

    def test_a_push_in_flight_refused_drops_the_route(self) -> None:
        """The record found names a session its node no longer holds: the
        message sent meanwhile went there too; both are refused, the route is
        dropped, both stay pending, and nothing is left kept."""
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        answers = self.slow_pushes()
        self.send(b"a")
        self.send(b"b")
        self.assertEqual(len(self.lookups), 1)
        answers[0].callback(False)  # "not held": looked up again, the same record: pending
        self.assertEqual(len(self.stack.logic.routing.routes), 0)
        answers[1].callback(False)
        self.assertEqual(len(self.lookups), 3)
        self.assertEqual(len(self.peers.delivered), 2)
        self.assertEqual(self.stored(), 2)
        self.assertEqual(self.stack.logic.routing.routes.results.counts, {"hit": 0, "stale": 1})

    def test_a_failed_push_leaves_a_newer_route(self) -> None:
        """A push to the old session fails after the recipient was found on
        another node: the route to the new session stays."""
        self.online(2, "old")
        answers = self.slow_pushes()
        self.send(b"a")  # to node 2, in flight
        self.offline(2, "old")
        self.online(3, "new")
        self.stack.clock.advance(ROUTE_TTL_S)  # the route to "old" expired
        self.send(b"b")  # looked up: node 3, kept
        answers[0].callback(False)  # "a" refused at node 2: looks up, finds node 3
        self.assertEqual(self.stack.logic.routing.routes.get(2, 1001).session_id, "new")
        answers[1].callback(True)
        answers[2].callback(True)
        self.assertEqual(self.pushed_to(), [(2, "old"), (3, "new"), (3, "new")])
        self.assertEqual(self.stack.logic.routing.routes.get(2, 1001).session_id, "new")
        self.assertEqual(self.stored(), 0)

    def test_a_kept_route_when_the_session_store_fails(self) -> None:
        self.online(2)
        self.alice.c2c(2)
        store = self.stack.logic.routing.session_store
        store.lookup = lambda uid, appcode: fail(  # type: ignore[method-assign]
            StoreUnavailable("redis down"))
        self.alice.c2c(2)  # the kept route: no look-up needed
        self.assertEqual(len(self.peers.delivered), 2)
        self.offline(2)
        self.alice.c2c(2)  # not held there, and no look-up answers: pending
        self.assertEqual(len(self.peers.delivered), 3)
        self.assertEqual(self.stored(), 1)

    def test_http_pushes_use_the_kept_route(self) -> None:
        self.online(2)
        for _ in range(3):
            [outcome] = self.successResultOf(Deferred.fromCoroutine(
                self.stack.logic.push_s2c([PushItem(2, 1001, 5, b"order")])))
            self.assertTrue(outcome.online)  # type: ignore[union-attr]
        self.assertEqual(len(self.lookups), 1)
        self.assertEqual(len(self.peers.delivered), 3)

    def test_route_ttl_zero_looks_up_each_time(self) -> None:
        config = default_config()
        config = replace(config, cluster=replace(config.cluster, route_ttl_s=0.0))
        self.stack = Stack(config=config, node_id=1)
        self.stack.logic.peers = self.peers
        self.alice = self.stack.login(1)
        self.online(2)
        self.alice.c2c(2)
        self.alice.c2c(2)
        self.assertEqual(len(self.peers.delivered), 2)
        self.assertEqual(len(self.stack.logic.routing.routes), 0)


class RouteMetricsTests(SynchronousTestCase):
    def test_on_metrics(self) -> None:
        routes = Routes(Clock(), ttl_s=1.0)
        routes.keep(SessionRecord(2, 1001, 2, "s", 1), 0.0)
        routes.results.inc("hit")
        routes.results.inc("hit")
        routes.results.inc("stale")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DeliveryGauges(dict, lambda: 0,
                                         lambda: (routes.results.counts, len(routes))))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(generate_latest(registry).decode())
                   for s in family.samples}
        self.assertEqual(samples[("msgplatform_route_pushes_total", (("result", "hit"),))], 2)
        self.assertEqual(samples[("msgplatform_route_pushes_total", (("result", "stale"),))], 1)
        self.assertEqual(samples[("msgplatform_routes_kept", ())], 1)


class RouteTtlConfigTests(SynchronousTestCase):
    def test_default_and_bounds(self) -> None:
        self.assertEqual(parse_config(APP).cluster.route_ttl_s, 1.0)
        self.assertEqual(parse_config("[cluster]\nroute_ttl_s = 0.25\n" + APP)
                         .cluster.route_ttl_s, 0.25)
        for bad in ("-1", "61", '"1s"'):
            with self.assertRaises(ConfigError):
                parse_config(f"[cluster]\nroute_ttl_s = {bad}\n" + APP)


class RoutesTests(SynchronousTestCase):
    def record(self, uid: int, node: int = 2) -> SessionRecord:
        return SessionRecord(uid, 1001, node, f"s{uid}", 1)

    def test_bounded_oldest_first(self) -> None:
        routes = Routes(Clock(), ttl_s=1.0, max_routes=2)
        for uid in (1, 2, 3):
            routes.keep(self.record(uid), 0.0)
        self.assertEqual(len(routes), 2)
        self.assertIsNone(routes.get(1, 1001))
        self.assertEqual(routes.get(3, 1001), self.record(3))

    def test_kept_again_moves_to_the_back(self) -> None:
        routes = Routes(Clock(), ttl_s=1.0, max_routes=2)
        routes.keep(self.record(1), 0.0)
        routes.keep(self.record(2), 0.0)
        routes.keep(self.record(1), 0.0)
        routes.keep(self.record(3), 0.0)
        self.assertIsNone(routes.get(2, 1001))
        self.assertIsNotNone(routes.get(1, 1001))

    def test_ttl_zero_keeps_nothing(self) -> None:
        routes = Routes(Clock(), ttl_s=0.0)
        routes.keep(self.record(1), 0.0)
        self.assertEqual(len(routes), 0)

    def test_expired_records_are_forgotten(self) -> None:
        clock = Clock()
        routes = Routes(clock, ttl_s=1.0)
        routes.keep(self.record(1), 0.0)
        clock.advance(1.0)
        self.assertIsNone(routes.get(1, 1001))
        self.assertEqual(len(routes), 0)

    def test_expired_records_go_before_a_new_one_is_kept(self) -> None:
        clock = Clock()
        routes = Routes(clock, ttl_s=1.0)
        for uid in range(100):
            routes.keep(self.record(uid), 0.0)
        clock.advance(0.5)
        routes.keep(self.record(500), 0.5)
        self.assertEqual(len(routes), 101)
        clock.advance(0.5)  # the first hundred expire
        routes.keep(self.record(501), 1.0)
        self.assertEqual(len(routes), 2)

    def test_dropped_only_while_it_names_that_session(self) -> None:
        routes = Routes(Clock(), ttl_s=1.0)
        routes.keep(self.record(1), 0.0)
        routes.drop(1, 1001, "an older session")
        self.assertEqual(routes.get(1, 1001), self.record(1))
        routes.drop(1, 1001, "s1")
        self.assertIsNone(routes.get(1, 1001))
        routes.drop(1, 1001, "s1")  # nothing kept: nothing to do
        self.assertEqual(len(routes), 0)

    def test_a_record_found_longer_ago_than_the_ttl_is_not_kept(self) -> None:
        clock = Clock()
        clock.advance(10)
        routes = Routes(clock, ttl_s=1.0)
        routes.keep(self.record(1), 8.5)
        self.assertEqual(len(routes), 0)
        routes.keep(self.record(2), 9.5)
        clock.advance(0.49)
        self.assertIsNotNone(routes.get(2, 1001))
        clock.advance(0.01)
        self.assertIsNone(routes.get(2, 1001))


"""The internal RPC client towards a slow peer (backoff, a bound on the calls
waiting on it) and the address cache of ``registry_addresses``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test.iosim import IOPump
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.cluster.rpc import registry_addresses
from daojia_msg.cluster.rpc.client import MAX_PEER_INFLIGHT
from daojia_msg.cluster.rpc.links import BACKOFF_MIN_S
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import NodeInfo
from tests.cluster.test_rpc import RECORD, Cluster, message


class SlowPeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.c = Cluster()

    def slow_call(self, pump: IOPump, msgid: int) -> Deferred[bool]:
        """A Deliver that times out while the peer answers another call."""
        lost = self.c.deliver(RECORD, message(msgid))
        pump.clientIO.getOutBuffer()  # never reaches the peer
        self.c.reactor.advance(2.0)
        answered = self.c.deliver(RECORD, message(msgid + 1))
        pump.flush(advanceClock=False)
        self.successResultOf(answered)
        self.c.reactor.advance(1.0)
        return lost

    def test_backoff_doubles_then_starts_again(self) -> None:
        d = self.c.deliver(RECORD, message(1))
        pump = self.c.connect()
        self.successResultOf(d)
        # Two calls time out in one wave: one pause of BACKOFF_MIN_S.
        first = self.c.deliver(RECORD, message(2))
        lost = self.slow_call(pump, 3)
        self.failureResultOf(first, PeerUnavailable)
        self.failureResultOf(lost, PeerUnavailable)
        link = self.c.peers._links[2]
        self.assertEqual(link.backoff, BACKOFF_MIN_S)
        self.c.reactor.advance(BACKOFF_MIN_S)
        # The next timeout after the pause doubles it, up to BACKOFF_MAX_S.
        pauses = []
        for n in range(6):
            self.failureResultOf(self.slow_call(pump, 10 + 2 * n), PeerUnavailable)
            pauses.append(link.backoff)
            self.c.reactor.advance(link.backoff)
        self.assertEqual(pauses, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
        self.assertEqual(len(self.c.server.connections), 1)  # never dropped
        # Quiet for the call timeout and two pauses: the next timeout pauses
        # BACKOFF_MIN_S (slow_call takes the 3 s timeout itself).
        self.c.reactor.advance(2 * link.backoff + 0.1)
        self.failureResultOf(self.slow_call(pump, 50), PeerUnavailable)
        self.assertEqual(link.backoff, BACKOFF_MIN_S)

    def test_at_most_max_peer_inflight_calls_wait(self) -> None:
        d = self.c.deliver(RECORD, message(1))
        pump = self.c.connect()
        self.successResultOf(d)
        waiting = [self.c.deliver(RECORD, message(n)) for n in range(MAX_PEER_INFLIGHT)]
        f = self.failureResultOf(self.c.deliver(RECORD, message(0)), PeerUnavailable)
        self.assertIn("pushes already wait", f.getErrorMessage())
        pump.flush(advanceClock=False)
        self.assertTrue(all(self.successResultOf(w) for w in waiting))
        again = self.c.deliver(RECORD, message(0))
        pump.flush(advanceClock=False)
        self.assertIs(self.successResultOf(again), True)



class AddressCacheTests(SynchronousTestCase):
    def test_registry_addresses_kept_for_their_ttl(self) -> None:
        clock = Clock()
        asked: list[int] = []
        alive = {2: NodeInfo(2, "10.0.0.2", 7000, "10.0.1.2", 7100, 0, 0, 0)}

        class Registry:
            def node(self, node_id: int) -> Deferred[NodeInfo | None]:
                asked.append(node_id)
                return succeed(alive.get(node_id))

        address_of = registry_addresses(Registry(), clock, ttl=1.0)  # type: ignore[arg-type]

        def look(node_id: int) -> Any:
            return self.successResultOf(Deferred.fromCoroutine(address_of(node_id)))  # type: ignore[arg-type]

        self.assertEqual([look(2), look(2)], [("10.0.1.2", 7100)] * 2)
        self.assertEqual(asked, [2])
        clock.advance(1.0)
        del alive[2]
        self.assertIsNone(look(2))
        self.assertIsNone(look(2))
        self.assertEqual(asked, [2, 2, 2])  # a node not alive is asked about each time

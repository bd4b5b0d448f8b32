"""Nearby order offers on two nodes sharing Redis: an offer created on node 1
reaches drivers on node 2 and is accepted there; and it outlives node 1,
stopped between its waves or while it held a wave it had recorded and not
pushed: node 2 runs the next waves and the expiry, and the outcome is
published once."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from daojia_msg.client.errors import ResultError
from daojia_msg.logic.offers import LEASE_S
from daojia_msg.node import Node
from tests.nodes import Inbox
from tests.test_cluster import TwoNodes

R: Any = reactor
LAT, LON = 31.2304, 121.4737
ORDER, ACCEPT, RESULT = 5, 3, 4


def offer_body(waves: list[tuple[float, int, float]], deadline_s: float) -> dict[str, Any]:
    return {"appcode": 1002, "lat": LAT, "lon": LON, "msgtype": ORDER, "content": "order 9",
            "waves": [{"radius_m": r, "count": c, "after_s": a} for r, c, a in waves],
            "accept_deadline_s": deadline_s}


async def _code(answer: Any) -> str:
    """"OK", or the reason of the ResultError ``answer`` fails with."""
    try:
        await answer
    except ResultError as e:
        return str(e.reason)
    return "OK"


def told(inbox: Inbox) -> list[tuple[int, bytes]]:
    return [(m.msgtype, m.content) for m in inbox.messages]


class ClusterOffersTests(TwoNodes):
    async def drivers(self, *east_m: float) -> list[tuple[Any, Inbox]]:
        """Drivers 41, 42, ... on node 2, ``east_m`` metres east of the point."""
        self.node = self.node2
        out = []
        for i, metres in enumerate(east_m):
            client, inbox = await self.client(41 + i, 1002)
            await client.c2s(1, b"%.6f,%.6f" % (LAT, LON + metres / 95_200))
            out.append((client, inbox))
        return out

    async def create(self, node: Node, body: dict[str, Any]) -> str:
        self.node = node
        code, answer = await self.http("POST", "/v1/offers", body)
        self.assertEqual(code, 200, answer)
        return str(answer["offer_id"])

    async def view(self, offer_id: str) -> dict[str, Any]:
        self.node = self.node2
        code, answer = await self.http("GET", f"/v1/offers/{offer_id}")
        self.assertEqual(code, 200, answer)
        return dict(answer)

    def events(self) -> list[dict[str, Any]]:
        """The outcomes published on either node's (memory) bus."""
        return [json.loads(payload) for node in (self.node1, self.node2)
                for payload, _ in node.router.default.topics.get("offers", ())]  # type: ignore[attr-defined]

    async def test_created_on_one_node_accepted_on_the_other(self) -> None:
        [(near, near_inbox), (far, far_inbox)] = await self.drivers(30, 600)
        offer_id = await self.create(self.node1, offer_body([(2000, 2, 0)], 30))
        await near_inbox.wait(1)
        await far_inbox.wait(1)
        self.assertEqual((near_inbox.messages[0].msgtype, near_inbox.messages[0].content),
                         (ORDER, b"order 9"))
        result = await far.c2s(ACCEPT, offer_id.encode())
        self.assertEqual(result.code, 0)
        with self.assertRaises(ResultError) as caught:
            await near.c2s(ACCEPT, offer_id.encode())
        self.assertEqual(caught.exception.reason, "offer taken")
        await near_inbox.wait(2)
        await far_inbox.wait(2)
        outcome = {"offer_id": offer_id, "state": "taken"}
        self.assertEqual(json.loads(near_inbox.messages[1].content), outcome)
        self.assertEqual(json.loads(far_inbox.messages[1].content), {**outcome, "state": "won"})
        self.assertEqual(await self.view(offer_id), {"offer_id": offer_id, "state": "accepted",
                                                     "winner_uid": 42, "pushed_to": [41, 42]})
        self.assertEqual(self.events(), [{"offer_id": offer_id, "state": "accepted",
                                          "winner_uid": 42}])

    async def test_concurrent_accepts_on_both_nodes_one_wins(self) -> None:
        """Six drivers, three on each node, are offered the same order and
        all accept at once: exactly one Result is OK, the five others are
        "offer taken", each is told won or taken, and one outcome is published."""
        drivers: list[tuple[Any, Inbox]] = []
        for k in range(6):
            self.node = (self.node1, self.node2)[k % 2]
            client, inbox = await self.client(51 + k, 1002)
            await client.c2s(1, b"%.6f,%.6f" % (LAT, LON + (20 + 10 * k) / 95_200))
            drivers.append((client, inbox))
        offer_id = await self.create(self.node1, offer_body([(2000, 6, 0)], 30))
        for _, inbox in drivers:
            await inbox.wait(1)
        accepts = [Deferred.fromCoroutine(_code(client.c2s(ACCEPT, offer_id.encode())))
                   for client, _ in drivers]
        codes = [await d for d in accepts]
        self.assertEqual(sorted(codes), ["OK"] + ["offer taken"] * 5)
        winner = 51 + codes.index("OK")
        for k, (_, inbox) in enumerate(drivers):
            await inbox.wait(2)
            self.assertEqual(json.loads(inbox.messages[1].content),
                             {"offer_id": offer_id,
                              "state": "won" if 51 + k == winner else "taken"})
        view = await self.view(offer_id)
        self.assertEqual((view["state"], view["winner_uid"], sorted(view["pushed_to"])),
                         ("accepted", winner, list(range(51, 57))))
        self.assertEqual(self.events(), [{"offer_id": offer_id, "state": "accepted",
                                          "winner_uid": winner}])

    async def test_the_next_wave_and_the_expiry_when_the_creating_node_stops(self) -> None:
        """Node 1 creates the offer and pushes its first wave, then stops:
        node 2 pushes the second wave on time, and expires it."""
        drivers = await self.drivers(30, 600)
        created = R.seconds()
        offer_id = await self.create(self.node1, offer_body([(2000, 1, 0), (2000, 1, 1.5)], 3.5))
        await drivers[0][1].wait(1)
        await self.node1.stopService()
        await drivers[1][1].wait(1)  # wave 2, from node 2, within 1 s of its time
        self.assertLess(R.seconds() - created, 1.5 + 1.0)
        self.assertEqual(self.node2.logic.offers.pushes, 1)
        self.assertEqual((await self.view(offer_id))["pushed_to"], [41, 42])
        for _, inbox in drivers:
            await inbox.wait(2)
        self.assertLess(R.seconds() - created, 3.5 + 1.0)  # expired within 1 s of the deadline
        expired = {"offer_id": offer_id, "state": "expired"}
        self.assertEqual([json.loads(inbox.messages[1].content) for _, inbox in drivers],
                         [expired, expired])
        self.assertEqual(await self.view(offer_id), {**expired, "pushed_to": [41, 42]})
        self.assertEqual(self.events(), [expired])
        self.assertEqual(self.node2.logic.offers.expired, 1)

    async def test_a_wave_held_by_a_node_that_died_is_pushed_by_the_other(self) -> None:
        """Node 1 records the second wave and dies before pushing it (its
        push never returns); once its lease is over node 2 pushes that wave
        to the same driver, then runs the third and the expiry."""
        drivers = await self.drivers(30, 600, 900)
        self.node2.logic.offers.stop()  # node 1 takes the second wave
        offers1 = self.node1.logic.offers
        real_push = offers1._push_wave
        recorded: Deferred[float] = Deferred()

        async def dies_in_wave_2(offer: Any, k: int, uids: list[int]) -> None:
            if k == 0:
                return await real_push(offer, k, uids)
            recorded.callback(R.seconds())
            await Deferred()  # never: the node dies here

        offers1._push_wave = dies_in_wave_2  # type: ignore[method-assign]
        offer_id = await self.create(self.node1,
                                     offer_body([(2000, 1, 0), (2000, 1, 1), (2000, 1, 1.5)], 6))
        await drivers[0][1].wait(1)
        claimed = await recorded.addTimeout(10, R)  # about when node 1 claimed the wave
        offers1.stop()
        offers1.working.clear()
        await self.node1.stopService()
        self.assertEqual((await self.view(offer_id))["pushed_to"], [41, 42])
        self.node2.logic.offers.start()
        await drivers[1][1].wait(1)
        self.assertGreater(R.seconds() - claimed, LEASE_S - 0.2)  # it waited for the lease
        await drivers[2][1].wait(1)  # the third wave, overdue by then
        self.assertEqual(told(drivers[1][1])[0], (ORDER, b"order 9"))
        for _, inbox in drivers:
            await inbox.wait(2)
        self.assertEqual((await self.view(offer_id))["state"], "expired")
        self.assertEqual(self.events(), [{"offer_id": offer_id, "state": "expired"}])
        # Nobody was pushed the offer twice.
        for _, inbox in drivers:
            await deferLater(R, 0.3, lambda: None)
            self.assertEqual([m.msgtype for m in inbox.messages], [ORDER, RESULT])


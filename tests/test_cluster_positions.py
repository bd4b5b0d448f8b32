"""Live positions across two nodes on one Redis: a driver whose session is on
node 2 is found by ``GET /v1/nearby`` on node 1, and is gone from it within
1 s of its connection closing."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from daojia_msg.store.positions import RedisPositions
from tests.test_cluster import TwoNodes

R: Any = reactor
LAT, LON = 31.2304, 121.4737
NEARBY = f"/v1/nearby?appcode=1002&lat={LAT}&lon={LON}&radius_m=2000"


class ClusterPositionsTests(TwoNodes):
    async def nearby_uids(self) -> list[int]:
        self.node = self.node1
        code, answer = await self.http("GET", NEARBY)
        self.assertEqual(code, 200, answer)
        return [d["uid"] for d in answer["drivers"]]

    async def test_a_driver_on_node_2_is_found_on_node_1(self) -> None:
        self.node = self.node2
        near, _ = await self.client(21, 1002)
        far, _ = await self.client(22, 1002)
        await near.c2s(1, b'{"lat": 31.2310, "lon": 121.4737}')  # ~67 m north
        await far.c2s(1, b"31.2304,121.4900")  # ~1.55 km east
        self.node = self.node1
        nearer, _ = await self.client(23, 1002)
        await nearer.c2s(1, b"31.2304,121.4740")  # ~29 m east, on node 1
        self.assertEqual(await self.nearby_uids(), [23, 21, 22])
        assert isinstance(self.node1.logic.positions.store, RedisPositions)
        self.node = self.node1
        code, answer = await self.http("GET", NEARBY + "&limit=1")
        [found] = answer["drivers"]
        self.assertEqual(found["uid"], 23)
        self.assertLess(abs(found["distance_m"] - 28.5), 2)  # GEO keeps ~0.6 m
        # Closed on node 2: gone within 1 s, wherever it is asked.
        await near.stopService()
        for _ in range(10):
            if 21 not in await self.nearby_uids():
                break
            await deferLater(R, 0.1, lambda: None)
        self.assertEqual(await self.nearby_uids(), [23, 22])

    async def test_only_sessions_still_registered_are_answered(self) -> None:
        """A node that died without dropping its positions is not believed:
        once its sessions are purged, its drivers are not answered, though
        their positions have not expired yet."""
        self.node = self.node2
        driver, _ = await self.client(31, 1002)
        await driver.c2s(1, b"31.2304,121.4737")
        self.assertEqual(await self.nearby_uids(), [31])
        record = self.node2.logic.local[(31, 1002)].record
        await self.node1.sessions.unregister(record)  # as the gate detector purges a dead node
        self.assertEqual(await self.nearby_uids(), [])

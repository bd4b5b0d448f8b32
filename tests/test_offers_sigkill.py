"""An offer outlives the node process that created it: two ``twistd
msgplatform`` processes on the real Redis and MySQL (and a Redis Streams
bus); node A takes ``POST /v1/offers`` and pushes its first wave, then is
killed with SIGKILL; node B pushes the second wave within 1 s of its time and
expires the offer within 1 s of its deadline, and the outcome is one entry of
the stream ``offers``.

Everything waits on events (a process's "serving" line, a push's arrival),
each with a deadline, but the stream entry, which is looked for every 50 ms
after the outcome's S2C arrived (tests/offerstream.py).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.client.client import MsgClient
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.offerstream import OffersStream
from tests.processes import TWISTD, NodeProcessesTestCase

R: Any = reactor
LAT, LON = 31.2304, 121.4737
ORDER, ACCEPT, RESULT = 5, 3, 4

DRIVERS = """
[apps.1002]
usersystem = "demo"
secret = "demo-secret-1002"
api_key = "demo-key-1002"

[[routes]]
appcode = 1002
msgtype = 1
topic = "gps"
geo = true
bus = "local"

[buses.local]
url = "memory:"

[offers]
accept_msgtype = 3
result_msgtype = 4

[bus]
url = "{bus}"  # the outcomes; the positions stay on the memory bus
"""


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Driver:
    def __init__(self, uid: int, gate: int) -> None:
        self.messages: list[pb.Message] = []
        self.waiters: list[tuple[int, Deferred[float]]] = []
        self.client = MsgClient(
            R, TCP4ClientEndpoint(R, "127.0.0.1", gate), uid, 1002,
            lambda: mint_token("demo-secret-1002", 1002, uid, int(time.time()) + 600),
            on_message=self.on_message)

    def on_message(self, msg: pb.Message) -> None:
        self.messages.append(msg)
        for n, d in list(self.waiters):
            if len(self.messages) >= n:
                self.waiters.remove((n, d))
                d.callback(R.seconds())

    def wait(self, n: int) -> Deferred[float]:
        """Fires with the time the ``n``-th message arrived (now if it has)."""
        d: Deferred[float] = Deferred()
        if len(self.messages) >= n:
            d.callback(R.seconds())
        else:
            self.waiters.append((n, d))
        return d.addTimeout(20, R)


class OfferOutlivesItsNode(NodeProcessesTestCase):
    timeout = 180

    def node(self, name: str) -> tuple[Any, dict[str, int]]:
        gate, ws, http, rpc = free_ports(4)
        config = self.write_config(name, 4, "offers-rpc-secret-0123456",
                                   DRIVERS.format(bus=self.redis_url))
        proc = self.spawn(name, [
            TWISTD, "-n", "--pidfile=", "msgplatform", "--config", config,
            "--gate", f"tcp:{gate}:interface=127.0.0.1", "--ws", f"tcp:{ws}:interface=127.0.0.1",
            "--http", f"tcp:{http}:interface=127.0.0.1", "--rpc", f"tcp:{rpc}:interface=127.0.0.1",
            "--data-dir", f"{self.dir}/{name}",
        ], b" serving")
        return proc, {"gate": gate, "http": http}

    async def test_sigkill_after_the_first_wave(self) -> None:
        stream = OffersStream(self, self.redis_url)
        a, a_ports = self.node("a")
        b, b_ports = self.node("b")
        await a.ready.addTimeout(90, R)
        await b.ready.addTimeout(90, R)
        drivers = [Driver(41, b_ports["gate"]), Driver(42, b_ports["gate"])]
        for driver, east_m in zip(drivers, (30, 600), strict=True):
            driver.client.startService()
            self.addCleanup(driver.client.stopService)
            await driver.client.when_ready().addTimeout(20, R)
            await driver.client.c2s(1, b"%.6f,%.6f" % (LAT, LON + east_m / 95_200))
        pool = HTTPConnectionPool(R, persistent=False)
        created = R.seconds()
        response = await treq.post(
            f"http://127.0.0.1:{a_ports['http']}/v1/offers", pool=pool,
            headers={"Authorization": ["Bearer demo-key-1002"]},
            json={"appcode": 1002, "lat": LAT, "lon": LON, "msgtype": ORDER, "content": "order",
                  "waves": [{"radius_m": 2000, "count": 1, "after_s": 0},
                            {"radius_m": 2000, "count": 1, "after_s": 2}],
                  "accept_deadline_s": 4})
        answer = await response.json()
        self.assertEqual(response.code, 200, answer)
        offer_id = answer["offer_id"]
        await drivers[0].wait(1)
        a.kill(signal.SIGKILL)
        await a.ended.addTimeout(20, R)
        second = await drivers[1].wait(1)  # the second wave, by node B
        self.assertLess(second - created, 2 + 1.0, "not within 1 s of its time")
        self.assertEqual([m.msgtype for m in drivers[1].messages], [ORDER])
        expired = [await driver.wait(2) for driver in drivers]
        self.assertLess(max(expired) - created, 4 + 1.0, "not within 1 s of the deadline")
        for driver in drivers:
            self.assertEqual([m.msgtype for m in driver.messages], [ORDER, RESULT])
            self.assertEqual(json.loads(driver.messages[1].content),
                             {"offer_id": offer_id, "state": "expired"})
        response = await treq.get(f"http://127.0.0.1:{b_ports['http']}/v1/offers/{offer_id}",
                                  pool=pool, headers={"Authorization": ["Bearer demo-key-1002"]})
        self.assertEqual(await response.json(), {"offer_id": offer_id, "state": "expired",
                                                 "pushed_to": [41, 42]})
        self.assertEqual(await stream.published(),
                         [({"offer_id": offer_id, "state": "expired"}, answer["logid"])])

"""Offline escalation when a node dies (SIGKILL) in the middle of a POST:
two twistd node processes sharing Redis and MySQL, a twisted.web receiver
in the test that never answers the first node's POST. The first node is
killed; the second, started after, POSTs the message once the dead node's
claim (a lease of 30 s) ran out."""

from __future__ import annotations

import json
import signal
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from daojia_msg.chaos.servers import free_ports
from daojia_msg.logic.escalation import LEASE_S
from tests.escalations import Receiver
from tests.processes import TWISTD, NodeProcessesTestCase, Watched
from tests.test_escalation_e2e import SECRET

R: Any = reactor


class KilledWhilePosting(NodeProcessesTestCase):
    timeout = 180

    def spawn_node(self, name: str, url: str) -> tuple[Watched, int]:
        gate, http, rpc = free_ports(3)
        config = self.write_config(name, 2, "esc-rpc-secret-0123456789",
                                   f'escalation_url = "{url}"\n')
        argv = [TWISTD, "-n", "--pidfile=", "msgplatform", "--config", config,
                "--gate", f"tcp:{gate}:interface=127.0.0.1",
                "--http", f"tcp:{http}:interface=127.0.0.1",
                "--rpc", f"tcp:{rpc}:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1"]
        return self.spawn(name, argv, b" serving"), http

    async def test_the_other_node_posts_once_the_lease_ran_out(self) -> None:
        receiver = Receiver()
        url = receiver.listen(self)
        receiver.hang = True
        first, http = self.spawn_node("node1", url)
        await first.ready.addTimeout(60, R)
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.post(
            f"http://127.0.0.1:{http}/v1/push", pool=pool,
            headers={"Authorization": ["Bearer demo-key-1001"]},
            data=json.dumps({"to_uid": 5, "to_appcode": 1001, "msgtype": 5,
                             "content": "order", "escalate_after_s": 1}).encode())
        self.assertEqual(response.code, 200)
        msgid = (await response.json())["msgid"]
        await receiver.wait(1)  # node 1 claimed it and POSTs: it never hears back
        claimed_at = R.seconds()
        first.kill(signal.SIGKILL)
        await first.ended
        receiver.hang = False
        second, _ = self.spawn_node("node2", url)
        await second.ready.addTimeout(60, R)
        await receiver.wait(2, timeout=LEASE_S + 30)
        self.assertGreaterEqual(R.seconds() - claimed_at, LEASE_S - 1)
        # The second request can only be node 2's: node 1 is dead.
        self.assertEqual([b["msgid"] for b in receiver.bodies(SECRET)], [msgid, msgid])

"""``twistd -n msgplatform --processes 2`` against the real Redis and MySQL:
both workers serve on the one gate port, C2C between users on different
workers is delivered, and SIGTERM drains both before the supervisor exits.

Everything waits on events (the supervisor's "workers serving" line, a
client's login, a message's arrival, the supervisor's end), each with a
deadline; nothing sleeps.
"""

from __future__ import annotations

import re
import signal
import socket
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.client.client import MsgClient
from daojia_msg.protocol.codes import KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.processes import TWISTD, NodeProcessesTestCase

R: Any = reactor
USERS = 16  # all of them on one worker by chance: 2 in 2^16


def port_pairs(count: int) -> list[int]:
    """``count`` TCP ports P on 127.0.0.1 with P and P + 1 both free."""
    found: list[int] = []
    while len(found) < count:
        socks = [socket.socket(), socket.socket()]
        try:
            socks[0].bind(("127.0.0.1", 0))
            port = socks[0].getsockname()[1]
            socks[1].bind(("127.0.0.1", port + 1))
            if port not in found and port + 1 not in found and port - 1 not in found:
                found.append(port)
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    return found


class TwoProcesses(NodeProcessesTestCase):
    timeout = 180

    async def test_shared_gate_c2c_across_workers_and_drain(self) -> None:
        gate, ws, http, rpc = port_pairs(4)
        supervisor = self.spawn("supervisor", [
            TWISTD, "-n", "--pidfile=", "msgplatform",
            "--config", self.write_config("node", 4, "processes-rpc-secret-0123"),
            "--processes", "2",
            "--gate", f"tcp:{gate}:interface=127.0.0.1",
            "--ws", f"tcp:{ws}:interface=127.0.0.1",
            "--http", f"tcp:{http}:interface=127.0.0.1",
            "--rpc", f"tcp:{rpc}:interface=127.0.0.1",
        ], b"2 workers serving", stop_signal=signal.SIGTERM)
        await supervisor.ready.addTimeout(90, R)
        node_ids = {int(n) for n in re.findall(rb"node (\d+) serving", supervisor.output)}
        self.assertEqual(len(node_ids), 2, supervisor.output.decode()[-3000:])

        received: dict[int, list[pb.Message]] = {uid: [] for uid in range(1, USERS + 1)}
        arrived: dict[int, Deferred[None]] = {uid: Deferred() for uid in received}
        clients: dict[int, MsgClient] = {}
        kicks: list[tuple[int, int]] = []

        def on_message(uid: int, msg: pb.Message) -> None:
            received[uid].append(msg)
            if not arrived[uid].called:
                arrived[uid].callback(None)

        for uid in received:
            def token(uid: int = uid) -> str:
                return mint_token("demo-secret-1001", 1001, uid, int(R.seconds()) + 600)

            client = MsgClient(R, TCP4ClientEndpoint(R, "127.0.0.1", gate), uid, 1001, token,
                               on_message=lambda m, uid=uid: on_message(uid, m),
                               on_kickout=lambda code, _, uid=uid: kicks.append((uid, code)),
                               backoff=lambda attempt: 120.0,  # no reconnect within the test
                               send_retries=0)
            client.startService()
            clients[uid] = client
        await gatherResults([c.when_ready().addTimeout(30, R) for c in clients.values()])

        # Every session, seen from each worker's HTTP API (port, port + 1):
        # the logins landed on both workers.
        pool = HTTPConnectionPool(R, persistent=False)
        where: dict[int, int] = {}
        for uid in received:
            for api in (http, http + 1):
                response = await treq.get(
                    f"http://127.0.0.1:{api}/v1/sessions?uid={uid}",
                    headers={"Authorization": ["Bearer demo-key-1001"]}, pool=pool)
                [session] = (await response.json())["sessions"]
                where[uid] = session["node"]
        self.assertEqual(set(where.values()), node_ids, where)

        # C2C from a user on one worker to a user on the other (the internal RPC).
        sender = 1
        to = next(uid for uid in received if where[uid] != where[sender])
        result = await clients[sender].c2c(to, 1001, 7, b"across processes", "x-1").addTimeout(
            10, R)
        await arrived[to].addTimeout(10, R)
        self.assertEqual([(m.msgid, m.content) for m in received[to]],
                         [(result.msgid, b"across processes")])

        # SIGTERM to the supervisor: each worker drains (KICKOUT SHUTDOWN to
        # its sessions) and exits, then the supervisor.
        supervisor.kill(signal.SIGTERM)
        await supervisor.ended.addTimeout(60, R)
        for client in clients.values():
            await client.stopService()
        output = supervisor.output.decode()
        kicked = [int(n) for n in re.findall(r"stopping: kicked (\d+) sessions", output)]
        self.assertEqual(sum(kicked), USERS, output[-3000:])
        self.assertEqual(len(kicked), 2)
        self.assertEqual(len(re.findall(r"worker \d \(pid \d+\) exited \(signal 15\)", output)), 2)
        self.assertIn("supervisor: every worker has exited", output)
        self.assertEqual(sorted(kicks), [(uid, KickReason.SHUTDOWN) for uid in received])
        # Like one node stopped by SIGTERM, twistd leaves by that signal.
        self.assertEqual(supervisor.reason.value.signal, signal.SIGTERM)

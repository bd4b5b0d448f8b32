"""A stalled MariaDB under a real node: bounded answers (docs/protocol.md §7.4).

The node (in this process, on the real reactor) stores its messages in a
mariadbd of the test's own, on a free port, in a temporary directory; the
test stops that process with SIGSTOP, as a stalled database, and lets it go
on with SIGCONT. The machine's shared MariaDB is never touched.

What the operator is promised: a C2C and an HTTP push waiting on the stalled
store are answered TIMEOUT / 504 after ``store.answer_timeout_s`` (3 s), a
PULL or HISTORY UNAVAILABLE, long before the MySQL read timeout (10 s); once the database
goes on, the C2C is stored and pushed to its online recipient; resends with
the same ``client_msg_id`` / ``Idempotency-Key`` are answered with the first
msgid, and nothing is stored twice. The timings are logged and asserted with
room for a loaded machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from daojia_msg.auth import mint_token
from daojia_msg.chaos.servers import free_ports
from daojia_msg.client.errors import ResultError
from daojia_msg.client.protocol import MsgClientProtocol
from daojia_msg.config import ListenConfig, MySQLConfig, default_config
from daojia_msg.protocol.codes import Code
from tests.nodes import NodeTestCase
from tests.processes import Watched
from tests.servers import create_mysql_database, missing

R: Any = reactor
log = Logger()

ANSWER_S = 3.0  # store.answer_timeout_s, the default
STALL_S = 4.5   # longer than ANSWER_S, shorter than mysql.read_timeout_s (10 s)


class PrivateMariaDB:
    """``mariadbd`` on ``port`` with a data directory of its own under ``directory``."""

    def __init__(self, test: NodeTestCase, port: int, directory: str) -> None:
        server, install = "/usr/sbin/mariadbd", shutil.which("mariadb-install-db")
        if not os.access(server, os.X_OK) or install is None:
            missing("mariadbd is not installed (apt-get install mariadb-server)")
        assert install is not None
        self.port = port
        self.data = os.path.join(directory, "mariadb")
        subprocess.run([install, "--no-defaults", f"--datadir={self.data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=60)
        # A UNIX socket path must be short (107 bytes): not under _trial_temp.
        short = tempfile.mkdtemp(prefix="msgp-db-")
        test.addCleanup(shutil.rmtree, short, ignore_errors=True)
        self.argv = [server, "--no-defaults", f"--datadir={self.data}", "--user=root",
                     f"--port={port}", "--bind-address=127.0.0.1",
                     f"--socket={os.path.join(short, 'sock')}",
                     f"--pid-file={os.path.join(short, 'pid')}",
                     "--skip-log-bin", "--innodb-buffer-pool-size=32M"]
        self.proc: Watched | None = None
        self.stopped = False
        test.addCleanup(self.stop)

    async def start(self) -> None:
        self.proc = Watched("mariadbd", b"ready for connections")
        R.spawnProcess(self.proc, self.argv[0], self.argv, env={}, path=self.data)
        await self.proc.ready.addTimeout(30, R)

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.transport is not None
        return int(self.proc.transport.pid)

    def pause(self) -> None:
        """SIGSTOP, and return once the server is stopped: ``kill`` returns
        before every thread of a busy mariadbd has stopped, and a query sent
        meanwhile (a node in this process answers within a millisecond)
        would still be answered. ``waitid`` (it is our child) blocks until
        the stop is reported, or the server has exited (then the test fails
        on its own); ``WNOWAIT`` leaves an exit for the reactor to reap."""
        os.kill(self.pid, signal.SIGSTOP)
        os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.pid, signal.SIGCONT)
            self.stopped = False

    async def stop(self) -> None:
        if self.proc is not None and not self.proc.ended.called:
            try:
                self.resume()
                self.proc.kill(signal.SIGTERM)
            except (ProcessExitedAlready, ProcessLookupError):
                return
            await self.proc.ended.addTimeout(30, R)

    def create_database(self, name: str) -> str:
        return create_mysql_database("127.0.0.1", self.port, "root", name)


async def timed(d: Deferred[Any]) -> tuple[Any, float]:
    """What ``d`` gives (its result, or the exception it fails with) and how long it took."""
    start = time.monotonic()
    try:
        result = await d
    except Exception as e:
        result = e
    return result, time.monotonic() - start


class StalledDatabaseTests(NodeTestCase):
    timeout = 90

    async def sender(self, uid: int) -> MsgClientProtocol:
        """A logged-in connection that does not resend by itself."""
        proto = MsgClientProtocol(R, uid, 1001, heartbeat_s=0)
        await connectProtocol(TCP4ClientEndpoint(R, "127.0.0.1", self.port("gate")), proto)
        await proto.login(mint_token("demo-secret-1001", 1001, uid, int(R.seconds()) + 600))
        self.addCleanup(lambda: proto.transport.loseConnection())  # type: ignore[union-attr]
        return proto

    async def stalled_node(self) -> PrivateMariaDB:
        """A node on a private MariaDB, which the test may stall."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        [port] = free_ports(1)
        db = PrivateMariaDB(self, port, directory)
        await db.start()
        url = db.create_database("msgp_stall")
        config = default_config().replace(
            data_dir=directory,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                http="tcp:0:interface=127.0.0.1"),
            mysql=MySQLConfig(url=url, shards=2, pool_min=2, pool_max=6),
        )
        await self.run_node(config)
        self.addCleanup(db.resume)  # before the node stops: it must be able to drain
        return db

    async def test_pull_and_history_are_unavailable(self) -> None:
        db = await self.stalled_node()
        alice = await self.sender(101)
        await alice.c2c(101, 1002, 0, b"to my other app", "warm-up")
        db.pause()
        pull, history = await gatherResults([
            Deferred.fromCoroutine(timed(alice.pull())),
            Deferred.fromCoroutine(timed(alice.history()))])
        log.info("stall timing: PULL {pull:.2f} s, HISTORY {history:.2f} s", pull=pull[1],
                 history=history[1])
        db.resume()
        for result, seconds in (pull, history):
            self.assertIsInstance(result, ResultError)
            self.assertEqual(result.code, Code.UNAVAILABLE)
            self.assertLess(seconds, ANSWER_S + 1.5)

    async def push(self, key: str) -> tuple[int, Any]:
        """``POST /v1/push`` to 103 with an ``Idempotency-Key``: status and body."""
        response = await treq.post(
            f"http://127.0.0.1:{self.port('http')}/v1/push",
            json={"to_uid": 103, "to_appcode": 1001, "msgtype": 5, "content": "stalled push"},
            headers=Headers({b"Authorization": [b"Bearer demo-key-1001"],
                             b"Idempotency-Key": [key.encode()]}),
            persistent=False)
        return response.code, json.loads(await response.text())

    async def test_answers_are_bounded_and_the_late_store_completes(self) -> None:
        db = await self.stalled_node()
        alice = await self.sender(101)
        bob, bob_in = await self.client(102)
        first = await alice.c2c(102, 1001, 0, b"before", "stall-0")
        await bob_in.wait(1)

        db.pause()
        stalled_at = time.monotonic()
        c2c = timed(Deferred.fromCoroutine(_c2c(alice, "stall-1")))
        push = timed(Deferred.fromCoroutine(self.push("push-stall-1")))
        (c2c_result, c2c_s), (push_result, push_s) = await gatherResults(
            [Deferred.fromCoroutine(c2c), Deferred.fromCoroutine(push)])
        log.info("stall timing: C2C {c2c:.2f} s, push {push:.2f} s", c2c=c2c_s, push=push_s)
        self.assertIsInstance(c2c_result, ResultError)
        self.assertEqual(c2c_result.code, Code.TIMEOUT)
        self.assertEqual(push_result[0], 504)
        for seconds in (c2c_s, push_s):
            self.assertGreater(seconds, ANSWER_S - 0.5)
            self.assertLess(seconds, ANSWER_S + 1.5)  # not the 10 s read timeout

        await _sleep(max(0.0, STALL_S - (time.monotonic() - stalled_at)))
        db.resume()
        # The C2C stored late is pushed to bob as usual...
        [_, late] = await bob_in.wait(2)
        self.assertEqual(late.content, b"hello")
        # ... and the resends get the first msgids, nothing stored twice.
        again = await alice.c2c(102, 1001, 0, b"hello", "stall-1")
        self.assertEqual(again.msgid, late.msgid)
        self.assertNotEqual(again.msgid, first.msgid)
        status, body = await self.push("push-stall-1")
        self.assertEqual((status, body["online"]), (200, False))
        carol = await self.sender(103)
        page = await carol.pull()
        self.assertEqual([m.msgid for m in page.messages], [int(body["msgid"])])
        page = await alice.history(102)
        self.assertEqual(sorted(m.msgid for m in page.messages), sorted([first.msgid, late.msgid]))


async def _c2c(proto: MsgClientProtocol, client_msg_id: str) -> Any:
    return await proto.c2c(102, 1001, 0, b"hello", client_msg_id)


async def _sleep(seconds: float) -> None:
    d: Deferred[None] = Deferred()
    R.callLater(seconds, d.callback, None)
    await d

"""Node processes for end-to-end tests: twistd children on free ports, one
Redis key prefix and one MySQL database per test, cleaned up after it.

Everything waits on events (a process's "serving" line, its end), each with a
deadline; nothing sleeps.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.servers import drop_mysql_database, redis_prefix, require_mysql, require_redis

R: Any = reactor
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Watched(ProcessProtocol):
    """A child process: its output, a Deferred for a line, one for its end."""

    def __init__(self, name: str, ready_text: bytes | None) -> None:
        self.name = name
        self.output = b""
        self.ready_text = ready_text
        self.ready: Deferred[bytes] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.reason: Any = None  # how it ended (a Failure of ProcessDone or ProcessTerminated)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.ready_text and not self.ready.called and self.ready_text in self.output:
            at = self.output.index(self.ready_text)
            start = self.output.rfind(b"\n", 0, at) + 1
            self.ready.callback(self.output[start:].split(b"\n")[0])

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.reason = reason
        if self.ready_text and not self.ready.called:
            self.ready.errback(RuntimeError(f"{self.name} exited:\n{self.output.decode()[-3000:]}"))
        self.ended.callback(None)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if not self.ended.called:
            self.transport.signalProcess(sig)  # type: ignore[union-attr]


class NodeProcessesTestCase(TestCase):
    """A test of node processes sharing the real Redis (under a key prefix of
    its own, deleted after) and a throw-away MySQL database, in ``self.dir``."""

    def setUp(self) -> None:
        self.redis_url = require_redis()
        self.mysql_url = require_mysql()
        self.addCleanup(drop_mysql_database, self.mysql_url)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.prefix = redis_prefix(self)  # its keys deleted after the nodes stop

    def write_config(self, name: str, shards: int, rpc_secret: str, extra: str = "") -> str:
        """A node's config file in ``self.dir``: this test's Redis prefix and
        MySQL database (``shards`` of it), quick heartbeats, demo app 1001,
        and ``extra`` TOML (tables of its own); its path."""
        path = os.path.join(self.dir, f"{name}.toml")
        with open(path, "w") as f:
            f.write(f"""
[redis]
url = "{self.redis_url}"
key_prefix = "{self.prefix}"
[mysql]
url = "{self.mysql_url}"
shards = {shards}
pool_min = 1
pool_max = 4
[cluster]
heartbeat_s = 0.5
ttl_s = 1.5
drain_grace_s = 0.0
rpc_secret = "{rpc_secret}"
[apps.1001]
usersystem = "demo"
secret = "demo-secret-1001"
api_key = "demo-key-1001"
{extra}""")
        return path

    def spawn(self, name: str, argv: list[str], ready: bytes | None,
              stop_signal: int = signal.SIGKILL) -> Watched:
        """Run ``argv`` in ``self.dir`` until the test's cleanup, which ends it
        with ``stop_signal``; ``ready`` is the output that says it is up."""
        proc = Watched(name, ready)
        R.spawnProcess(proc, argv[0], argv, env=dict(os.environ), path=self.dir)

        def stop() -> Deferred[None]:
            proc.kill(stop_signal)
            return proc.ended

        self.addCleanup(stop)
        return proc

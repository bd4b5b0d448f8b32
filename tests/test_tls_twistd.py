"""SIGHUP sent to a real ``twistd msgplatform`` process: it reloads the TLS
certificate for new clients while an open connection keeps working, it ends
no node (under ``twistd -n`` logging to stdout nothing else handles it), and
twistd's own log rotation (on SIGUSR1, installed only where no handler was)
still works beside it in a daemon logging to a file."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from daojia_msg.auth import mint_token
from daojia_msg.client import MsgClient, MsgClientProtocol, gate_endpoint
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd
from daojia_msg.tls import client_endpoint, client_options
from tests.gate.wshelpers import WSClient, connect_ws, drop_ws, presented
from tests.tlscerts import CA
from tests.tlsnodes import ssl_description

R: Any = reactor
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Output(ProcessProtocol):
    """A child's output as it comes, and its end."""

    def __init__(self) -> None:
        self.text = ""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.text += data.decode("utf-8", "replace")

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None) or 0)


async def until(what: str, check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` every 50 ms until it is truthy (a child process has
    no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(R, 0.05, lambda: None)


def gate_port(text: str) -> int | None:
    """The gate's port once the node logged it and serves."""
    return listening("gate", text)


def listening(name: str, text: str) -> int | None:
    """The port of listener ``name`` once the node logged it and serves."""
    found = re.search(rf"{name} listening on 127\.0\.0\.1:(\d+)", text)
    return int(found.group(1)) if found and "serving" in text else None


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


class TwistdTestCase(TestCase):
    def setUp(self) -> None:
        if not os.path.exists(TWISTD):
            self.skipTest(f"no twistd beside {sys.executable}")
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.ca = CA(os.path.join(self.cwd, "tls"))
        self.server = self.ca.issue("node", stem="server")

    def args(self) -> list[str]:
        return ["msgplatform", "--gate", ssl_description(self.server),
                "--http", "tcp:0:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1", "--data-dir", os.path.join(self.cwd, "var")]

    def kill_at_cleanup(self, pid: int) -> None:
        def kill() -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.addCleanup(kill)

    async def client(self, port: int, uid: int) -> tuple[MsgClient, str]:
        """A client over TLS, logged in; and the name on the certificate it was shown."""
        endpoint = gate_endpoint(R, "127.0.0.1", port, tls=True, ca=self.ca.path)
        client = MsgClient(R, endpoint, uid, 1001, lambda: _token(uid), drain_on_login=False)
        client.startService()
        self.addCleanup(client.stopService)
        proto: MsgClientProtocol = await client.when_ready().addTimeout(10, R)
        transport: Any = proto.transport
        return client, str(transport.getPeerCertificate().get_subject().CN)

    async def presented(self, port: int) -> str:
        """The name on the certificate a new handshake is shown (no login)."""
        endpoint = client_endpoint(R, "127.0.0.1", port,
                                   tls=client_options("127.0.0.1", ca=self.ca.path))
        proto = MsgClientProtocol(R, 99, 1001, heartbeat_s=0)
        await connectProtocol(endpoint, proto)
        await proto.keepalive()
        transport: Any = proto.transport
        name = str(transport.getPeerCertificate().get_subject().CN)
        transport.loseConnection()
        await proto.when_closed()
        return name


def _token(uid: int) -> str:
    return mint_token("demo-secret-1001", 1001, uid, int(time.time()) + 600)


class ForegroundTests(TwistdTestCase):
    """``twistd -n``, logging to stdout: nothing but the node handles SIGHUP."""

    async def start(self) -> tuple[Output, Any, int]:
        out = Output()
        process = R.spawnProcess(out, TWISTD, [TWISTD, "-n", "--pidfile=", *self.args()],
                                 env=dict(os.environ), path=self.cwd)
        self.kill_at_cleanup(process.pid)
        port = await until("the gate", lambda: gate_port(out.text))
        return out, process, port

    async def test_sighup_reloads_for_new_clients_and_old_ones_keep_working(self) -> None:
        out, process, port = await self.start()
        old, old_name = await self.client(port, 1)
        self.assertEqual(old_name, "node")
        self.ca.issue("node, renewed", stem="server")  # over the same files
        process.signalProcess("HUP")
        await until("the reload", lambda: "SIGHUP: reloaded 1 of 1 TLS certificates" in out.text)
        self.assertEqual(await self.presented(port), "node, renewed")
        new, new_name = await self.client(port, 2)
        self.assertEqual(new_name, "node, renewed")
        result = await old.c2c(2, 1001, 7, b"from before the reload")  # the old one works
        self.assertEqual(result.code, 0)
        self.assertFalse(out.ended.called, out.text)
        process.signalProcess("TERM")
        self.assertEqual(await out.ended.addTimeout(30, R), 0, out.text)

    async def test_sighup_reloads_the_websocket_listener(self) -> None:
        out = Output()
        process = R.spawnProcess(
            out, TWISTD, [TWISTD, "-n", "--pidfile=", "msgplatform", "--gate",
                          "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
                          "--ws", ssl_description(self.server),
                          "--data-dir", os.path.join(self.cwd, "var")],
            env=dict(os.environ), path=self.cwd)
        self.kill_at_cleanup(process.pid)
        port = await until("the ws listener", lambda: listening("ws", out.text))
        old = await self.wss(port)
        self.assertEqual((await old.login(1)).code, 0)
        self.ca.issue("node, renewed", stem="server")  # over the same files
        process.signalProcess("HUP")
        await until("the reload", lambda: "SIGHUP: reloaded 1 of 1 TLS certificates" in out.text)
        new = await self.wss(port)
        self.assertEqual((presented(old), presented(new)), ("node", "node, renewed"))
        self.assertEqual((await new.login(2)).code, 0)
        keepalive = await old.request(Cmd.KEEPALIVE, 1001, 1)  # the old one works
        self.assertEqual(keepalive.cmd, Cmd.KEEPALIVE | RESPONSE_BIT)
        process.signalProcess("TERM")
        self.assertEqual(await out.ended.addTimeout(30, R), 0, out.text)

    async def wss(self, port: int) -> WSClient:
        """A WebSocket over TLS that verifies the node's certificate, open."""
        client = await connect_ws(port, ca=self.ca.path)
        self.addCleanup(drop_ws, client)
        await client.opened.addTimeout(10, R)
        return client

    async def test_a_bad_certificate_on_sighup_is_logged_and_the_old_one_kept(self) -> None:
        out, process, port = await self.start()
        with open(self.server.key, "w") as f:
            f.write("not a key\n")
        process.signalProcess("HUP")
        await until("the reload", lambda: "SIGHUP: reloaded 0 of 1" in out.text)
        self.assertIn("kept the TLS certificate in use", out.text)
        self.assertEqual(await self.presented(port), "node")
        process.signalProcess("TERM")
        await out.ended.addTimeout(30, R)

    async def test_a_node_without_tls_outlives_sighup(self) -> None:
        out = Output()
        process = R.spawnProcess(
            out, TWISTD, [TWISTD, "-n", "--pidfile=", "msgplatform", "--gate",
                          "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
                          "--ws", "tcp:0:interface=127.0.0.1",
                          "--data-dir", os.path.join(self.cwd, "var")],
            env=dict(os.environ), path=self.cwd)
        self.kill_at_cleanup(process.pid)
        await until("the node", lambda: "serving" in out.text)
        process.signalProcess("HUP")  # systemctl reload sends it to every node
        await until("the signal", lambda: "SIGHUP: no TLS certificate to reload" in out.text)
        self.assertFalse(out.ended.called)
        process.signalProcess("TERM")
        self.assertEqual(await out.ended.addTimeout(30, R), 0, out.text)


class DaemonLogRotationTests(TwistdTestCase):
    """twistd daemonized with ``--logfile``: its rotation handler (SIGUSR1) and
    the node's SIGHUP handler each do their own work."""

    async def test_log_rotation_still_works_beside_the_reload(self) -> None:
        log = os.path.join(self.cwd, "node.log")
        pidfile = os.path.join(self.cwd, "node.pid")
        out = Output()
        R.spawnProcess(out, TWISTD, [TWISTD, f"--pidfile={pidfile}", f"--logfile={log}",
                                     *self.args()], env=dict(os.environ), path=self.cwd)
        self.assertEqual(await out.ended.addTimeout(60, R), 0, out.text)  # the parent: started
        with open(pidfile) as f:
            pid = int(f.read())
        self.kill_at_cleanup(pid)
        port = await until("the gate", lambda: gate_port(read(log)))
        self.ca.issue("node, renewed", stem="server")
        os.kill(pid, signal.SIGHUP)
        await until("the reload", lambda: "SIGHUP: reloaded 1 of 1" in read(log))
        self.assertFalse(os.path.exists(log + ".1"))  # SIGHUP rotates nothing
        os.kill(pid, signal.SIGUSR1)  # twistd's rotation
        await until("the rotation", lambda: os.path.exists(log + ".1"))
        self.assertIn("SIGHUP: reloaded 1 of 1", read(log + ".1"))
        self.assertEqual(await self.presented(port), "node, renewed")
        os.kill(pid, signal.SIGHUP)  # and again, into the new file
        await until("the second reload", lambda: "SIGHUP: reloaded 1 of 1" in read(log))
        os.kill(pid, signal.SIGTERM)
        await until("the end", lambda: not os.path.exists(pidfile))

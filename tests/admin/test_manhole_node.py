"""A real ``twistd msgplatform`` node in a terminal (a pty: pydoc would page
with ``less`` there, and interactive help would read it): while an admin
session types each line that used to stop the node (``help()`` froze it until
someone pressed q in its terminal), ``/healthz`` still answers, and the line
comes back with its answer or a refusal. ``exit()`` ends the session, not
the node."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from daojia_msg.admin.manhole import MANHOLE_USERNAME
from tests.admin.telnet import PASSWORD, TelnetClient
from tests.test_tls_twistd import TWISTD, Output, until

R: Any = reactor
#: What each line typed shows before the next prompt (the node in a terminal).
LINES = [
    ("help()", "Interactive help would read the node's own terminal"),
    ("help(len)", "Return the number of items in a container."),
    ('help("if")', 'The "if" statement'),
    ("input()", "Refused: input() would wait"),
    ("import sys; sys.stdin.readline()", "Refused: sys.stdin is the node's"),
    ("import pydoc; pydoc.pager('paged\\n' * 500)", "paged\npaged\n"),
    ("pydoc.help()", "Refused: sys.stdin is the node's"),
    ('import os; os.system("less /etc/hostname")', "Refused: os.system() waits"),
    ("import time; time.sleep(30)", "Refused: time.sleep(30) would stop the node"),
    ("breakpoint()", "Refused: pdb would stop the whole node"),
    ("import pdb; pdb.set_trace()", "Refused: sys.stdin is the node's"),
    ("license()", "Refused: sys.stdin is the node's"),
    ("exit()", "Bye (the node goes on)."),
]


def listening(name: str, text: str) -> int | None:
    found = re.search(rf"{name} listening on 127\.0\.0\.1:(\d+)", text)
    return int(found.group(1)) if found and "serving" in text else None


class NodeInATerminalTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(TWISTD):
            self.skipTest(f"no twistd beside {sys.executable}")
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.pool = HTTPConnectionPool(R, persistent=False)

    async def start_node(self) -> tuple[int, int]:
        """A node whose standard input, output and error are a terminal: its
        HTTP and manhole ports."""
        secret = os.path.join(self.cwd, "manhole-password")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(PASSWORD + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PAGER", "MANPAGER")}
        env["TERM"] = "xterm"
        out = Output()
        process = R.spawnProcess(
            out, TWISTD,
            [TWISTD, "-n", "--pidfile=", "msgplatform", "--gate", "tcp:0:interface=127.0.0.1",
             "--http", "tcp:0:interface=127.0.0.1", "--ws", "",
             "--manhole", "tcp:0:interface=127.0.0.1", "--manhole-password-file", secret,
             "--data-dir", os.path.join(self.cwd, "var")],
            env=env, path=self.cwd, usePTY=True)
        self.addCleanup(self.stop, process, out)
        self.out = out
        http = await until("the HTTP API", lambda: listening("http", out.text))
        manhole = await until("the manhole", lambda: listening("manhole", out.text))
        return http, manhole

    async def stop(self, process: Any, out: Output) -> None:
        if not out.ended.called:
            process.signalProcess("KILL")
            await out.ended

    async def healthz(self, port: int) -> int:
        response = await treq.get(f"http://127.0.0.1:{port}/healthz", pool=self.pool,
                                  timeout=5)
        await response.content()
        return int(response.code)

    async def login(self, port: int) -> TelnetClient:
        client = TelnetClient()
        await connectProtocol(TCP4ClientEndpoint(R, "127.0.0.1", port), client)
        self.addCleanup(self.hang_up, client)
        await client.when_shown("Username: ").addTimeout(10, R)
        client.type(MANHOLE_USERNAME)
        await client.when_shown("Password: ").addTimeout(10, R)
        client.type(PASSWORD)
        await client.when_shown(">>> ").addTimeout(10, R)
        return client

    async def hang_up(self, client: TelnetClient) -> None:
        if not client.lost:
            assert client.transport is not None
            client.transport.loseConnection()
            await client.on_lost

    async def test_healthz_answers_while_the_manhole_is_used(self) -> None:
        http, manhole = await self.start_node()
        self.assertEqual(await self.healthz(http), 200)
        client = await self.login(manhole)
        for line, shown in LINES:
            client.output = b""
            client.type(line)
            # Asked right after the line: answered only if the line let go.
            self.assertEqual(await self.healthz(http), 200, line)
            await client.when_shown(shown).addTimeout(10, R)
            self.assertNotIn("Traceback", client.text, line)
        await client.on_lost.addTimeout(10, R)  # exit() closed the session...
        self.assertEqual(await self.healthz(http), 200)  # ...and not the node
        again = await self.login(manhole)
        again.output = b""
        again.type("6*7")
        await again.when_shown("42\n>>> ").addTimeout(10, R)
        self.assertFalse(self.out.ended.called)
        self.assertNotIn("Traceback", self.out.text)

"""etc/haproxy.cfg refuses HTTP API requests past a node's capacity at once.

A node serves at most ``maxconn`` (32) API requests at a time through the
shipped HAProxy config; 128 more wait in HAProxy's queue; past that HAProxy
answers 429 itself, with the node's own body and Retry-After, so an overloaded
node spends nothing on the excess (BENCHMARKS.md, "HTTP pushes at twice the
capacity behind HAProxy"). Here the node is a stand-in HTTP server that holds
every push until released, the real HAProxy runs the shipped config with its
ports moved (and its queue timeout lengthened, so that a slow machine does not
turn the queued requests into 503s), and 200 pushes go at once.

Everything waits on events with a deadline (HAProxy's first health check, the
held requests, the answers); nothing sleeps.
"""

from __future__ import annotations

import os
import re
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from daojia_msg.chaos.servers import free_ports
from daojia_msg.web.endpoints import OVER_CAPACITY, RETRY_AFTER_S
from tests.processes import Watched
from tests.servers import require_haproxy

R: Any = reactor
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUSHES = 200
SERVING = 32  # maxconn of a node in etc/haproxy.cfg
QUEUED = 128  # the queue length at which etc/haproxy.cfg refuses


class HeldNode(Resource):
    """A node's HTTP API that answers /healthz, and holds every other request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.checked: Deferred[None] = Deferred()
        self.held: list[Request] = []
        self.most = 0  # the most requests held at once
        self.served = 0
        self.release = False
        self._waiting: tuple[int, Deferred[None]] | None = None

    def render(self, request: Request) -> Any:
        if request.path == b"/healthz":
            if not self.checked.called:
                self.checked.callback(None)
            return b"ok"
        if self.release:
            self.served += 1
            return b'{"msgid": 1}'
        self.held.append(request)
        self.most = max(self.most, len(self.held))
        if self._waiting is not None and len(self.held) >= self._waiting[0]:
            _, d = self._waiting
            self._waiting = None
            d.callback(None)
        return NOT_DONE_YET

    def holding(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting = (count, d)
        if len(self.held) >= count:
            self._waiting = None
            d.callback(None)
        return d

    def answer_all(self) -> None:
        self.release = True
        held, self.held = self.held, []
        for request in held:
            self.served += 1
            request.write(b'{"msgid": 1}')
            request.finish()


def shipped_config(front: int, gate: int, node_http: int) -> str:
    """etc/haproxy.cfg with its ports moved, one node, a longer queue timeout."""
    with open(os.path.join(ROOT, "etc", "haproxy.cfg")) as f:
        text = f.read()
    text = re.sub(r"^ *server node[23] .*\n", "", text, flags=re.M)
    text = text.replace("127.0.0.1:7000", f"127.0.0.1:{gate}")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{front}")
    text = text.replace("127.0.0.1:8081", f"127.0.0.1:{node_http}")
    assert "timeout queue 1s" in text, "etc/haproxy.cfg no longer bounds the queue"
    return text.replace("timeout queue 1s", "timeout queue 60s")


class ShippedHAProxyOverload(TestCase):
    timeout = 120

    async def test_the_excess_is_refused_by_haproxy_at_once(self) -> None:
        haproxy = require_haproxy()
        node = HeldNode()
        port = R.listenTCP(0, Site(node), backlog=512, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        front, gate = free_ports(2)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(shipped_config(front, gate, port.getHost().port))
        proc = Watched("haproxy", None)
        R.spawnProcess(proc, haproxy, [haproxy, "-db", "-f", path], env=dict(os.environ),
                       path=directory)

        def stop() -> Deferred[None]:
            proc.kill()
            return proc.ended

        self.addCleanup(stop)
        await node.checked.addTimeout(30, R)  # HAProxy is up: it checks the node

        pool = HTTPConnectionPool(R, persistent=False)
        answers = [treq.post(f"http://127.0.0.1:{front}/v1/push", b'{"to_uid": 1}',
                             headers={"Content-Type": ["application/json"]}, pool=pool)
                   for _ in range(PUSHES)]
        await node.holding(SERVING).addTimeout(30, R)
        refused = PUSHES - SERVING - QUEUED
        # The refusals come back while the node still holds what it serves.
        early: list[Any] = []
        await _first(answers, refused, early).addTimeout(30, R)
        self.assertEqual(len(node.held), SERVING)
        self.assertEqual(len(early), refused)
        for response in early:
            self.assertEqual(response.code, 429)
            self.assertEqual(response.headers.getRawHeaders("Retry-After"),
                             [RETRY_AFTER_S.decode()])
            self.assertEqual(await response.content(), OVER_CAPACITY.body)
        # Released, the node serves the held and the queued ones, never more
        # than 32 at once.
        node.answer_all()
        responses = await gatherResults(answers).addTimeout(60, R)
        codes = [r.code for r in responses]
        self.assertEqual((codes.count(200), codes.count(429)), (SERVING + QUEUED, refused))
        self.assertEqual(node.served, SERVING + QUEUED)
        self.assertEqual(node.most, SERVING)


def _first(ds: list[Deferred[Any]], count: int, results: list[Any]) -> Deferred[None]:
    """Fires once ``count`` of ``ds`` have fired; ``results`` gets each result as it comes."""
    done: Deferred[None] = Deferred()

    def one(result: Any) -> Any:
        results.append(result)
        if len(results) == count:
            done.callback(None)
        return result

    for d in ds:
        d.addCallback(one)
    return done

"""Helpers for the web tests: configs with two user systems, raw HTTP/1.1
requests over a :class:`StringTransport` to the real site, and the test case
that builds a site on a :class:`FakeNode`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from daojia_msg.config import Config, parse_config
from daojia_msg.metrics.registry import make_registry
from daojia_msg.web.site import make_site
from tests.web.fakes import FakeNode

TWO_SYSTEMS = """
[offers]
accept_msgtype = 3
result_msgtype = 4

[apps.1001]
usersystem = "shop"
secret = "secret-1001"
api_key = "key-1001"

[apps.1002]
usersystem = "shop"
secret = "secret-1002"
api_key = "key-1002"
rich_msgtypes = [10]

[apps.2001]
usersystem = "taxi"
secret = "secret-2001"
api_key = "key-2001"
"""

#: What the fake operations views of :class:`ApiTestCase` answer by default.
ONE_NODE = {"node_id": 3, "gate": "gate.example.com:7000", "connections": 2, "sessions": 1,
            "since_ms": 1_700_000_000_000}
NO_TRACE = {"events": [], "missing_nodes": [], "untraced_nodes": [], "truncated": False}

SHOP = {"Authorization": "Bearer key-1001"}
TAXI = {"Authorization": "Bearer key-2001"}


def two_systems(**limits: Any) -> Config:
    config = parse_config(TWO_SYSTEMS)
    if limits:
        config = config.replace(limits=dataclasses.replace(config.limits, **limits))
    return config


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)


def parse_response(raw: bytes, head_only: bool = False) -> Response:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", len(rest)))
    assert len(rest) >= length, f"incomplete body in {raw!r}"
    return Response(status, headers, rest[:length])


class HalfCloseableTransport(StringTransport):
    """A StringTransport that, like TCP, can close its write side alone."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Client:
    """Raw HTTP/1.1 requests to a site over a StringTransport."""

    def __init__(self, site: Site, peer: str = "127.0.0.1") -> None:
        self.site = site
        address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 50123)
        self.transport = HalfCloseableTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=address
        )
        self.channel = site.buildProtocol(address)
        self.channel.makeConnection(self.transport)

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: api.test", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None and not any(h.lower() == "transfer-encoding" for h in headers or {}):
            lines.append(f"Content-Length: {len(body)}")
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def response(self) -> Response:
        return parse_response(self.transport.value())


class ApiTestCase(TestCase):
    config: Config

    def setUp(self) -> None:
        self.config = two_systems()
        self.build()

    def build(self, config: Config | None = None,
              dispatch: Callable[[], Any] = lambda: ("gate.example.com", 7000)) -> None:
        if config is not None:
            self.config = config
        self.node = FakeNode(self.config)
        self.logic = self.node.logic
        self.store = self.node.store
        self.serving = True
        self.registry = make_registry(self.logic.stats, lambda: 12, lambda: len(self.logic.local))
        #: What GET /v1/nodes and GET /v1/trace/{logid} answer (the node's
        #: views, faked): a value, a Deferred, or an exception to raise.
        self.nodes_answer: Any = [ONE_NODE]
        self.trace_answer: Any = NO_TRACE
        self.traced: list[str] = []
        self.site = make_site(
            self.logic, self.config, serving=lambda: self.serving, dispatch=dispatch,
            registry=self.registry, reactor=self.node.clock,
            nodes=lambda: self._answer(self.nodes_answer), trace=self._trace,
        )

    @staticmethod
    def _answer(answer: Any) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _trace(self, logid: str) -> Any:
        self.traced.append(logid)
        return self._answer(self.trace_answer)

    def request(self, method: str, path: str, body: object = None,
                headers: dict[str, str] | None = None, peer: str = "127.0.0.1") -> Response:
        client = Client(self.site, peer)
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        client.send(method, path, raw, headers)
        return parse_response(client.transport.value(), head_only=method == "HEAD")

    def push(self, body: object, headers: dict[str, str] | None = SHOP) -> Response:
        return self.request("POST", "/v1/push", body, headers)

    def assertError(self, response: Response, status: int, contains: str = "") -> str:
        self.assertEqual(response.status, status, response.body)
        error = response.json()["error"]
        self.assertIsInstance(error, str)
        self.assertIn(contains, error)
        return error


def push_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to_uid": 42, "to_appcode": 1001, "msgtype": 5, "content": "hello"}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def as_headers(headers: dict[str, str]) -> Headers:
    return Headers({name: [value] for name, value in headers.items()})


class RawClient(Protocol):
    """Sends bytes, collects everything until the connection closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.done.callback(self.received)

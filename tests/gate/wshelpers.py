"""Fixtures of the WebSocket gate tests: a node with its WebSocket listener on
``tcp:0``, an autobahn client that speaks frames, a raw handshake, and HTTP
requests to the listener's other paths (the console)."""

from __future__ import annotations

from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.client.endpoint import gate_endpoint
from daojia_msg.config import Limits, ListenConfig, WsConfig, default_config
from daojia_msg.node import Node
from daojia_msg.protocol.codec import Frame, FrameDecoder, encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.tls import trust_root
from tests.nodes import NodeTestCase, R

TIMEOUT = 10
ALLOWED = "https://console.example"


class WSClient(WebSocketClientProtocol):
    """Records every message and the close; Deferreds for the next frame and the close."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.texts: list[bytes] = []
        self.opened: Deferred[WSClient] = Deferred()
        self.closed: Deferred[int | None] = Deferred()
        self._waiters: list[tuple[int, Deferred[Frame]]] = []
        self._seq = 0

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.texts.append(payload)
            return
        decoder = FrameDecoder(1 << 24)
        decoder.feed(payload)
        frame = decoder.next()
        assert frame is not None
        self.frames.append(frame)
        for cmd, d in list(self._waiters):
            if frame.cmd == cmd:
                self._waiters.remove((cmd, d))
                d.callback(frame)
                break

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(Failure(ConnectionError(reason)))
        if not self.closed.called:
            self.closed.callback(code)

    def wait_for(self, cmd: int) -> Deferred[Frame]:
        """The next frame of ``cmd`` (one already received counts)."""
        for frame in self.frames:
            if frame.cmd == cmd:
                self.frames.remove(frame)
                return succeed(frame)
        d: Deferred[Frame] = Deferred()
        self._waiters.append((cmd, d))
        return d.addTimeout(TIMEOUT, R)

    def send_frame(self, cmd: int, appcode: int, uid: int, body: bytes = b"",
                   msgtype: int = 0) -> int:
        self._seq += 1
        self.sendMessage(encode(cmd, appcode, msgtype, uid, self._seq, body), isBinary=True)
        return self._seq

    async def request(self, cmd: int, appcode: int, uid: int, body: bytes = b"",
                      msgtype: int = 0) -> Frame:
        waiting = self.wait_for(cmd | RESPONSE_BIT)
        self.send_frame(cmd, appcode, uid, body, msgtype)
        return await waiting

    async def login(self, uid: int, appcode: int = 1001,
                    token: str | None = None) -> pb.LoginResponse:
        """LOGIN with ``token``, or one minted with the demo app's secret."""
        if token is None:
            token = mint_token(f"demo-secret-{appcode}", appcode, uid, int(R.seconds()) + 600)
        answer = await self.request(Cmd.LOGIN, appcode, uid,
                                    pb.LoginRequest(token=token).SerializeToString())
        response = pb.LoginResponse.FromString(answer.body)
        return response


class Raw(Protocol):
    """A raw HTTP exchange: the status code of the server's answer; the
    connection is closed then, unless ``hold``."""

    def __init__(self, request: bytes, hold: bool = False) -> None:
        self.request = request
        self.hold = hold
        self.data = b""
        self.status: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n" in self.data and not self.status.called:
            self.status.callback(int(self.data.split(b" ", 2)[1]))
            if not self.hold:
                self.transport.loseConnection()  # type: ignore[union-attr]


async def connect_ws(port: int, protocols: list[str] | None = None, origin: str | None = None,
                     path: str = "/v1/ws", ca: str | None = None) -> WSClient:
    """A WebSocket to 127.0.0.1:``port`` (its handshake under way: await
    ``opened``); with ``ca``, over TLS that verifies the node's certificate."""
    url = f"{'wss' if ca else 'ws'}://127.0.0.1:{port}{path}"
    factory = WebSocketClientFactory(url, origin=origin, protocols=["msgplatform.v1"]
                                     if protocols is None else protocols)
    factory.protocol = WSClient
    endpoint = gate_endpoint(R, "127.0.0.1", port, tls=bool(ca), ca=ca)
    client: WSClient = await endpoint.connect(factory)
    return client


def presented(client: WSClient) -> str:
    """The common name on the certificate the node showed ``client`` (over TLS)."""
    transport: Any = client.transport
    return str(transport.getPeerCertificate().get_subject().CN)


async def drop_ws(client: WSClient) -> None:
    """Abort ``client``'s connection unless it is closed."""
    if client.transport is not None and not client.closed.called:
        client.transport.abortConnection()
        await client.closed


class WSNodeTestCase(NodeTestCase):
    """A node whose gate also listens over WebSocket."""

    async def start_node(self, data_dir: str | None = None, limits: Limits | None = None,
                         ws: str = "tcp:0:interface=127.0.0.1", demo: bool = True) -> Node:
        self.data_dir = data_dir or self.mktemp()
        config = default_config().replace(
            limits=limits or Limits(),
            data_dir=self.data_dir,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                http="tcp:0:interface=127.0.0.1",
                                ws=ws),
            ws=WsConfig(allowed_origins=(ALLOWED,)),
            demo=demo,  # False: as with a config file (its apps are the demo ones here)
        )
        return await self.run_node(config)

    def host(self) -> str:
        return f"127.0.0.1:{self.port('ws')}"

    async def ws(self, protocols: list[str] | None = None, origin: str | None = None,
                 path: str = "/v1/ws", ca: str | None = None) -> WSClient:
        """An open WebSocket to the node (fails when the handshake is refused);
        with ``ca``, over TLS that verifies the node's certificate against it."""
        client = await connect_ws(self.port("ws"), protocols, origin, path, ca)
        self.addCleanup(drop_ws, client)
        await client.opened.addTimeout(TIMEOUT, R)
        return client

    async def handshake_status(self, headers: dict[str, str], path: str = "/v1/ws",
                               before: bytes = b"", hold: bool = False) -> int:
        """The HTTP status of a handshake with these extra headers, sent after
        ``before`` (a PROXY header, say); with ``hold`` the connection stays open."""
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host()}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers.items())]
        return await self.raw_status(before + ("\r\n".join(lines) + "\r\n\r\n").encode(), hold)

    async def raw_status(self, data: bytes, hold: bool = False) -> int:
        """The HTTP status the WebSocket listener answers to ``data``."""
        raw = Raw(data, hold)
        endpoint = TCP4ClientEndpoint(R, "127.0.0.1", self.port("ws"))
        await endpoint.connect(Factory.forProtocol(lambda: raw))
        if hold:
            self.addCleanup(lambda: raw.transport and raw.transport.abortConnection())
        return await raw.status.addTimeout(TIMEOUT, R)

    async def edge(self, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None,
                   ca: str | None = None) -> tuple[int, Any, bytes]:
        """An HTTP request to the WebSocket listener (https trusting ``ca``):
        the status, the headers and the body."""
        if not hasattr(self, "edge_pool"):
            self.edge_pool = HTTPConnectionPool(R)
            self.addCleanup(self.edge_pool.closeCachedConnections)
        policy = BrowserLikePolicyForHTTPS(trust_root(ca)) if ca else BrowserLikePolicyForHTTPS()
        client = treq.client.HTTPClient(Agent(R, contextFactory=policy, pool=self.edge_pool))
        scheme = "https" if ca else "http"
        response = await client.request(method, f"{scheme}://{self.host()}{path}", data=body,
                                        headers={k: [v] for k, v in (headers or {}).items()})
        return response.code, response.headers, await response.content()

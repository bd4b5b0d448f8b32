"""The WebSocket listener's site (daojia_msg/webedge.py): the console's files,
their types, caching and security headers, the redirect and the 404s, and
the demo token with every reason to refuse it; over a StringTransport to the
real site, with a fake clock and a fake listening port. Then a real node on
loopback: the console, a demo token used to LOGIN over WebSocket and chat
with a TCP client."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from daojia_msg import webui
from daojia_msg.auth import verify_token
from daojia_msg.config import Limits, default_config, parse_config
from daojia_msg.core.convert import MAX_ID
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.webedge import DEMO_TOKEN_TTL_S, MAX_BODY, make_edge_site
from tests.gate.wshelpers import WSNodeTestCase
from tests.web.helpers import HalfCloseableTransport, Response, parse_response

NOW = 1_700_000_000
INDEX = b"<!doctype html><title>console</title>"
FILES = {
    "index.html": INDEX,
    "favicon.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    "assets/index-AbC123.js": b"console.log(1)",
    "assets/index-AbC123.css": b"body{}",
    "assets/logo-Xy9.svg": b"<svg/>",
    "assets/data-Q1.bin": b"\x00\x01",
}


class FakePort:
    """A listening port bound to ``host``."""

    def __init__(self, host: str) -> None:
        self.host = host

    def getHost(self) -> IPv4Address | IPv6Address:
        kind = IPv6Address if ":" in self.host else IPv4Address
        return kind("TCP", self.host, 7070)


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class EdgeTestCase(SynchronousTestCase):
    """A site of the demo config over a console directory of :data:`FILES`,
    its listener bound to ``self.bound`` (None: not listening)."""

    bound: str | None = "127.0.0.1"

    def setUp(self) -> None:
        self.directory = os.path.join(os.path.abspath(self.mktemp()), "console")
        for name, data in FILES.items():
            path = os.path.join(self.directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        with open(os.path.join(self.directory, "..", "secret.txt"), "wb") as f:
            f.write(b"outside")
        self.clock = Clock()
        self.clock.advance(NOW)
        self.build(default_config())

    def build(self, config: Any, directory: str | None = None) -> None:
        self.config = config
        gate: Any = SimpleNamespace(limits=Limits())  # what the WebSocket factory reads
        self.site = make_edge_site(gate, config, self.clock,
                                   listener=lambda: FakePort(self.bound) if self.bound else None,
                                   console_dir=directory or self.directory)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, peer: str = "127.0.0.1",
                host: str = "127.0.0.1:7070", secure: bool = False) -> Response:
        transport = HalfCloseableTransport(hostAddress=_address("127.0.0.1", 7070),
                                           peerAddress=_address(peer, 50123))
        if secure:  # as a TLS connection: ISSLTransport extends ITCPTransport
            directlyProvides(transport, ISSLTransport)
            transport.setTcpNoDelay = lambda enabled: None  # type: ignore[attr-defined]
        channel = self.site.buildProtocol(_address(peer, 50123))
        channel.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return parse_response(transport.value(), head_only=method == "HEAD")

    def token(self, body: object, path: str = "/console/demo-token", **kw: Any) -> Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request("POST", path, raw, **kw)

    def assertError(self, response: Response, status: int, contains: str) -> None:
        self.assertEqual(response.status, status, response.body)
        self.assertIn(contains, response.json()["error"])


class StaticTests(EdgeTestCase):
    def test_the_index_with_its_type_no_cache_and_the_security_headers(self) -> None:
        response = self.request("GET", "/console/")
        self.assertEqual((response.status, response.body), (200, INDEX))
        headers = response.headers
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(headers["referrer-policy"], "no-referrer")
        self.assertEqual(headers["x-frame-options"], "DENY")
        csp = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
        self.assertEqual(csp, {
            "default-src": "'self'", "script-src": "'self'", "style-src": "'self'",
            "img-src": "'self' http: https: data:",
            "connect-src": "'self' ws://127.0.0.1:7070/v1/ws",
            "object-src": "'none'", "base-uri": "'none'", "form-action": "'self'",
            "frame-ancestors": "'none'",
        })
        self.assertEqual(self.request("GET", "/console/index.html").body, INDEX)

    def test_over_tls_the_policy_names_wss(self) -> None:
        csp = self.request("GET", "/console/", secure=True).headers["content-security-policy"]
        self.assertIn("connect-src 'self' wss://127.0.0.1:7070/v1/ws;", csp)

    def test_an_odd_host_header_is_not_copied_into_the_policy(self) -> None:
        csp = self.request("GET", "/console/", host="a b;c").headers["content-security-policy"]
        self.assertIn("connect-src 'self';", csp)

    def test_hashed_assets_are_immutable_with_their_types(self) -> None:
        for path, content_type in (("assets/index-AbC123.js", "text/javascript; charset=utf-8"),
                                   ("assets/index-AbC123.css", "text/css; charset=utf-8"),
                                   ("assets/logo-Xy9.svg", "image/svg+xml"),
                                   ("assets/data-Q1.bin", "application/octet-stream")):
            response = self.request("GET", f"/console/{path}")
            self.assertEqual((response.status, response.body), (200, FILES[path]))
            self.assertEqual(response.headers["content-type"], content_type)
            self.assertEqual(response.headers["cache-control"], "public, max-age=31536000, immutable")
            self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        favicon = self.request("GET", "/console/favicon.svg")
        self.assertEqual((favicon.headers["content-type"], favicon.headers["cache-control"]),
                         ("image/svg+xml", "no-cache"))

    def test_console_redirects_to_console_slash(self) -> None:
        response = self.request("GET", "/console")
        self.assertEqual((response.status, response.headers["location"]), (301, "/console/"))
        self.assertIn("content-security-policy", response.headers)
        response = self.request("GET", "/console?agent=7")
        self.assertEqual(response.headers["location"], "/console/?agent=7")

    def test_no_listing_no_directory_no_escape_and_unknown_paths_are_404(self) -> None:
        for path in ("/console/assets/", "/console/assets", "/console/missing.js",
                     "/console/%2e%2e/secret.txt", "/console/assets/..%2f..%2fsecret.txt",
                     "/console/assets//index-AbC123.js", "/console/%ff", "/", "/other",
                     "/v1", "/v1/nothing", "/console/demo-token/x"):
            response = self.request("GET", path)
            self.assertEqual(response.status, 404, path)
            self.assertNotIn(b"outside", response.body)
        missing = self.request("GET", "/console/missing.js")
        self.assertEqual(missing.json(), {"error": "not found"})
        self.assertEqual(missing.headers["x-content-type-options"], "nosniff")

    def test_an_unbuilt_console_is_404(self) -> None:
        self.build(self.config, directory=os.path.join(self.directory, "nothing"))
        self.assertEqual(self.request("GET", "/console/").status, 404)

    def test_a_revalidation_is_304_and_head_has_no_body(self) -> None:
        etag = self.request("GET", "/console/").headers["etag"]
        response = self.request("GET", "/console/", headers={"If-None-Match": etag})
        self.assertEqual((response.status, response.body), (304, b""))
        head = self.request("HEAD", "/console/assets/index-AbC123.js")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.headers["content-type"], "text/javascript; charset=utf-8")

    def test_only_get_and_head(self) -> None:
        self.assertEqual(self.request("POST", "/console/", b"{}").status, 405)
        self.assertEqual(self.request("POST", "/console/assets/index-AbC123.js", b"").status, 405)

    def test_a_websocket_handshake_elsewhere_than_v1_ws_is_404(self) -> None:
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Protocol": "msgplatform.v1"}
        for path in ("/console/", "/v1/ws2", "/"):
            self.assertEqual(self.request("GET", path, headers=upgrade).status, 404, path)


class SlowClientTests(EdgeTestCase):
    def connect(self) -> tuple[Any, HalfCloseableTransport]:
        transport = HalfCloseableTransport(hostAddress=_address("127.0.0.1", 7070),
                                           peerAddress=_address("127.0.0.1", 50123))
        channel = self.site.buildProtocol(_address("127.0.0.1", 50123))
        channel.makeConnection(transport)
        return channel, transport

    def test_a_request_trickled_past_the_login_timeout_is_aborted(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/ws HTTP/1.1\r\n")
        for _ in range(9):  # a header a second: never idle for long
            self.clock.advance(1.0)
            channel.dataReceived(b"X-Slow: 1\r\n")
        self.assertFalse(transport.disconnected)
        self.clock.advance(1.0)  # login_timeout_s since the first line
        self.assertTrue(transport.disconnected)

    def test_an_idle_connection_closes_after_the_login_timeout(self) -> None:
        _, transport = self.connect()
        self.clock.advance(Limits().login_timeout_s - 0.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.0)
        self.assertTrue(transport.disconnecting)

    def test_a_whole_request_is_not_cut(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET /console/ HTTP/1.1\r\nHost: 127.0.0.1:7070\r\n\r\n")
        self.clock.advance(Limits().login_timeout_s - 0.5)
        self.assertFalse(transport.disconnected)
        self.assertEqual(parse_response(transport.value()).status, 200)
        pending = [call.func.__name__ for call in self.clock.getDelayedCalls()]
        self.assertNotIn("_too_slow", pending)


class PackageTests(EdgeTestCase):
    def test_the_shipped_console_and_its_assets_are_served(self) -> None:
        directory = webui.page_dir("console")
        self.assertTrue(os.path.isfile(os.path.join(directory, "index.html")), directory)
        self.build(self.config, directory=directory)
        index = self.request("GET", "/console/")
        self.assertEqual(index.status, 200)
        assets = re.findall(rb'(?:src|href)="(/console/assets/[^"]+)"', index.body)
        self.assertTrue(assets, index.body)
        for asset in assets:
            response = self.request("GET", asset.decode())
            self.assertEqual(response.status, 200, asset)
            kind = {b".js": "text/javascript", b".css": "text/css"}[os.path.splitext(asset)[1]]
            self.assertTrue(response.headers["content-type"].startswith(kind), asset)

    def test_page_dir_knows_the_pages(self) -> None:
        self.assertEqual(os.path.basename(webui.page_dir("ops")), "ops")
        self.assertRaises(ValueError, webui.page_dir, "../etc")


class DemoTokenTests(EdgeTestCase):
    def test_a_token_for_a_demo_app_verifies_and_expires_in_an_hour(self) -> None:
        for appcode, uid in ((1001, 42), (1002, "9007199254740993"), (1001, MAX_ID)):
            response = self.token({"appcode": appcode, "uid": uid})
            self.assertEqual(response.status, 200, response.body)
            self.assertEqual(response.headers["cache-control"], "no-store")
            answer = response.json()
            self.assertEqual(answer["expires_at"], NOW + DEMO_TOKEN_TTL_S)
            self.assertEqual(verify_token(f"demo-secret-{appcode}", appcode, int(uid),
                                          answer["token"], NOW), answer["expires_at"])

    def test_the_page_of_this_listener_may_ask(self) -> None:
        for origin, host, peer, secure in (
                ("http://127.0.0.1:7070", "127.0.0.1:7070", "127.0.0.1", False),
                ("https://localhost:7070", "localhost:7070", "127.0.0.1", True),
                ("http://[::1]:7070", "[::1]:7070", "::1", False)):
            response = self.token({"appcode": 1001, "uid": 1}, headers={"Origin": origin},
                                  host=host, peer=peer, secure=secure)
            self.assertEqual(response.status, 200, (origin, response.body))

    def test_an_ipv6_loopback_listener_mints(self) -> None:
        self.bound = "::1"
        self.assertEqual(self.token({"appcode": 1001, "uid": 1}, peer="::1").status, 200)

    def test_the_token_is_never_logged(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.site.startFactory()
        token = self.token({"appcode": 1001, "uid": 5}).json()["token"]
        self.site.stopFactory()  # flushes the access log
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("POST /console/demo-token", text)
        self.assertIn("minted a demo token for uid 5 of app 1001", text)
        self.assertNotIn(token.partition(":")[2], text)

    def test_refused_without_the_demo_apps(self) -> None:
        self.build(default_config().replace(demo=False))
        self.assertError(self.token({"appcode": 1001, "uid": 1}), 403, "built-in demo apps")

    def test_refused_on_a_listener_beyond_loopback(self) -> None:
        for bound in ("0.0.0.0", "10.1.2.3", "::", None):
            self.bound = bound
            self.assertError(self.token({"appcode": 1001, "uid": 1}), 403, "bound to loopback")

    def test_refused_for_a_client_of_another_machine(self) -> None:
        self.assertError(self.token({"appcode": 1001, "uid": 1}, peer="192.0.2.7"), 403,
                         "clients on this machine")

    def test_refused_for_a_foreign_page(self) -> None:
        for origin in ("http://evil.example", "null", "https://127.0.0.1:7070",
                       "http://127.0.0.1:7071"):
            self.assertError(self.token({"appcode": 1001, "uid": 1}, headers={"Origin": origin}),
                             403, "only minted for pages of http://127.0.0.1:7070")

    def test_refused_for_a_name_that_is_not_loopback(self) -> None:
        # DNS rebinding: evil.example resolves to 127.0.0.1, its page is same-origin.
        response = self.token({"appcode": 1001, "uid": 1}, host="evil.example:7070",
                              headers={"Origin": "http://evil.example:7070"})
        self.assertError(response, 403, "Host of localhost or a loopback address")

    def test_bad_bodies_are_400(self) -> None:
        cases: list[tuple[object, str]] = [
            (b"not json", "not valid JSON"),
            (b"\xff", "not UTF-8"),
            ([1001, 1], "expected a JSON object"),
            ({"appcode": 1001}, "uid: is required"),
            ({"uid": 1}, "appcode: is required"),
            ({"appcode": 1001, "uid": 1, "secret": "x"}, "secret: unknown field"),
            ({"appcode": 1001, "uid": 0}, "uid: expected a uid from 1 to"),
            ({"appcode": 1001, "uid": MAX_ID + 1}, "uid: expected"),
            ({"appcode": 1001, "uid": str(MAX_ID + 1)}, "uid: expected"),
            ({"appcode": 1001, "uid": -1}, "uid: expected"),
            ({"appcode": 1001, "uid": "1e3"}, "uid: expected"),
            ({"appcode": 1001, "uid": True}, "uid: expected"),
            ({"appcode": 1001, "uid": 1.5}, "uid: expected"),
            ({"appcode": "1001", "uid": 1}, "appcode: expected a demo app, 1001 or 1002"),
            ({"appcode": True, "uid": 1}, "appcode: expected a demo app"),
            ({"appcode": 2001, "uid": 1}, "appcode: expected a demo app"),
        ]
        for body, error in cases:
            self.assertError(self.token(body), 400, error)

    def test_an_app_that_is_not_a_demo_app_is_400(self) -> None:
        config = parse_config('[apps.1001]\nusersystem = "demo"\nsecret = "demo-secret-1001"\n'
                              '[apps.1003]\nusersystem = "demo"\nsecret = "not-a-demo-secret"\n')
        self.assertTrue(config.demo)  # a demo secret in a config file
        self.build(config)
        self.assertEqual(self.token({"appcode": 1001, "uid": 1}).status, 200)
        self.assertError(self.token({"appcode": 1003, "uid": 1}), 400, "expected a demo app")

    def test_a_body_over_the_limit_is_413_unread(self) -> None:
        response = self.token(b"{" + b" " * MAX_BODY + b"}")
        self.assertError(response, 413, f"over {MAX_BODY} bytes")

    def test_only_post_and_only_there(self) -> None:
        self.assertEqual(self.request("GET", "/console/demo-token").status, 405)
        self.assertEqual(self.token({"appcode": 1001, "uid": 1}, path="/console/demo-token/").status, 404)


class NodeTests(WSNodeTestCase):
    async def test_a_demo_token_from_the_console_logs_in_and_chats_with_tcp(self) -> None:
        await self.start_node()
        own = f"http://{self.host()}"
        code, headers, body = await self.edge("GET", "/console/")
        self.assertEqual(code, 200)
        self.assertIn(b"<html", body)
        self.assertIn(f"ws://{self.host()}/v1/ws",
                      headers.getRawHeaders("content-security-policy")[0])
        code, _, body = await self.edge("POST", "/console/demo-token",
                                        json.dumps({"appcode": 1001, "uid": 21}).encode(),
                                        headers={"Origin": own})
        self.assertEqual(code, 200, body)
        token = json.loads(body)["token"]
        ws = await self.ws(origin=own)
        self.assertEqual((await ws.login(21, token=token)).code, Code.OK)
        tcp, tcp_inbox = await self.client(22)
        pushed = ws.wait_for(Cmd.C2C)
        await tcp.c2c(21, 1001, 10, b"to the agent")
        self.assertEqual(pb.Message.FromString((await pushed).body).content, b"to the agent")
        body = pb.C2CRequest(to_uid=22, to_appcode=1001, content=b"to tcp", client_msg_id="a1")
        answer = await ws.request(Cmd.C2C, 1001, 21, body.SerializeToString(), msgtype=10)
        self.assertEqual(pb.Result.FromString(answer.body).code, Code.OK)
        self.assertEqual([m.content for m in await tcp_inbox.wait(1)], [b"to tcp"])

    async def test_the_gate_is_the_producer_of_its_websocket(self) -> None:
        node = await self.start_node()
        ws = await self.ws()
        await ws.login(23)
        [conn] = node.gate.connections
        socket: Any = conn.transport.ws.transport  # type: ignore[attr-defined]
        self.assertIs(socket.producer, conn)  # back-pressure reaches the socket

    async def test_a_plain_get_of_the_websocket_path_is_426(self) -> None:
        await self.start_node()
        code, _, body = await self.edge("GET", "/v1/ws?redirect=http%3A%2F%2Fevil.example")
        self.assertEqual(code, 426)
        self.assertNotIn(b"autobahn", body.lower())

    async def test_a_node_without_the_demo_apps_mints_no_demo_token(self) -> None:
        await self.start_node(demo=False)
        code, _, body = await self.edge("POST", "/console/demo-token", b'{"appcode":1001,"uid":1}')
        self.assertEqual(code, 403, body)
        self.assertIn(b"built-in demo apps", body)

    async def test_behind_a_proxy_the_gate_sees_the_client_and_no_token_is_minted(self) -> None:
        node = await self.start_node(ws="haproxy:tcp:0:interface=127.0.0.1")
        proxy = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 7070\r\n"
        status = await self.handshake_status({"Sec-WebSocket-Protocol": "msgplatform.v1"},
                                             before=proxy, hold=True)
        self.assertEqual(status, 101)
        self.assertEqual([c.peer for c in node.gate.connections], ["203.0.113.9:40000"])
        body = b'{"appcode":1001,"uid":1}'
        status = await self.raw_status(
            proxy + b"POST /console/demo-token HTTP/1.1\r\nHost: " + self.host().encode()
            + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(status, 403)  # the client is not on this machine

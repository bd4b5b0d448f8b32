# -*- test-case-name: tests.test_webedge,tests.gate.test_websocket -*-
"""The WebSocket listener (``listen.ws``): one twisted.web site for browsers.

- ``/v1/ws``: the gate over WebSocket (:mod:`daojia_msg.gate.websocket`,
  docs/protocol.md §7.3); a WebSocket handshake to any other path is 404.
- ``GET /console/``: the customer-service console's built files
  (:mod:`daojia_msg.webui`), with a Content-Security-Policy and no directory
  listings; ``/console`` redirects there.
- ``POST /console/demo-token``: a login token for a demo app (docs/protocol.md
  §5), only on a node that runs the demo apps, on a loopback listener, for a
  client of this machine and a page of this listener's own origin.

The gate knows nothing of the web, nor the HTTP API of the gate: the two meet
here, and the node listens with the result.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from daojia_msg import webui
from daojia_msg.auth import mint_token
from daojia_msg.config import Config
from daojia_msg.config.model import DEMO_APPS
from daojia_msg.core.convert import MAX_ID
from daojia_msg.gate.factory import GateFactory
from daojia_msg.gate.websocket import PATH, GateWebSocketFactory, origin_allowed
from daojia_msg.protocol import errors
from daojia_msg.sockets import is_loopback
from daojia_msg.web.endpoints import NOT_FOUND, Node
from daojia_msg.web.parsing import Fields, dumps, parse_json
from daojia_msg.web.request import ApiRequest
from daojia_msg.web.site import ApiSite
from daojia_msg.web.static import SECURITY_HEADERS, StaticFiles, json_error

log = Logger()

#: A demo token is valid this long.
DEMO_TOKEN_TTL_S = 3600
#: The largest request body the listener reads (a demo-token request is ~40
#: bytes); a larger one is answered 413 without being buffered.
MAX_BODY = 4096

#: The console's policy: its own scripts and styles only (no inline script or
#: style attribute), images from anywhere (rich content, docs/protocol.md
#: §7.2) and inlined ones, connections to its own origin (the gate's WebSocket
#: and the demo token; 'self' covers ws: and wss: of the same host in CSP
#: Level 3, and the same-origin WebSocket URL is named too for browsers before
#: it), never framed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       "img-src 'self' http: https: data:; connect-src 'self'{ws}; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

#: A Host header that may be named in the policy: a DNS name or an address, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_DIGITS = re.compile(r"[0-9]{1,19}")


def _host(request: server.Request) -> str | None:
    """The request's Host header when it is a plain ``host[:port]``, else None."""
    value = request.getHeader(b"host")
    if value is None:
        return None
    host = value.decode("latin-1")
    return host if _HOST.fullmatch(host) else None


def _hostname(host: str) -> str:
    """``host[:port]`` without the port and the brackets of an IPv6 address."""
    if host.startswith("["):
        return host[1:host.index("]")]
    return host.rpartition(":")[0] if ":" in host else host


def own_origin(request: server.Request, host: str) -> str:
    """The origin of a page this listener served under ``host``."""
    return f"{'https' if request.isSecure() else 'http'}://{host}"


def secure(request: server.Request) -> None:
    """Set the console's security headers on ``request``'s answer."""
    host = _host(request)
    scheme = "wss" if request.isSecure() else "ws"
    ws = f" {scheme}://{host}{PATH}" if host else ""
    request.setHeader(b"content-security-policy", CSP.format(ws=ws).encode("ascii"))
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


class GateWebSocketResource(WebSocketResource):
    """``/v1/ws``: hands the connection over to the gate's WebSocket protocol."""

    def render(self, request: Any) -> Any:
        transport = request.channel.transport
        if transport is not None:
            # The HTTP channel is the transport's producer; the gate
            # registers itself (back-pressure) once the WebSocket is open.
            transport.unregisterProducer()
            request.channel.setTimeout(None)
        return super().render(request)


class EdgeRequest(ApiRequest):
    """A bounded request (:class:`ApiRequest`) that must also arrive whole,
    line, headers and body, within ``deadline_s`` of its first line, else the
    connection is aborted: the bound a WebSocket opening handshake had before
    the site (``limits.login_timeout_s``), which an idle timeout that every
    trickled byte restarts is not."""

    def __init__(self, channel: Any, *args: Any, max_body: int, deadline_s: float,
                 **kw: Any) -> None:
        super().__init__(channel, *args, max_body=max_body, **kw)
        self._deadline: Any = channel.callLater(deadline_s, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        transport: Any = self.channel.transport if self.channel is not None else None
        if transport is not None:
            log.info("aborting {peer}: its request did not arrive in time", peer=str(self.client))
            transport.abortConnection()

    def _arrived(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._arrived()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._arrived()
        super().connectionLost(reason)


class EdgeRoot(Node):
    """The site's root: unknown paths are a JSON 404, and so is a WebSocket
    handshake to anywhere but :data:`~daojia_msg.gate.websocket.PATH`."""

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        upgrade = request.getHeader(b"upgrade") or b""
        if b"websocket" in upgrade.lower() and request.path != PATH.encode():
            return NOT_FOUND
        return super().getChildWithDefault(path, request)


class DemoToken(Resource):
    """``POST /console/demo-token`` ``{"appcode": N, "uid": N}``: ``{"token",
    "expires_at"}`` for a demo app, valid :data:`DEMO_TOKEN_TTL_S` (see
    :meth:`refusal` for when)."""

    def getChild(self, path: bytes, request: Any) -> Any:
        return NOT_FOUND

    def __init__(self, config: Config, seconds: Callable[[], float],
                 listener: Callable[[], IListeningPort | None]) -> None:
        super().__init__()
        self.config = config
        self.seconds = seconds
        self.listener = listener

    def refusal(self, request: Any) -> str | None:
        """Why this request may not have a token (403), or None."""
        if not self.config.demo:
            return "demo tokens are only minted while the node runs the built-in demo apps"
        port = self.listener()
        bound = port.getHost() if port is not None else None
        if not isinstance(bound, IPv4Address | IPv6Address) or not is_loopback(bound.host):
            return "demo tokens are only minted on a WebSocket listener bound to loopback"
        client = request.getClientAddress()
        if not isinstance(client, IPv4Address | IPv6Address) or not is_loopback(client.host):
            return "demo tokens are only minted for clients on this machine"
        host = _host(request)
        # A page of another name that resolves to 127.0.0.1 (DNS rebinding)
        # would be of the same origin as this listener: only loopback names.
        if host is None or not is_loopback(_hostname(host)):
            return "demo tokens are only minted for a Host of localhost or a loopback address"
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        if not origin_allowed(origin, own_origin(request, host), ()):
            return f"demo tokens are only minted for pages of {own_origin(request, host)}"
        return None

    def render_POST(self, request: Any) -> bytes:
        why = self.refusal(request)
        if why is not None:
            return json_error(request, 403, why)
        try:
            appcode, uid = self.parse(request.content.read())
        except errors.BadRequest as e:
            return json_error(request, 400, e.reason)
        expires_at = int(self.seconds()) + DEMO_TOKEN_TTL_S
        app = self.config.apps[appcode]
        token = mint_token(app.secret, appcode, uid, expires_at)
        log.info("minted a demo token for uid {uid} of app {appcode} for {peer}",
                 uid=uid, appcode=appcode, peer=request.getClientAddress().host)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return dumps({"token": token, "expires_at": expires_at})

    def parse(self, body: bytes) -> tuple[int, int]:
        """``(appcode, uid)`` of a request body; BadRequest says what is wrong."""
        f = Fields(parse_json(body), frozenset({"appcode", "uid"}))
        appcode = f.required("appcode")
        app = self.config.app(appcode) if type(appcode) is int else None
        demo_app = DEMO_APPS.get(appcode) if app is not None else None
        if demo_app is None or app is None or app.secret != demo_app.secret:
            demo = " or ".join(str(a) for a in sorted(DEMO_APPS))
            raise errors.BadRequest(f"appcode: expected a demo app, {demo}")
        uid = f.required("uid")
        if isinstance(uid, str) and _DIGITS.fullmatch(uid):
            uid = int(uid)
        if type(uid) is not int or not 0 < uid <= MAX_ID:
            raise errors.BadRequest(
                f"uid: expected a uid from 1 to {MAX_ID} (a JSON integer or decimal string)")
        return appcode, uid


class Console(Resource):
    """``/console/``: the console's files and its demo token, with the
    security headers on every answer; ``/console`` redirects to ``/console/``."""

    def __init__(self, files: Resource, demo_token: Resource) -> None:
        super().__init__()
        self.files = files
        self.putChild(b"demo-token", demo_token)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        secure(request)
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Any) -> Any:
        # The files resource reads the whole path, this segment included.
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self.files

    def render_GET(self, request: Any) -> bytes:
        secure(request)
        _, sep, query = request.uri.partition(b"?")
        request.setResponseCode(http.MOVED_PERMANENTLY)
        request.setHeader(b"location", b"/console/" + sep + query)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"the console is at /console/\n"


def make_edge_site(gate: GateFactory, config: Config, reactor: Any,
                   listener: Callable[[], IListeningPort | None],
                   console_dir: str | None = None) -> server.Site:
    """The site of ``listen.ws``: the gate ``gate`` over WebSocket (with
    ``[ws] allowed_origins``), the console (the files of ``console_dir``, by
    default the package's), and its demo token; ``listener()`` is the port the
    site listens on, once bound (None before and after)."""
    console_dir = console_dir or webui.page_dir("console")
    if not os.path.isfile(os.path.join(console_dir, "index.html")):
        log.warn("the console is not built ({directory} has no index.html): "
                 "GET /console/ answers 404", directory=console_dir)
    root = EdgeRoot()
    v1 = Node()
    v1.putChild(b"ws", GateWebSocketResource(
        GateWebSocketFactory(gate, config.ws.allowed_origins)))
    root.putChild(b"v1", v1)
    root.putChild(b"console", Console(StaticFiles(console_dir),
                                      DemoToken(config, reactor.seconds, listener)))
    # A browser's connection idles between page loads and handshakes: as
    # long as a handshake may take, not the HTTP API's minute.
    deadline = config.limits.login_timeout_s
    site = ApiSite(
        root,
        requestFactory=functools.partial(EdgeRequest, max_body=MAX_BODY, deadline_s=deadline),
        parsePOSTFormSubmission=False,
        timeout=deadline,
        reactor=reactor,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site

# -*- test-case-name: tests.web.test_api -*-
"""The HTTP API (docs/openapi.yaml): JSON in and out, on a twisted.web resource tree.

==========================  =====  ===========================================
path                        auth   answer
==========================  =====  ===========================================
``POST /v1/push``           key    ``{"msgid", "logid", "online"}``
``POST /v1/push/batch``     key    ``{"results": [...]}``, in order
``GET /v1/sessions?uid=U``  key    ``{"sessions": [{"appcode", "node", "since_ms"}]}``
``POST /v1/kickout``        key    ``{"kicked": n}``
``GET /v1/stats``           key    :meth:`Stats.snapshot`, scoped (below)
``GET /v1/dispatch``        none   ``{"host", "port"}``
``GET /healthz``            none   200 ``{"status": "serving"}`` / 503 ``draining``
``GET /metrics``            none   Prometheus text; loopback clients only
==========================  =====  ===========================================

Errors are ``{"error": "..."}`` with the status docs/openapi.yaml gives: 400 bad JSON
or fields (an unconfigured appcode included), 401 missing or wrong key, 403 a
key acting outside its user system (and ``/metrics`` from a non-loopback
client), 404/405 unknown path or method, 413 body over ``limits.http_max_body``,
503 a backend is down (nothing accepted), 500 ``{"error": "internal"}`` for an
unexpected exception (logged with ``log.failure``; the node keeps serving).

Choices where the contract is silent:

- **Unknown fields are rejected** (400 naming the field), in push bodies, batch
  items, the batch body and the kickout body: a misspelt optional field
  (``logId``) must not be silently dropped. A ``null`` value counts as absent.
  Duplicate keys in one JSON object are bad JSON. Query parameters other than
  ``uid`` are ignored. ``Content-Type`` is not checked; the body must be UTF-8.
- uids: a JSON integer or a string of 1 to 20 ASCII digits, from 1 to 2**64-1
  (0 is refused everywhere a uid is given: a recipient, a session owner, a
  kicked user). ``appcode`` and ``msgtype``: JSON integers from 0 to 2**32-1.
  ``content_b64`` must be canonical standard base64 (padded, no whitespace).
- In a batch every item is checked alone: a bad item, an unconfigured appcode
  *and an appcode of another user system* give that item ``{"error"}`` while
  the others go on (a 403 is only for a whole request). An empty batch is
  ``{"results": []}``. More than ``limits.push_batch_max`` items is a 400.
- ``/v1/stats`` is **scoped to the key's user system**: ``by_route`` lists only
  routes whose appcode is in it, and ``totals`` and ``delivery_rate`` are
  recomputed over those routes, so one tenant never sees another's traffic.
  The node-wide figures are on ``/metrics``.
- ``/metrics`` trusts the TCP peer address (never ``X-Forwarded-For``); UNIX
  sockets count as local. Behind a reverse proxy on the same host every client
  looks local: do not proxy ``/metrics``. ``HEAD`` is served wherever ``GET`` is.
- A body over the limit is refused as soon as that is known (a declared
  ``Content-Length`` at the headers; a chunked body once its count passes the
  limit): the 413 is written at once and the write side closed. The rest of
  the body is read and dropped (never buffered), so that a client still
  sending gets to read the answer instead of a reset, up to twice the limit
  (at least :data:`DRAIN_MIN`); beyond that the connection stops reading, and
  it is closed after :data:`LINGER_S` idle seconds. An
  ``Expect: 100-continue`` request over the limit gets the 413 without the
  ``100 Continue``.
- API keys are compared as SHA-256 digests with :func:`hmac.compare_digest`
  against every configured key (no early exit, no length leak). Keys are never
  logged; the access log (combined format) does not contain them either.
- The access log has one combined-format line per request, but they are
  logged together: one ``daojia_msg.web.access`` event per second (or per
  :data:`ACCESS_LOG_MAX_LINES` lines, and at stop) whose text is the lines.
  An event per request cost about as much CPU as the rest of a push.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import inspect
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from daojia_msg.config import AppConfig, Config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.logic.service import LogicService, PushItem, PushOutcome
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import KickReason

MAX_UID = 2**64 - 1
MAX_U32 = 2**32 - 1
#: Seconds a connection whose body was refused (413) is kept to drain it.
LINGER_S = 5.0
#: A refused body is read and dropped up to twice the limit, at least this much.
DRAIN_MIN = 1024 * 1024
#: Idle seconds before an HTTP connection is closed (none while a request runs).
IDLE_TIMEOUT_S = 60.0

PUSH_FIELDS = frozenset({"to_uid", "to_appcode", "msgtype", "content", "content_b64", "logid"})
BATCH_FIELDS = frozenset({"messages"})
KICKOUT_FIELDS = frozenset({"uid", "appcode"})

_DIGITS = re.compile(r"[0-9]{1,20}")
_JSON = b"application/json"

Dispatch = Callable[[], tuple[str, int] | Awaitable[tuple[str, int]]]

log = Logger()


# -- the bounded request --------------------------------------------------------


class ApiRequest(server.Request):
    """A :class:`server.Request` that refuses a body over ``max_body`` bytes
    with 413 without buffering it (see the module docstring)."""

    def __init__(self, channel: Any, *args: Any, max_body: int, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self.max_body = max_body
        self._received = 0
        self._refused = False
        self._dropped = 0
        self._drain_max = max(2 * max_body, DRAIN_MIN)
        self._paused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.content = BytesIO()
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            self._drop(len(data))
            return
        self._received += len(data)
        if self._received > self.max_body:  # a chunked body: no length to check up front
            if self.content is not None:
                self.content.close()
            self.content = BytesIO()
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The whole body arrived and was dropped; the 413 is already out.
            transport = self.channel.transport if self.channel is not None else None
            if transport is not None:
                transport.loseConnection()
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        # allHeadersReceived sends "100 Continue" after gotLength: not for this one.
        self.requestHeaders.removeHeader(b"expect")
        body = _dumps({"error": f"request body is over {self.max_body} bytes"})
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        channel = self.channel
        transport: Any = channel.transport
        log.info("refused a request body over {max_body} bytes from {peer}",
                 max_body=self.max_body, peer=str(self.client))
        transport.write(head + body)
        channel.persistent = False
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
            channel.setTimeout(LINGER_S)
        else:
            transport.loseConnection()

    def _drop(self, n: int) -> None:
        self._dropped += n
        if self._dropped > self._drain_max and not self._paused and self.channel is not None:
            # Enough: stop reading (the 413 still goes out); the linger timeout closes.
            self._paused = True
            transport: Any = self.channel.transport
            if not transport.disconnecting:  # closing anyway: it reads no more
                transport.pauseProducing()


# -- answers and field checks -----------------------------------------------------


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps makes one per call


def _dumps(obj: object) -> bytes:
    return _ENCODER.encode(obj).encode("ascii")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: bytes = _JSON


def _json(status: int, obj: object) -> Answer:
    return Answer(status, _dumps(obj))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: json.loads with these arguments would make a new decoder for each call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise errors.BadRequest("body: not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise errors.BadRequest(f"body: not valid JSON ({e})") from None


def read_json(request: server.Request) -> Any:
    """The request's body, parsed."""
    content = request.content
    return parse_json(content.read() if content is not None else b"")


def parse_uid(value: object, name: str) -> int:
    """A uid from a JSON number or decimal string: 1 to 2**64-1."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_UID:
        raise errors.BadRequest(
            f"{name}: expected a uid from 1 to {MAX_UID} (a JSON integer or decimal string)"
        )
    return value


class Fields:
    """One JSON object of a request, checked key by key."""

    def __init__(self, data: object, known: frozenset[str]) -> None:
        if not isinstance(data, dict):
            raise errors.BadRequest("expected a JSON object")
        for key in sorted(data):
            if key not in known:
                raise errors.BadRequest(f"{key}: unknown field")
        self.data: dict[str, Any] = data

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def required(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise errors.BadRequest(f"{key}: is required")
        return value

    def uid(self, key: str) -> int:
        return parse_uid(self.required(key), key)

    def u32(self, key: str) -> int:
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U32:
            raise errors.BadRequest(f"{key}: expected a JSON integer from 0 to {MAX_U32}")
        return value

    def text(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise errors.BadRequest(f"{key}: expected a string")
        return value


def _b64decode(value: str) -> bytes:
    try:
        decoded = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise errors.BadRequest("content_b64: not valid base64") from None
    if base64.b64encode(decoded).decode("ascii") != value:
        raise errors.BadRequest("content_b64: not canonical base64")
    return decoded


def content_of(f: Fields, max_content: int) -> bytes:
    """Exactly one of ``content`` (UTF-8 text) and ``content_b64``, as bytes."""
    text, b64 = f.get("content"), f.get("content_b64")
    if (text is None) == (b64 is None):
        raise errors.BadRequest("exactly one of content and content_b64 is required")
    if text is not None:
        if not isinstance(text, str):
            raise errors.BadRequest("content: expected a string (UTF-8 text)")
        if len(text) > max_content:  # each character is at least one byte
            raise _too_big(max_content)
        try:
            content = text.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.BadRequest("content: not valid Unicode text") from None
    else:
        if not isinstance(b64, str):
            raise errors.BadRequest("content_b64: expected a base64 string")
        if len(b64) > (max_content + 2) // 3 * 4:
            raise _too_big(max_content)
        content = _b64decode(b64)
    if len(content) > max_content:
        raise _too_big(max_content)
    return content


def _too_big(max_content: int) -> errors.BadRequest:
    return errors.BadRequest(f"content: over {max_content} bytes")


def _client_is_local(address: object) -> bool:
    if isinstance(address, UNIXAddress):
        return True
    if not isinstance(address, IPv4Address | IPv6Address):
        return False
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


# -- callers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """The app whose API key a request carries, and its user system's appcodes."""

    app: AppConfig
    appcodes: frozenset[int]


class Keys:
    """The configured API keys, matched in constant time."""

    def __init__(self, apps: Iterable[AppConfig]) -> None:
        apps = list(apps)
        systems: dict[str, set[int]] = {}
        for app in apps:
            systems.setdefault(app.usersystem, set()).add(app.appcode)
        self._keys = [
            (hashlib.sha256(app.api_key.encode("utf-8")).digest(),
             Caller(app, frozenset(systems[app.usersystem])))
            for app in apps
            if app.api_key
        ]

    def find(self, key: bytes) -> Caller | None:
        digest = hashlib.sha256(key).digest()
        found = None
        for candidate, caller in self._keys:  # every key, every time
            if hmac.compare_digest(candidate, digest) and found is None:
                found = caller
        return found

    def authenticate(self, request: server.Request) -> Caller:
        header = request.getHeader(b"authorization")
        scheme, _, key = (header or b"").strip().partition(b" ")
        key = key.strip()
        if scheme.lower() != b"bearer" or not key:
            raise errors.Unauthorized("missing API key (Authorization: Bearer <api key>)")
        caller = self.find(key)
        if caller is None:
            raise errors.Unauthorized("unknown API key")
        return caller


# -- the resources -------------------------------------------------------------------


StatsView = Callable[[frozenset[int]], "dict[str, Any] | Awaitable[dict[str, Any]]"]


class Api:
    """What the endpoints share: the logic, the config, the keys and the hooks."""

    def __init__(
        self,
        logic: LogicService,
        config: Config,
        serving: Callable[[], bool],
        dispatch: Dispatch,
        registry: CollectorRegistry,
        stats: StatsView | None = None,
    ) -> None:
        self.logic = logic
        self.config = config
        self.limits = config.limits
        self.keys = Keys(config.apps.values())
        self.serving = serving
        self.dispatch = dispatch
        self.registry = registry
        self.stats: StatsView = stats or logic.stats.snapshot

    def target(self, caller: Caller, appcode: int, name: str) -> AppConfig:
        """The app ``appcode`` if configured (else 400) and in the caller's user system (else 403)."""
        app = self.config.app(appcode)
        if app is None:
            raise errors.UnknownAppcode(f"{name}: no app {appcode} is configured")
        if appcode not in caller.appcodes:
            raise errors.Forbidden(f"{name}: app {appcode} is not in this API key's user system")
        return app

    def push_item(self, data: object, caller: Caller) -> PushItem:
        # The common case in one pass: a JSON object of known fields, integer
        # uid/appcode/msgtype in range, text content within the limit, an app
        # of the caller's user system. Anything else (string uids, base64,
        # every error) takes the field-by-field path, which gives the errors.
        if type(data) is dict and data.keys() <= PUSH_FIELDS:
            to_uid = data.get("to_uid")
            to_appcode = data.get("to_appcode")
            msgtype = data.get("msgtype")
            text = data.get("content")
            logid = data.get("logid")
            if (type(to_uid) is int and 0 < to_uid <= MAX_UID
                    and type(to_appcode) is int and to_appcode in caller.appcodes
                    and type(msgtype) is int and 0 <= msgtype <= MAX_U32
                    and type(text) is str and data.get("content_b64") is None
                    and (logid is None or type(logid) is str)
                    and self.config.app(to_appcode) is not None):
                try:
                    content = text.encode("utf-8")
                except UnicodeEncodeError:
                    pass
                else:
                    if len(content) <= self.limits.max_content:
                        return PushItem(to_uid, to_appcode, msgtype, content, logid or "")
        return self._push_item_checked(data, caller)

    def _push_item_checked(self, data: object, caller: Caller) -> PushItem:
        f = Fields(data, PUSH_FIELDS)
        to_uid = f.uid("to_uid")
        to_appcode = f.u32("to_appcode")
        msgtype = f.u32("msgtype")
        content = content_of(f, self.limits.max_content)
        logid = f.text("logid")
        self.target(caller, to_appcode, "to_appcode")
        return PushItem(to_uid, to_appcode, msgtype, content, logid)

    async def answer(self, endpoint: Endpoint, method: bytes, request: server.Request) -> None:
        """Run ``endpoint`` for ``request`` and write its answer, whatever happens."""
        try:
            caller = self.keys.authenticate(request) if endpoint.needs_key else None
            answer = await endpoint.handle(method, request, caller)
        except errors.RequestError as e:
            answer = _json(e.http_status, {"error": e.reason})
        except StoreUnavailable as e:  # a backend (Redis, the database) is down: 503
            log.warn("{method} {path}: {error}", method=request.method.decode("latin-1"),
                     path=request.path.decode("latin-1"), error=str(e))
            unavailable = errors.Unavailable("a backend is unavailable")
            answer = _json(unavailable.http_status, {"error": unavailable.reason})
        except Exception:
            log.failure("{method} {path} failed", method=request.method.decode("latin-1"),
                        path=request.path.decode("latin-1"))
            answer = _json(500, {"error": "internal"})
        if getattr(request, "_disconnected", False):  # set by Request.connectionLost
            log.info("{method} {path}: the client went away before the answer ({status})",
                     method=request.method.decode("latin-1"), path=request.path.decode("latin-1"),
                     status=answer.status)
            return
        write(request, answer)


def write(request: server.Request, answer: Answer) -> None:
    request.setResponseCode(answer.status)
    request.setHeader(b"content-type", answer.content_type)
    request.setHeader(b"content-length", b"%d" % len(answer.body))
    request.setHeader(b"cache-control", b"no-store")
    if answer.status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="msgplatform"')
    request.write(answer.body)
    request.finish()


class Node(Resource):
    """A path segment: unknown children are a JSON 404."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NOT_FOUND

    def render(self, request: Any) -> bytes | int:
        return _render_now(request, _json(404, {"error": "not found"}))


def _render_now(request: server.Request, answer: Answer) -> bytes:
    request.setResponseCode(answer.status)
    request.setHeader(b"content-type", answer.content_type)
    request.setHeader(b"cache-control", b"no-store")
    return answer.body


NOT_FOUND = Node()


class Endpoint(Node):
    """A JSON endpoint: :meth:`handle` runs as a coroutine for each allowed method."""

    methods: tuple[bytes, ...] = (b"GET",)
    needs_key = True

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> bytes | int:
        method = request.method
        if method == b"HEAD" and b"GET" in self.methods:
            method = b"GET"
        if method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _render_now(request, _json(405, {"error": "method not allowed"}))
        d = Deferred.fromCoroutine(self.api.answer(self, method, request))
        d.addErrback(lambda f: log.failure("answering {path} failed", f, path=request.path))
        return server.NOT_DONE_YET

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        raise NotImplementedError


class Push(Endpoint):
    methods = (b"POST",)

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        item = self.api.push_item(read_json(request), caller)
        [result] = await self.api.logic.push_s2c([item])
        if isinstance(result, errors.RequestError):
            raise result
        return _json(200, _outcome(result))


def _outcome(result: PushOutcome | errors.RequestError) -> dict[str, Any]:
    if isinstance(result, errors.RequestError):
        return {"error": result.reason}
    return {"msgid": str(result.msgid), "logid": result.logid, "online": result.online}


class PushBatch(Endpoint):
    methods = (b"POST",)

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        f = Fields(read_json(request), BATCH_FIELDS)
        messages = f.required("messages")
        if not isinstance(messages, list):
            raise errors.BadRequest("messages: expected an array of push bodies")
        limit = self.api.limits.push_batch_max
        if len(messages) > limit:
            raise errors.BadRequest(f"messages: at most {limit} per batch, got {len(messages)}")
        results: list[dict[str, Any] | None] = []
        items: list[PushItem] = []
        for data in messages:
            try:
                items.append(self.api.push_item(data, caller))
            except errors.RequestError as e:
                results.append({"error": e.reason})
            else:
                results.append(None)
        outcomes: Sequence[PushOutcome | errors.RequestError] = (
            await self.api.logic.push_s2c(items) if items else []
        )
        pending = iter(outcomes)
        return _json(200, {"results": [r if r is not None else _outcome(next(pending))
                                       for r in results]})


class Sessions(Endpoint):
    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        values = (request.args or {}).get(b"uid", [])
        if len(values) != 1:
            raise errors.BadRequest("uid: exactly one uid query parameter is required")
        uid = parse_uid(values[0].decode("ascii", "replace"), "uid")
        records = await self.api.logic.sessions_of(uid, caller.appcodes)
        return _json(200, {"sessions": [
            {"appcode": r.appcode, "node": r.node_id, "since_ms": r.since_ms} for r in records
        ]})


class Kickout(Endpoint):
    methods = (b"POST",)

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        f = Fields(read_json(request), KICKOUT_FIELDS)
        uid = f.uid("uid")
        appcode = f.u32("appcode")
        self.api.target(caller, appcode, "appcode")
        kicked = await self.api.logic.kickout(uid, appcode, KickReason.ADMIN)
        return _json(200, {"kicked": kicked})


class StatsEndpoint(Endpoint):
    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        result = self.api.stats(caller.appcodes)
        if inspect.isawaitable(result):
            result = await result
        return _json(200, result)


class DispatchEndpoint(Endpoint):
    needs_key = False

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        result = self.api.dispatch()
        if inspect.isawaitable(result):
            result = await result
        host, port = result
        return _json(200, {"host": host, "port": port})


class Health(Endpoint):
    needs_key = False

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        if self.api.serving():
            return _json(200, {"status": "serving"})
        return _json(503, {"status": "draining"})


class Metrics(Endpoint):
    needs_key = False

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        if not _client_is_local(request.getClientAddress()):
            raise errors.Forbidden("/metrics is served to loopback clients only")
        return Answer(200, generate_latest(self.api.registry), CONTENT_TYPE_LATEST.encode("ascii"))


def make_resource(api: Api) -> Resource:
    """The resource tree of the API (the root of the site)."""
    root = Node()
    v1 = Node()
    push = Push(api)
    push.putChild(b"batch", PushBatch(api))
    v1.putChild(b"push", push)
    v1.putChild(b"sessions", Sessions(api))
    v1.putChild(b"kickout", Kickout(api))
    v1.putChild(b"stats", StatsEndpoint(api))
    v1.putChild(b"dispatch", DispatchEndpoint(api))
    root.putChild(b"v1", v1)
    root.putChild(b"healthz", Health(api))
    root.putChild(b"metrics", Metrics(api))
    return root


_SAFE_LOG_FIELD = re.compile(rb'[ !#-\[\]-~]*')


def _log_field(value: bytes) -> str:
    """``value`` escaped as twisted.web's access log does (``http._escape``):
    printable ASCII other than ``"`` and ``\\`` is left as it is."""
    if _SAFE_LOG_FIELD.fullmatch(value):
        return value.decode("ascii")
    return str(http._escape(value))


def access_log_line(timestamp: str | None, request: http.Request) -> str:
    """The combined-format access log line of ``request``: the same text as
    :func:`twisted.web.http.combinedLogFormatter`, for less CPU."""
    address = request.getClientAddress()
    host = address.host if isinstance(address, IPv4Address | IPv6Address) else "-"
    referrer = request.getHeader(b"referer") or b"-"
    agent = request.getHeader(b"user-agent") or b"-"
    return (f'"{_log_field(host.encode("ascii"))}" - - {timestamp} '
            f'"{_log_field(request.method)} {_log_field(request.uri)} '
            f'{_log_field(request.clientproto)}" {request.code} {request.sentLength or "-"} '
            f'"{_log_field(referrer)}" "{_log_field(agent)}"')


#: Access log lines are logged together, as one event, at most this often...
ACCESS_LOG_FLUSH_S = 1.0
#: ... or as soon as this many are waiting.
ACCESS_LOG_MAX_LINES = 100

access_log = Logger(namespace="daojia_msg.web.access")


class ApiSite(server.Site):
    """The API's :class:`server.Site`: its access log lines (combined format,
    one per request) are gathered and logged as one event of
    ``{access_log}`` (the lines, newline-separated) every
    :data:`ACCESS_LOG_FLUSH_S` seconds or :data:`ACCESS_LOG_MAX_LINES` lines,
    and when the site stops. One twisted.logger event per request cost about
    as much CPU as the rest of a push request."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._access_lines: list[str] = []
        self._access_flush: Any = None

    def log(self, request: http.Request) -> None:
        if self._logFile is None:  # not started, or stopped: as twisted.web
            return
        lines = self._access_lines
        lines.append(access_log_line(self._logDateTime, request))
        if len(lines) >= ACCESS_LOG_MAX_LINES:
            self.flush_access_log()
        elif self._access_flush is None:
            self._access_flush = self.reactor.callLater(ACCESS_LOG_FLUSH_S,
                                                        self.flush_access_log)

    def flush_access_log(self) -> None:
        """Log the access log lines gathered so far."""
        if self._access_flush is not None:
            if self._access_flush.active():
                self._access_flush.cancel()
            self._access_flush = None
        lines, self._access_lines = self._access_lines, []
        if lines:
            access_log.info("{access_log}", access_log="\n".join(lines), requests=len(lines))

    def stopFactory(self) -> None:
        self.flush_access_log()
        super().stopFactory()


def make_site(
    logic: LogicService,
    config: Config,
    *,
    serving: Callable[[], bool],
    dispatch: Dispatch,
    registry: CollectorRegistry,
    reactor: IReactorTime | None = None,
    stats: StatsView | None = None,
) -> server.Site:
    """The HTTP API site, to listen on ``config.listen.http``.

    ``serving()`` is true until the node drains (``/healthz``); ``dispatch()``
    returns the ``(host, port)`` of the public gate to hand out, or an awaitable
    of it (a cluster looks it up), and may raise :class:`errors.Unavailable`;
    ``registry`` is what ``/metrics`` exposes (:func:`daojia_msg.metrics.registry.make_registry`);
    ``reactor`` times idle connections, the 413 linger and the access log's
    clock: pass the node's reactor (None leaves the choice to twisted.web);
    ``stats(appcodes)`` answers ``/v1/stats`` (default: this node's counts; a
    cluster passes the cluster-wide ones, maybe as an awaitable).
    """
    api = Api(logic, config, serving, dispatch, registry, stats)
    site = ApiSite(
        make_resource(api),
        requestFactory=functools.partial(ApiRequest, max_body=config.limits.http_max_body),
        parsePOSTFormSubmission=False,
        timeout=IDLE_TIMEOUT_S,
        reactor=reactor,
    )
    site.displayTracebacks = False
    return site

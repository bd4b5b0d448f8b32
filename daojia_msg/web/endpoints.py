# -*- test-case-name: tests.web.test_push,tests.web.test_endpoints -*-
"""The endpoints of the HTTP API (docs/openapi.yaml): each a coroutine that
turns a request into a JSON :class:`Answer`.

A :class:`~daojia_msg.protocol.errors.RequestError` becomes its status with
``{"error": reason}``; a backend that is down becomes 503 (nothing was
accepted), a push the store did not confirm within ``store.answer_timeout_s``
504 (it may or may not be stored: docs/protocol.md §7.4); anything else is
logged and answered 500 ``{"error": "internal"}``, and the node keeps serving.

Admission control: at most ``limits.http_max_inflight`` pushes (single and
batch requests) are in work at once on the node, fewer while they take longer
than ``limits.admission_target_ms`` to answer
(:class:`~daojia_msg.core.admission.Admission`, as the gate's C2C); past that a
push is answered 429 with ``Retry-After`` at once, before its body is parsed or
its key checked, instead of queueing work that would time out (504) later.

Pushes may carry an idempotency key (the ``Idempotency-Key`` header of a
single push, ``idempotency_key`` in a batch item): one key space per app
whose API key pushes, de-duplicated by the message store like a C2C's
``client_msg_id``.
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from daojia_msg.config import Config
from daojia_msg.core.admission import Admission
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.logic.service import LogicService, PushItem, PushOutcome
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import KickReason
from daojia_msg.web.keys import Caller, Keys, target_app
from daojia_msg.web.parsing import (
    BATCH_FIELDS,
    ITEM_FIELDS,
    KICKOUT_FIELDS,
    MAX_U32,
    MAX_UID,
    PUSH_FIELDS,
    Fields,
    content_of,
    dumps,
    escalate_after_s,
    header_idempotency_key,
    idempotency_key,
    parse_uid,
    read_json,
)

_JSON = b"application/json"

Dispatch = Callable[[], tuple[str, int] | Awaitable[tuple[str, int]]]
StatsView = Callable[[frozenset[int]], "dict[str, Any] | Awaitable[dict[str, Any]]"]
#: ``GET /v1/nodes``'s list and ``GET /v1/trace/{logid}``'s answer (daojia_msg.web.operations).
NodesView = Callable[[], "list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]"]
TraceView = Callable[[str], "dict[str, Any] | Awaitable[dict[str, Any]]"]

log = Logger()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: bytes = _JSON


def json_answer(status: int, obj: object) -> Answer:
    return Answer(status, dumps(obj))


def openapi_document() -> bytes:
    """docs/openapi.yaml as JSON, from the copy shipped as package data."""
    return resources.files("daojia_msg.web").joinpath("openapi.json").read_bytes()


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


#: The answer to a push past ``limits.http_max_inflight``, and its Retry-After (s).
OVER_CAPACITY = json_answer(errors.RateLimited.http_status,
                            {"error": "node over capacity: retry after a backoff"})
RETRY_AFTER_S = b"1"


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
        nodes: NodesView | None = None,
        trace: TraceView | None = None,
    ) -> None:
        self.logic = logic
        self.config = config
        self.limits = config.limits
        self.keys = Keys(config.apps.values())
        self.serving = serving
        self.dispatch = dispatch
        self.registry = registry
        self.stats: StatsView = stats or logic.stats.snapshot
        self.nodes = nodes
        self.trace = trace
        #: The pushes in work, bounded (429 past the bound in force).
        self.admission = Admission(self.limits.http_max_inflight,
                                   self.limits.admission_target_ms / 1000, logic.clock.seconds)

    def push_item(self, data: object, caller: Caller, fields: frozenset[str] = PUSH_FIELDS,
                  key: str = "") -> PushItem:
        """A push body (``fields``: those it may have; :data:`ITEM_FIELDS` for a
        batch item, whose ``idempotency_key`` is then its key), checked; ``key``:
        the idempotency key given beside it (a single push's header)."""
        # The common case in one pass: a JSON object of known fields, integer
        # uid/appcode/msgtype in range, text content within the limit, an app
        # of the caller's user system, no key in the body. Anything else
        # (string uids, base64, a key, every error) takes the field-by-field
        # path, which gives the errors.
        if (type(data) is dict and data.keys() <= fields
                and data.get("idempotency_key") is None and data.get("escalate_after_s") is None):
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
                        return PushItem(to_uid, to_appcode, msgtype, content, logid or "", key)
        return self._push_item_checked(data, caller, fields, key)

    def _push_item_checked(self, data: object, caller: Caller,
                           fields: frozenset[str] = PUSH_FIELDS, key: str = "") -> PushItem:
        f = Fields(data, fields)
        to_uid = f.uid("to_uid")
        to_appcode = f.u32("to_appcode")
        msgtype = f.u32("msgtype")
        content = content_of(f, self.limits.max_content)
        logid = f.text("logid")
        key = idempotency_key(f.get("idempotency_key"), "idempotency_key") or key
        app = target_app(self.config, caller, to_appcode, "to_appcode")
        return PushItem(to_uid, to_appcode, msgtype, content, logid, key,
                        escalate_after_s(f, app))

    async def answer(self, endpoint: Endpoint, method: bytes, request: server.Request) -> None:
        """Run ``endpoint`` for ``request`` and write its answer, whatever
        happens; a push past ``limits.http_max_inflight`` is answered 429 at once."""
        if not endpoint.admitted:
            await self._answer(endpoint, method, request)
            return
        admission = self.admission
        if not admission.enter():
            request.setHeader(b"retry-after", RETRY_AFTER_S)
            write(request, OVER_CAPACITY)
            return
        started = admission.now()
        try:
            await self._answer(endpoint, method, request)
        finally:
            admission.leave(started)

    async def _answer(self, endpoint: Endpoint, method: bytes, request: server.Request) -> None:
        try:
            caller = self.keys.authenticate(request) if endpoint.needs_key else None
            answer = await endpoint.handle(method, request, caller)
        except errors.RequestError as e:
            answer = json_answer(e.http_status, {"error": e.reason})
        except StoreUnavailable as e:  # a backend (Redis, the database) is down: 503
            log.warn("{method} {path}: {error}", method=request.method.decode("latin-1"),
                     path=request.path.decode("latin-1"), error=str(e))
            unavailable = errors.Unavailable("a backend is unavailable")
            answer = json_answer(unavailable.http_status, {"error": unavailable.reason})
        except Exception:
            log.failure("{method} {path} failed", method=request.method.decode("latin-1"),
                        path=request.path.decode("latin-1"))
            answer = json_answer(500, {"error": "internal"})
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
        return _render_now(request, json_answer(404, {"error": "not found"}))


def _render_now(request: server.Request, answer: Answer) -> bytes:
    request.setResponseCode(answer.status)
    request.setHeader(b"content-type", answer.content_type)
    request.setHeader(b"cache-control", b"no-store")
    return answer.body


NOT_FOUND = Node()


class Endpoint(Node):
    """A JSON endpoint: :meth:`handle` runs as a coroutine for each allowed
    method (``HEAD`` wherever ``GET`` is; any other is a 405)."""

    methods: tuple[bytes, ...] = (b"GET",)
    needs_key = True
    #: Bounded by ``limits.http_max_inflight`` (the pushes).
    admitted = False

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> bytes | int:
        method = request.method
        if method == b"HEAD" and b"GET" in self.methods:
            method = b"GET"
        if method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _render_now(request, json_answer(405, {"error": "method not allowed"}))
        d = Deferred.fromCoroutine(self.api.answer(self, method, request))
        d.addErrback(lambda f: log.failure("answering {path} failed", f, path=request.path))
        return server.NOT_DONE_YET

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        raise NotImplementedError


class Push(Endpoint):
    """One push; a repeat of its ``Idempotency-Key`` is answered with the first
    push's ids and ``"online": false`` (not stored or pushed again)."""

    methods = (b"POST",)
    admitted = True

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        started = self.api.logic.clock.seconds()  # the request was read: it counts from here
        key = header_idempotency_key(request)
        item = self.api.push_item(read_json(request), caller, key=key)
        [result] = await self.api.logic.push_s2c([item], caller.app.appcode, started)
        if isinstance(result, errors.RequestError):
            raise result
        return json_answer(200, _outcome(result))


def _outcome(result: PushOutcome | errors.RequestError) -> dict[str, Any]:
    if isinstance(result, errors.RequestError):
        return {"error": result.reason, "code": int(result.code)}
    return {"msgid": str(result.msgid), "logid": result.logid, "online": result.online}


class PushBatch(Endpoint):
    """Each item is checked alone: a refused item (a 403's reason included)
    gets ``{"error", "code"}`` in its place while the others go on; so do the
    items a store failure (UNAVAILABLE) or stall (TIMEOUT) hit."""

    methods = (b"POST",)
    admitted = True

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        started = self.api.logic.clock.seconds()
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
                items.append(self.api.push_item(data, caller, ITEM_FIELDS))
            except errors.RequestError as e:
                results.append(_outcome(e))
            else:
                results.append(None)
        outcomes: Sequence[PushOutcome | errors.RequestError] = (
            await self.api.logic.push_s2c(items, caller.app.appcode, started) if items else []
        )
        pending = iter(outcomes)
        return json_answer(200, {"results": [r if r is not None else _outcome(next(pending))
                                             for r in results]})


class Sessions(Endpoint):
    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        values = (request.args or {}).get(b"uid", [])
        if len(values) != 1:
            raise errors.BadRequest("uid: exactly one uid query parameter is required")
        uid = parse_uid(values[0].decode("ascii", "replace"), "uid")
        records = await self.api.logic.sessions_of(uid, caller.appcodes)
        return json_answer(200, {"sessions": [
            {"appcode": r.appcode, "node": r.node_id, "since_ms": r.since_ms} for r in records
        ]})


class Kickout(Endpoint):
    methods = (b"POST",)

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        f = Fields(read_json(request), KICKOUT_FIELDS)
        uid = f.uid("uid")
        appcode = f.u32("appcode")
        target_app(self.api.config, caller, appcode, "appcode")
        kicked = await self.api.logic.kickout(uid, appcode, KickReason.ADMIN)
        return json_answer(200, {"kicked": kicked})


class StatsEndpoint(Endpoint):
    """The delivery statistics of the key's user system only: one tenant
    never sees another's traffic (the node-wide figures are on /metrics);
    and the message store's size and last purge (docs/operations.md §13)."""

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        result = self.api.stats(caller.appcodes)
        if inspect.isawaitable(result):
            result = await result
        # The message store's figures: the whole platform's (no tenant's traffic).
        return json_answer(200, {**result, "store": await self.api.logic.lifecycle.snapshot()})


class DispatchEndpoint(Endpoint):
    needs_key = False

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        result = self.api.dispatch()
        if inspect.isawaitable(result):
            result = await result
        host, port = result
        return json_answer(200, {"host": host, "port": port})


class Health(Endpoint):
    needs_key = False

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        if self.api.serving():
            return json_answer(200, {"status": "serving"})
        return json_answer(503, {"status": "draining"})


class Metrics(Endpoint):
    """Prometheus text, to loopback clients only (the TCP peer address is
    trusted, never ``X-Forwarded-For``; UNIX sockets count as local)."""

    needs_key = False

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        if not _client_is_local(request.getClientAddress()):
            raise errors.Forbidden("/metrics is served to loopback clients only")
        return Answer(200, generate_latest(self.api.registry), CONTENT_TYPE_LATEST.encode("ascii"))


class OpenApi(Endpoint):
    """This API's OpenAPI document (docs/openapi.yaml, as JSON)."""

    needs_key = False

    def __init__(self, api: Api, document: bytes) -> None:
        super().__init__(api)
        self.document = document

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        return Answer(200, self.document)

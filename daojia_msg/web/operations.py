# -*- test-case-name: tests.web.test_operations -*-
"""The operations endpoints of the HTTP API (docs/openapi.yaml): ``GET
/v1/nodes`` and ``GET /v1/trace/{logid}``, which the dashboard (``/ops/``)
reads.

They answer what the node hands the site as plain callables (the web layer
knows nothing of the cluster): ``nodes()`` gives the node list, ``trace(logid)``
the events gathered from every node, each maybe as an awaitable
(:data:`~daojia_msg.web.endpoints.NodesView`, :data:`~daojia_msg.web.endpoints.TraceView`;
without them the endpoints answer 503).

**Scope of a trace.** A logid is the caller's choice, so two user systems may
use the same one, and a message may cross user systems (a C2C to an app of
another one). A key sees only the events of its own user system:

- an event with an ``appcode`` is kept when that appcode is in the key's user
  system (the sender's side of a message on the way in, the recipient's
  side from its push on);
- an event without an appcode is kept only when it has a ``msgid`` and every
  event of that message that has an appcode is in the key's user system (at
  least one): the message is entirely the key's;
- an event with neither is dropped: nothing says whose it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from twisted.web import server

from daojia_msg.protocol import errors
from daojia_msg.web.endpoints import Answer, Api, Endpoint, Node, json_answer
from daojia_msg.web.keys import Caller

#: The longest logid ``/v1/trace/{logid}`` looks up.
MAX_LOGID = 128


def check_logid(segment: bytes) -> str:
    """The logid of a (percent-decoded) path segment: 1 to :data:`MAX_LOGID`
    printable ASCII characters, else 400."""
    if not 0 < len(segment) <= MAX_LOGID or not all(0x20 <= b <= 0x7E for b in segment):
        raise errors.BadRequest(f"logid: expected 1 to {MAX_LOGID} printable ASCII characters")
    return segment.decode("ascii")


def in_scope(events: Iterable[dict[str, Any]], appcodes: frozenset[int]) -> list[dict[str, Any]]:
    """The events a key of user system ``appcodes`` may see (the module's rules), in order."""
    events = list(events)
    whole: dict[str, bool] = {}  # msgid -> every event with an appcode is in scope
    for event in events:
        msgid, appcode = event.get("msgid"), event.get("appcode")
        if msgid is not None and appcode is not None:
            whole[msgid] = whole.get(msgid, True) and appcode in appcodes
    kept = []
    for event in events:
        appcode = event.get("appcode")
        if appcode is not None:
            if appcode in appcodes:
                kept.append(event)
        elif whole.get(event.get("msgid"), False):  # type: ignore[arg-type]
            kept.append(event)
    return kept


async def _resolve(result: Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result


class NodesEndpoint(Endpoint):
    """Every node of the cluster with its load (not scoped: node figures)."""

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        if self.api.nodes is None:
            raise errors.Unavailable("this node does not list the cluster's nodes")
        return json_answer(200, {"nodes": await _resolve(self.api.nodes())})


class TraceEndpoint(Endpoint):
    """One logid's events, from every node, scoped to the key's user system."""

    def __init__(self, api: Api, segment: bytes) -> None:
        super().__init__(api)
        self.segment = segment

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        logid = check_logid(self.segment)
        if self.api.trace is None:
            raise errors.Unavailable("this node does not gather traces")
        found = await _resolve(self.api.trace(logid))
        return json_answer(200, {**found, "events": in_scope(found["events"], caller.appcodes)})


class TraceRoot(Node):
    """``/v1/trace/``: each child segment is a logid (``/v1/trace`` alone is a 404).

    ``param`` and ``template`` describe it to the OpenAPI test, which sees
    ``template`` at ``/v1/trace/{logid}``.
    """

    param = "logid"

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api
        self.template = TraceEndpoint(api, b"{logid}")

    def getChild(self, path: bytes, request: Any) -> TraceEndpoint:
        return TraceEndpoint(self.api, path)

# -*- test-case-name: tests.web.test_site -*-
"""The HTTP API site: the resource tree of docs/openapi.yaml, the bounded
request, idle timeouts and the access log.

The access log has one combined-format line per request, but the lines are
logged together: one ``daojia_msg.web.access`` event per
:data:`ACCESS_LOG_FLUSH_S` (or per :data:`ACCESS_LOG_MAX_LINES` lines, and at
stop) whose text is the lines. API keys never appear in it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.registry import CollectorRegistry
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from daojia_msg import webui
from daojia_msg.config import Config
from daojia_msg.logic.service import LogicService
from daojia_msg.web.endpoints import (
    Api,
    Dispatch,
    DispatchEndpoint,
    Health,
    Kickout,
    Metrics,
    Node,
    NodesView,
    OpenApi,
    Push,
    PushBatch,
    Sessions,
    StatsEndpoint,
    StatsView,
    TraceView,
    openapi_document,
)
from daojia_msg.web.httpmetrics import HttpMetrics
from daojia_msg.web.nearby import Nearby
from daojia_msg.web.offers import OffersEndpoint
from daojia_msg.web.operations import NodesEndpoint, TraceRoot
from daojia_msg.web.request import ApiRequest
from daojia_msg.web.static import OpsPage

#: Idle seconds before an HTTP connection is closed (none while a request runs).
IDLE_TIMEOUT_S = 60.0

#: Access log lines are logged together, as one event, at most this often...
ACCESS_LOG_FLUSH_S = 1.0
#: ... or as soon as this many are waiting.
ACCESS_LOG_MAX_LINES = 100

access_log = Logger(namespace="daojia_msg.web.access")


def make_resource(api: Api, document: bytes, dashboard: str | None = None) -> Resource:
    """The resource tree of the API (the root of the site); ``document`` is
    what ``GET /v1/openapi.json`` serves; the files of the directory
    ``dashboard`` (the operations dashboard) are served at ``/ops/`` (None:
    no ``/ops``)."""
    root = Node()
    v1 = Node()
    push = Push(api)
    push.putChild(b"batch", PushBatch(api))
    v1.putChild(b"push", push)
    v1.putChild(b"sessions", Sessions(api))
    v1.putChild(b"kickout", Kickout(api))
    v1.putChild(b"stats", StatsEndpoint(api))
    v1.putChild(b"dispatch", DispatchEndpoint(api))
    v1.putChild(b"openapi.json", OpenApi(api, document))
    v1.putChild(b"nodes", NodesEndpoint(api))
    v1.putChild(b"trace", TraceRoot(api))
    v1.putChild(b"nearby", Nearby(api))
    v1.putChild(b"offers", OffersEndpoint(api))
    root.putChild(b"v1", v1)
    root.putChild(b"healthz", Health(api))
    root.putChild(b"metrics", Metrics(api))
    if dashboard is not None:
        root.putChild(b"ops", OpsPage(dashboard))
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


class ApiSite(server.Site):
    """The API's :class:`server.Site`: its access log lines are gathered and
    logged as one event of ``{access_log}`` (the lines, newline-separated),
    as an event per request is costly."""

    def __init__(self, *args: Any, metrics: HttpMetrics | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._access_lines: list[str] = []
        self._access_flush: Any = None
        self.metrics = metrics

    def log(self, request: http.Request) -> None:
        if self.metrics is not None:
            received = getattr(request, "received_at", None)
            self.metrics.answered(request.path, request.code,
                                  None if received is None else time.perf_counter() - received)
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
    nodes: NodesView | None = None,
    trace: TraceView | None = None,
    dashboard: str | None = None,
    http_metrics: HttpMetrics | None = None,
) -> server.Site:
    """The HTTP API site, to listen on ``config.listen.http``.

    ``serving()`` is true until the node drains (``/healthz``); ``dispatch()``
    returns the ``(host, port)`` of the public gate to hand out, or an awaitable
    of it (a cluster looks it up), and may raise :class:`errors.Unavailable`;
    ``registry`` is what ``/metrics`` exposes (:func:`daojia_msg.metrics.registry.make_registry`);
    ``reactor`` times idle connections, the 413 linger and the access log's
    clock: pass the node's reactor (None leaves the choice to twisted.web);
    ``stats(appcodes)`` answers ``/v1/stats`` (default: this node's counts; a
    cluster passes the cluster-wide ones, maybe as an awaitable); ``nodes()``
    and ``trace(logid)`` answer ``/v1/nodes`` and ``/v1/trace/{logid}`` (see
    :mod:`daojia_msg.web.operations`; without them, 503); ``dashboard``: the
    directory whose files are served at ``/ops/`` (default: the built page in
    the package data, :func:`daojia_msg.webui.page_dir`); ``http_metrics``
    counts the requests answered (:mod:`daojia_msg.web.httpmetrics`).
    """
    api = Api(logic, config, serving, dispatch, registry, stats, nodes, trace)
    site = ApiSite(
        make_resource(api, openapi_document(),
                      webui.page_dir("ops") if dashboard is None else dashboard),
        requestFactory=functools.partial(ApiRequest, max_body=config.limits.http_max_body),
        parsePOSTFormSubmission=False,
        timeout=IDLE_TIMEOUT_S,
        reactor=reactor,
        metrics=http_metrics,
    )
    site.displayTracebacks = False
    return site

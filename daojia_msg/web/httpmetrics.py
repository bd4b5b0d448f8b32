# -*- test-case-name: tests.web.test_httpmetrics -*-
"""The HTTP API's requests on ``/metrics``.

- ``msgplatform_http_requests_total{path,status}``: requests answered, by the
  path's template (``/v1/trace/{logid}``, never the logid itself: a bounded
  set; any path the API does not serve is ``other``) and status code;
- ``msgplatform_http_request_seconds{path}``: from the whole request read to
  its answer written, a histogram.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.registry import CollectorRegistry

#: The API's paths, as they are counted.
PATHS = frozenset({
    "/v1/push", "/v1/push/batch", "/v1/sessions", "/v1/kickout", "/v1/stats",
    "/v1/dispatch", "/v1/openapi.json", "/v1/nodes", "/healthz", "/metrics",
    "/v1/nearby", "/v1/offers",
})
#: Paths counted by their first segments: what follows is a value or a file.
PREFIXES = (("/v1/trace/", "/v1/trace/{logid}"), ("/v1/offers/", "/v1/offers/{offer_id}"),
            ("/ops/", "/ops/"))
#: Upper bounds of the latency buckets, seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def path_template(path: bytes | None) -> str:
    """How ``path`` (without its query; None: a request that never had one)
    is counted."""
    text = (path or b"").decode("ascii", "replace")
    if text in PATHS:
        return text
    for prefix, template in PREFIXES:
        if text.startswith(prefix) or text == prefix.rstrip("/"):
            return template
    return "other"


class HttpMetrics:
    """The families above, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("msgplatform_http_requests",
                                "HTTP API requests answered, by path template and status.",
                                labelnames=("path", "status"), registry=registry)
        self.seconds = Histogram("msgplatform_http_request_seconds",
                                 "HTTP API requests: from the request read to its answer.",
                                 labelnames=("path",), buckets=BUCKETS, registry=registry)

        #: (template, status) -> its counter and histogram children: ``labels()``
        #: checks and locks on every call, and this runs for every request. Both
        #: keys are bounded (the templates above, three-digit statuses).
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def answered(self, path: bytes | None, status: int, seconds: float | None) -> None:
        template = path_template(path)
        children = self._children.get((template, status))
        if children is None:
            children = self._children[(template, status)] = (
                self.requests.labels(template, str(status)), self.seconds.labels(template))
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

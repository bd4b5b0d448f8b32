"""The HTTP API's requests on /metrics: by path template and status, on a real node."""

from __future__ import annotations

import treq
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from daojia_msg.web.httpmetrics import HttpMetrics, path_template
from tests.nodes import NodeTestCase, R


class TemplateTests(SynchronousTestCase):
    def test_templates(self) -> None:
        self.assertEqual(path_template(b"/v1/push"), "/v1/push")
        self.assertEqual(path_template(b"/v1/push/batch"), "/v1/push/batch")
        self.assertEqual(path_template(b"/v1/trace/order-7"), "/v1/trace/{logid}")
        self.assertEqual(path_template(b"/ops/assets/index-abc.js"), "/ops/")
        self.assertEqual(path_template(b"/ops"), "/ops/")
        self.assertEqual(path_template(b"/v1/trace"), "/v1/trace/{logid}")  # its 404 too
        self.assertEqual(path_template(b"/v1/nearby"), "/v1/nearby")
        self.assertEqual(path_template(b"/v1/offers"), "/v1/offers")
        self.assertEqual(path_template(b"/v1/offers/913784491212804098"), "/v1/offers/{offer_id}")
        for unknown in (b"/v1/push/42", b"/wp-admin", b"", None, b"/\xff"):
            self.assertEqual(path_template(unknown), "other", unknown)


class CountTests(SynchronousTestCase):
    def test_counted_by_template_and_status_however_many_paths(self) -> None:
        """The labelled children are kept per template and status: paths a
        client makes up add none."""
        registry = CollectorRegistry()
        metrics = HttpMetrics(registry)
        for i in range(500):
            metrics.answered(f"/scan/{i}".encode(), 404, 0.002)
        metrics.answered(b"/v1/push", 200, None)
        metrics.answered(b"/v1/push", 200, 0.5)
        self.assertEqual(len(metrics._children), 2)
        value = registry.get_sample_value
        self.assertEqual(value("msgplatform_http_requests_total",
                               {"path": "other", "status": "404"}), 500)
        self.assertEqual(value("msgplatform_http_requests_total",
                               {"path": "/v1/push", "status": "200"}), 2)
        self.assertEqual(value("msgplatform_http_request_seconds_count", {"path": "/v1/push"}), 1)


class NodeTests(NodeTestCase):
    async def test_requests_by_path_and_status(self) -> None:
        await self.start_node()
        await self.http("POST", "/v1/push", {"to_uid": 2, "to_appcode": 1001, "msgtype": 5,
                                             "content": "hi"})
        await self.http("POST", "/v1/push", {"to_uid": 2}, key="wrong-key")
        await self.http("GET", "/v1/trace/some-logid")
        await self.http("GET", "/v1/trace/other-logid")
        await self.http("GET", "/no/such/path/123")
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(await response.text())
                   for s in family.samples}

        def requests(path: str, status: str) -> float:
            return samples[("msgplatform_http_requests_total",
                            (("path", path), ("status", status)))]

        self.assertEqual(requests("/v1/push", "200"), 1)
        self.assertEqual(requests("/v1/push", "401"), 1)
        self.assertEqual(requests("/v1/trace/{logid}", "200"), 2)
        self.assertEqual(requests("other", "404"), 1)
        self.assertFalse([key for key in samples if "some-logid" in str(key)])
        self.assertEqual(samples[("msgplatform_http_request_seconds_count",
                                  (("path", "/v1/push"),))], 2)

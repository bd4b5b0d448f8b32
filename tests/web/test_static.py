"""Tests for daojia_msg.web.static: the operations dashboard's files at /ops/ on
the HTTP API site (no key, security headers, caching, no escape)."""

from __future__ import annotations

import os

from daojia_msg import webui
from daojia_msg.web.site import make_site
from daojia_msg.web.static import OPS_CSP
from tests.web.helpers import ApiTestCase, Response

INDEX = b'<!doctype html><script type="module" src="/ops/assets/index-abc123.js"></script>'
SCRIPT = b"console.log(1)"


class OpsPageTests(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.page = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.page, "assets"))
        for name, data in [("index.html", INDEX), ("assets/index-abc123.js", SCRIPT),
                           ("assets/index-abc123.css", b"body{}"), ("notes.bin", b"\x00")]:
            with open(os.path.join(self.page, name), "wb") as f:
                f.write(data)
        with open(os.path.join(os.path.dirname(self.page), "secret.txt"), "wb") as f:
            f.write(b"not to be served")
        self.serve(self.page)

    def serve(self, directory: str) -> None:
        self.site = make_site(self.logic, self.config, serving=lambda: True,
                              dispatch=lambda: ("g", 1), registry=self.registry,
                              reactor=self.node.clock, dashboard=directory)

    def assertSecured(self, response: Response) -> None:
        self.assertEqual(response.headers["content-security-policy"], OPS_CSP.decode())
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        self.assertEqual(response.headers["referrer-policy"], "no-referrer")
        self.assertEqual(response.headers["x-frame-options"], "DENY")

    def test_index_without_a_key(self) -> None:
        response = self.request("GET", "/ops/")
        self.assertEqual((response.status, response.body), (200, INDEX))
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(response.headers["cache-control"], "no-cache")
        self.assertSecured(response)
        self.assertEqual(self.request("GET", "/ops/?key=x").body, INDEX)

    def test_policy(self) -> None:
        """The policy the dashboard asks for: this origin only, never framed."""
        policy = OPS_CSP.decode()
        for directive in ["default-src 'self'", "script-src 'self'", "connect-src 'self'",
                          "img-src 'self' data:", "object-src 'none'",
                          "frame-ancestors 'none'"]:
            self.assertIn(directive + ";", policy + ";")
        self.assertNotIn("unsafe", policy)

    def test_hashed_assets_are_immutable(self) -> None:
        script = self.request("GET", "/ops/assets/index-abc123.js")
        self.assertEqual((script.status, script.body), (200, SCRIPT))
        self.assertEqual(script.headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(script.headers["cache-control"], "public, max-age=31536000, immutable")
        self.assertSecured(script)
        css = self.request("GET", "/ops/assets/index-abc123.css")
        self.assertEqual(css.headers["content-type"], "text/css; charset=utf-8")
        other = self.request("GET", "/ops/notes.bin")
        self.assertEqual(other.headers["content-type"], "application/octet-stream")
        self.assertEqual(other.headers["cache-control"], "no-cache")

    def test_redirect(self) -> None:
        for path, location in [("/ops", "/ops/"), ("/ops?a=1", "/ops/?a=1")]:
            with self.subTest(path=path):
                response = self.request("GET", path)
                self.assertEqual((response.status, response.headers["location"]),
                                 (301, location))
                self.assertSecured(response)

    def test_no_escape_no_listing(self) -> None:
        for path in ["/ops/assets/", "/ops/assets", "/ops/../secret.txt", "/ops/%2E%2E/secret.txt",
                     "/ops/assets/..%2F..%2Fsecret.txt", "/ops/nope.js", "/ops/%FF",
                     "/ops/index.html/x", "/ops//index.html"]:
            with self.subTest(path=path):
                response = self.request("GET", path)
                self.assertError(response, 404)
                self.assertSecured(response)

    def test_get_and_head_only(self) -> None:
        head = self.request("HEAD", "/ops/")
        self.assertEqual((head.status, head.body), (200, b""))
        for method in ("POST", "PUT", "DELETE"):
            with self.subTest(method=method):
                response = self.request(method, "/ops/", b"{}")
                self.assertError(response, 405)
                self.assertEqual(response.headers["allow"], "GET, HEAD")
                self.assertSecured(response)

    def test_revalidation(self) -> None:
        etag = self.request("GET", "/ops/").headers["etag"]
        again = self.request("GET", "/ops/", headers={"If-None-Match": etag})
        self.assertEqual((again.status, again.body), (304, b""))

    def test_not_built(self) -> None:
        self.serve(os.path.join(self.page, "missing"))
        self.assertError(self.request("GET", "/ops/"), 404)

    def test_the_package_page_by_default(self) -> None:
        """make_site serves the built page of the package data (when built)."""
        index = os.path.join(webui.page_dir("ops"), "index.html")
        self.build()
        response = self.request("GET", "/ops/")
        if os.path.isfile(index):
            with open(index, "rb") as f:
                self.assertEqual((response.status, response.body), (200, f.read()))
        else:
            self.assertError(response, 404)

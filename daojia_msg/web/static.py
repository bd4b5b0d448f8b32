# -*- test-case-name: tests.web.test_static -*-
"""Built browser pages as static files, and the operations dashboard at ``/ops/``.

:class:`StaticFiles` serves the files of one built page (Vite's output in the
package data, :mod:`daojia_msg.webui`) by path: ``""`` is ``index.html``; no
listing, no directory, no ``..``; anything else is a JSON 404. Files under
``assets/`` have their content's hash in their names, so a new build is new
names: they are cached for a year (``immutable``); everything else
(``index.html``) is ``no-cache`` with an ETag (revalidated on every load), so
a new build is seen at once.

:class:`OpsPage` is the dashboard on the HTTP API listener: the page itself
needs no key (it asks for one and sends it as ``Authorization: Bearer`` on
its own requests to ``/v1/...``); every answer carries :data:`OPS_CSP` (this
origin's scripts, styles, images and requests only, never framed) and
:data:`SECURITY_HEADERS`; ``/ops`` redirects to ``/ops/``; ``GET`` and
``HEAD`` only.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import http
from twisted.web.resource import Resource

from daojia_msg.web.parsing import dumps

#: By extension; anything else is application/octet-stream (with nosniff).
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".jpg": b"image/jpeg",
    ".webp": b"image/webp",
    ".ico": b"image/x-icon",
    ".json": b"application/json",
    ".map": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
    ".woff": b"font/woff",
    ".woff2": b"font/woff2",
}
OCTET_STREAM = b"application/octet-stream"

#: Vite names the files under assets/ by their content's hash: a new build is
#: new names, so they may be kept; everything else (index.html) is revalidated.
IMMUTABLE = b"public, max-age=31536000, immutable"
NO_CACHE = b"no-cache"

#: Besides a page's Content-Security-Policy.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

#: The dashboard's policy: its own scripts, styles and requests (the API, same
#: origin), its own and inlined images (uPlot draws on a canvas), never framed.
OPS_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           b"img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
           b"frame-ancestors 'none'")


def json_error(request: Any, status: int, reason: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return dumps({"error": reason})


class StaticFiles(Resource):
    """The files under ``directory``, by path: ``""`` is ``index.html``; no
    listing, no directory, no ``..``: anything else is a JSON 404."""

    isLeaf = True

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def _path(self, segments: list[bytes]) -> str | None:
        if segments == [b""]:
            return os.path.join(self.directory, "index.html")
        names = []
        for segment in segments:
            try:
                name = segment.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
                return None
            names.append(name)
        return os.path.join(self.directory, *names) if names else None

    def render_GET(self, request: Any) -> bytes:
        path = self._path(request.postpath)
        try:
            if path is None or not os.path.isfile(path):
                raise FileNotFoundError(path)
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                data = f.read()
        except OSError:
            return json_error(request, 404, "not found")
        content_type = CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), OCTET_STREAM)
        request.setHeader(b"content-type", content_type)
        assets = len(request.postpath) > 1 and request.postpath[0] == b"assets"
        request.setHeader(b"cache-control", IMMUTABLE if assets else NO_CACHE)
        if request.setETag(b'"%x-%x"' % (stat.st_size, stat.st_mtime_ns)) is http.CACHED:
            return b""
        return data


class OpsPage(Resource):
    """``/ops/``: the dashboard's files in ``directory``, with :data:`OPS_CSP`
    and :data:`SECURITY_HEADERS` on every answer."""

    isLeaf = True

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.files = StaticFiles(directory)

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-security-policy", OPS_CSP)
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return json_error(request, 405, "method not allowed")
        if not request.postpath:  # /ops: the page's relative paths need /ops/
            _, sep, query = request.uri.partition(b"?")
            request.setResponseCode(http.MOVED_PERMANENTLY)
            request.setHeader(b"location", b"/ops/" + sep + query)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"the dashboard is at /ops/\n"
        return self.files.render_GET(request)

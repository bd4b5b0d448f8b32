# -*- test-case-name: tests.test_webedge -*-
"""The browser pages, built from ``frontend/`` by Vite and shipped as package
data: ``console/`` (the customer-service console, served by the WebSocket
listener at ``/console/``) and ``ops/`` (served by the HTTP API at ``/ops/``).
"""

from __future__ import annotations

import os

#: The pages whose built files this package holds.
PAGES = ("console", "ops")


def page_dir(page: str) -> str:
    """The directory of ``page``'s built files (``index.html`` and ``assets/``);
    it may be missing or empty in a checkout where the page was never built."""
    if page not in PAGES:
        raise ValueError(f"no page {page!r}: the pages are {', '.join(PAGES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), page)

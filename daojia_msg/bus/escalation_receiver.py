# -*- test-case-name: tests.bus.test_escalation_receiver -*-
"""The app server's side of offline escalation: a ``twisted.web`` resource
that receives a node's escalation POSTs (docs/operations.md §14), checks
their signature and hands over :class:`~daojia_msg.core.escalation.Escalated`
records. The node's side is :mod:`daojia_msg.bus.escalation`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from daojia_msg.bus.webhook_consumer import answer, handed_over
from daojia_msg.core.escalation import SIGNATURE_HEADER, Escalated, verify

_FIELDS = {"msgid": str, "logid": str, "to_uid": int, "to_appcode": int, "msgtype": int,
           "content_b64": str}


class BadEscalation(ValueError):
    """A body that is not an escalation's JSON."""


def parse_escalation(body: bytes) -> Escalated:
    """The escalation in ``body`` (its fields checked); :class:`BadEscalation` if none."""
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadEscalation("not JSON") from None
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        raise BadEscalation(f"expected the fields {sorted(_FIELDS)}")
    for name, kind in _FIELDS.items():
        if type(data[name]) is not kind:
            raise BadEscalation(f"{name}: expected a {kind.__name__}")
    try:
        content = base64.b64decode(data["content_b64"], validate=True)
        msgid = int(data["msgid"])
    except (binascii.Error, ValueError):
        raise BadEscalation("msgid or content_b64 malformed") from None
    return Escalated(msgid, data["logid"], data["to_uid"], data["to_appcode"], data["msgtype"],
                     content)


class EscalationReceiver(Resource):
    """Receives escalation POSTs for the apps of ``secrets`` (appcode ->
    the app's secret) and calls ``on_escalation(Escalated)``.

    Answers 204 once ``on_escalation`` returned (or, when it returns a
    Deferred, once that fired; 500 when it raised or failed, so the node
    retries); 401 when the signature is missing or wrong, or names an app not
    in ``secrets``; 400 for a body that is not an escalation; 413 beyond
    ``max_body`` bytes; 415 for another Content-Type. A node may POST a
    message twice (its node died after the 2xx): de-duplicate by ``msgid``.
    Use::

        site = Site(EscalationReceiver({2002: secret}, handle))
        endpoints.serverFromString(reactor, "tcp:8081").listen(site)
    """

    isLeaf = True
    log = Logger()

    def __init__(self, secrets: Mapping[int, str], on_escalation: Callable[[Escalated], object],
                 *, max_body: int = 1 << 20) -> None:
        super().__init__()
        self.secrets = dict(secrets)
        self.on_escalation = on_escalation
        self.max_body = max_body

    def render_POST(self, request: Request) -> bytes | int:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return answer(request, 415, b"expected Content-Type: application/json")
        assert request.content is not None
        body = request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            return answer(request, 413, b"body too large")
        try:
            escalated = parse_escalation(body)
        except BadEscalation as e:
            return answer(request, 400, str(e).encode())
        # The appcode only picks the key: a forged one has no valid signature.
        secret = self.secrets.get(escalated.to_appcode)
        given = request.getHeader(SIGNATURE_HEADER.encode()) or b""
        if secret is None or not verify(secret, body, given):
            return answer(request, 401, b"bad signature")
        def failed(failure: Failure | None = None) -> None:
            self.log.failure("on_escalation failed on {msgid}", failure, msgid=escalated.msgid,
                             logid=escalated.logid)

        return handed_over(request, lambda: self.on_escalation(escalated), failed)

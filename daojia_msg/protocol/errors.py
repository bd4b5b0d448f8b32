# -*- test-case-name: tests.protocol.test_errors -*-
"""The request error tree, and the one table that maps it to wire and HTTP codes.

Logic raises these; the gate turns them into a response with the code
(docs/protocol.md §4, Result codes), the HTTP API into a status
(docs/openapi.yaml), so both answer a refusal the same way. Anything else that
escapes a handler becomes INTERNAL (with ``log.failure``) and the node keeps
serving.
"""

from __future__ import annotations

from daojia_msg.protocol.codes import Code


class RequestError(Exception):
    """A request that gets a non-OK result code; ``str(e)`` is the reason sent."""

    code: Code = Code.INTERNAL
    http_status: int = 500

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or self.code.name.lower().replace("_", " "))

    @property
    def reason(self) -> str:
        return str(self.args[0])


class BadRequest(RequestError):
    code, http_status = Code.BAD_REQUEST, 400


class Unauthorized(RequestError):
    code, http_status = Code.UNAUTHORIZED, 401


class NotLoggedIn(RequestError):
    code, http_status = Code.NOT_LOGGED_IN, 401


class UidMismatch(RequestError):
    code, http_status = Code.UID_MISMATCH, 403


class TooLarge(RequestError):
    code, http_status = Code.TOO_LARGE, 413


class RateLimited(RequestError):
    code, http_status = Code.RATE_LIMITED, 429


class UnknownCmd(RequestError):
    code, http_status = Code.UNKNOWN_CMD, 400


class UnsupportedVersion(RequestError):
    code, http_status = Code.UNSUPPORTED_VERSION, 400


class UnknownAppcode(RequestError):
    # docs/openapi.yaml: an unconfigured to_appcode over HTTP is a 400.
    code, http_status = Code.UNKNOWN_APPCODE, 400


class NoRoute(RequestError):
    code, http_status = Code.NO_ROUTE, 400


class Unavailable(RequestError):
    """A backend is down: nothing was accepted, the caller may retry."""

    code, http_status = Code.UNAVAILABLE, 503


class Timeout(RequestError):
    """The node could not confirm in time (a backend stalled): the message may
    or may not have been stored. A resend with the same ``client_msg_id``
    (HTTP: ``Idempotency-Key``) is answered with the first msgid, never
    stored twice (docs/protocol.md §7.4)."""

    code, http_status = Code.TIMEOUT, 504


class Forbidden(RequestError):
    """HTTP only: an API key acting outside its own user system."""

    code, http_status = Code.UNAUTHORIZED, 403


ERRORS_BY_CODE: dict[Code, type[RequestError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        NotLoggedIn,
        UidMismatch,
        TooLarge,
        RateLimited,
        UnknownCmd,
        UnsupportedVersion,
        UnknownAppcode,
        NoRoute,
        Unavailable,
        Timeout,
    )
}

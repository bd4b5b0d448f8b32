"""Tests for :mod:`daojia_msg.protocol.errors`: the one table of error -> wire code -> HTTP status."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.errors import ERRORS_BY_CODE, RequestError

#: code -> (class name, HTTP status, default reason)
TABLE = {
    Code.BAD_REQUEST: ("BadRequest", 400, "bad request"),
    Code.UNAUTHORIZED: ("Unauthorized", 401, "unauthorized"),
    Code.NOT_LOGGED_IN: ("NotLoggedIn", 401, "not logged in"),
    Code.UID_MISMATCH: ("UidMismatch", 403, "uid mismatch"),
    Code.TOO_LARGE: ("TooLarge", 413, "too large"),
    Code.RATE_LIMITED: ("RateLimited", 429, "rate limited"),
    Code.UNKNOWN_CMD: ("UnknownCmd", 400, "unknown cmd"),
    Code.UNSUPPORTED_VERSION: ("UnsupportedVersion", 400, "unsupported version"),
    Code.UNKNOWN_APPCODE: ("UnknownAppcode", 400, "unknown appcode"),
    Code.NO_ROUTE: ("NoRoute", 400, "no route"),
    Code.UNAVAILABLE: ("Unavailable", 503, "unavailable"),
    Code.TIMEOUT: ("Timeout", 504, "timeout"),
}


class ErrorTableTests(SynchronousTestCase):
    def test_every_error_code_is_mapped(self) -> None:
        # OK is no error; INTERNAL is what anything unexpected becomes (the base class).
        self.assertEqual(set(ERRORS_BY_CODE), set(Code) - {Code.OK, Code.INTERNAL})
        self.assertEqual(set(ERRORS_BY_CODE), set(TABLE))

    def test_class_has_its_code(self) -> None:
        for code, cls in ERRORS_BY_CODE.items():
            self.assertIs(cls.code, code)
            self.assertTrue(issubclass(cls, RequestError))
            self.assertIsInstance(cls(), RequestError)
            self.assertEqual(cls().code, code)

    def test_classes_statuses_and_reasons(self) -> None:
        for code, (name, status, reason) in TABLE.items():
            cls = ERRORS_BY_CODE[code]
            self.assertEqual(cls.__name__, name)
            self.assertIs(getattr(errors, name), cls)
            self.assertEqual(cls.http_status, status, name)
            self.assertEqual(cls().reason, reason, name)
            self.assertEqual(str(cls()), reason, name)

    def test_named_statuses(self) -> None:
        self.assertEqual(errors.BadRequest.http_status, 400)
        self.assertEqual(errors.Unauthorized.http_status, 401)
        self.assertEqual(errors.Unavailable.http_status, 503)
        self.assertEqual(errors.TooLarge.http_status, 413)
        self.assertEqual(errors.RateLimited.http_status, 429)

    def test_given_reason(self) -> None:
        e = errors.BadRequest("content over 65000 bytes")
        self.assertEqual(e.reason, "content over 65000 bytes")
        self.assertEqual(str(e), "content over 65000 bytes")
        self.assertEqual(e.code, Code.BAD_REQUEST)

    def test_empty_reason_uses_default(self) -> None:
        self.assertEqual(errors.NoRoute("").reason, "no route")

    def test_base_is_internal(self) -> None:
        e = RequestError()
        self.assertEqual((e.code, e.http_status, e.reason), (Code.INTERNAL, 500, "internal"))

    def test_forbidden(self) -> None:
        """HTTP only: wire code UNAUTHORIZED, status 403; not the class the table maps to."""
        e = errors.Forbidden()
        self.assertEqual(
            (e.code, e.http_status, e.reason), (Code.UNAUTHORIZED, 403, "unauthorized")
        )
        self.assertIs(ERRORS_BY_CODE[Code.UNAUTHORIZED], errors.Unauthorized)

    def test_raise_and_catch(self) -> None:
        def handler() -> None:
            raise ERRORS_BY_CODE[Code.UID_MISMATCH]("uid 5 is not 6")

        exc = self.assertRaises(RequestError, handler)
        self.assertIsInstance(exc, errors.UidMismatch)
        self.assertEqual(exc.reason, "uid 5 is not 6")

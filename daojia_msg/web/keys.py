# -*- test-case-name: tests.web.test_keys -*-
"""API keys: ``Authorization: Bearer <key>``, and the user system a key acts in.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest` against
every configured key (no early exit, no length leak) and are never logged.
A key acts for every app of its own app's user system, and only for those.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.web import server

from daojia_msg.config import AppConfig, Config
from daojia_msg.protocol import errors


@dataclass(frozen=True, slots=True)
class Caller:
    """The app whose API key a request carries, and its user system's appcodes."""

    app: AppConfig
    appcodes: frozenset[int]


class Keys:
    """The configured API keys, matched in constant time."""

    def __init__(self, apps: Iterable[AppConfig]) -> None:
        apps = list(apps)
        systems: dict[str, set[int]] = {}
        for app in apps:
            systems.setdefault(app.usersystem, set()).add(app.appcode)
        self._keys = [
            (hashlib.sha256(app.api_key.encode("utf-8")).digest(),
             Caller(app, frozenset(systems[app.usersystem])))
            for app in apps
            if app.api_key
        ]

    def find(self, key: bytes) -> Caller | None:
        digest = hashlib.sha256(key).digest()
        found = None
        for candidate, caller in self._keys:  # every key, every time
            if hmac.compare_digest(candidate, digest) and found is None:
                found = caller
        return found

    def authenticate(self, request: server.Request) -> Caller:
        """The caller of ``request``'s bearer key; 401 when missing or unknown."""
        header = (request.getHeader(b"authorization") or b"").strip()
        if not header:
            raise errors.Unauthorized("missing API key (Authorization: Bearer <api key>)")
        scheme, _, key = header.partition(b" ")
        key = key.strip()
        if scheme.lower() != b"bearer" or not key:
            # Never echo the header: it may be the key itself.
            raise errors.Unauthorized(
                "the Authorization header must be 'Bearer <api key>' (the word Bearer, a space, "
                "then the key)")
        caller = self.find(key)
        if caller is None:
            raise errors.Unauthorized("unknown API key")
        return caller


def target_app(config: Config, caller: Caller, appcode: int, name: str) -> AppConfig:
    """The app ``appcode`` if configured (else 400) and in the caller's user system (else 403)."""
    app = config.app(appcode)
    if app is None:
        raise errors.UnknownAppcode(f"{name}: no app {appcode} is configured")
    if appcode not in caller.appcodes:
        raise errors.Forbidden(f"{name}: app {appcode} is not in this API key's user system")
    return app

# -*- test-case-name: tests.test_auth -*-
"""Login tokens (docs/protocol.md §5): ``"<expires_at>:<hex>"``.

``hex`` is the lowercase hex HMAC-SHA256 of ``"<appcode>:<uid>:<expires_at>"``
keyed by the app's secret (UTF-8). App servers mint; the platform verifies with
a constant-time compare and checks expiry.
"""

from __future__ import annotations

import hashlib
import hmac

MAX_TOKEN_LEN = 128


class TokenError(Exception):
    """The token is malformed, forged or expired; ``str(e)`` says which."""


class TokenExpired(TokenError):
    """The token was genuine but has expired (not a guess: a client that slept)."""


def _mac(secret: str, appcode: int, uid: int, expires_at: int) -> str:
    msg = f"{appcode}:{uid}:{expires_at}".encode()
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def mint_token(secret: str, appcode: int, uid: int, expires_at: int) -> str:
    """A token for ``(appcode, uid)`` valid until Unix second ``expires_at``."""
    return f"{expires_at}:{_mac(secret, appcode, uid, expires_at)}"


def verify_token(secret: str, appcode: int, uid: int, token: str, now: float) -> int:
    """Check ``token`` for ``(appcode, uid)`` at Unix time ``now``; its ``expires_at``.

    Raises :class:`TokenError`. The reason never contains the secret or the mac.
    """
    if len(token) > MAX_TOKEN_LEN:
        raise TokenError("malformed token")
    expires, sep, mac = token.partition(":")
    if not sep or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        raise TokenError("malformed token")
    expires_at = int(expires)
    good = _mac(secret, appcode, uid, expires_at)
    if not hmac.compare_digest(good.encode(), mac.encode("utf-8", "replace")):
        raise TokenError("bad token")
    if expires_at <= now:
        raise TokenExpired("token expired")
    return expires_at

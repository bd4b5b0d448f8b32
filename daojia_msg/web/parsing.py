# -*- test-case-name: tests.web.test_parsing,tests.web.test_push -*-
"""Request parsing for the HTTP API: strict JSON bodies and checked fields.

The accepted shapes are those of docs/openapi.yaml: unknown fields are refused
(a misspelt optional field must not be dropped silently), ``null`` counts as
absent, duplicate keys are bad JSON, uids are JSON integers or decimal strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from twisted.web import server

from daojia_msg.config import AppConfig
from daojia_msg.protocol import errors

MAX_UID = 2**64 - 1
MAX_U32 = 2**32 - 1

PUSH_FIELDS = frozenset({"to_uid", "to_appcode", "msgtype", "content", "content_b64", "logid",
                         "escalate_after_s"})
#: A batch item is a push body that may carry its idempotency key.
ITEM_FIELDS = PUSH_FIELDS | {"idempotency_key"}
BATCH_FIELDS = frozenset({"messages"})

#: An idempotency key: 1 to 128 printable ASCII characters, no space (docs/openapi.yaml).
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
KICKOUT_FIELDS = frozenset({"uid", "appcode"})

_DIGITS = re.compile(r"[0-9]{1,20}")

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps makes one per call


def dumps(obj: object) -> bytes:
    """``obj`` as compact JSON (ASCII)."""
    return _ENCODER.encode(obj).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: json.loads with these arguments would make a new decoder for each call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def parse_json(raw: bytes) -> Any:
    """``raw`` as strict JSON (UTF-8, no BOM, no NaN, no duplicate keys); else 400."""
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise errors.BadRequest("body: not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise errors.BadRequest(f"body: not valid JSON ({e})") from None


def read_json(request: server.Request) -> Any:
    """The request's body, parsed."""
    content = request.content
    return parse_json(content.read() if content is not None else b"")


def parse_uid(value: object, name: str) -> int:
    """A uid from a JSON number or decimal string: 1 to 2**64-1."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_UID:
        raise errors.BadRequest(
            f"{name}: expected a uid from 1 to {MAX_UID} (a JSON integer or decimal string)"
        )
    return value


class Fields:
    """One JSON object of a request, checked key by key."""

    def __init__(self, data: object, known: frozenset[str], prefix: str = "") -> None:
        """``prefix`` names where a nested object sits (``waves[0].``) in the errors."""
        if not isinstance(data, dict):
            raise errors.BadRequest("expected a JSON object")
        for key in sorted(data):
            if key not in known:
                raise errors.BadRequest(f"{prefix}{key}: unknown field")
        self.data: dict[str, Any] = data
        self.prefix = prefix

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def required(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise errors.BadRequest(f"{self.prefix}{key}: is required")
        return value

    def uid(self, key: str) -> int:
        return parse_uid(self.required(key), f"{self.prefix}{key}")

    def u32(self, key: str) -> int:
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U32:
            raise errors.BadRequest(f"{self.prefix}{key}: expected a JSON integer from 0 to "
                                    f"{MAX_U32}")
        return value

    def number(self, key: str) -> float:
        """A finite JSON number (an integer or a decimal; not a boolean)."""
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise errors.BadRequest(f"{self.prefix}{key}: expected a number")
        return float(value)

    def text(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise errors.BadRequest(f"{self.prefix}{key}: expected a string")
        return value


def idempotency_key(value: object, name: str) -> str:
    """An idempotency key (``name`` says where it was) or "" when absent; else 400."""
    if value is None:
        return ""
    if not isinstance(value, str) or not IDEMPOTENCY_KEY.fullmatch(value):
        raise errors.BadRequest(f"{name}: expected 1 to 128 printable ASCII characters "
                                "(no space)")
    return value


def escalate_after_s(f: Fields, app: AppConfig) -> int:
    """A push's ``escalate_after_s`` (an integer from 1 to 3,600; 0 when
    absent), for a recipient app that has an ``escalation_url``; else 400."""
    value = f.get("escalate_after_s")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
        raise errors.BadRequest("escalate_after_s: expected a JSON integer from 1 to 3600")
    if not app.escalation_url:
        raise errors.BadRequest(f"escalate_after_s: app {app.appcode} has no escalation_url")
    return value


def header_idempotency_key(request: server.Request) -> str:
    """The request's ``Idempotency-Key`` header, checked; "" when there is none."""
    values = request.requestHeaders.getRawHeaders(b"idempotency-key")
    if not values:
        return ""
    if len(values) > 1:
        raise errors.BadRequest("Idempotency-Key: given more than once")
    # Bytes beyond ASCII become U+FFFD, which the key's pattern refuses.
    return idempotency_key(values[0].decode("ascii", "replace"), "Idempotency-Key")


def _b64decode(value: str) -> bytes:
    try:
        decoded = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise errors.BadRequest("content_b64: not valid base64") from None
    if base64.b64encode(decoded).decode("ascii") != value:
        raise errors.BadRequest("content_b64: not canonical base64")
    return decoded


def content_of(f: Fields, max_content: int) -> bytes:
    """Exactly one of ``content`` (UTF-8 text) and ``content_b64``, as bytes."""
    text, b64 = f.get("content"), f.get("content_b64")
    if (text is None) == (b64 is None):
        raise errors.BadRequest("exactly one of content and content_b64 is required")
    if text is not None:
        if not isinstance(text, str):
            raise errors.BadRequest("content: expected a string (UTF-8 text)")
        if len(text) > max_content:  # each character is at least one byte
            raise _too_big(max_content)
        try:
            content = text.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.BadRequest("content: not valid Unicode text") from None
    else:
        if not isinstance(b64, str):
            raise errors.BadRequest("content_b64: expected a base64 string")
        if len(b64) > (max_content + 2) // 3 * 4:
            raise _too_big(max_content)
        content = _b64decode(b64)
    if len(content) > max_content:
        raise _too_big(max_content)
    return content


def _too_big(max_content: int) -> errors.BadRequest:
    return errors.BadRequest(f"content: over {max_content} bytes")

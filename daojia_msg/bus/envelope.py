# -*- test-case-name: tests.bus.test_router -*-
"""The C2S envelope as app servers receive it (docs/operations.md §7):
the protobuf ``Message`` (kind C2S) as bytes, plus the logid; and the media
type that travels with a payload that is not one (the ``offers`` topic's JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The media type of a C2S envelope's payload (a serialized ``Message``): the
#: default of every publish. A publish may name another (the ``offers`` topic's
#: outcomes are :data:`JSON`); it travels with the payload: the AMQP
#: ``content_type``, the webhook's ``Content-Type``, a Redis Streams entry's
#: ``content_type`` field (absent for this default).
CONTENT_TYPE = "application/x-protobuf"
#: The media type of a JSON payload (e.g. an offer's outcome).
JSON = "application/json"
#: The media types a consumer decodes.
CONTENT_TYPES = frozenset({CONTENT_TYPE, JSON})


class BadEnvelope(ValueError):
    """The payload is not a serialized ``Message`` (nor the JSON its media type says)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One entry of a topic. ``message`` is the C2S ``Message``, empty for a
    payload of another media type, whose decoded value is then ``data``
    (a JSON object for :data:`JSON`)."""

    topic: str
    message: pb.Message
    logid: str
    content_type: str = CONTENT_TYPE
    data: Any = None


def media_type(value: str | bytes | None) -> str:
    """The media type of a ``Content-Type``-like value (lower case, no
    parameters); an absent one is :data:`CONTENT_TYPE`."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = (value or "").split(";")[0].strip().lower()
    return value or CONTENT_TYPE


def decode_envelope(topic: str, payload: bytes, logid: str,
                    content_type: str = CONTENT_TYPE) -> Envelope:
    if content_type == JSON:
        try:
            data = json.loads(payload)
        except ValueError as e:  # UnicodeDecodeError included
            raise BadEnvelope(f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadEnvelope("not a JSON object")
        return Envelope(topic, pb.Message(), logid, JSON, data)
    if content_type != CONTENT_TYPE:
        raise BadEnvelope(f"unknown content type {content_type!r}")
    message = pb.Message()
    try:
        message.ParseFromString(payload)
    except DecodeError as e:
        raise BadEnvelope(f"not a Message: {e}") from None
    return Envelope(topic, message, logid or message.logid)


def log_fields(payload: bytes, logid: str) -> dict[str, object]:
    """The message fields of a log line about the envelope ``payload`` (a
    bus's failure lines): logid, msgid, and the sender's uid and appcode
    (only logid if ``payload`` is not a ``Message``)."""
    message = pb.Message()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return {"logid": logid}
    return {"logid": logid or message.logid, "msgid": message.msgid,
            "uid": message.from_uid, "appcode": message.from_appcode}

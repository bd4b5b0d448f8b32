# -*- test-case-name: tests.bus.test_router -*-
"""The C2S envelope as app servers receive it (docs/operations.md §7):
the protobuf ``Message`` (kind C2S) as bytes, plus the logid."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The media type of an envelope's payload: the AMQP ``content_type``, the
#: webhook's ``Content-Type``.
CONTENT_TYPE = "application/x-protobuf"


class BadEnvelope(ValueError):
    """The payload is not a serialized ``Message``."""


@dataclass(frozen=True, slots=True)
class Envelope:
    topic: str
    message: pb.Message
    logid: str


def decode_envelope(topic: str, payload: bytes, logid: str) -> Envelope:
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

# -*- test-case-name: tests.core.test_convert -*-
"""Conversions of a message between the domain model and its wire forms, and
the identity checks and log fields every layer shares."""

from __future__ import annotations

import dataclasses

from google.protobuf.message import DecodeError

from daojia_msg.core.model import Kind, StoredMessage
from daojia_msg.protocol import errors
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: uids and msgids are below 2**63 (signed 64-bit in every store and in Java
#: clients); a larger uid is BAD_REQUEST, a larger msgid names no message.
MAX_ID = 2**63 - 1


def check_uid(uid: int, name: str) -> None:
    """Raise BadRequest unless ``uid`` is from 1 to :data:`MAX_ID`."""
    if not 0 < uid <= MAX_ID:
        raise errors.BadRequest(f"{name} must be from 1 to {MAX_ID}")


def recipient_fields(msg: StoredMessage) -> dict[str, int]:
    """``uid`` and ``appcode`` of a log line about delivering ``msg``: its recipient."""
    return {"uid": msg.to_uid, "appcode": msg.to_appcode}


def sender_fields(msg: StoredMessage) -> dict[str, int]:
    """``uid`` and ``appcode`` of a log line about storing ``msg``: its sender,
    or for an app server's push (sender 0) its recipient."""
    if msg.from_uid:
        return {"uid": msg.from_uid, "appcode": msg.from_appcode}
    return recipient_fields(msg)


def to_pb(msg: StoredMessage) -> pb.Message:
    """The ``pb.Message`` pushed to a client (docs/protocol.md §4)."""
    return pb.Message(
        msgid=msg.msgid,
        from_uid=msg.from_uid,
        from_appcode=msg.from_appcode,
        to_uid=msg.to_uid,
        to_appcode=msg.to_appcode,
        msgtype=msg.msgtype,
        content=msg.content,
        send_time_ms=msg.send_time_ms,
        logid=msg.logid,
        kind=int(msg.kind),  # type: ignore[arg-type]
    )


def from_pb(m: pb.Message) -> StoredMessage:
    """The :class:`StoredMessage` of a ``pb.Message`` (the inverse of :func:`to_pb`).

    Raises ValueError for a ``kind`` this node does not know.
    """
    return StoredMessage(
        msgid=m.msgid,
        from_uid=m.from_uid,
        from_appcode=m.from_appcode,
        to_uid=m.to_uid,
        to_appcode=m.to_appcode,
        msgtype=m.msgtype,
        kind=Kind(int(m.kind)),
        content=m.content,
        send_time_ms=m.send_time_ms,
        logid=m.logid,
    )


def message_to_wire(msg: StoredMessage) -> tuple[bytes, bytes]:
    """``(meta, content)``: the serialized ``pb.Message`` without content, and
    the content (so a large content is not copied into a protobuf)."""
    return to_pb(dataclasses.replace(msg, content=b"")).SerializeToString(), msg.content


def message_from_wire(meta: bytes, content: bytes) -> StoredMessage:
    """The message that :func:`message_to_wire` split; ValueError saying why
    when it does not parse."""
    m = pb.Message()
    try:
        m.ParseFromString(meta)
    except DecodeError:
        raise ValueError("the message does not parse") from None
    if m.content:
        raise ValueError("the content must travel apart from the message")
    m.content = content
    try:
        return from_pb(m)
    except ValueError:
        raise ValueError(f"unknown message kind {int(m.kind)}") from None

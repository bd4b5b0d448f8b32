"""Tests for :mod:`daojia_msg.core.convert`: a message between the model and its wire forms."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.convert import (
    MAX_ID,
    check_uid,
    from_pb,
    message_from_wire,
    message_to_wire,
    recipient_fields,
    sender_fields,
    to_pb,
)
from daojia_msg.core.model import Kind, StoredMessage
from daojia_msg.protocol import errors
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

BIG = bytes(range(256)) * 253 + b"\xff\xfe" * 116  # 65,000 bytes, not UTF-8


def message(content: bytes = b"hi \xff", logid: str = "trace-7", kind: Kind = Kind.C2C,
            from_uid: int = 2**40 + 1) -> StoredMessage:
    return StoredMessage(2**63 + 5, from_uid, 1001, 2**50 + 2, 1002, 2**32 - 1, kind, content,
                         1795700000123, logid)


class WireFormTests(SynchronousTestCase):
    def test_round_trip_keeps_every_field(self) -> None:
        for msg in (message(), message(content=BIG, kind=Kind.S2C), message(content=b"", logid="")):
            meta, content = message_to_wire(msg)
            self.assertEqual(content, msg.content)
            self.assertNotIn(msg.content or b"\x00\x01\x02", meta)
            self.assertEqual(message_from_wire(meta, content), msg)
            self.assertEqual(from_pb(to_pb(msg)), msg)

    def test_a_meta_that_does_not_parse_is_a_value_error(self) -> None:
        self.assertRaises(ValueError, message_from_wire, b"\xff\xff\xff", b"")

    def test_content_inside_the_meta_is_refused(self) -> None:
        meta = pb.Message(content=b"x").SerializeToString()
        self.assertRaises(ValueError, message_from_wire, meta, b"")

    def test_an_unknown_kind_is_refused(self) -> None:
        unknown_kind = pb.Message(msgid=1, kind=77).SerializeToString()  # type: ignore[arg-type]
        with self.assertRaises(ValueError) as e:
            message_from_wire(unknown_kind, b"")
        self.assertIn("77", str(e.exception))

    def test_empty_content_stays_empty(self) -> None:
        meta, _ = message_to_wire(message())
        self.assertEqual(message_from_wire(meta, b"").content, b"")


class FieldTests(SynchronousTestCase):
    def test_recipient_fields_name_the_recipient(self) -> None:
        self.assertEqual(recipient_fields(message()), {"uid": 2**50 + 2, "appcode": 1002})

    def test_sender_fields_name_the_sender(self) -> None:
        self.assertEqual(sender_fields(message()), {"uid": 2**40 + 1, "appcode": 1001})

    def test_an_app_server_push_names_its_recipient(self) -> None:
        self.assertEqual(sender_fields(message(from_uid=0, kind=Kind.S2C)),
                         {"uid": 2**50 + 2, "appcode": 1002})


class CheckUidTests(SynchronousTestCase):
    def test_the_range_is_1_to_max_id(self) -> None:
        check_uid(1, "uid")
        check_uid(MAX_ID, "uid")
        for bad in (0, -1, MAX_ID + 1):
            with self.assertRaises(errors.BadRequest) as e:
                check_uid(bad, "to_uid")
            self.assertIn("to_uid", str(e.exception))

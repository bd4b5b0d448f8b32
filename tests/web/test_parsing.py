"""Tests for daojia_msg.web.parsing: strict JSON and uids."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from daojia_msg.protocol import errors
from daojia_msg.web.parsing import parse_json, parse_uid


class JsonTests(TestCase):
    def test_bom(self) -> None:
        """A UTF-8 BOM is refused, with json.loads' own reason."""
        with self.assertRaises(errors.BadRequest) as e:
            parse_json(b'\xef\xbb\xbf{"a": 1}')
        self.assertIn("Unexpected UTF-8 BOM", e.exception.reason)

    def test_strict(self) -> None:
        self.assertEqual(parse_json(b'{"a": [1, {"b": null}]}'), {"a": [1, {"b": None}]})
        for raw in (b'{"a": 1, "a": 2}', b'[{"x": 1, "y": {"z": 1, "z": 1}}]', b"Infinity",
                    b"[-Infinity]", b"NaN", b'{"a": 1} x'):
            with self.subTest(raw=raw), self.assertRaises(errors.BadRequest):
                parse_json(raw)


class UidTests(TestCase):
    def test_parse_uid(self) -> None:
        self.assertEqual(parse_uid("00042", "uid"), 42)
        self.assertRaises(errors.BadRequest, parse_uid, "", "uid")
        self.assertRaises(errors.BadRequest, parse_uid, " 42", "uid")
        self.assertRaises(errors.BadRequest, parse_uid, None, "uid")

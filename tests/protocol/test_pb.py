"""The protobuf bodies (docs/protocol.md §4) and the protocol's code tables (§3, §4).

One table of the bodies, :data:`SCHEMA`, is held against the generated module,
``proto/msgplatform.proto`` and the bodies written in docs/protocol.md §4, so
none of the four can drift from the others. The drift test regenerates the pb
module with the pinned generator and compares it byte for byte with the
committed one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from daojia_msg.protocol.codes import (
    BEFORE_LOGIN,
    CLIENT_REQUESTS,
    MAGIC,
    RESPONSE_BIT,
    VERSION,
    Cmd,
    Code,
    KickReason,
)
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.protocol import page

ROOT = page.ROOT
PB_DIR = ROOT / "daojia_msg" / "protocol" / "pb"

T = FieldDescriptor
#: (name, number, type, repeated, message or enum type name)
Field = tuple[str, int, int, bool, str | None]
#: docs/protocol.md §4, transcribed: message -> [(field, number, type, repeated, type name)].
SCHEMA: dict[str, list[Field]] = {
    "LoginRequest": [
        ("token", 1, T.TYPE_STRING, False, None),
        ("device_id", 2, T.TYPE_STRING, False, None),
        ("client_version", 3, T.TYPE_STRING, False, None),
    ],
    "LoginResponse": [
        ("code", 1, T.TYPE_INT32, False, None),
        ("reason", 2, T.TYPE_STRING, False, None),
        ("session_id", 3, T.TYPE_STRING, False, None),
        ("heartbeat_s", 4, T.TYPE_UINT32, False, None),
        ("server_time_ms", 5, T.TYPE_UINT64, False, None),
        ("offline_count", 6, T.TYPE_UINT32, False, None),
    ],
    "Result": [
        ("code", 1, T.TYPE_INT32, False, None),
        ("reason", 2, T.TYPE_STRING, False, None),
        ("msgid", 3, T.TYPE_UINT64, False, None),
        ("logid", 4, T.TYPE_STRING, False, None),
        ("server_time_ms", 5, T.TYPE_UINT64, False, None),
    ],
    "C2SRequest": [
        ("content", 1, T.TYPE_BYTES, False, None),
        ("logid", 2, T.TYPE_STRING, False, None),
    ],
    "C2CRequest": [
        ("to_uid", 1, T.TYPE_UINT64, False, None),
        ("to_appcode", 2, T.TYPE_UINT32, False, None),
        ("content", 3, T.TYPE_BYTES, False, None),
        ("client_msg_id", 4, T.TYPE_STRING, False, None),
        ("logid", 5, T.TYPE_STRING, False, None),
    ],
    "Message": [
        ("msgid", 1, T.TYPE_UINT64, False, None),
        ("from_uid", 2, T.TYPE_UINT64, False, None),
        ("from_appcode", 3, T.TYPE_UINT32, False, None),
        ("to_uid", 4, T.TYPE_UINT64, False, None),
        ("to_appcode", 5, T.TYPE_UINT32, False, None),
        ("msgtype", 6, T.TYPE_UINT32, False, None),
        ("content", 7, T.TYPE_BYTES, False, None),
        ("send_time_ms", 8, T.TYPE_UINT64, False, None),
        ("logid", 9, T.TYPE_STRING, False, None),
        ("kind", 10, T.TYPE_ENUM, False, "Kind"),
    ],
    "Ack": [
        ("msgids", 1, T.TYPE_UINT64, True, None),
    ],
    "Kickout": [
        ("reason_code", 1, T.TYPE_INT32, False, None),
        ("reason", 2, T.TYPE_STRING, False, None),
    ],
    "PullRequest": [
        ("after_msgid", 1, T.TYPE_UINT64, False, None),
        ("limit", 2, T.TYPE_UINT32, False, None),
    ],
    "PullResponse": [
        ("code", 1, T.TYPE_INT32, False, None),
        ("reason", 2, T.TYPE_STRING, False, None),
        ("messages", 3, T.TYPE_MESSAGE, True, "Message"),
        ("has_more", 4, T.TYPE_BOOL, False, None),
    ],
    "HistoryRequest": [
        ("peer_uid", 1, T.TYPE_UINT64, False, None),
        ("before_msgid", 2, T.TYPE_UINT64, False, None),
        ("limit", 3, T.TYPE_UINT32, False, None),
    ],
    "HistoryResponse": [
        ("code", 1, T.TYPE_INT32, False, None),
        ("reason", 2, T.TYPE_STRING, False, None),
        ("messages", 3, T.TYPE_MESSAGE, True, "Message"),
        ("has_more", 4, T.TYPE_BOOL, False, None),
    ],
}
KIND = {"KIND_UNSPECIFIED": 0, "C2C": 1, "S2C": 2, "C2S": 3}

#: Proto scalar type names as written in the .proto and in docs/protocol.md §4.
TYPE_NAMES = {
    "string": T.TYPE_STRING,
    "bytes": T.TYPE_BYTES,
    "bool": T.TYPE_BOOL,
    "int32": T.TYPE_INT32,
    "uint32": T.TYPE_UINT32,
    "uint64": T.TYPE_UINT64,
}


def parse_schema(text: str) -> tuple[dict[str, list[Field]], dict[str, int]]:
    """Messages and the Kind enum from proto-like ``text`` (docs/protocol.md §4 or the .proto)."""
    messages: dict[str, list[Field]] = {}
    enum: dict[str, int] = {}
    text = re.sub(r"//[^\n]*", "", text)  # comments may say anything
    for kind, name, body in re.findall(r"\b(message|enum)?\s*(\w+)\s*\{([^}]*)\}", text):
        if kind == "enum" or name == "Kind":
            enum = {k: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)\s*;", body)}
            continue
        fields: list[Field] = []
        for rep, ftype, fname, num in re.findall(
            r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", body
        ):
            if ftype in TYPE_NAMES:
                fields.append((fname, int(num), TYPE_NAMES[ftype], bool(rep), None))
            else:
                pbtype = T.TYPE_ENUM if ftype == "Kind" else T.TYPE_MESSAGE
                fields.append((fname, int(num), pbtype, bool(rep), ftype))
        messages[name] = fields
    return messages, enum


def described(desc: Descriptor) -> list[Field]:
    out: list[Field] = []
    for f in desc.fields:
        sub = f.message_type or f.enum_type
        out.append((f.name, f.number, f.type, f.is_repeated, sub.name if sub else None))
    return out


class DriftTests(SynchronousTestCase):
    def test_generated_module_matches_proto(self) -> None:
        """``tools/genproto.sh`` reproduces the committed pb module exactly."""
        if importlib.util.find_spec("grpc_tools") is None:
            reason = (
                "grpc_tools is not importable: install the pinned generator "
                "(pip install -r tools/requirements-genproto.txt) to run the pb drift test"
            )
            if os.environ.get("CI") == "true":
                self.fail(reason + " (CI=true: the drift test must run in CI)")
            raise SkipTest(reason)
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run(
                ["bash", str(ROOT / "tools" / "genproto.sh"), out],
                env={**os.environ, "PYTHON": sys.executable},
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(proc.returncode, 0, f"genproto failed: {proc.stderr}")
            for name in ("msgplatform_pb2.py", "msgplatform_pb2.pyi"):
                fresh = (Path(out) / name).read_bytes()
                committed = (PB_DIR / name).read_bytes()
                if fresh != committed:
                    self.fail(
                        f"daojia_msg/protocol/pb/{name} differs from what tools/genproto.sh makes "
                        "from proto/msgplatform.proto: regenerate it with the pinned generator"
                    )


class SchemaTests(SynchronousTestCase):
    def test_package(self) -> None:
        self.assertEqual(pb.DESCRIPTOR.package, "daojia.msg.v1")
        self.assertEqual(pb.DESCRIPTOR.name, "msgplatform.proto")

    def test_message_set(self) -> None:
        self.assertEqual(set(pb.DESCRIPTOR.message_types_by_name), set(SCHEMA))
        self.assertEqual(set(pb.DESCRIPTOR.enum_types_by_name), {"Kind"})

    def test_fields(self) -> None:
        for name, fields in SCHEMA.items():
            desc = getattr(pb, name).DESCRIPTOR
            self.assertEqual(described(desc), fields, name)
            for fname, number, ftype, repeated, sub in fields:
                field = desc.fields_by_name[fname]
                self.assertEqual(field.number, number, f"{name}.{fname}")
                self.assertEqual(field.type, ftype, f"{name}.{fname}")
                self.assertEqual(field.is_repeated, repeated, f"{name}.{fname}")
                if sub is not None:
                    self.assertEqual(
                        (field.message_type or field.enum_type).full_name, f"daojia.msg.v1.{sub}"
                    )

    def test_examples(self) -> None:
        self.assertEqual(pb.Message.DESCRIPTOR.fields_by_name["kind"].number, 10)
        self.assertEqual(pb.Message.DESCRIPTOR.fields_by_name["kind"].enum_type.name, "Kind")
        self.assertEqual(pb.Ack.DESCRIPTOR.fields_by_name["msgids"].number, 1)
        self.assertTrue(pb.Ack.DESCRIPTOR.fields_by_name["msgids"].is_packed)

    def test_kind_enum(self) -> None:
        self.assertEqual({v.name: v.number for v in pb.Kind.DESCRIPTOR.values}, KIND)
        self.assertEqual((pb.KIND_UNSPECIFIED, pb.C2C, pb.S2C, pb.C2S), (0, 1, 2, 3))

    def test_proto_file_matches_table(self) -> None:
        messages, enum = parse_schema((ROOT / "proto" / "msgplatform.proto").read_text())
        self.assertEqual(messages, SCHEMA)
        self.assertEqual(enum, KIND)

    def test_protocol_page_matches_table(self) -> None:
        """The bodies written in docs/protocol.md §4 are the table above."""
        bodies = page.subsection(page.section(page.text(), "4"), "Protobuf bodies")
        blocks = page.fenced(bodies)
        self.assertEqual(len(blocks), 1, "§4 Protobuf bodies: one fenced block of the bodies")
        messages, enum = parse_schema(blocks[0])
        self.assertEqual(messages, SCHEMA)
        self.assertEqual(enum, KIND)

    def test_protocol_page_names_the_package(self) -> None:
        bodies = page.subsection(page.section(page.text(), "4"), "Protobuf bodies")
        self.assertIn("proto3", bodies)
        self.assertIn(f"`{pb.DESCRIPTOR.package}`", bodies)


class WireCompatTests(SynchronousTestCase):
    """Every response's ``code`` and ``reason`` read the same as a ``Result``'s."""

    cases = [
        (0, ""),
        (1, "bad request"),
        (2, "token expired"),
        (11, "redis down: 重试"),
        (12, "x" * 300),
    ]

    def test_code_and_reason_bytes(self) -> None:
        for code, reason in self.cases:
            result = pb.Result(code=code, reason=reason).SerializeToString(deterministic=True)
            for cls in (pb.LoginResponse, pb.PullResponse, pb.HistoryResponse):
                wire = cls(code=code, reason=reason).SerializeToString(deterministic=True)
                self.assertEqual(wire, result, f"{cls.__name__} {code}")
                back = pb.Result.FromString(wire)
                self.assertEqual((back.code, back.reason), (code, reason))

    def test_response_read_as_result(self) -> None:
        msg = pb.Message(msgid=5, content=b"\xff\x00", kind=pb.C2C)
        full: list[Message] = [
            pb.LoginResponse(
                code=3,
                reason="not logged in",
                session_id="s",
                heartbeat_s=60,
                server_time_ms=1,
                offline_count=2,
            ),
            pb.PullResponse(code=3, reason="not logged in", messages=[msg], has_more=True),
            pb.HistoryResponse(code=3, reason="not logged in", messages=[msg], has_more=True),
        ]
        for response in full:
            back = pb.Result.FromString(response.SerializeToString())
            self.assertEqual((back.code, back.reason), (3, "not logged in"))

    def test_result_fields_match_responses(self) -> None:
        for cls in (pb.LoginResponse, pb.PullResponse, pb.HistoryResponse):
            fields = cls.DESCRIPTOR.fields_by_name
            for name in ("code", "reason"):
                ref = pb.Result.DESCRIPTOR.fields_by_name[name]
                self.assertEqual((fields[name].number, fields[name].type), (ref.number, ref.type))


class CodeTableTests(SynchronousTestCase):
    def test_header_constants(self) -> None:
        self.assertEqual((MAGIC, VERSION, RESPONSE_BIT), (0x58DA, 1, 0x80))

    def test_result_codes(self) -> None:
        expected = [
            "OK",
            "BAD_REQUEST",
            "UNAUTHORIZED",
            "NOT_LOGGED_IN",
            "UID_MISMATCH",
            "TOO_LARGE",
            "RATE_LIMITED",
            "UNKNOWN_CMD",
            "UNSUPPORTED_VERSION",
            "UNKNOWN_APPCODE",
            "NO_ROUTE",
            "UNAVAILABLE",
            "INTERNAL",
            "TIMEOUT",
        ]
        self.assertEqual(
            [(c.name, c.value) for c in Code], [(n, i) for i, n in enumerate(expected)]
        )

    def test_commands(self) -> None:
        expected = {
            "LOGIN": 0x01,
            "LOGOUT": 0x02,
            "C2S": 0x03,
            "S2C": 0x04,
            "C2C": 0x05,
            "KEEPALIVE": 0x06,
            "KICKOUT": 0x07,
            "ACK": 0x08,
            "PULL": 0x09,
            "HISTORY": 0x0A,
        }
        self.assertEqual({c.name: c.value for c in Cmd}, expected)
        for c in Cmd:
            self.assertFalse(c & RESPONSE_BIT)

    def test_client_requests(self) -> None:
        self.assertEqual(CLIENT_REQUESTS, set(Cmd) - {Cmd.S2C, Cmd.KICKOUT})
        self.assertEqual(BEFORE_LOGIN, {Cmd.LOGIN, Cmd.KEEPALIVE})

    def test_kick_reasons(self) -> None:
        self.assertEqual(
            {k.name: k.value for k in KickReason},
            {"LOGIN_ELSEWHERE": 1, "ADMIN": 2, "SHUTDOWN": 3, "ABUSE": 4},
        )

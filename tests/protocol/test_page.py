"""docs/protocol.md against the code: its sections, the header layout (§2), the
commands (§3), the result codes and kickout reasons (§4), the quoted defaults
and the worked LOGIN example (§5). The bodies of §4 are checked in
:mod:`tests.protocol.test_pb`.
"""

from __future__ import annotations

import re
import struct

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.auth import mint_token, verify_token
from daojia_msg.config import DEMO_APPS, Limits, StoreConfig
from daojia_msg.gate.protocol import HANDLERS, RESPONSE_TYPES
from daojia_msg.protocol.codec import HEADER, HEADER_SIZE, FrameDecoder, encode
from daojia_msg.protocol.codes import (
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

#: The section numbers and titles that code cites (docs/protocol.md §N).
SECTIONS = [
    ("1", "Transport"),
    ("2", "Frame (header + body)"),
    ("3", "Commands"),
    ("4", "Bodies and result codes"),
    ("5", "Login token"),
    ("6", "Semantics"),
    ("6.1", "Identities"),
    ("6.2", "Connection life"),
    ("6.3", "Messages and delivery"),
    ("7", "Extensions"),
    ("7.1", "TLS"),
    ("7.2", "Rich content"),
    ("7.3", "WebSocket transport"),
    ("7.4", "Bounded answers (TIMEOUT)"),
    ("7.5", "Live positions (geo routes)"),
    ("7.6", "Nearby order offers (accepts and outcomes)"),
]
#: The header fields of §2, in order.
HEADER_FIELDS = [
    "magic_num", "version", "cmd", "appcode", "msgtype", "uid", "sequenceid", "reservefield",
    "bodylength",
]  # fmt: skip
#: Where the code and the tests cite the page.
CITING = ["daojia_msg", "proto", "tests", "twisted"]

#: The worked example of §5.
EXAMPLE_APPCODE, EXAMPLE_UID, EXAMPLE_SEQ, EXAMPLE_EXPIRES = 1001, 42, 1, 4102444800


def first_word(cell: str) -> str:
    """The first word of a table cell: the body type it names, or "" for a dash."""
    word = re.match(r"\w*", cell)
    return word.group() if word else ""


class SectionTests(SynchronousTestCase):
    def test_numbered_sections(self) -> None:
        """The page has exactly the sections the code cites, in order."""
        text = page.text()
        found = re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) (.+)$", text, re.M)
        self.assertEqual(found, SECTIONS)

    def test_citations_name_existing_sections(self) -> None:
        """Every ``docs/protocol.md §N`` in the code, the .proto and the tests is a section."""
        numbers = set(page.headings(page.text()))
        wrong = []
        for top in CITING:
            for path in sorted((page.ROOT / top).rglob("*")):
                if path.suffix not in (".py", ".proto", ".pyi") or not path.is_file():
                    continue
                source = path.read_text(encoding="utf-8")
                for cited in re.findall(r"docs/protocol\.md((?:,? §\d+(?:\.\d+)?)+)", source):
                    for number in re.findall(r"§(\d+(?:\.\d+)?)", cited):
                        if number not in numbers:
                            wrong.append(f"{path.relative_to(page.ROOT)}: §{number}")
        self.assertEqual(wrong, [])

    def test_protocol_modules_cite_the_page(self) -> None:
        """Each module of daojia_msg/protocol says which part of the page it implements."""
        for path in sorted((page.ROOT / "daojia_msg" / "protocol").glob("*.py")):
            docstring = re.search(r'"""(.*?)"""', path.read_text(encoding="utf-8"), re.S)
            self.assertIsNotNone(docstring, path.name)
            assert docstring is not None
            self.assertIn("docs/protocol.md", docstring.group(1), path.name)


class HeaderTableTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """§2's offsets, sizes and fields are those of the struct format."""
        rows = page.table(page.section(page.text(), "2"))
        sizes = [struct.calcsize("!" + c) for c in HEADER.format[1:]]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        fields = zip(offsets, sizes, HEADER_FIELDS, strict=True)
        expected = [[str(o), str(n), name] for o, n, name in fields]
        self.assertEqual([row[:3] for row in rows[:-1]], expected)
        self.assertEqual(rows[-1][:3], [str(HEADER_SIZE), "n", "body"])
        self.assertEqual(HEADER_SIZE, 32)

    def test_constants(self) -> None:
        text = page.section(page.text(), "2")
        self.assertIn(f'"{HEADER.format}"', text)
        self.assertIn(f"`MAGIC = {MAGIC:#06X}`".replace("0X", "0x"), text)
        self.assertIn(f"`VERSION = {VERSION}`", text)
        self.assertIn(f"`RESPONSE_BIT = {RESPONSE_BIT:#04x}`", text)


class CodeTableTests(SynchronousTestCase):
    def test_commands(self) -> None:
        """§3 lists every command with its number, as :class:`Cmd` does."""
        rows = page.table(page.section(page.text(), "3"))
        self.assertEqual([(int(r[0], 16), r[1]) for r in rows], [(c.value, c.name) for c in Cmd])

    def test_command_bodies(self) -> None:
        """§3's request and response bodies are those the gate parses and answers with."""
        rows = {Cmd[r[1]]: r for r in page.table(page.section(page.text(), "3"))}
        for cmd, row in rows.items():
            request, response = row[2], row[3]
            if cmd not in CLIENT_REQUESTS:
                self.assertIn("UNKNOWN_CMD", request, cmd.name)
                self.assertEqual(response, "—", cmd.name)
                continue
            body_type = HANDLERS[cmd][0]
            if body_type is None:
                self.assertTrue(request.startswith("ignored"), cmd.name)
            else:
                self.assertEqual(request, body_type.__name__, cmd.name)
            answer = RESPONSE_TYPES.get(cmd, pb.Result).__name__
            self.assertEqual(first_word(response), answer, cmd.name)

    def test_pushes(self) -> None:
        """§3's push bodies: a Message for S2C and C2C, a Kickout for KICKOUT."""
        rows = {Cmd[r[1]]: r[4] for r in page.table(page.section(page.text(), "3"))}
        pushes = {cmd: first_word(body) for cmd, body in rows.items()}
        self.assertEqual(
            {cmd: body for cmd, body in pushes.items() if body},
            {Cmd.S2C: "Message", Cmd.C2C: "Message", Cmd.KICKOUT: "Kickout"},
        )

    def test_result_codes(self) -> None:
        codes = page.table(page.subsection(page.section(page.text(), "4"), "Result codes"))
        self.assertEqual([(int(r[0]), r[1]) for r in codes], [(c.value, c.name) for c in Code])

    def test_kickout_reasons(self) -> None:
        reasons = page.table(page.subsection(page.section(page.text(), "4"), "Kickout reasons"))
        self.assertEqual(
            [(int(r[0]), r[1]) for r in reasons], [(k.value, k.name) for k in KickReason]
        )


class DefaultsTests(SynchronousTestCase):
    """The defaults the page quotes are the node's."""

    def test_limits(self) -> None:
        d = Limits()
        text = page.text()
        quoted = {
            "2": [f"{d.max_body:,}"],
            "4": [f"default {d.heartbeat_s}"],
            "6.2": [
                f"default {d.max_body:,}", f"default {d.close_grace_s:g} s",
                f"{d.rate_per_s:g} frames a second", f"bursts of {d.rate_burst:,}",
                f"More than {d.abuse_excess:,} such frames within {d.abuse_window_s:g} s",
                f"default {d.login_timeout_s:g} s",
                f"default 3 × `heartbeat_s` = {d.idle_timeout_s:g} s",
                f"cap ({d.page_cap})", f"default page ({d.page_default})",
                f"At most {d.max_inflight} requests", f"default {d.write_stall_s:g} s",
                f"default {d.max_conn_per_ip:,}",
            ],
            "6.3": [
                f"default {d.max_content:,}", f"at most {d.max_id_len} characters",
                f"default {d.ack_timeout_s:g} s", f"(default {d.max_repush})",
                f"(default {d.max_ack_ids:,})", f"0: {d.page_default}; capped at {d.page_cap}",
                f"default and minimum {StoreConfig().dedup_days:g} days",
            ],
        }  # fmt: skip
        self.assertEqual(d.idle_timeout_s, 3 * d.heartbeat_s)
        for number, snippets in quoted.items():
            body = " ".join(page.section(text, number).split())  # as read, not as wrapped
            for snippet in snippets:
                self.assertIn(snippet, body, f"§{number}")


class WorkedExampleTests(SynchronousTestCase):
    """§5's LOGIN frame is what the codec and the token code make."""

    def setUp(self) -> None:
        self.text = page.section(page.text(), "5")
        self.secret = DEMO_APPS[EXAMPLE_APPCODE].secret
        self.token = mint_token(self.secret, EXAMPLE_APPCODE, EXAMPLE_UID, EXAMPLE_EXPIRES)

    def test_minting_snippet(self) -> None:
        """The few lines of Python on the page mint the token the platform verifies."""
        [snippet] = page.fenced(self.text, "python")
        names: dict[str, object] = {}
        exec(compile(snippet, "docs/protocol.md §5", "exec"), names)
        self.assertEqual(names["token"], self.token)
        self.assertIn(repr(self.token), snippet)
        verify_token(self.secret, EXAMPLE_APPCODE, EXAMPLE_UID, self.token, EXAMPLE_EXPIRES - 1)

    def test_frame_bytes(self) -> None:
        [dump] = [b for b in page.fenced(self.text) if b.startswith("58 da")]
        body = pb.LoginRequest(token=self.token).SerializeToString()
        frame = encode(Cmd.LOGIN, EXAMPLE_APPCODE, 0, EXAMPLE_UID, EXAMPLE_SEQ, body)
        self.assertEqual(bytes.fromhex(dump), frame)
        self.assertIn(f"{len(body)} bytes. The frame, {len(frame)} bytes", self.text)
        decoder = FrameDecoder(Limits().max_body)
        decoder.feed(frame)
        decoded = decoder.next()
        assert decoded is not None
        self.assertEqual(pb.LoginRequest.FromString(decoded.body).token, self.token)

    def test_answer_header(self) -> None:
        """The answer's header echoes the request's, with the response bit."""
        echoed = encode(Cmd.LOGIN | RESPONSE_BIT, EXAMPLE_APPCODE, 0, EXAMPLE_UID, EXAMPLE_SEQ)
        quoted = re.search(r"The answer starts `([0-9a-f \n]+)`", self.text)
        assert quoted is not None
        self.assertEqual(bytes.fromhex(quoted.group(1)), echoed[:28])

"""The shared test vectors of the wire protocol: proto/vectors.json.

Each vector is one frame: its header fields, its body as protobuf JSON (proto
field names, 64-bit integers as decimal strings, bytes as base64) and its exact
bytes in hex. This test checks the Python codec (daojia_msg.protocol) against
the committed file; the browser's codec (frontend/shared) is checked against the
same file by frontend/tests/vectors.test.ts. The cases are written below:
``python -m tests.protocol.test_vectors`` rewrites the file from them (and
a test fails while the file and the cases differ).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message as PbMessage
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.auth import mint_token
from daojia_msg.content import richtext
from daojia_msg.content.colors import NAMES
from daojia_msg.protocol import codec
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

VECTORS = Path(__file__).resolve().parent.parent.parent / "proto" / "vectors.json"
#: Rich-text cases (docs/protocol.md §7.2): the browser's parser
#: (frontend/shared/richtext.ts) must accept, refuse and explain as the node's does.
RICH_VECTORS = VECTORS.parent / "richtext_vectors.json"

#: The body type of each command and direction (docs/protocol.md §3); None: no body.
REQUEST_BODY: dict[int, str | None] = {
    Cmd.LOGIN: "LoginRequest", Cmd.LOGOUT: None, Cmd.C2S: "C2SRequest",
    Cmd.C2C: "C2CRequest", Cmd.KEEPALIVE: None, Cmd.ACK: "Ack", Cmd.PULL: "PullRequest",
    Cmd.HISTORY: "HistoryRequest",
}
RESPONSE_BODY: dict[int, str] = {Cmd.LOGIN: "LoginResponse", Cmd.PULL: "PullResponse",
                 Cmd.HISTORY: "HistoryResponse"}
PUSH_BODY: dict[int, str] = {Cmd.S2C: "Message", Cmd.C2C: "Message", Cmd.KICKOUT: "Kickout"}

#: Identities with 64-bit uids: 2^53 + 1 is the first integer a JavaScript
#: number cannot hold; 2^63 - 1 the largest uid (docs/protocol.md §6.1).
UID_53 = 2**53 + 1
UID_MAX = 2**63 - 1
MSGID_A = 4_611_686_018_427_387_905  # 2^62 + 1
MSGID_B = 4_611_686_018_427_387_999
SERVER_MS = 1_767_225_600_123
DEMO_TOKEN = mint_token("demo-secret-1001", 1001, 42, 4_102_444_800)


def expected_body(cmd: int, direction: str) -> str | None:
    base = cmd & ~RESPONSE_BIT
    if direction == "request":
        return REQUEST_BODY[base]
    if direction == "response":
        return RESPONSE_BODY.get(base, "Result")
    return PUSH_BODY[base]


def message(**fields: Any) -> pb.Message:
    return pb.Message(**fields)


def cases() -> list[tuple[str, str, tuple[int, int, int, int, int], PbMessage | None]]:
    """(name, direction, (cmd, appcode, msgtype, uid, sequenceid), body)."""
    rich = '<font size="16" color="Crimson">你好 &amp; 再见</font><shake /><img url="https://example.com/a.png" width="64" height="64" />'
    pushed = message(msgid=MSGID_A, from_uid=UID_53, from_appcode=1002, to_uid=UID_MAX,
                     to_appcode=1001, msgtype=10, content=rich.encode(), send_time_ms=SERVER_MS,
                     logid="4000000000000001", kind=pb.C2C)
    s2c = message(msgid=MSGID_B, to_uid=42, to_appcode=1001, msgtype=2,
                  content="订单已送达 ✅ 🚚".encode(), send_time_ms=SERVER_MS + 1,
                  logid="order-7.delivered", kind=pb.S2C)
    ok = Code.OK
    return [
        ("LOGIN request: the worked example of docs/protocol.md §5", "request",
         (Cmd.LOGIN, 1001, 0, 42, 1), pb.LoginRequest(token=DEMO_TOKEN)),
        ("LOGIN request: the largest uid, every field, non-ASCII device id", "request",
         (Cmd.LOGIN, 1002, 0, UID_MAX, 0xFFFFFFFF),
         pb.LoginRequest(token="4102444800:" + "0" * 64, device_id="浏览器 console",
                         client_version="console/1")),
        ("LOGIN response OK", "response", (Cmd.LOGIN | RESPONSE_BIT, 1001, 0, 42, 1),
         pb.LoginResponse(code=ok, session_id="0123456789abcdef0123456789abcdef",
                          heartbeat_s=60, server_time_ms=SERVER_MS, offline_count=3)),
        ("LOGIN response UNAUTHORIZED", "response", (Cmd.LOGIN | RESPONSE_BIT, 1001, 0, 42, 1),
         pb.LoginResponse(code=Code.UNAUTHORIZED, reason="token expired")),
        ("LOGOUT request (no body)", "request", (Cmd.LOGOUT, 1001, 0, 42, 9), None),
        ("LOGOUT response", "response", (Cmd.LOGOUT | RESPONSE_BIT, 1001, 0, 42, 9),
         pb.Result(code=ok, server_time_ms=SERVER_MS)),
        ("C2S request", "request", (Cmd.C2S, 1001, 7, 42, 3),
         pb.C2SRequest(content=b'{"order":1,"note":"\xe5\xbf\xab"}', logid="order-1")),
        ("C2S response NO_ROUTE", "response", (Cmd.C2S | RESPONSE_BIT, 1001, 7, 42, 3),
         pb.Result(code=Code.NO_ROUTE, reason="no route for appcode 1001 msgtype 7")),
        ("S2C push, non-ASCII content", "push", (Cmd.S2C, 1001, 2, 42, 1), s2c),
        ("C2C request: uid above 2^53, rich content, sequenceid 2^32-1", "request",
         (Cmd.C2C, 1002, 10, UID_53, 0xFFFFFFFF),
         pb.C2CRequest(to_uid=UID_MAX, to_appcode=1001, content=rich.encode(),
                       client_msg_id="6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f")),
        ("C2C response OK", "response", (Cmd.C2C | RESPONSE_BIT, 1002, 10, UID_53, 0xFFFFFFFF),
         pb.Result(code=ok, msgid=MSGID_A, logid="4000000000000001", server_time_ms=SERVER_MS)),
        ("C2C response UNAVAILABLE", "response", (Cmd.C2C | RESPONSE_BIT, 1002, 10, UID_53, 4),
         pb.Result(code=Code.UNAVAILABLE, reason="store unavailable")),
        ("C2C push: from a uid above 2^53 to the largest uid", "push",
         (Cmd.C2C, 1001, 10, UID_MAX, 2), pushed),
        ("KEEPALIVE request (no body)", "request", (Cmd.KEEPALIVE, 1001, 0, 42, 5), None),
        ("KEEPALIVE response", "response", (Cmd.KEEPALIVE | RESPONSE_BIT, 1001, 0, 42, 5),
         pb.Result(code=ok, server_time_ms=SERVER_MS)),
        ("KICKOUT push LOGIN_ELSEWHERE", "push", (Cmd.KICKOUT, 1001, 0, 42, 3),
         pb.Kickout(reason_code=KickReason.LOGIN_ELSEWHERE, reason="logged in elsewhere")),
        ("ACK request, 64-bit msgids (packed)", "request", (Cmd.ACK, 1001, 0, 42, 6),
         pb.Ack(msgids=[MSGID_A, MSGID_B, 1])),
        ("ACK response", "response", (Cmd.ACK | RESPONSE_BIT, 1001, 0, 42, 6),
         pb.Result(code=ok, server_time_ms=SERVER_MS)),
        ("PULL request", "request", (Cmd.PULL, 1001, 0, UID_MAX, 7),
         pb.PullRequest(after_msgid=MSGID_A, limit=100)),
        ("PULL response, two messages and more", "response",
         (Cmd.PULL | RESPONSE_BIT, 1001, 0, UID_MAX, 7),
         pb.PullResponse(code=ok, messages=[pushed, s2c], has_more=True)),
        ("PULL response, empty (every field default: no body bytes)", "response",
         (Cmd.PULL | RESPONSE_BIT, 1001, 0, 42, 8), pb.PullResponse()),
        ("HISTORY request with a peer", "request", (Cmd.HISTORY, 1001, 0, UID_MAX, 10),
         pb.HistoryRequest(peer_uid=UID_53, before_msgid=MSGID_B, limit=20)),
        ("HISTORY response", "response", (Cmd.HISTORY | RESPONSE_BIT, 1001, 0, UID_MAX, 10),
         pb.HistoryResponse(code=ok, messages=[s2c, pushed], has_more=False)),
        ("HISTORY response NOT_LOGGED_IN", "response", (Cmd.HISTORY | RESPONSE_BIT, 0, 0, 0, 11),
         pb.HistoryResponse(code=Code.NOT_LOGGED_IN, reason="not logged in")),
        ("UNKNOWN_CMD answer to a client-sent S2C", "response",
         (Cmd.S2C | RESPONSE_BIT, 1001, 0, 42, 12),
         pb.Result(code=Code.UNKNOWN_CMD, reason="unknown command 0x04")),
    ]


def to_json(body: PbMessage | None) -> dict[str, Any]:
    if body is None:
        return {}
    return json_format.MessageToDict(body, preserving_proto_field_name=True)


def build() -> list[dict[str, Any]]:
    out = []
    for name, direction, (cmd, appcode, msgtype, uid, seq), body in cases():
        raw = b"" if body is None else body.SerializeToString(deterministic=True)
        out.append({
            "name": name,
            "direction": direction,
            "header": {"cmd": int(cmd), "appcode": appcode, "msgtype": msgtype, "uid": str(uid),
                       "sequenceid": seq, "version": 1, "reserve": 0},
            "body_type": None if body is None else body.DESCRIPTOR.name,
            "body": to_json(body),
            "hex": codec.encode(cmd, appcode, msgtype, uid, seq, raw).hex(),
        })
    return out


#: Markup that must never reach a page: other schemes, event handlers, scripts.
HOSTILE = [
    "<script>alert(1)</script>", '<img url="javascript:alert(1)" />',
    '<img url="JavaScript:alert(1)" />', '<img url="data:image/png;base64,AAAA" />',
    '<img url="vbscript:x" />', '<img url="https://example.com/a.png" onerror="alert(1)" />',
    '<img url="https://example.com/a.png" onload="alert(1)" />',
    '<font size="16" onclick="alert(1)">x</font>', '<shake onanimationend="alert(1)" />',
    '<img url="https://example.com/a.png" style="x" />',
    '<font color="red;background:url(x)">x</font>', '<font color="expression(alert(1))">x</font>',
]
#: Inputs for the rich-text parsers, the hostile ones among them.
RICH_CASES = [*HOSTILE,
    "", "hello", "a &lt; b &amp;&amp; c &gt; d &quot;q&quot; &apos;s&apos;", "&#x1F600; &#128512; &#9;",
    "line one\nline two", "emoji 😀 then a bare < here", "&#0;", "&#xD800;", "&#x110000;", "&#x;",
    "&#12a;", "&bogus;", "fish & chips", "&ampamp;", "a < b", "<", "<>", "</font>",
    "<b>bold</b>", "<script>alert(1)</script>", "<FONT>x</FONT>", "<Font>x</Font>",
    '<img url="javascript:alert(1)" />', '<img url="JavaScript:alert(1)" />',
    '<img url="data:image/png;base64,AAAA" />', '<img url="vbscript:x" />',
    '<img url="https://example.com/a.png" onerror="alert(1)" />',
    '<img url="https://example.com/a.png" onload="alert(1)" />',
    '<font size="16" onclick="alert(1)">x</font>', '<shake onanimationend="alert(1)" />',
    '<img url="https://example.com/a.png" style="x" />',
    '<font size="16" color="red">hi</font>', '<font color="Crimson">x</font>',
    '<font color="REBECCAPURPLE">x</font>', '<font color="transparent">x</font>',
    '<font color="currentcolor">x</font>', '<font color="#abc">x</font>',
    '<font color="#A1B2C3">x</font>', '<font color="#abcd">x</font>', '<font color="#ggg">x</font>',
    '<font color="red;background:url(x)">x</font>', '<font color="expression(alert(1))">x</font>',
    '<font size="7">x</font>', '<font size="8">x</font>', '<font size="72">x</font>',
    '<font size="73">x</font>', '<font size="016">x</font>', '<font size="-1">x</font>',
    '<font size="1e1">x</font>', '<font size=" 16">x</font>', '<font size=16>x</font>',
    "<font size='16'>x</font>", '<font size="16"color="red">x</font>',
    '<font size="16" size="17">x</font>', '<font>x</font>', '<font></font>', '<font/>',
    '<font />', '<font>x', '<font>x</font >', '<font>x</font\n>', '<font>x</fontx>',
    '<font>x</img>', '<font><b>x</b></font>', '<font>a<shake /></font>',
    '<font>&lt;b&gt;not bold&lt;/b&gt;</font>', '<font color="red">x</font><font>y</font>',
    "<shake/>", "<shake />", "<shake\t/>", "<shake>", "<shake></shake>", '<shake a="1"/>',
    "<shake / >", "<shake/ >",
    '<img url="https://example.com/a.png" width="10" height="4096" />',
    '<img url="https://example.com/a.png" width="0" />',
    '<img url="https://example.com/a.png" height="4097" />',
    '<img url="https://example.com/a.png"/>', '<img url="https://example.com/a.png">',
    '<img url="https://example.com/a.png"></img>', "<img />", '<img url="" />',
    '<img url="http://[::1]/a.png" />', '<img url="http://[::1/a.png" />',
    '<img url="http://::1]/a.png" />', '<img url="https:foo" />',
    '<img url="//example.com/a.png" />', '<img url="HTTPS://EXAMPLE.COM/A.PNG" />',
    '<img url="https://example.com/a b.png" />', '<img url="https://example.com/a\u00a0b" />',
    '<img url="https://example.com/a&#9;b" />', '<img url="https://example.com/a&#x85;b" />',
    '<img url="https://example.com/a&#x7f;b" />',
    '<img url="https://example.com/&quot;onerror=&quot;alert(1)" />',
    '<img url="https://e.com/a.png" url="https://f.com" />',
    '<img url="https://example.com/a.png" width="10" height="10" width="11" />',
    '<img url="https://例子.测试/图.png" />', '<img url="https://user:pw@host:99/x?q=1#f" />',
    '<img url="https://example.com/' + "a" * 2030 + '" />',
    '<img url="https://example.com/' + "a" * 2040 + '" />',
    '<img\nurl="https://example.com/a.png"\n/>', '<img url="https://example.com/a.png" width="10"height="1"/>',
    'text <font size="20" color="#0f0">green</font> <img url="https://example.com/i.png" /> <shake />',
]


def rich_json(node: richtext.Node) -> dict[str, Any]:
    if isinstance(node, richtext.Text):
        return {"kind": "text", "text": node.text}
    if isinstance(node, richtext.Font):
        return {"kind": "font", "text": node.text, "size": node.size, "color": node.color}
    if isinstance(node, richtext.Image):
        return {"kind": "img", "url": node.url, "width": node.width, "height": node.height}
    return {"kind": "shake"}


def rich_case(text: str) -> dict[str, Any]:
    try:
        nodes = richtext.parse(text)
    except richtext.RichTextError as e:
        return {"input": text, "error": str(e)}
    return {"input": text, "nodes": [rich_json(n) for n in nodes]}


def build_rich() -> dict[str, Any]:
    return {"colors": sorted(NAMES), "cases": [rich_case(text) for text in dict.fromkeys(RICH_CASES)]}


def render(vectors: Any) -> str:
    return json.dumps(vectors, ensure_ascii=False, indent=2) + "\n"


def load() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return vectors


class VectorTests(SynchronousTestCase):
    def test_python_encodes_every_vector_to_its_bytes(self) -> None:
        for v in load():
            h = v["header"]
            body = b""
            if v["body_type"] is not None:
                msg = getattr(pb, v["body_type"])()
                json_format.ParseDict(v["body"], msg)
                body = msg.SerializeToString(deterministic=True)
            frame = codec.Frame(h["cmd"], h["appcode"], h["msgtype"], int(h["uid"]),
                                h["sequenceid"], body, h["version"], h["reserve"])
            self.assertEqual(codec.encode_frame(frame).hex(), v["hex"], v["name"])

    def test_python_decodes_every_vector_to_its_fields(self) -> None:
        for v in load():
            decoder = codec.FrameDecoder(max_body=65536)
            decoder.feed(bytes.fromhex(v["hex"]))
            frame = decoder.next()
            assert frame is not None, v["name"]
            self.assertIsNone(decoder.next())
            h = v["header"]
            self.assertEqual(
                (frame.cmd, frame.appcode, frame.msgtype, frame.uid, frame.sequenceid,
                 frame.version, frame.reserve),
                (h["cmd"], h["appcode"], h["msgtype"], int(h["uid"]), h["sequenceid"],
                 h["version"], h["reserve"]), v["name"])
            if v["body_type"] is None:
                self.assertEqual((frame.body, v["body"]), (b"", {}), v["name"])
            else:
                msg = getattr(pb, v["body_type"])()
                msg.ParseFromString(frame.body)
                self.assertEqual(to_json(msg), v["body"], v["name"])

    def test_each_body_type_is_the_one_its_command_carries(self) -> None:
        for v in load():
            self.assertEqual(v["body_type"], expected_body(v["header"]["cmd"], v["direction"]),
                             v["name"])

    def test_the_vectors_cover_every_command_and_the_hard_values(self) -> None:
        vectors = load()
        seen = {(v["header"]["cmd"] & ~RESPONSE_BIT, v["direction"]) for v in vectors}
        wanted = {(c, "request") for c in REQUEST_BODY} | {(c, "response") for c in REQUEST_BODY}
        wanted |= {(c, "push") for c in PUSH_BODY}
        self.assertEqual(wanted - seen, set())
        text = VECTORS.read_text(encoding="utf-8")
        self.assertIn(str(UID_53), text)
        self.assertTrue(any(ord(c) > 0x7F for c in text))
        contents = [base64.b64decode(m["content"]) for v in vectors
                    for m in [v["body"], *v["body"].get("messages", [])] if "content" in m]
        self.assertTrue(any(not c.isascii() for c in contents))

    def test_the_login_vector_is_the_worked_example_of_the_protocol_page(self) -> None:
        doc = (VECTORS.parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
        block = doc.split("The frame, 109 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
        self.assertEqual(load()[0]["hex"], "".join(block.split()))

    def test_the_file_is_what_the_cases_give(self) -> None:
        self.assertEqual(VECTORS.read_text(encoding="utf-8"), render(build()),
                         "run: python -m tests.protocol.test_vectors")


class RichTextVectorTests(SynchronousTestCase):
    def test_the_node_parses_every_case_as_the_file_says(self) -> None:
        rich = json.loads(RICH_VECTORS.read_text(encoding="utf-8"))
        self.assertEqual(rich["colors"], sorted(NAMES))
        for case in rich["cases"]:
            self.assertEqual(rich_case(case["input"]), case, case["input"])

    def test_the_cases_refuse_what_must_never_render(self) -> None:
        rich = json.loads(RICH_VECTORS.read_text(encoding="utf-8"))
        refused = {case["input"] for case in rich["cases"] if "error" in case}
        self.assertEqual(set(HOSTILE) - refused, set())

    def test_the_file_is_what_the_cases_give(self) -> None:
        self.assertEqual(RICH_VECTORS.read_text(encoding="utf-8"), render(build_rich()),
                         "run: python -m tests.protocol.test_vectors")


if __name__ == "__main__":
    VECTORS.write_text(render(build()), encoding="utf-8")
    RICH_VECTORS.write_text(render(build_rich()), encoding="utf-8")
    sys.stdout.write(f"wrote {len(build())} frames to {VECTORS}, {len(set(RICH_CASES))} rich-text "
                     f"cases to {RICH_VECTORS}\n")

"""Rich msgtypes (docs/protocol.md §7.2): C2C and S2C content checked before it
is stored, refused with a reason naming the problem, stored byte for byte."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import parse_config
from daojia_msg.logic.service import PushItem
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code
from tests.helpers import Stack

RICH = 10
GOOD = '<font size="14" color="red">hi &amp; bye</font><img url="https://x.y/a.png" /><shake />'

#: Two apps of two user systems; only the agents' app has rich msgtype 10.
CONFIG = """
[apps.1001]
usersystem = "customers"
secret = "customer-secret"
api_key = "customer-key"

[apps.3001]
usersystem = "agents"
secret = "agent-secret-x"
api_key = "agent-key"
rich_msgtypes = [10]
"""


class RichContentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack(parse_config(CONFIG))

    def test_the_demo_apps_have_msgtype_10_rich(self) -> None:
        stack = Stack()
        a, b = stack.login(1), stack.login(2)
        self.assertEqual(a.c2c(2, b"<b>x</b>", msgtype=RICH).code, Code.BAD_REQUEST)
        self.assertEqual(a.c2c(2, b"<b>x</b>", msgtype=7).code, Code.OK)  # not rich: opaque
        result = a.c2c(2, GOOD.encode(), msgtype=RICH)
        self.assertEqual(result.code, Code.OK)
        [pushed] = [m for m in b.pushed_messages() if m.msgtype == RICH]
        self.assertEqual(pushed.content, GOOD.encode())  # byte for byte, references and all

    def test_a_c2c_is_rich_when_the_recipients_app_says_so(self) -> None:
        customer = self.stack.login(1, 1001)
        result = customer.c2c(2, b"<script>alert(1)</script>", to_appcode=3001, msgtype=RICH)
        self.assertEqual(result.code, Code.BAD_REQUEST)
        self.assertEqual(result.reason, "rich content: an element other than <font>, <img /> or "
                                        "<shake /> at character 0")
        self.assertEqual(self.stack.logic.stats.totals()["accepted"], 0)

    def test_a_c2c_is_rich_when_the_senders_app_says_so(self) -> None:
        agent = self.stack.login(2, 3001)
        result = agent.c2c(1, b'<img url="javascript:alert(1)" />', to_appcode=1001, msgtype=RICH)
        self.assertEqual(result.code, Code.BAD_REQUEST)
        self.assertIn("absolute http or https URL", result.reason)

    def test_other_msgtypes_and_apps_stay_opaque(self) -> None:
        customer = self.stack.login(1, 1001)
        self.assertEqual(customer.c2c(3, b"a < b & c", to_appcode=1001, msgtype=RICH).code,
                         Code.OK)
        self.assertEqual(customer.c2c(2, b"a < b", to_appcode=3001, msgtype=11).code, Code.OK)

    def push(self, *items: PushItem) -> list:
        return self.successResultOf(Deferred.fromCoroutine(self.stack.logic.push_s2c(items)))

    def test_an_app_server_push_is_checked_for_its_recipients_app(self) -> None:
        bad, good, opaque = self.push(
            PushItem(2, 3001, RICH, b"<b>bold</b>"),
            PushItem(2, 3001, RICH, GOOD.encode()),
            PushItem(1, 1001, RICH, b"<b>bold</b>"),
        )
        self.assertIsInstance(bad, errors.BadRequest)
        self.assertEqual(bad.reason, "rich content: an element other than <font>, <img /> or "
                                     "<shake /> at character 0")
        self.assertEqual((good.msgid > 0, opaque.msgid > 0), (True, True))

    def test_content_that_is_not_utf8_is_refused_on_a_rich_msgtype(self) -> None:
        agent = self.stack.login(2, 3001)
        result = agent.c2c(1, b"caf\xe9", to_appcode=1001, msgtype=RICH)
        self.assertEqual((result.code, result.reason),
                         (Code.BAD_REQUEST, "rich content: not UTF-8 at byte 3"))

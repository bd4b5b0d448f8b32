"""PULL and HISTORY on one node: pages, limits, what each side sees."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.logic.service import PushItem, PushOutcome
from daojia_msg.protocol.codes import Code
from tests.helpers import Stack, inline_store


class PullTests(SynchronousTestCase):
    def test_250_pending_in_batches(self) -> None:
        stack = Stack()
        a = stack.login(1)
        sent = [a.c2c(2, b"%d" % i).msgid for i in range(250)]
        b = stack.connect()
        self.assertEqual(b.login(2).offline_count, 250)
        seen: list[int] = []
        after, sizes = 0, []
        while True:
            page = b.pull(after, limit=500)  # above the cap: capped, not refused
            self.assertEqual(page.code, Code.OK)
            ids = [m.msgid for m in page.messages]
            sizes.append(len(ids))
            self.assertEqual(ids, sorted(ids))
            seen += ids
            if not page.has_more:
                break
            after = ids[-1]
        self.assertEqual(sizes, [100, 100, 50])
        self.assertEqual(seen, sent)
        # ACK in batches of at most 1,000 ids; then nothing is pending.
        self.assertEqual(b.ack(seen).code, Code.OK)
        self.assertEqual(list(b.pull().messages), [])
        self.assertFalse(b.pull().has_more)
        b2 = stack.connect("10.0.0.3")
        self.assertEqual(b2.login(2).offline_count, 0)

    def test_default_limit(self) -> None:
        stack = Stack()
        a = stack.login(1)
        for _ in range(25):
            a.c2c(2)
        b = stack.login(2)
        page = b.pull()
        self.assertEqual(len(page.messages), 20)
        self.assertTrue(page.has_more)

    def test_pending_survive_restart(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        stack = Stack(store=inline_store(directory))
        a = stack.login(1)
        sent = [a.c2c(2, b"%d" % i).msgid for i in range(5)]
        self.successResultOf(stack.store.stop())
        restarted = Stack(store=inline_store(directory), clock=stack.clock)
        b = restarted.connect()
        self.assertEqual(b.login(2).offline_count, 5)
        self.assertEqual([m.msgid for m in b.pull().messages], sent)


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()
        self.a = self.stack.login(1)
        self.b = self.stack.login(2)
        self.c = self.stack.login(3)

    def test_both_sides_see_it(self) -> None:
        m1 = self.a.c2c(2, b"a->b").msgid
        m2 = self.b.c2c(1, b"b->a").msgid
        m3 = self.c.c2c(1, b"c->a").msgid
        self.assertEqual([m.msgid for m in self.a.history().messages], [m3, m2, m1])
        self.assertEqual([m.msgid for m in self.b.history().messages], [m2, m1])
        self.assertEqual([m.msgid for m in self.a.history(peer=3).messages], [m3])
        page = self.a.history(limit=2)
        self.assertEqual([m.msgid for m in page.messages], [m3, m2])
        self.assertTrue(page.has_more)
        page = self.a.history(before=m2)
        self.assertEqual([m.msgid for m in page.messages], [m1])
        self.assertFalse(page.has_more)

    def test_across_appcodes_of_one_user_system(self) -> None:
        a2 = self.stack.login(1, 1002, host="10.0.0.7")
        m1 = self.a.c2c(1, b"to my other device", to_appcode=1002).msgid
        m2 = self.b.c2c(1, b"to a on 1002", to_appcode=1002).msgid
        # Listed once, for every appcode of the uid's user system.
        self.assertEqual([m.msgid for m in self.a.history().messages], [m2, m1])
        self.assertEqual([m.msgid for m in a2.history().messages], [m2, m1])

    def test_s2c_in_history(self) -> None:
        [outcome] = self.successResultOf(Deferred.fromCoroutine(
            self.stack.logic.push_s2c([PushItem(2, 1001, 5, b"order")])))
        assert isinstance(outcome, PushOutcome)
        self.assertEqual([m.msgid for m in self.b.history().messages], [outcome.msgid])
        self.assertEqual(list(self.a.history().messages), [])


class PageSizeTests(SynchronousTestCase):
    def test_a_page_fits_one_frame_body(self) -> None:
        stack = Stack()
        a = stack.login(1)
        sent = [a.c2c(2, b"x" * 30000).msgid for _ in range(5)]
        b = stack.login(2)
        b.received()
        seen: list[int] = []
        after = 0
        while True:
            page = b.pull(after, limit=100)
            self.assertLessEqual(len(b.last.body), 65536)
            self.assertGreaterEqual(len(page.messages), 1)
            seen += [m.msgid for m in page.messages]
            if not page.has_more:
                break
            after = page.messages[-1].msgid
        self.assertEqual(seen, sent)
        # Each message counted as pulled once, though pages were cut to fit.
        self.assertEqual(stack.logic.stats.totals()["pulled"], len(sent))
        history = b.history(limit=100)
        self.assertLessEqual(len(b.last.body), 65536)
        self.assertTrue(history.has_more)
        self.assertEqual([m.msgid for m in history.messages], sent[::-1][:len(history.messages)])

    def test_largest_message_alone_fits(self) -> None:
        stack = Stack()
        a = stack.login(1)
        a.c2c(2, b"x" * 65000, client_msg_id="c" * 128, logid="L" * 64)
        b = stack.login(2)
        page = b.pull()
        self.assertEqual(len(page.messages), 1)
        self.assertLessEqual(len(b.last.body), 65536)

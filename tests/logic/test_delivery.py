"""The un-ACKed pushes of one connection: ACKs, the window limit, re-push order."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.logic.delivery import DeliveryWindow

TIMEOUT = 10.0


class FakeConnection:
    peer = "127.0.0.1:5555"
    host = "127.0.0.1"
    session = None

    def __init__(self) -> None:
        self.connected = True
        self.accepting = True
        self.pushed: list[bytes] = []

    def push(self, cmd: int, msgtype: int, body: bytes) -> int:
        if not self.accepting:
            return 0
        self.pushed.append(body)
        return len(self.pushed)


class DeliveryWindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.conn = FakeConnection()
        self.repushed: list[object] = []
        self.window = DeliveryWindow(self.clock, self.conn, TIMEOUT, 2, 3, self.repushed.append)

    def test_repushes_keep_deadline_order(self) -> None:
        """A re-pushed entry goes behind the others: each is re-pushed one
        timeout after its own last push, not after the head's."""
        self.window.push(1, 3, 0, b"a", "route-a")
        self.clock.advance(1)
        self.window.push(2, 3, 0, b"b", "route-b")
        self.clock.advance(TIMEOUT - 1)  # t=10: a is due
        self.assertEqual(self.conn.pushed, [b"a", b"b", b"a"])
        self.clock.advance(1)  # t=11: b is due, though a (now due at 20) was ahead of it
        self.assertEqual(self.conn.pushed, [b"a", b"b", b"a", b"b"])
        self.clock.advance(TIMEOUT - 1)  # t=20: a's second re-push
        self.assertEqual(self.conn.pushed[-1], b"a")
        self.assertEqual(self.repushed, ["route-a", "route-b", "route-a"])

    def test_given_up_after_max_repush(self) -> None:
        self.window.push(1, 3, 0, b"a", None)
        self.clock.pump([TIMEOUT] * 5)
        self.assertEqual(self.conn.pushed, [b"a"] * 3)  # the push and 2 re-pushes
        self.assertNotIn(1, self.window)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ack_stops_the_timer(self) -> None:
        self.window.push(1, 3, 0, b"a", None)
        self.window.push(2, 3, 0, b"b", None)
        self.window.acked([1])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.window.acked([2, 99])
        self.assertEqual(len(self.window), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full_window_and_refusing_connection(self) -> None:
        for msgid in (1, 2, 3):
            self.assertTrue(self.window.push(msgid, 3, 0, b"x", None))
        self.assertTrue(self.window.push(2, 3, 0, b"x", None))  # already in: not pushed twice
        self.assertFalse(self.window.push(4, 3, 0, b"x", None))  # full
        self.window.acked([1])
        self.conn.accepting = False
        self.assertFalse(self.window.push(4, 3, 0, b"x", None))
        self.assertEqual(len(self.conn.pushed), 3)

    def test_slotted(self) -> None:
        """One window per connection: no instance dict."""
        self.assertFalse(hasattr(self.window, "__dict__"))

"""Priority lanes of a congested connection (daojia_msg.gate.lanes,
docs/protocol.md, Back-pressure): Results first, then the pushes of the app's
``priority_msgtypes``, then the others; a full lane closes the connection and
its messages stay pending."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import default_config
from daojia_msg.gate.lanes import CONTROL, NORMAL, PRIORITY, Lanes
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack

#: The demo app's order msgtype in these tests: it takes the priority lane.
ORDER = 5
CHAT = 7


def stack_with_priority(lane_max: int = 1000) -> Stack:
    config = default_config()
    apps = dict(config.apps)
    apps[1001] = replace(apps[1001], priority_msgtypes=frozenset({ORDER}))
    return Stack(replace(config, apps=apps, limits=replace(config.limits, lane_max=lane_max)))


def contents(frames: list) -> list[bytes]:  # type: ignore[type-arg]
    out = []
    for frame in frames:
        msg = pb.Message()
        msg.ParseFromString(frame.body)
        out.append(msg.content)
    return out


class LanesTests(SynchronousTestCase):
    def test_frames_leave_lane_by_lane(self) -> None:
        lanes = Lanes(10)
        for lane, frame in [(NORMAL, b"chat1"), (PRIORITY, b"order"), (NORMAL, b"chat2"),
                            (CONTROL, b"result")]:
            self.assertTrue(lanes.add(lane, frame))
        self.assertEqual(len(lanes), 4)
        written: list[bytes] = []
        lanes.drain(written.append, lambda: False)
        self.assertEqual(written, [b"result", b"order", b"chat1", b"chat2"])
        self.assertEqual(len(lanes), 0)

    def test_drain_stops_when_the_socket_congests_again(self) -> None:
        lanes = Lanes(10)
        for i in range(5):
            lanes.add(NORMAL, b"%d" % i)
        written: list[bytes] = []
        lanes.drain(written.append, lambda: len(written) >= 2)
        self.assertEqual((written, len(lanes)), ([b"0", b"1"], 3))
        lanes.drain(written.append, lambda: False)
        self.assertEqual(written, [b"0", b"1", b"2", b"3", b"4"])

    def test_each_lane_is_bounded_on_its_own(self) -> None:
        lanes = Lanes(2)
        self.assertTrue(lanes.add(NORMAL, b"a") and lanes.add(NORMAL, b"b"))
        self.assertFalse(lanes.add(NORMAL, b"c"))
        self.assertTrue(lanes.add(PRIORITY, b"d"))  # another lane has room
        lanes.clear()
        self.assertEqual(len(lanes), 0)


class CongestedConnectionTests(SynchronousTestCase):
    def test_an_order_overtakes_the_chat_queued_before_it(self) -> None:
        stack = stack_with_priority()
        alice = stack.login(1)
        driver = stack.login(2)
        driver.proto.pauseProducing()  # the driver's socket is full
        for i in range(3):
            self.assertEqual(alice.c2c(2, b"chat %d" % i, msgtype=CHAT).code, Code.OK)
        self.assertEqual(alice.c2c(2, b"new order", msgtype=ORDER).code, Code.OK)
        self.assertEqual(driver.received(), [])
        driver.proto.resumeProducing()
        self.assertEqual(contents(driver.received()),
                         [b"new order", b"chat 0", b"chat 1", b"chat 2"])

    def test_without_congestion_nothing_is_reordered(self) -> None:
        stack = stack_with_priority()
        alice = stack.login(1)
        driver = stack.login(2)
        alice.c2c(2, b"chat", msgtype=CHAT)
        alice.c2c(2, b"order", msgtype=ORDER)
        self.assertEqual(contents(driver.received()), [b"chat", b"order"])

    def test_results_leave_before_pushes(self) -> None:
        """A request answered while the socket is congested: its Result goes
        out before the pushes that queued earlier."""
        stack = stack_with_priority()
        alice = stack.login(1)
        driver = stack.login(2)
        driver.proto.pauseProducing()
        alice.c2c(2, b"order", msgtype=ORDER)
        alice.c2c(2, b"chat", msgtype=CHAT)
        driver.proto._out(CONTROL, b"a result")  # what _reply_body does
        driver.proto.resumeProducing()
        raw = driver.transport.value()
        self.assertTrue(raw.startswith(b"a result"), raw[:20])

    def test_a_full_lane_closes_the_connection_and_the_message_stays_pending(self) -> None:
        stack = stack_with_priority(lane_max=2)
        alice = stack.login(1)
        driver = stack.login(2)
        driver.proto.pauseProducing()
        msgids = [alice.c2c(2, b"chat %d" % i, msgtype=CHAT).msgid for i in range(3)]
        self.assertTrue(driver.transport.disconnected)  # the third did not fit
        self.assertEqual(driver.received(), [])
        # Every one of them waits for the driver's next session (none was ACKed).
        back = stack.login(2, host="10.0.0.9")
        self.assertEqual(sorted(m.msgid for m in back.pull().messages), sorted(msgids))

    def test_a_stalled_peer_is_still_closed(self) -> None:
        stack = stack_with_priority()
        alice = stack.login(1)
        driver = stack.login(2)
        driver.proto.pauseProducing()
        alice.c2c(2, b"chat", msgtype=CHAT)
        stack.clock.advance(stack.config.limits.write_stall_s)
        self.assertTrue(driver.transport.disconnected)

    def test_pushes_held_during_a_login_take_their_lanes(self) -> None:
        stack = stack_with_priority()
        driver = stack.login(2)
        proto = driver.proto
        proto._held = []  # as during a LOGIN: pushes wait for its answer
        proto.push(Cmd.S2C, CHAT, b"c")
        proto.push(Cmd.S2C, ORDER, b"o")
        proto.pauseProducing()
        proto._barrier = True
        proto._inflight += 1
        login = type("F", (), {"cmd": Cmd.LOGIN})()
        proto._done(login)  # the LOGIN answered: what it held goes to the lanes
        self.assertEqual(driver.received(), [])
        proto.resumeProducing()
        self.assertEqual([f.msgtype for f in driver.received()], [ORDER, CHAT])

"""PerTurn: the calls of one reactor turn as one."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.turns import PerTurn


class PerTurnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ones: list[int] = []
        self.manys: list[list[int]] = []
        self.answer: Deferred[list[str]] | None = None
        self.turns: PerTurn[int, str] = PerTurn(self.clock, self.one, self.many, most=4)

    def one(self, key: int) -> Deferred[str]:
        self.ones.append(key)
        return succeed(f"one {key}")

    def many(self, keys: list[int]) -> Deferred[list[str]]:
        self.manys.append(keys)
        if self.answer is not None:
            return self.answer
        return succeed([f"many {k}" for k in keys])

    def test_one_call_for_the_turn(self) -> None:
        waiting = [self.turns.call(k) for k in (1, 2, 3)]
        for d in waiting:
            self.assertNoResult(d)  # until the end of the turn
        self.clock.advance(0)
        self.assertEqual([self.successResultOf(d) for d in waiting], ["many 1", "many 2", "many 3"])
        self.assertEqual((self.manys, self.ones), ([[1, 2, 3]], []))

    def test_alone_in_its_turn(self) -> None:
        d = self.turns.call(7)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), "one 7")
        self.assertEqual((self.manys, self.ones), ([], [7]))
        # The next turn starts afresh.
        waiting = [self.turns.call(k) for k in (8, 9)]
        self.clock.advance(0)
        self.assertEqual([self.successResultOf(d) for d in waiting], ["many 8", "many 9"])

    def test_most_keys_go_at_once(self) -> None:
        waiting = [self.turns.call(k) for k in range(6)]
        self.assertEqual(self.manys, [[0, 1, 2, 3]])  # the fourth sent the first four
        self.assertEqual([self.successResultOf(d) for d in waiting[:4]],
                         ["many 0", "many 1", "many 2", "many 3"])
        self.assertNoResult(waiting[4])
        self.clock.advance(0)
        self.assertEqual(self.manys, [[0, 1, 2, 3], [4, 5]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failure_fails_each(self) -> None:
        self.answer = fail(RuntimeError("redis down"))
        waiting = [self.turns.call(k) for k in (1, 2)]
        self.clock.advance(0)
        for d in waiting:
            self.failureResultOf(d, RuntimeError)

    def test_a_short_answer_fails_each(self) -> None:
        self.answer = succeed(["many 1"])
        waiting = [self.turns.call(k) for k in (1, 2)]
        self.clock.advance(0)
        for d in waiting:
            self.assertIn("1 answers for 2 keys",
                          self.failureResultOf(d, ValueError).getErrorMessage())

    def test_answered_later(self) -> None:
        self.answer = Deferred()
        waiting = [self.turns.call(k) for k in (1, 2)]
        self.clock.advance(0)
        late = self.turns.call(3)  # a new turn while the first is out
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(late), "one 3")
        self.answer.callback(["a", "b"])
        self.assertEqual([self.successResultOf(d) for d in waiting], ["a", "b"])

"""Tests for daojia_msg.client.backoff: the pause after RATE_LIMITED."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.client.backoff import BASE_S, CAP_S, SendBackoff


class SendBackoffTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.draws = [1.0]
        self.backoff = SendBackoff(self.clock, rng=lambda: self.draws[0])

    def test_no_pause_until_refused(self) -> None:
        self.assertFalse(self.backoff.paused())
        self.assertEqual(self.backoff.remaining(), 0.0)

    def test_pause_doubles_with_refusals_in_a_row_up_to_the_cap(self) -> None:
        """Each refusal sent after the last pause began doubles the next pause:
        50 ms, 100, 200, 400, 800, then 1 s at most (no jitter drawn here)."""
        pauses = []
        for _ in range(7):
            pauses.append(self.backoff.refused(sent_at=self.clock.seconds()))
            self.assertTrue(self.backoff.paused())
            self.clock.advance(pauses[-1])
            self.assertFalse(self.backoff.paused())
        self.assertEqual(pauses, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual((BASE_S, CAP_S), (0.05, 1.0))

    def test_jitter_keeps_at_least_half(self) -> None:
        self.draws[0] = 0.0
        self.assertEqual(self.backoff.refused(), 0.025)
        self.clock.advance(0.024)
        self.assertTrue(self.backoff.paused())
        self.clock.advance(0.001)
        self.assertFalse(self.backoff.paused())

    def test_accepted_starts_the_row_again(self) -> None:
        for _ in range(3):
            self.clock.advance(self.backoff.refused(sent_at=self.clock.seconds()))
        self.backoff.accepted(sent_at=self.clock.seconds())
        self.assertEqual(self.backoff.refused(sent_at=self.clock.seconds()), 0.05)

    def test_frames_in_flight_before_the_pause_do_not_lengthen_it(self) -> None:
        """Five frames went out together and all come back refused: one pause
        of 50 ms, not 50 + 100 + ... ms; nor does an OK for one of them end
        the row (it says nothing of the node since the pause began)."""
        sent_at = self.clock.seconds()
        self.clock.advance(0.01)
        self.assertEqual(self.backoff.refused(sent_at), 0.05)
        for _ in range(4):
            self.assertEqual(self.backoff.refused(sent_at), 0.0)
        self.assertAlmostEqual(self.backoff.remaining(), 0.05)
        self.backoff.accepted(sent_at)
        self.clock.advance(0.05)
        self.assertEqual(self.backoff.refused(self.clock.seconds()), 0.1)
        self.assertEqual(self.backoff.refusals, 2)

    def test_bad_bounds_refused(self) -> None:
        for base, cap in ((0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)):
            with self.assertRaises(ValueError):
                SendBackoff(self.clock, base_s=base, cap_s=cap)

"""The hourly purge of old de-duplication keys."""

from __future__ import annotations

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Stack

BIG = 2**63


class DedupPurgeTests(SynchronousTestCase):
    def test_purge_loop_survives_any_error(self) -> None:
        stack = Stack()
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        stack.store.purge_dedup = lambda before: fail(ZeroDivisionError())  # type: ignore[method-assign]
        stack.clock.advance(3600)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        stack.clock.advance(3600)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

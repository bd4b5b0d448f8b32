"""The node's garbage-collector settings."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg import gctune


class GcTuneTests(SynchronousTestCase):
    def setUp(self) -> None:
        thresholds = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *thresholds)
        self.addCleanup(gc.unfreeze)

    def test_freezes_the_start_up_heap_and_raises_threshold0(self) -> None:
        survivor = [object()]  # alive now: frozen, no longer scanned
        gctune.tune_after_start()
        self.assertGreater(gc.get_freeze_count(), len(survivor))
        self.assertEqual(gc.get_threshold(),
                         (gctune.THRESHOLD0, gctune.THRESHOLD1, gctune.THRESHOLD2))
        self.assertGreater(gctune.THRESHOLD0, 700)  # CPython's default

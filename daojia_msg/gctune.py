# -*- test-case-name: tests.test_gctune -*-
"""Garbage-collector settings for a long-running node (applied by the twistd
plugin once the node serves; tests and embedders keep CPython's defaults).

A node keeps a large heap of long-lived objects (modules, protobuf
descriptors, config, then every connection and session), and every message
allocates a few short-lived ones (Deferreds, timers, frames) that live through
a store or bus round trip and so get promoted. CPython's full collections
then scan the whole heap again and again. So, after start-up:

* :func:`gc.freeze` moves everything allocated so far to a permanent generation
  that collections no longer scan;
* the youngest generation's threshold goes from 700 to :data:`THRESHOLD0`
  allocations, so fewer in-flight objects are promoted before they die.

The effect is measured in BENCHMARKS.md.
"""

from __future__ import annotations

import gc

from twisted.logger import Logger

log = Logger()

THRESHOLD0 = 10_000
THRESHOLD1 = 10
THRESHOLD2 = 10


def tune_after_start() -> None:
    """Freeze the start-up heap and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(THRESHOLD0, THRESHOLD1, THRESHOLD2)
    log.info("gc: {frozen} start-up objects frozen, thresholds {thresholds}",
             frozen=gc.get_freeze_count(), thresholds=gc.get_threshold())

"""What the bus tests of every bus share."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from daojia_msg.core.errors import BusUnavailable


async def unavailable(test: TestCase, d: Deferred[Any]) -> BusUnavailable:
    """The :class:`BusUnavailable` that ``d`` fails with (else the test fails)."""
    error: BusUnavailable = await test.assertFailure(d, BusUnavailable)
    return error

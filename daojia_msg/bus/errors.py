"""Bus errors."""

from __future__ import annotations


class BusError(Exception):
    """Base of the bus errors."""


class BusUnavailable(BusError):
    """The bus did not accept the message: nothing was published."""

"""Store errors."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store errors."""


class StoreUnavailable(StoreError):
    """The backend is down or timed out: the operation did not happen."""

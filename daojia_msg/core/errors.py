# -*- test-case-name: tests.core.test_errors -*-
"""The backend error tree, shared by every layer.

:class:`Unavailable` means a backend did not do the operation (down, cut
off, timed out): the caller may retry. Its subclasses say which kind of
backend failed, so a peer node that cannot be reached is not mistaken for a
message store that is down. A write that failed with :class:`StoreUncertain`
or :class:`BusTimeout` may have been done: its client is answered TIMEOUT,
never UNAVAILABLE (docs/protocol.md §7.4).
"""

from __future__ import annotations


class Unavailable(Exception):
    """A backend did not do the operation: nothing happened, retry later."""


class StoreError(Exception):
    """Base of the store errors (a store refused or failed an operation)."""


class StoreUnavailable(StoreError, Unavailable):
    """The store backend (database, Redis) is down or timed out."""


class StoreUncertain(StoreUnavailable):
    """The store backend is down, and lost the connection while a query was
    under way (perhaps its COMMIT): a write may or may not have been done.
    (A read that failed so is simply unavailable: a subclass.)"""


class PeerUnavailable(Unavailable):
    """Another node of the cluster could not be reached in time."""


class BusError(Exception):
    """Base of the message-bus errors."""


class BusUnavailable(BusError, Unavailable):
    """The bus did not accept the message: nothing was published."""


class BusTimeout(BusError):
    """The bus did not confirm the message in time: it may or may not have
    been published."""

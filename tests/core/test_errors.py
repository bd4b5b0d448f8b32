"""Tests for :mod:`daojia_msg.core.errors`: which failures count as unavailable."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import (
    BusError,
    BusUnavailable,
    PeerUnavailable,
    StoreError,
    StoreUnavailable,
    Unavailable,
)


class HierarchyTests(SynchronousTestCase):
    def test_each_backend_kind_is_unavailable(self) -> None:
        for cls in (StoreUnavailable, PeerUnavailable, BusUnavailable):
            self.assertTrue(issubclass(cls, Unavailable), cls)

    def test_a_peer_failure_is_not_a_store_failure(self) -> None:
        self.assertFalse(issubclass(PeerUnavailable, StoreError))
        self.assertFalse(issubclass(PeerUnavailable, BusError))

    def test_store_and_bus_failures_stay_apart(self) -> None:
        self.assertFalse(issubclass(StoreUnavailable, BusError))
        self.assertFalse(issubclass(BusUnavailable, StoreError))

"""The in-memory session store runs the session store suite."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from daojia_msg.store.memory import MemorySessionStore
from tests.store.suites import make_session_store_tests


def memory_fixture(test: TestCase) -> MemorySessionStore:
    return MemorySessionStore()


class MemorySessionStoreTests(make_session_store_tests(memory_fixture)):  # type: ignore[misc]
    """The suite on :class:`MemorySessionStore`."""

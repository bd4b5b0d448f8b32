"""One node to a data directory: the lock on ``node.lock``."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import ConfigError
from daojia_msg.store.datadir import LOCK_NAME, DataDirLock


class DataDirLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        os.makedirs(self.path)

    def test_a_second_holder_is_refused_with_the_first_ones_pid(self) -> None:
        first = DataDirLock(self.path)
        first.acquire()
        self.addCleanup(first.release)
        with open(os.path.join(self.path, LOCK_NAME)) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")
        with self.assertRaises(ConfigError) as caught:
            DataDirLock(self.path).acquire()
        self.assertEqual(caught.exception.path, ("node", "data_dir"))
        self.assertEqual(caught.exception.msg,
                         f"{self.path!r} is in use by another node (pid {os.getpid()}); "
                         "give each node its own data directory")

    def test_released_it_is_free_again(self) -> None:
        first = DataDirLock(self.path)
        first.acquire()
        first.release()
        first.release()  # twice is harmless
        second = DataDirLock(self.path)
        second.acquire()  # a stale lock file with an old pid is no lock
        second.release()

    def test_other_directories_are_independent(self) -> None:
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        one, two = DataDirLock(self.path), DataDirLock(other)
        one.acquire()
        two.acquire()
        one.release()
        two.release()

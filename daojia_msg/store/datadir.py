# -*- test-case-name: tests.store.test_datadir -*-
"""One node to a data directory.

Two single nodes (no Redis) on one data directory would both be node 0 on one
SQLite file, hand out the same msgids and fail each other's writes (UNIQUE
constraint on the msgid, answered 503). So such a node holds an exclusive lock on
``<data_dir>/node.lock`` while it runs (``flock``: the kernel drops it when
the process ends, however it ends, so a SIGKILLed node leaves nothing to
clean up), and a second node on the same directory stops at start-up,
naming the directory and the pid of the node that holds it. Nodes of a
cluster (Redis) take their node ids from leases, which keep them apart.
"""

from __future__ import annotations

import fcntl
import os

from daojia_msg.config import ConfigError

#: The lock file's name in the data directory; it holds the owner's pid.
LOCK_NAME = "node.lock"


class DataDirLock:
    """The lock on data directory ``path``: :meth:`acquire`, :meth:`release`."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Hold the lock, or raise :class:`ConfigError` (``node.data_dir``)
        when another node holds it."""
        lock = os.path.join(self.path, LOCK_NAME)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.path!r} is in use by another node (pid {holder}); "
                              "give each node its own data directory",
                              ("node", "data_dir")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

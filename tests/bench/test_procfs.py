"""Tests for :mod:`daojia_msg.bench.procfs`: reading processes' RSS and CPU from /proc."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import procfs


class ProcReaderTests(SynchronousTestCase):
    def test_proc_readers(self) -> None:
        self.assertGreater(procfs.proc_rss_kib(os.getpid()) or 0, 0)
        self.assertIsNotNone(procfs.proc_cpu_s(os.getpid()))
        self.assertIsNone(procfs.proc_rss_kib(2**31))
        me = os.getpid()
        self.assertEqual(procfs.procs_rss_kib([me, os.getppid()]),
                         (procfs.proc_rss_kib(me) or 0) + (procfs.proc_rss_kib(os.getppid()) or 0))
        self.assertIsNone(procfs.procs_rss_kib([me, 2**31]))
        self.assertIsNone(procfs.procs_cpu_s([2**31]))
        # CPU time only grows: the sum read after one reading is at least twice it.
        single = procfs.proc_cpu_s(me) or 0
        self.assertGreaterEqual(procfs.procs_cpu_s([me, me]) or 0, 2 * single)

# -*- test-case-name: tests.bench.test_bench -*-
"""argparse types that more than one command-line tool takes (the benchmark,
the fault suite): neutral, they import nothing of the node."""

from __future__ import annotations

import argparse
import os


def writable_file(value: str) -> str:
    """A file written at the end of a run of minutes: its folder must exist
    and be writable before the run starts, not only after it."""
    folder = os.path.dirname(os.path.abspath(value))
    if os.path.isdir(folder) and os.access(folder, os.W_OK):
        return value
    raise argparse.ArgumentTypeError(f"cannot write {value}: {folder} is not a writable "
                                     "directory")

"""``tools/old-rows``: the purge benchmark's old rows, laid out as the MySQL
store lays them out (BENCHMARKS.md, "Purging a million rows")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.ids import IdGenerator
from tests.servers import drop_mysql_database, require_mysql
from tests.store.mysql.fixtures import query

TOOL = Path(__file__).resolve().parent.parent / "tools" / "old-rows"


def old_rows(*args: str) -> str:
    done = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=120)
    if done.returncode:
        raise AssertionError(done.stderr)
    return done.stdout


class OldRowsTests(SynchronousTestCase):
    def test_load_and_copy(self) -> None:
        """100 old C2C messages are 400 rows (1 pending, 2 history, 1 de-dup
        key each), all older than the default history retention, spread over
        the shard tables; a copy holds the same rows."""
        url = require_mysql()
        self.addCleanup(drop_mysql_database, url)
        copy = url + "_copy"
        self.addCleanup(drop_mysql_database, copy)
        old_rows("load", "--mysql", url, "--messages", "100", "--shards", "4")
        counts = old_rows("count", "--mysql", url).split()
        self.assertEqual(counts[-1], "total=400")
        newest = max(r[0] for n in range(4)
                     for r in query(url, f"SELECT MAX(msgid) FROM history_{n}"))
        days = (time.time() * 1000 - IdGenerator.time_ms(newest)) / 86_400_000
        self.assertGreater(days, 180)
        self.assertEqual(query(url, "SELECT shards FROM schema_version"), [(4,)])
        for n in range(4):
            self.assertGreater(query(url, f"SELECT COUNT(*) FROM history_{n}")[0][0], 0)
        old_rows("copy", "--from", url.rsplit("/", 1)[1], "--mysql", copy)
        self.assertEqual(old_rows("count", "--mysql", copy).split(), counts)

"""``tools/storage-size``: bytes per message in each MySQL table kind,
written through the MySQL store (docs/capacity.md)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

from tests.servers import drop_mysql_database, require_mysql
from tests.store.mysql.fixtures import query

TOOL = Path(__file__).resolve().parent.parent / "tools" / "storage-size"


def load_tool() -> ModuleType:
    """The tool as a module (its name has no ``.py``), loaded once."""
    if "storage_size" not in sys.modules:
        loader = SourceFileLoader("storage_size", str(TOOL))
        spec = spec_from_loader("storage_size", loader)
        assert spec is not None
        sys.modules["storage_size"] = module_from_spec(spec)
        loader.exec_module(sys.modules["storage_size"])
    return sys.modules["storage_size"]


class ContentTests(SynchronousTestCase):
    def test_contents_have_the_sizes_asked_for(self) -> None:
        tool = load_tool()
        rng = random.Random(1)
        for size in (60, 131, 200):
            text = tool.chat_text(rng, size)
            self.assertEqual(len(text), size)
            text.decode()  # whole UTF-8 characters
        for size in (300, 437, 500):
            order = tool.order_json(rng, size)
            self.assertEqual(len(order), size)
            self.assertEqual(json.loads(order)["type"], "order.new")

    def test_unknown_profiles_are_refused(self) -> None:
        tool = load_tool()
        with self.assertRaises(SystemExit):
            tool.parse_args(["--mysql", "mysql://root@127.0.0.1/x", "--profiles", "c2s"])


class StorageSizeTests(SynchronousTestCase):
    def test_rows_per_message_and_bytes_per_row(self) -> None:
        """On a few hundred messages per profile: a C2C writes one pending
        row, two history rows and one de-dup key; an S2C one pending and one
        history row, and a de-dup key only with an idempotency key; every row
        costs more than its content; the tables are dropped at the end."""
        url = require_mysql()
        self.addCleanup(drop_mysql_database, url)
        out = Path(self.mktemp())
        done = subprocess.run(
            [sys.executable, str(TOOL), "--mysql", url, "--messages", "300", "--json", str(out)],
            capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("c2c", done.stdout)
        doc = json.loads(out.read_text())
        rows = {name: {kind: m["rows"] for kind, m in per.items()}
                for name, per in doc["per_message"].items()}
        self.assertEqual(rows, {
            "c2c": {"messages": 1.0, "history": 2.0, "dedup": 1.0},
            "s2c": {"messages": 1.0, "history": 1.0, "dedup": 0.0},
            "s2c-idem": {"messages": 1.0, "history": 1.0, "dedup": 1.0},
        })
        for name, profile in doc["profiles"].items():
            for kind in ("messages", "history"):
                self.assertGreater(profile["tables"][kind]["data_index"],
                                   profile["content_bytes_mean"], (name, kind))
        history = doc["profiles"]["c2c"]["tables"]["history"]["indexes"]
        self.assertIn("PRIMARY", history)
        database = url.rsplit("/", 1)[1]
        self.assertEqual(query(url, "SELECT COUNT(*) FROM information_schema.TABLES"
                                    " WHERE TABLE_SCHEMA = %s", database), [(0,)])

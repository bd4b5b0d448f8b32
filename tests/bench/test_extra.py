"""``msgplatform-bench`` without the ``bench`` extra: one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

#: Runs the console script's entry point with ``missing`` made unimportable
#: (None in sys.modules), as a plain ``pip install -e .`` leaves it.
SCRIPT = """
import sys
for name in sys.argv[1:]:
    sys.modules[name] = None
from daojia_msg.bench.cli import main
sys.exit(main(["--help"]))
"""


def bench_help(*missing: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, *missing], capture_output=True,
                          text=True, timeout=60, check=False)


class BenchExtraTests(SynchronousTestCase):
    def test_without_numpy(self) -> None:
        done = bench_help("numpy")
        self.assertEqual((done.returncode, done.stdout, done.stderr), (
            2, "", "msgplatform-bench needs the bench extra (numpy missing): "
                   "pip install -e '.[bench]'\n"))

    def test_without_either(self) -> None:
        done = bench_help("numpy", "tqdm")
        self.assertEqual(done.returncode, 2)
        self.assertIn("(numpy, tqdm missing)", done.stderr)

    def test_with_the_extra(self) -> None:
        done = bench_help()
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertIn("usage: msgplatform-bench", done.stdout)

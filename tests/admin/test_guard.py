"""Tests for daojia_msg.admin.guard: nothing typed at the manhole stops the node.

Each test types a line that would block (interactive help, ``input()``, a
pager, a long sleep, pdb, a read of ``sys.stdin``, ``exit()``) at a manhole
connected through :mod:`twisted.test.iosim` on a :class:`Clock`. The process's
real standard input, ``time.sleep`` and ``os.system`` are replaced by
tripwires first, so a line that got through would be seen (and would not
hang the test run): the line must come back at once, the tripwires must be
untouched, and the node (a second session, a timed call) still answers.
:mod:`tests.admin.test_manhole_node` does the same against a real node in a
terminal, with ``/healthz``.
"""

from __future__ import annotations

import builtins
import io
import os
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.admin import guard, manhole
from daojia_msg.admin.guard import MAX_SLEEP_S, MAX_WAIT_S, LineGuard, Refused, help_text
from daojia_msg.admin.manhole import ManholeFactory, make_manhole_factory
from tests.admin.telnet import PASSWORD, ManholeTestCase


class TtyStdin(io.TextIOBase):
    """A terminal's standard input that records every read (and answers end of file)."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def isatty(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:
        self.reads.append("readline")
        return ""

    def read(self, size: int | None = -1) -> str:
        self.reads.append("read")
        return ""


class Tripwires:
    """Stand-ins for what would block the test run, recording their calls."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.stdin = TtyStdin()
        self.sleeps: list[float] = []
        self.commands: list[str] = []
        test.patch(sys, "stdin", self.stdin)
        test.patch(sys, "__stdin__", self.stdin)
        test.patch(time, "sleep", self.sleeps.append)
        test.patch(os, "system", self._system)

    def _system(self, command: str) -> int:
        self.commands.append(command)
        return 0

    def untouched(self) -> bool:
        return not (self.stdin.reads or self.sleeps or self.commands)


class PromptTests(ManholeTestCase):
    """Each line comes back with an answer or a refusal; the node goes on."""

    def setUp(self) -> None:
        super().setUp()
        self.wires = Tripwires(self)
        self.client, self.pump = self.login()
        self.ticks: list[float] = []

    def run_line(self, line: str) -> str:
        """Type ``line``: what it showed. Then the node still answers: a timed
        call fires and a second session computes."""
        shown = self.evaluate(self.client, self.pump, line)
        self.assertTrue(shown.endswith(">>> ") or self.client.lost, shown)
        self.clock.callLater(1, self.ticks.append, self.clock.seconds() + 1)
        self.clock.advance(1)
        self.assertEqual(self.ticks[-1], self.clock.seconds())
        other, other_pump = self.login()
        self.assertIn("\n42\n", self.evaluate(other, other_pump, "6*7"))
        return shown

    def assertRefused(self, line: str, why: str) -> None:
        shown = self.run_line(line)
        self.assertIn("Refused: ", shown)
        self.assertIn(why, shown)
        self.assertNotIn("Traceback", shown)
        self.assertTrue(self.wires.untouched())

    def test_help_without_argument_explains(self) -> None:
        shown = self.run_line("help()")
        self.assertIn("Interactive help would read the node's own terminal", shown)
        self.assertNotIn("help>", shown)
        self.assertTrue(self.wires.untouched())

    def test_help_on_an_object(self) -> None:
        shown = self.run_line("help(len)")
        self.assertIn("Help on built-in function len in module builtins:", shown)
        self.assertIn("Return the number of items in a container.", shown)
        self.assertTrue(self.wires.untouched())

    def test_help_on_a_topic_and_a_keyword(self) -> None:
        """These go through pydoc's own pager."""
        self.assertIn('The "if" statement', self.run_line('help("if")'))
        self.assertIn("class bool(int)", self.run_line('help("True")'))
        self.assertIn("Here is a list of the Python keywords.",
                      self.run_line('help("keywords")'))
        self.assertTrue(self.wires.untouched())

    def test_help_by_name(self) -> None:
        shown = self.run_line('help("str.split")')
        self.assertIn("Help on method_descriptor in str:", shown)
        self.assertIn("str.split = split(self, /, sep=None, maxsplit=-1)", shown)

    def test_help_modules_is_refused(self) -> None:
        self.assertRefused('help("modules")', "imports every module installed")
        self.assertRefused('help("modules json")', "imports every module installed")

    def test_help_repr(self) -> None:
        self.assertIn("the manhole has no interactive help", self.run_line("help"))

    def test_pydoc_help_interactive(self) -> None:
        self.assertRefused("import pydoc; pydoc.help()", "sys.stdin is the node's standard input")

    def test_input(self) -> None:
        self.assertRefused("input()", "input() would wait on the node's standard input")
        self.assertRefused("name = input('name? ')", "the manhole asks nothing")
        self.assertIn("NameError: name 'raw_input' is not defined", self.run_line("raw_input()"))

    def test_stdin(self) -> None:
        for line in ("sys.stdin.read()", "sys.stdin.readline()", "[l for l in sys.stdin]",
                     "sys.__stdin__.read(1)", "sys.stdin.fileno()", "sys.stdin.close()"):
            self.evaluate(self.client, self.pump, "import sys")
            self.assertRefused(line, "sys.stdin is the node's standard input, not this session's")
        self.assertIn("\nFalse\n", self.run_line("sys.stdin.isatty()"))
        # Outside a line, the process's standard input is its own again.
        self.assertIs(sys.stdin, self.wires.stdin)

    def test_pager(self) -> None:
        shown = self.run_line("import pydoc; pydoc.pager('line\\n' * 3000)")
        self.assertEqual(shown.count("line\n"), 3000)
        self.assertTrue(self.wires.untouched())

    def test_shell_commands(self) -> None:
        self.evaluate(self.client, self.pump, "import os")
        self.assertRefused('os.system("less /etc/passwd")',
                           "os.system() waits for the command with the node stopped")
        self.assertRefused('os.popen("less /etc/passwd").read()', "os.popen() waits")

    def test_long_sleep_refused_short_sleep_done(self) -> None:
        self.evaluate(self.client, self.pump, "import time")
        self.assertRefused("time.sleep(60)", "time.sleep(60) would stop the node for that long")
        self.assertRefused("from time import sleep; sleep(1)", "the manhole allows 0.1 s")
        self.run_line(f"time.sleep({MAX_SLEEP_S})")
        self.assertEqual(self.wires.sleeps, [MAX_SLEEP_S])

    def test_breakpoint_and_pdb(self) -> None:
        self.assertRefused("breakpoint()", "pdb would stop the whole node")
        self.assertRefused("import sys; sys.breakpointhook()", "pdb would stop the whole node")
        self.assertRefused("import pdb; pdb.set_trace()", "sys.stdin is the node's standard input")
        self.assertNotIsInstance(getattr(sys.gettrace(), "__self__", None), __import__("bdb").Bdb)

    def test_code_interact_and_getpass(self) -> None:
        self.assertRefused("import code; code.interact(banner='', exitmsg='')", "sys.stdin is the node's")
        self.assertRefused("import getpass; getpass.getpass()", "getpass() reads the node's")

    def test_license_pages_no_further(self) -> None:
        self.assertIn("Refused: sys.stdin is the node's", self.run_line("license()"))
        self.assertTrue(self.wires.untouched())

    def test_exit_ends_the_session_not_the_node(self) -> None:
        for line in ("exit()", "quit()", "import sys; sys.exit(3)", "raise SystemExit",
                     "def bye(): exit()\n"):
            client, pump = self.login()
            shown = self.evaluate(client, pump, line)
            if line.endswith("\n"):  # a block: one more empty line runs it
                self.evaluate(client, pump, "")
                shown = self.evaluate(client, pump, "bye()")
            self.assertIn("Bye (the node goes on).", shown)
            self.assertTrue(client.lost, line)
        self.assertIn("\n42\n", self.run_line("6*7"))  # the first session still works
        self.assertIs(sys.stdin, self.wires.stdin)  # and nothing closed the node's stdin

    def test_exit_repr(self) -> None:
        self.assertIn("Use exit() or Ctrl-D to leave the admin session",
                      self.run_line("exit"))

    def test_node_builtins_untouched(self) -> None:
        self.run_line("help()")
        self.run_line("exit")
        self.assertEqual(type(builtins.help).__name__, "_Helper")
        self.assertEqual(type(builtins.exit).__name__, "Quitter")
        self.assertEqual(builtins.input.__module__, "builtins")

    def test_a_slow_line_is_reported_and_logged(self) -> None:
        self.patch(manhole, "monotonic", lambda: self.now)
        shown = self.run_line("crunch()")
        self.assertIn("(this line held the whole node for 2.5 s)", shown)
        warnings = [formatEvent(e) for e in self.events
                    if "held the reactor" in e.get("log_format", "")]
        self.assertEqual(warnings, ["admin manhole: a typed line held the reactor for 2.5 s"])
        self.assertNotIn("crunch", repr(list(self.events)))
        self.assertNotIn("held the whole node", self.run_line("6*7"))

    def factory(self, clustered: bool = False) -> ManholeFactory:
        """With ``crunch()``: a line that takes 2.5 s (of :meth:`monotonic`)."""
        namespace = self.node.namespace(clustered)
        namespace["crunch"] = self.crunch
        return make_manhole_factory(namespace, PASSWORD, self.clock)

    now = 100.0

    def crunch(self) -> None:
        self.now += 2.5


class LineGuardTests(SynchronousTestCase):
    """The stand-ins act only on the thread inside the line, and only then."""

    def setUp(self) -> None:
        self.wires = Tripwires(self)

    def test_other_threads_see_the_real_objects(self) -> None:
        seen: list[Any] = []

        def elsewhere() -> None:
            time.sleep(60)
            seen.append(sys.stdin.readline())
            seen.append(os.system("true"))

        with LineGuard():
            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
            self.assertRaises(Refused, time.sleep, 60)
        self.assertEqual(seen, ["", 0])
        self.assertEqual(self.wires.sleeps, [60])

    def test_what_a_line_kept_is_real_afterwards(self) -> None:
        with LineGuard():
            from time import sleep
            stdin = sys.stdin
            self.assertRaises(Refused, sleep, 60)
            self.assertRaises(Refused, lambda: stdin.readline())
        sleep(60)
        self.assertEqual(stdin.readline(), "")
        self.assertEqual(self.wires.sleeps, [60])
        self.assertEqual(self.wires.stdin.reads, ["readline"])

    def test_everything_is_put_back(self) -> None:
        before = (sys.stdin, sys.__stdin__, sys.breakpointhook, time.sleep, os.system,
                  os.popen, subprocess.Popen.wait, subprocess.Popen.communicate,
                  guard.pydoc.pager, guard.getpass.getpass)
        with self.assertRaises(ValueError), LineGuard():
            int("not a number")
        after = (sys.stdin, sys.__stdin__, sys.breakpointhook, time.sleep, os.system,
                 os.popen, subprocess.Popen.wait, subprocess.Popen.communicate,
                 guard.pydoc.pager, guard.getpass.getpass)
        self.assertEqual(before, after)

    def test_subprocess_waits_are_bounded(self) -> None:
        timeouts: list[float | None] = []

        def wait(process: Any, timeout: float | None = None) -> int:
            timeouts.append(timeout)
            raise subprocess.TimeoutExpired("sleep", timeout or 0)

        def communicate(process: Any, input: Any = None, timeout: float | None = None) -> Any:
            timeouts.append(timeout)
            return (b"", b"")

        self.patch(subprocess.Popen, "wait", wait)
        self.patch(subprocess.Popen, "communicate", communicate)
        process: Any = object.__new__(subprocess.Popen)
        with LineGuard():
            self.assertRaises(subprocess.TimeoutExpired, process.wait)
            self.assertRaises(subprocess.TimeoutExpired, process.wait, 30)
            self.assertRaises(subprocess.TimeoutExpired, process.wait, 0.2)
            process.communicate(timeout=None)
        self.assertEqual(timeouts, [MAX_WAIT_S, MAX_WAIT_S, 0.2, MAX_WAIT_S])

    def test_a_real_quick_subprocess_runs(self) -> None:
        with LineGuard():
            done = subprocess.run(["true"], timeout=None, check=True)
        self.assertEqual(done.returncode, 0)

    def test_help_text_outside_a_line(self) -> None:
        """help(x) later (in a callback) writes no pager either."""
        self.assertIn("The \"if\" statement", help_text("if"))
        self.assertIn("Return the number of items", help_text(len))
        self.assertTrue(self.wires.untouched())

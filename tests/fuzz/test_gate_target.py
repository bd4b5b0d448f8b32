"""The atheris target without atheris: its seed inputs, and every input a
fuzzing run found and that was fixed (``tests/fuzz/regressions/``), replay
through the same checks (:mod:`tests.fuzz.harness`) without a finding."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.fuzz import gate_target
from tests.fuzz.harness import UIDS, Violation, memory_stack

REGRESSIONS = Path(__file__).parent / "regressions"


class TargetTests(SynchronousTestCase):
    def test_seeds_replay(self) -> None:
        directory = self.mktemp()
        gate_target.write_seeds(directory)
        names = sorted(os.listdir(directory))
        self.assertEqual(len(names), len(gate_target.seeds()))
        gate_target.replay([os.path.join(directory, name) for name in names])

    def test_regressions_replay(self) -> None:
        found = sorted(REGRESSIONS.glob("*")) if REGRESSIONS.is_dir() else []
        gate_target.replay([str(path) for path in found if path.name != "README.md"])

    def test_records_are_frames_of_the_session(self) -> None:
        stack = memory_stack()
        chunks, advances = gate_target.parse(bytes([0b10101, 0, 40, 0, 70]) + bytes(
            [6, 7, 0, 6, 0x80, 1, 0xFF]), stack)
        self.assertEqual(len(chunks), 3)
        self.assertEqual(advances, [0.0] * 3)
        frames = gate_target.feed_gate(stack, chunks, advances)
        answers = [(f.cmd, f.uid, f.appcode, f.msgtype) for f in frames]
        self.assertEqual(answers, [(0x81, UIDS[0], 1001, 0), (0x86, UIDS[0], 1001, 7),
                                   (0x86, 7, 1002, 0)])

    def test_a_finding_raises(self) -> None:
        self.patch(gate_target, "feed_gate", self.fail_gate)
        self.assertRaises(Violation, gate_target.TestOneInput, bytes([1]))

    @staticmethod
    def fail_gate(*args: object) -> None:
        raise Violation("what a finding looks like")

"""The runnable examples of docs/client.md, run against a real node: each
prints what the document says it prints."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet import utils

from tests.nodes import NodeTestCase

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "client.md"
#: A runnable example: a python block whose first line names it.
EXAMPLE = re.compile(r"```python\n# example: (\w+)\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text(encoding="utf-8")))


class ClientDocExamplesTests(NodeTestCase):
    async def run_example(self, name: str) -> list[str]:
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)
        env = {**os.environ, "MSGP_PORT": str(self.port("gate"))}
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ("-c", examples()[name]), env=env)
        self.assertEqual(code, 0, err.decode())
        return out.decode().splitlines()

    def test_the_document_has_the_examples(self) -> None:
        self.assertEqual(sorted(examples()), ["hello", "offline", "protocol"])

    async def test_hello(self) -> None:
        self.assertEqual(await self.run_example("hello"),
                         ["sent True True", "bob got hello bob from 101"])

    async def test_hello_runs_again_against_the_same_node(self) -> None:
        """A second run sends a new message (a fixed client_msg_id would be
        answered from the de-duplication key and never pushed again)."""
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)
        env = {**os.environ, "MSGP_PORT": str(self.port("gate"))}
        for _ in range(2):
            out, err, code = await utils.getProcessOutputAndValue(
                sys.executable, ("-c", examples()["hello"]), env=env)
            self.assertEqual((code, out.decode().splitlines()[-1]),
                             (0, "bob got hello bob from 101"), err.decode())

    async def test_offline(self) -> None:
        self.assertEqual(await self.run_example("offline"),
                         ["carol pulled 1 message(s): ['call me']"])

    async def test_protocol(self) -> None:
        lines: list[Any] = await self.run_example("protocol")
        self.assertEqual(lines, ["logged in, offline: True", "refused: 1 cannot send to oneself",
                                 "history page: True"])

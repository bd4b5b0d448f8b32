"""Tests for msgctl's command line (daojia_msg.msgctl.args) and its entry point."""

from __future__ import annotations

import io
import sys

import daojia_msg
from daojia_msg.msgctl import cli
from tests.msgctl.fakes import CliTestCase


class ArgumentTests(CliTestCase):
    def test_missing_uid(self) -> None:
        self.assertIn("--uid", self.bad_args("token", "--appcode", "1001"))

    def test_bad_integers(self) -> None:
        self.assertIn("expected an integer", self.bad_args("token", "--appcode", "x", "--uid", "1"))
        self.assertIn("from 1 to", self.bad_args("token", "--appcode", "1001", "--uid", "0"))
        self.assertIn("--appcode", self.bad_args("token", "--appcode", str(2**32), "--uid", "1"))

    def test_no_command(self) -> None:
        self.bad_args()
        self.assertIn("invalid choice", self.bad_args("frobnicate"))

    def test_required_options(self) -> None:
        self.assertIn("--to", self.bad_args("send", "--uid", "1", "--appcode", "1001", "hi"))
        self.assertIn("TEXT", self.bad_args("send", "--uid", "1", "--appcode", "1001", "--to", "2"))
        self.assertIn("--msgtype", self.bad_args("c2s", "--uid", "1", "--appcode", "1001", "x"))
        self.assertIn("--to-appcode", self.bad_args("push", "--to", "1", "--msgtype", "0", "x"))

    def test_defaults(self) -> None:
        args = cli.build_parser().parse_args(
            ["chat", "--uid", "1", "--appcode", "1001", "--to", "2"]
        )
        self.assertEqual(
            (args.host, args.port, args.to_appcode, args.msgtype), ("127.0.0.1", 7000, None, 0)
        )

    def test_main_parses_before_the_reactor(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        with self.assertRaises(SystemExit) as caught:
            cli.main(["token"])
        self.assertEqual(caught.exception.code, 2)


class VersionTests(CliTestCase):
    def test_version_prints_the_project_version(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            cli.main(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"msgctl (msgplatform) {daojia_msg.__version__}\n")

"""msgplatform-chaos's options and its prerequisite check (the live run is
the command itself, not a trial test)."""

from __future__ import annotations

import io
import os
import signal
import tempfile
from contextlib import redirect_stderr

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.chaos import cli, faults, netns, servers


class ArgumentTests(TestCase):
    def parse(self, *argv: str) -> object:
        return cli.settings_from(cli.parser().parse_args(list(argv)))

    def test_defaults(self) -> None:
        self.patch(servers, "faketime_library", lambda: "/usr/lib/libfaketime.so.1")
        self.patch(servers, "rabbitmq_server", lambda: "/usr/lib/rabbitmq/bin/rabbitmq-server")
        self.patch(netns, "available", lambda: "/sbin/ip")
        s = self.parse()
        self.assertEqual((s.nodes, s.rate, s.fault_seconds), (3, 100.0, 5.0))
        self.assertEqual(s.faults, tuple(faults.FAULTS))

    def test_clock_step_only_with_libfaketime(self) -> None:
        self.patch(servers, "faketime_library", lambda: None)
        self.assertNotIn("clock-step", self.parse().faults)
        self.assertIn("clock-step", self.parse("--faults", "clock-step").faults)

    def test_rabbitmq_restart_only_with_rabbitmq_server(self) -> None:
        self.patch(servers, "faketime_library", lambda: None)
        self.patch(servers, "rabbitmq_server", lambda: None)
        self.patch(netns, "available", lambda: None)
        s = self.parse()
        self.assertNotIn("rabbitmq-restart", s.faults)
        self.assertEqual(cli.skipped(s, asked=False), [
            "clock-step skipped: libfaketime not found (apt-get install faketime)",
            "rabbitmq-restart skipped: rabbitmq-server not found (apt-get install rabbitmq-server)",
            "node-partition skipped: ip-netns not found (needs root and ip: apt-get install iproute2)"])
        self.assertEqual(cli.skipped(s, asked=True), [])
        self.assertIn("rabbitmq-restart", self.parse("--faults", "rabbitmq-restart").faults)
        self.patch(servers, "rabbitmq_server", lambda: "/r")
        self.assertEqual(self.parse().faults[-1], "rabbitmq-restart")

    def test_short_and_overrides(self) -> None:
        s = self.parse("--short", "--nodes", "2", "--rate", "30", "--faults", "node-kill, redis-restart")
        self.assertEqual((s.nodes, s.rate, s.fault_seconds, s.give_up_s), (2, 30.0, 3.0, 20.0))
        self.assertEqual(s.faults, ("node-kill", "redis-restart"))
        self.assertEqual(self.parse("--short", "--fault-seconds", "7").fault_seconds, 7.0)

    def refused(self, *argv: str) -> str:
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            cli.parser().parse_args(list(argv))
        self.assertEqual(raised.exception.code, 2)
        return err.getvalue()

    def test_bad_values(self) -> None:
        self.assertIn("unknown fault(s) disk-full; choose from: none,", self.refused("--faults", "disk-full"))
        self.assertIn("expected a positive number, got '0'", self.refused("--rate", "0"))
        self.assertIn("expected a number, got 'x'", self.refused("--nodes", "x"))
        self.assertIn("expected a positive number up to 16, got '100'",
                      self.refused("--nodes", "100"))
        self.assertIn("expected a positive number up to 2, got '5'", self.refused("--load", "5"))
        self.assertIn("an empty fault name in 'none,,node-kill'",
                      self.refused("--faults", "none,,node-kill"))
        self.assertIn("cannot write /no/such/dir/x.json: /no/such/dir is not a writable directory",
                      self.refused("--json", "/no/such/dir/x.json"))
        self.assertIn("node-partition cuts a node off from its peers: needs --nodes 2 or more",
                      self.refused_settings("--nodes", "1", "--faults", "node-partition"))

    def test_load_is_a_fraction_of_a_measured_capacity(self) -> None:
        self.assertIn("--load needs --capacity-seconds", self.refused_settings("--load", "0.5"))
        s = self.parse("--capacity-seconds", "10", "--load", "0.5", "--concurrency", "32")
        self.assertEqual((s.capacity_seconds, s.load, s.capacity_concurrency), (10.0, 0.5, 32))

    def refused_settings(self, *argv: str) -> str:
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit):
            self.parse(*argv)
        return err.getvalue()

    def test_missing_programs_are_named_with_their_fix(self) -> None:
        self.patch(servers, "which", lambda *names: None)
        self.patch(servers, "faketime_library", lambda: None)
        self.patch(servers.os, "access", lambda path, mode: False)
        err = io.StringIO()
        with redirect_stderr(err):
            status = cli.main(["--short", "--faults", "node-kill,clock-step,rabbitmq-restart,node-partition"])
        self.assertEqual(status, 2)
        text = err.getvalue()
        for line in ("libfaketime not found (for clock-step): apt-get install faketime",
                     "rabbitmq-server not found (for rabbitmq-restart): apt-get install rabbitmq-server",
                     "ip-netns not found (for node-partition): needs root and ip",
                     "mariadb-install-db not found: apt-get install mariadb-server",
                     "redis-server not found: apt-get install redis-server",
                     "haproxy not found: apt-get install haproxy",
                     "twistd not found next to"):
            self.assertIn(line, text)


class InterruptedTests(TestCase):
    """A signal that stops the run before it ends: one line, status 130, and
    the run's directory removed unless ``--keep``."""

    def interrupted(self, *argv: str) -> tuple[int, str, str]:
        base = self.mktemp()
        os.makedirs(base)
        directory = tempfile.mkdtemp(prefix="msgp-chaos-", dir=base)
        self.patch(servers, "prerequisites", lambda: ({}, []))
        self.patch(cli.runner, "base_directory", lambda keep, root: directory)

        def react(main: object) -> None:
            raise SystemExit(0)  # the reactor stopped (SIGINT, SIGTERM) before the run ended

        self.patch(task, "react", react)
        err = io.StringIO()
        with redirect_stderr(err):
            status = cli.main(["--faults", "none", *argv])
        return status, err.getvalue(), directory

    def test_the_directory_goes(self) -> None:
        status, err, directory = self.interrupted()
        self.assertEqual(status, 130)
        self.assertIn("msgplatform-chaos: interrupted (--keep keeps the run's directory)", err)
        self.assertFalse(os.path.exists(directory))

    def test_kept_with_keep(self) -> None:
        status, err, directory = self.interrupted("--keep")
        self.assertEqual(status, 130)
        self.assertIn(f"msgplatform-chaos: interrupted (logs in {directory})", err)
        self.assertTrue(os.path.isdir(directory))


class FakeProc:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[object] = []

    def send(self, sig: int) -> None:
        self.events.append(sig)

    async def stop(self, sig: int) -> None:
        self.events.append(("stop", sig))

    def start(self, timeout: float) -> Deferred[None]:
        self.events.append("start")
        return succeed(None)


class FakeCluster:
    def __init__(self) -> None:
        self.reactor = Clock()
        self.nodes = [FakeProc("node0"), FakeProc("node1")]
        self.mariadb = FakeProc("mariadb")
        self.rabbitmq = FakeProc("rabbitmq")


class FaultTests(TestCase):
    def test_pause_holds_then_continues(self) -> None:
        cluster = FakeCluster()
        d = faults.FAULTS["node-stop"](cluster, 4.0, 3)
        done = Deferred.fromCoroutine(d)  # type: ignore[arg-type]
        self.assertEqual(cluster.nodes[1].events, [signal.SIGSTOP])
        cluster.reactor.advance(3.9)
        self.assertFalse(done.called)
        cluster.reactor.advance(0.1)
        self.assertEqual(cluster.nodes[1].events, [signal.SIGSTOP, signal.SIGCONT])
        self.assertEqual(self.successResultOf(done), {"victim": "node1", "stopped_s": 4.0})

    def test_rabbitmq_restart_stops_holds_and_starts_the_private_broker(self) -> None:
        cluster = FakeCluster()
        done = Deferred.fromCoroutine(faults.FAULTS["rabbitmq-restart"](cluster, 3.0, 1))  # type: ignore[arg-type]
        self.assertEqual(cluster.rabbitmq.events, [("stop", signal.SIGTERM)])
        cluster.reactor.advance(3.0)
        self.assertEqual(cluster.rabbitmq.events, [("stop", signal.SIGTERM), "start"])
        self.assertEqual(self.successResultOf(done),
                         {"victim": "rabbitmq", "down_s": 3.0, "restart_s": 0.0})
        self.assertEqual(cluster.nodes[0].events + cluster.nodes[1].events, [])

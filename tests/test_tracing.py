"""Tests for daojia_msg.tracing and ``msgctl trace``: JSON log lines with
``node``, read back across nodes in time order; the in-memory TraceBuffer."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daojia_msg import tracing
from daojia_msg.msgctl import cli

T0 = 1_795_707_087.123  # 2026-11-26T15:31:27.123Z
NS = "daojia_msg.logic.service.LogicService"


def stamped(observer: Callable[[LogEvent], None], times: list[float]) -> ILogObserver:
    """Forwards events to ``observer`` with ``log_time`` taken from ``times``, in order."""

    @implementer(ILogObserver)
    def stamp(event: LogEvent) -> None:
        event["log_time"] = times.pop(0)
        observer(event)

    return cast(ILogObserver, stamp)


class _Node:
    """One "node" of a test: its Logger writes JSON lines to its own file."""

    def __init__(self, case: TracingCase, node_id: int, times: list[float]) -> None:
        self.path = os.path.join(case.tmp, f"node{node_id}.json")
        self.observer = tracing.json_log_observer(self.path, tracing.NodeRef(node_id))
        case.addCleanup(self.observer.close)
        self.log = Logger(namespace=NS, observer=stamped(self.observer, times))


class TracingCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)

    def lines(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return f.read().split("\n")[:-1]  # not splitlines(): RS ends a line for it

    def two_nodes(self) -> tuple[_Node, _Node]:
        """Node 3 stores message 9138 (logid "ab12"), node 5 pushes it, node 3
        sees the ACK; other messages and lines without logid in between."""
        n3 = _Node(self, 3, [T0, T0 + 0.2, T0 + 0.9, T0 + 1.0])
        n5 = _Node(self, 5, [T0 + 0.5, T0 + 0.6, T0 + 0.7])
        n3.log.debug("{kind} {msgid} stored for {to_uid}@{to_appcode}", kind="C2C", msgid=9138,
                     logid="ab12", to_uid=2, to_appcode=1001, uid=1, appcode=1001)
        n3.log.info("login {uid}@{appcode}", uid=7, appcode=1001)
        n5.log.debug("{msgid} from node {node} to session {session_id}: pushed={pushed}",
                     msgid=9138, logid="ab12", node=3, session_id="s1", pushed=True)
        n5.log.debug("{msgid} pushed to {to_uid}@{to_appcode}", msgid=9200, logid="ff00",
                     to_uid=4, to_appcode=1001)
        n5.log.debug("{msgid} pushed to {to_uid}@{to_appcode}", msgid=9138, logid="ab12",
                     to_uid=2, to_appcode=1001)
        n3.log.debug("{msgid} acked by {uid}@{appcode}", msgid=9138, logid="ab12",
                     uid=2, appcode=1001)
        n3.log.info("purged {count} de-duplication keys", count=0)
        return n3, n5


class JsonLinesTests(TracingCase):
    def test_one_record_a_line_with_node(self) -> None:
        """Each event is one RS-prefixed JSON line carrying its fields and the node id."""
        n3, _ = self.two_nodes()
        lines = self.lines(n3.path)
        self.assertEqual(len(lines), 4)
        for line in lines:
            self.assertTrue(line.startswith("\x1e"), line)
        first = json.loads(lines[0][1:])
        self.assertEqual(
            {k: first[k] for k in ("node", "logid", "msgid", "uid", "appcode", "to_uid")},
            {"node": 3, "logid": "ab12", "msgid": 9138, "uid": 1, "appcode": 1001, "to_uid": 2},
        )
        self.assertEqual(first["log_time"], T0)
        self.assertEqual(first["log_namespace"], NS)

    def test_peer_node_keeps_its_text(self) -> None:
        """A line naming a peer as ``{node}`` still reads so; ``node`` is who logged it."""
        _, n5 = self.two_nodes()
        [event] = [e for e in tracing.read_trace("ab12", [n5.path]) if "session_id" in e]
        self.assertEqual(event["node"], 5)
        self.assertEqual(tracing.record(event)["text"], "9138 from node 3 to session s1: pushed=True")

    def test_caller_event_untouched(self) -> None:
        """The observer works on a copy: other observers see the event as logged."""
        path = os.path.join(self.tmp, "n.json")
        observer = tracing.json_log_observer(path, tracing.NodeRef(1))
        self.addCleanup(observer.close)
        event: dict[str, Any] = {"log_format": "{node} x", "node": 9, "logid": "a",
                                 "log_time": T0, "log_level": LogLevel.info}
        observer(event)
        self.assertEqual(event, {"log_format": "{node} x", "node": 9, "logid": "a",
                                 "log_time": T0, "log_level": LogLevel.info})

    def test_unencodable_fields(self) -> None:
        """Fields JSON cannot hold do not cost the line: objects, sets, bytes,
        a circular list, a format naming a missing field."""
        node = _Node(self, 1, [T0, T0 + 1, T0 + 2, T0 + 3])
        loop: list[Any] = []
        loop.append(loop)
        node.log.info("{msgid} with {thing!r}", msgid=1, logid="x1", thing=object(), ids={1, 2})
        node.log.info("{msgid} raw {raw}", msgid=2, logid="x1", raw=b"\xff\x00ok")
        node.log.info("{msgid} loop {loop}", msgid=3, logid="x1", loop=loop)
        node.log.info("{msgid} and {missing}", msgid=4, logid="x1")
        lines = self.lines(node.path)
        self.assertEqual(len(lines), 4)
        events = [json.loads(line[1:]) for line in lines]
        self.assertEqual([e["msgid"] for e in events], [1, 2, 3, 4])
        self.assertEqual({e["node"] for e in events}, {1})
        self.assertEqual(events[0]["thing"], {"unpersistable": True})
        self.assertEqual(events[1]["raw"], "\xff\x00ok")
        trace = tracing.read_trace("x1", [node.path])
        texts = [tracing.record(e)["text"] for e in trace]
        self.assertTrue(texts[0].startswith("1 with <object object at "), texts[0])
        self.assertEqual(texts[1], "2 raw b'\\xff\\x00ok'")
        self.assertEqual(texts[2], "3 loop [[...]]")
        self.assertIn("Unable to format event", texts[3])
        self.assertEqual(trace.skipped, {})

    def test_default_node(self) -> None:
        """By default the observers read NODE, which set_node sets (after start)."""
        self.addCleanup(tracing.set_node, tracing.NODE.id)
        tracing.set_node(None)
        path = os.path.join(self.tmp, "n.json")
        observer = tracing.json_log_observer(path)
        self.addCleanup(observer.close)
        log = Logger(namespace=NS, observer=observer)
        log.info("starting")
        tracing.set_node(7)
        log.info("{msgid} stored", msgid=1, logid="z")
        first, second = (json.loads(line[1:]) for line in self.lines(path))
        self.assertNotIn("node", first)
        self.assertEqual(second["node"], 7)

    def test_node_fields(self) -> None:
        """NodeFields passes a copy with ``node`` on; the event itself is unchanged."""
        seen: list[LogEvent] = []
        wrapper = tracing.NodeFields(cast(ILogObserver, seen.append), tracing.NodeRef(4))
        event: dict[str, Any] = {"log_format": "x", "logid": "a"}
        wrapper(event)
        self.assertEqual(seen, [{"log_format": "x", "logid": "a", "node": 4}])
        self.assertNotIn("node", event)


class InstallTests(TracingCase):
    def test_install_remove(self) -> None:
        """install appends to the file (flushed per line); its remover takes the
        observer off the publisher and closes the file."""
        path = os.path.join(self.tmp, "n.json")
        with open(path, "w") as f:
            f.write("\x1e{\"logid\": \"old\", \"log_time\": 1.0}\n")
        publisher = LogPublisher()
        log = Logger(namespace=NS, observer=publisher)
        remove = tracing.install(path, [publisher], node=tracing.NodeRef(2))
        log.info("{msgid} stored", msgid=1, logid="new")
        self.assertEqual(len(self.lines(path)), 2)  # flushed: readable at once
        remove()
        log.info("{msgid} stored", msgid=2, logid="new")
        self.assertEqual(len(self.lines(path)), 2)
        self.assertEqual(publisher._observers, [])
        remove()  # twice is harmless
        self.assertEqual([e["msgid"] for e in tracing.read_trace("new", [path])], [1])

    def test_install_global(self) -> None:
        """By default install observes the global publisher and leaves nothing behind."""
        path = os.path.join(self.tmp, "n.json")
        before = list(globalLogPublisher._observers)
        remove = tracing.install(path, node=tracing.NodeRef(2))
        self.assertEqual(len(globalLogPublisher._observers), len(before) + 1)
        Logger(namespace=NS).info("{msgid} stored", msgid=1, logid="g1")
        remove()
        self.assertEqual(globalLogPublisher._observers, before)
        Logger(namespace=NS).info("{msgid} stored", msgid=2, logid="g1")
        self.assertEqual([e["msgid"] for e in tracing.read_trace("g1", [path])], [1])

    def test_install_unwritable(self) -> None:
        """A path that cannot be opened raises at once (the node fails to start)."""
        self.assertRaises(OSError, tracing.install, os.path.join(self.tmp, "no", "n.json"),
                          [LogPublisher()])


class ReadTraceTests(TracingCase):
    def test_across_files_in_time_order(self) -> None:
        """One logid's events from both nodes' files, by log_time, whatever the file order."""
        n3, n5 = self.two_nodes()
        trace = tracing.read_trace("ab12", [n5.path, n3.path])
        self.assertEqual(
            [(e["log_time"], e["node"], e["msgid"]) for e in trace],
            [(T0, 3, 9138), (T0 + 0.5, 5, 9138), (T0 + 0.7, 5, 9138), (T0 + 0.9, 3, 9138)],
        )
        self.assertEqual(trace[0]["log_level"], LogLevel.debug)
        self.assertEqual(tracing.read_trace("ff00", [n3.path, n5.path])[0]["msgid"], 9200)
        self.assertEqual(tracing.read_trace("nope", [n3.path, n5.path]), [])

    def test_records(self) -> None:
        """record() flattens a read event: time, level, namespace, node, logid, text, fields."""
        n3, n5 = self.two_nodes()
        rec = tracing.record(tracing.read_trace("ab12", [n3.path, n5.path])[0])
        self.assertEqual(
            {k: rec[k] for k in (*tracing.RECORD_KEYS, "msgid", "uid", "to_uid", "to_appcode")},
            {"time": T0, "level": "debug", "namespace": NS, "node": 3, "logid": "ab12",
             "text": "C2C 9138 stored for 2@1001", "msgid": 9138, "uid": 1, "to_uid": 2,
             "to_appcode": 1001},
        )
        self.assertEqual(tracing.format_line(rec), "2026-11-26T15:31:27.123Z node=3 debug "
                         "logic.service.LogicService: C2C 9138 stored for 2@1001")

    def test_bad_records_skipped_and_counted(self) -> None:
        """Corrupt or truncated records naming the logid are skipped and counted;
        plain JSON lines (no RS) are read; the rest of the file still counts."""
        n3, _ = self.two_nodes()
        with open(n3.path, "a", encoding="utf-8") as f:
            f.write("garbage that names \"ab12\" but is no JSON\n")
            f.write("\x1e{\"logid\": \"ab12\", \"msgid\": 1, \"log_ti")  # cut short...
            f.write("\x1e{\"logid\": \"ab12\", \"msgid\": 2, \"log_time\": 1.0}\n")  # ...then on
            f.write("{\"logid\": \"ab12\", \"msgid\": 3, \"log_time\": 2.0}\n")
            f.write("\x1e[\"ab12\"]\n")
            f.write("\x1e{\"logid\": \"ab12\", \"log_level\": {\"__class_uuid__\": \"bad\"}}\n")
            f.write("\x1e{\"logid\": \"other\", \"note\": \"ab12\"}\n")  # another message
        with open(n3.path, "ab") as fb:
            fb.write(b"\x1e{\"logid\": \"ab12\", \"text\": \"\xff\"}\n")
            fb.write(b"\x1e{\"logid\": \"ab12\", \"msgid\": 4")  # the last line, cut short
        trace = tracing.read_trace("ab12", [n3.path])
        self.assertEqual([e["msgid"] for e in trace], [2, 3, 9138, 9138])
        self.assertEqual(trace.skipped, {n3.path: 6})

    def test_unreadable_file(self) -> None:
        """A missing file raises OSError, or goes to on_error and is skipped."""
        n3, _ = self.two_nodes()
        missing = os.path.join(self.tmp, "missing.json")
        self.assertRaises(OSError, tracing.read_trace, "ab12", [n3.path, missing])
        errors: list[tuple[str, OSError]] = []
        trace = tracing.read_trace("ab12", [missing, n3.path],
                                   on_error=lambda p, e: errors.append((p, e)))
        self.assertEqual(len(trace), 2)
        [(path, error)] = errors
        self.assertEqual(path, missing)
        self.assertIsInstance(error, FileNotFoundError)

    def test_same_file_twice(self) -> None:
        n3, _ = self.two_nodes()
        self.assertEqual(len(tracing.read_trace("ab12", [n3.path, n3.path])), 2)


class TraceBufferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.publisher = LogPublisher()
        self.log = Logger(namespace=NS, observer=self.publisher)
        self.node = tracing.NodeRef()
        self.buffer = tracing.TraceBuffer(size=3, node=self.node)
        self.addCleanup(self.buffer.attach([self.publisher]))

    def test_bounded(self) -> None:
        """Only events with a logid are kept, never more than ``size``, the newest."""
        for i in range(5):
            self.log.info("{msgid} stored", msgid=i, logid="a" if i % 2 else "b")
            self.log.info("login {uid}", uid=i)
            self.assertLessEqual(len(self.buffer), 3)
        self.assertEqual(len(self.buffer), 3)
        self.assertEqual([r["msgid"] for r in self.buffer.find("b")], [2, 4])
        self.assertEqual([r["msgid"] for r in self.buffer.find("a")], [3])
        self.assertEqual(self.buffer.find("c"), [])

    def test_records(self) -> None:
        """find gives plain records with this node's id at logging time."""
        self.log.debug("{msgid} pushed to {to_uid}@{to_appcode}", msgid=5, logid="a",
                       to_uid=2, to_appcode=1001)
        self.node.id = 3
        self.log.warn("{msgid} left pending: node {node} unreachable", msgid=5, logid="a",
                      node=7)
        first, second = self.buffer.find("a")
        self.assertEqual(
            {k: first[k] for k in (*tracing.RECORD_KEYS, "msgid", "to_uid", "to_appcode")},
            {"time": first["time"], "level": "debug", "namespace": NS, "node": None,
             "logid": "a", "text": "5 pushed to 2@1001", "msgid": 5, "to_uid": 2,
             "to_appcode": 1001},
        )
        self.assertIsInstance(first["time"], float)
        self.assertEqual((second["node"], second["level"], second["text"]),
                         (3, "warn", "5 left pending: node 7 unreachable"))
        first["msgid"] = 0
        self.assertEqual(self.buffer.find("a")[0]["msgid"], 5)

    def test_keeps_no_objects(self) -> None:
        """Objects logged as fields are kept as text (formatted at once)."""

        class Conn:
            def __repr__(self) -> str:
                return "<conn 1>"

        self.log.info("{msgid} via {conn!r} {raw}", msgid=1, logid="a", conn=Conn(), raw=b"\x01")
        [rec] = self.buffer.find("a")
        self.assertEqual(rec["text"], "1 via <conn 1> b'\\x01'")
        self.assertEqual((rec["conn"], rec["raw"]), ("<conn 1>", "\x01"))

    def test_detach(self) -> None:
        buffer = tracing.TraceBuffer(node=self.node)
        detach = buffer.attach([self.publisher])
        detach()
        self.log.info("{msgid} stored", msgid=1, logid="a")
        self.assertEqual(len(buffer), 0)
        self.assertNotIn(buffer, self.publisher._observers)

    def test_size(self) -> None:
        self.assertRaises(ValueError, tracing.TraceBuffer, 0)
        self.assertEqual(tracing.TraceBuffer().size, 10000)


class MessageEventsTests(SynchronousTestCase):
    """The loggers of :data:`tracing.MESSAGES`: a trace buffer takes their
    fields directly (no log event made), other observers take log events,
    and both keep what a plain Logger's event would give them."""

    def setUp(self) -> None:
        self.events = tracing.MessageEvents()
        self.log = self.events.logger(NS)
        self.node = tracing.NodeRef(4)
        self.buffer = tracing.TraceBuffer(node=self.node)

    def test_a_buffer_keeps_what_a_log_event_gives_it(self) -> None:
        """The same records as a buffer observing a plain Logger's events."""
        self.addCleanup(self.buffer.attach([self.events]))
        publisher = LogPublisher()
        by_event = tracing.TraceBuffer(node=self.node)
        self.addCleanup(by_event.attach([publisher]))
        plain = Logger(namespace=NS, observer=publisher)
        for log in (self.log, plain):
            log.debug("{msgid} acked by {uid}@{appcode}", msgid=5, logid="a", uid=2, appcode=1001)
            log.info("login {uid} from {peer}", uid=2, peer="1.2.3.4", logid="a", ok=True)
            log.warn("{msgid} odd {conn!r}", msgid=5, logid="a", conn=object.__new__(_Repr))
            log.info("{log_namespace} {msgid}", msgid=6, logid="a")
            log.info("{msgid} with a log_ field", msgid=8, logid="a", log_extra=1)
            log.info("no logid: not kept", msgid=7)
        fast, slow = self.buffer.find("a"), by_event.find("a")
        self.assertEqual(len(fast), 5)
        for f, s in zip(fast, slow, strict=True):
            self.assertEqual({k: v for k, v in f.items() if k != "time"},
                             {k: v for k, v in s.items() if k != "time"})
        self.assertEqual([r["text"] for r in fast],
                         ["5 acked by 2@1001", "login 2 from 1.2.3.4", "5 odd <repr>",
                          f"{NS} 6", "8 with a log_ field"])
        self.assertNotIn("log_extra", fast[4])
        self.assertEqual((fast[0]["level"], fast[0]["node"], fast[2]["conn"]),
                         ("debug", 4, "<repr>"))
        self.assertIs(fast[1]["ok"], True)  # a bool took the slow path, and stays a bool

    def test_other_observers_get_log_events(self) -> None:
        self.addCleanup(self.buffer.attach([self.events]))
        seen: list[LogEvent] = []
        self.events.addObserver(seen.append)
        self.log.debug("{msgid} pushed", msgid=1, logid="a")
        [event] = seen
        self.assertEqual((event["log_level"], event["log_namespace"], event["log_format"],
                          event["log_logger"], event["msgid"]),
                         (LogLevel.debug, NS, "{msgid} pushed", self.log, 1))
        self.assertNotIn("log_level", self.buffer.find("a")[0])  # its fields were not touched
        self.events.removeObserver(seen.append)
        self.events.removeObserver(seen.append)  # once is enough
        self.log.debug("{msgid} pushed", msgid=2, logid="a")
        self.assertEqual((len(seen), len(self.buffer), self.events.listeners), (1, 2, 1))

    def test_nobody_listening(self) -> None:
        """Without listeners nothing is kept; a buffer detached stops keeping."""
        self.log.debug("{msgid} pushed", msgid=1, logid="a")
        detach = self.buffer.attach([self.events])
        self.log.debug("{msgid} pushed", msgid=2, logid="a")
        detach()
        detach()
        self.log.debug("{msgid} pushed", msgid=3, logid="a")
        self.assertEqual(([r["msgid"] for r in self.buffer.find("a")], self.events.listeners),
                         ([2], 0))


class _Repr:
    def __repr__(self) -> str:
        return "<repr>"


class MsgctlTraceTests(TracingCase):
    def trace(self, *argv: str) -> tuple[int, list[str], list[str]]:
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args(["trace", *argv])
        code = self.successResultOf(cli.run(MemoryReactorClock(), args, out, err))
        return code, out.getvalue().splitlines(), err.getvalue().splitlines()

    def test_path_in_time_order(self) -> None:
        n3, n5 = self.two_nodes()
        code, out, err = self.trace("ab12", n5.path, n3.path)
        self.assertEqual((code, err), (0, []))
        ns = "logic.service.LogicService"
        self.assertEqual(out, [
            f"2026-11-26T15:31:27.123Z node=3 debug {ns}: C2C 9138 stored for 2@1001",
            f"2026-11-26T15:31:27.623Z node=5 debug {ns}: 9138 from node 3 to session s1: "
            "pushed=True",
            f"2026-11-26T15:31:27.823Z node=5 debug {ns}: 9138 pushed to 2@1001",
            f"2026-11-26T15:31:28.023Z node=3 debug {ns}: 9138 acked by 2@1001",
        ])

    def test_nothing_found(self) -> None:
        n3, n5 = self.two_nodes()
        code, out, err = self.trace("zz99", n3.path, n5.path)
        self.assertEqual((code, out), (1, []))
        self.assertEqual(err, ["msgctl: error: no log events with logid zz99 in 2 file(s)"])

    def test_unreadable_file(self) -> None:
        """What can be read is printed; the unreadable file is named; exit 1."""
        n3, _ = self.two_nodes()
        missing = os.path.join(self.tmp, "missing.json")
        code, out, err = self.trace("ab12", missing, n3.path)
        self.assertEqual((code, len(out)), (1, 2))
        self.assertEqual(err, [f"msgctl: error: cannot read {missing}: No such file or directory"])
        code, out, err = self.trace("ab12", missing)
        self.assertEqual((code, out, len(err)), (1, [], 1))

    def test_skipped_and_escaped(self) -> None:
        """Unreadable records are reported; control characters from clients are escaped."""
        node = _Node(self, 1, [T0])
        node.log.info("c2c resend of {client_msg_id}", client_msg_id="a\x1b[2J\nb", logid="q1")
        with open(node.path, "a") as f:
            f.write("\x1e{\"logid\": \"q1\"\n")
        code, out, err = self.trace("q1", node.path)
        self.assertEqual(code, 0)
        self.assertEqual(out, ["2026-11-26T15:31:27.123Z node=1 info logic.service.LogicService: "
                               "c2c resend of a\\x1b[2J\\nb"])
        self.assertEqual(err, [f"msgctl: warning: {node.path}: skipped 1 unreadable record(s) "
                               "naming logid q1"])

    def test_empty_logid(self) -> None:
        code, _, err = self.trace("", os.path.join(self.tmp, "x"))
        self.assertEqual((code, err), (2, ["msgctl: error: LOGID must not be empty"]))

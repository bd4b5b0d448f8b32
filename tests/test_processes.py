"""Several processes per host: the supervisor's decisions (a fake launcher on
a Clock), the workers' listeners and command lines, the checks at start."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg import processes
from daojia_msg.config import ConfigError, ListenConfig, MySQLConfig, RedisConfig, default_config
from daojia_msg.processes import ReusePortReactor, Supervisor, WorkerEvents
from daojia_msg.tap import Options, build_config, plugin_args

R: Any = reactor


class FakeWorker:
    def __init__(self, index: int, events: WorkerEvents, pid: int) -> None:
        self.index, self.events, self.pid = index, events, pid
        self.signals: list[int] = []

    def signal(self, sig: int) -> None:
        self.signals.append(sig)


class FakeLauncher:
    """Records every worker started; the test reports their events."""

    def __init__(self) -> None:
        self.started: list[FakeWorker] = []

    def __call__(self, index: int, events: WorkerEvents) -> FakeWorker:
        worker = FakeWorker(index, events, 100 + len(self.started))
        self.started.append(worker)
        return worker

    def current(self, index: int) -> FakeWorker:
        return [w for w in self.started if w.index == index][-1]


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.launch = FakeLauncher()
        self.gave_up: list[str] = []
        self.supervisor = Supervisor(2, self.launch, self.clock, self.gave_up.append,
                                     stop_timeout_s=60.0)
        self.supervisor.startService()

    def serve_all(self) -> None:
        for index in (0, 1):
            self.launch.current(index).events.ready()

    def test_starts_every_worker_ready_once_all_serve(self) -> None:
        self.assertEqual([w.index for w in self.launch.started], [0, 1])
        self.launch.current(0).events.ready()
        self.assertNoResult(self.supervisor.ready)
        self.launch.current(1).events.ready()
        self.successResultOf(self.supervisor.ready)
        self.assertEqual(self.supervisor.pids(), [100, 101])

    def test_restarts_a_dead_worker_with_a_growing_backoff(self) -> None:
        self.serve_all()
        delays = []
        for _ in range(7):
            self.clock.advance(5)  # dies 5 s after each start: within stable_s
            before = len(self.launch.started)
            self.launch.current(1).events.ended("signal 9")
            waited = 0.0
            while len(self.launch.started) == before:
                self.clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
            self.launch.current(1).events.ready()
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
        self.assertEqual(self.gave_up, [])
        # One that ran past stable_s starts again at the shortest delay.
        self.clock.advance(120)
        self.launch.current(1).events.ended("status 1")
        self.clock.advance(1)
        self.assertEqual(self.launch.current(1).pid, 100 + len(self.launch.started) - 1)
        self.assertEqual(len(self.launch.started), 10)
        self.assertEqual(self.launch.current(0).pid, 100)  # the other worker untouched

    def test_gives_up_after_three_failed_starts(self) -> None:
        self.launch.current(0).events.ready()
        for attempt in range(3):
            worker = self.launch.current(1)
            worker.events.failed("listen.gate: cannot listen on 'tcp:80': Permission denied")
            worker.events.ended("status 1")
            if attempt < 2:
                self.clock.advance(2 ** attempt)
        self.assertEqual(self.gave_up, [
            "worker 1 failed to start 3 times: listen.gate: cannot listen on 'tcp:80': "
            "Permission denied"])
        self.assertEqual(len(self.launch.started), 4)
        self.clock.advance(100)
        self.assertEqual(len(self.launch.started), 4)  # nothing restarts after giving up
        self.assertNoResult(self.supervisor.ready)
        # The caller stops the process: the others get SIGTERM.
        d = self.supervisor.stopService()
        self.assertEqual(self.launch.current(0).signals, [signal.SIGTERM])
        self.launch.current(0).events.ended("signal 15")
        self.successResultOf(d)

    def test_an_exit_before_serving_counts_as_a_failed_start(self) -> None:
        for _ in range(2):
            self.launch.current(0).events.ended("signal 11")
            self.clock.advance(30)
        self.launch.current(0).events.ended("signal 11")
        self.assertEqual(self.gave_up, ["worker 0 failed to start 3 times: worker 0 exited "
                                        "(signal 11) before serving"])

    def test_failed_starts_reset_once_it_serves(self) -> None:
        for _ in range(2):
            self.launch.current(1).events.ended("status 1")
            self.clock.advance(30)
        self.serve_all()
        self.successResultOf(self.supervisor.ready)
        for _ in range(5):  # a worker that served once is restarted, never given up on
            self.clock.advance(1)
            self.launch.current(1).events.failed("redis: connection refused")
            self.launch.current(1).events.ended("status 1")
            self.clock.advance(30)
        self.assertEqual(self.gave_up, [])
        self.assertEqual(len(self.launch.started), 2 + 2 + 5)

    def test_stop_forwards_sigterm_and_waits_for_every_worker(self) -> None:
        self.serve_all()
        self.launch.current(1).events.ended("signal 9")  # a restart is pending
        d = self.supervisor.stopService()
        self.assertEqual(self.launch.current(0).signals, [signal.SIGTERM])
        self.clock.advance(10)
        self.assertEqual(len(self.launch.started), 2)  # no restart while stopping
        self.assertNoResult(d)
        self.launch.current(0).events.ended("signal 15")
        self.successResultOf(d)

    def test_stop_kills_a_worker_that_does_not_drain(self) -> None:
        self.serve_all()
        d = self.supervisor.stopService()
        self.launch.current(0).events.ended("signal 15")
        self.clock.advance(59)
        self.assertEqual(self.launch.current(1).signals, [signal.SIGTERM])
        self.clock.advance(1)
        self.assertEqual(self.launch.current(1).signals, [signal.SIGTERM, signal.SIGKILL])
        self.launch.current(1).events.ended("signal 9")
        self.successResultOf(d)

    def test_stop_with_no_worker_running(self) -> None:
        self.launch.current(0).events.ended("status 1")
        self.launch.current(1).events.ended("status 1")
        self.successResultOf(self.supervisor.stopService())
        self.clock.advance(10)
        self.assertEqual(len(self.launch.started), 2)

    def test_forward_sighup(self) -> None:
        self.serve_all()
        self.assertEqual(self.supervisor.forward(signal.SIGHUP), 2)
        self.assertEqual([w.signals for w in self.launch.started], [[signal.SIGHUP]] * 2)

    def test_reports_of_a_replaced_worker_are_ignored(self) -> None:
        self.serve_all()
        old = self.launch.current(0)
        old.events.ended("signal 9")
        self.clock.advance(1)
        old.events.ended("signal 9")  # late, or twice: not the running worker's
        old.events.ready()
        self.clock.advance(100)
        self.assertEqual(len(self.launch.started), 3)
        self.assertFalse(self.supervisor.slots[0].serving)


class ListenerTests(SynchronousTestCase):
    def test_offset_listener(self) -> None:
        cases = {
            "tcp:8080:interface=127.0.0.1": "tcp:8082:interface=127.0.0.1",
            "tcp:interface=10.0.0.1:port=7100": "tcp:interface=10.0.0.1:port=7102",
            "ssl:8443:privateKey=k.pem:certKey=c.pem": "ssl:8445:privateKey=k.pem:certKey=c.pem",
            "haproxy:tcp:8080": "haproxy:tcp:8082",
            "tcp:0:interface=127.0.0.1": "tcp:0:interface=127.0.0.1",
            "unix:/run/msgplatform/manhole:mode=600": "unix:/run/msgplatform/manhole.2:mode=600",
            "unix:address=/tmp/m": "unix:address=/tmp/m.2",
            "tcp6:8080:interface=\\:\\:1": "tcp6:8082:interface=\\:\\:1",
            "": "",
        }
        for description, expected in cases.items():
            self.assertEqual(processes.offset_listener(description, 2), expected, description)
            self.assertEqual(processes.offset_listener(description, 0), description)

    def test_listener_port(self) -> None:
        self.assertEqual(processes.listener_port("haproxy:tcp:7000:backlog=1024"), 7000)
        self.assertEqual(processes.listener_port("ssl:port=7443:certKey=c.pem"), 7443)
        self.assertEqual(processes.listener_port("tcp:0"), 0)
        self.assertIsNone(processes.listener_port("unix:/tmp/gate"))

    def test_worker_config(self) -> None:
        config = default_config().replace(
            node_id=10, listen=ListenConfig(gate="tcp:7000", http="tcp:8080", rpc="tcp:7100",
                                            manhole="tcp:7200:interface=127.0.0.1",
                                            ws="tcp:7070"))
        worker = processes.worker_config(config, 3)
        self.assertEqual(worker.node_id, 13)
        self.assertEqual((worker.listen.gate, worker.listen.ws, worker.listen.http,
                          worker.listen.rpc, worker.listen.manhole),
                         ("tcp:7000", "tcp:7070", "tcp:8083", "tcp:7103",
                          "tcp:7203:interface=127.0.0.1"))
        self.assertIsNone(processes.worker_config(default_config(), 1).node_id)


class CommandLineTests(SynchronousTestCase):
    def test_worker_argv_in_the_foreground(self) -> None:
        argv = processes.worker_argv(1, {"nodaemon": True, "logfile": None}, ["--redis=r"])
        self.assertEqual(argv[-6:], ["--nodaemon", "--pidfile=", "msgplatform", "--redis=r",
                                     "--worker", "1"])
        self.assertNotIn("--logfile", argv)

    def test_worker_argv_logs_beside_the_supervisor(self) -> None:
        argv = processes.worker_argv(2, {"nodaemon": False, "logfile": "/var/log/m.log",
                                         "reactor": "epoll"}, [])
        self.assertIn("--logfile /var/log/m-worker2.log", " ".join(argv))
        self.assertIn("--reactor epoll", " ".join(argv))
        daemon = processes.worker_argv(0, {"nodaemon": False, "logfile": None}, [])
        self.assertIn("--logfile twistd-worker0.log", " ".join(daemon))

    def test_plugin_args_repeat_the_options(self) -> None:
        options = Options()
        options.parseOptions(["--processes", "2", "--redis", "redis://h/1", "--ws", "",
                              "--demo", "--worker", "0"])
        self.assertEqual(sorted(plugin_args(options)),
                         ["--demo", "--processes=2", "--redis=redis://h/1", "--ws="])


class OptionTests(SynchronousTestCase):
    CLUSTER = ["--redis", "redis://127.0.0.1:6379/15", "--mysql", "mysql://root@127.0.0.1/x",
               "--gate", "tcp:7000:interface=127.0.0.1"]

    def build(self, *args: str) -> Any:
        options = Options()
        options.parseOptions(list(args))
        return build_config(options)

    def assertRefused(self, text: str, *args: str) -> None:
        e = self.assertRaises((ConfigError, usage.UsageError), self.build, *args)
        self.assertEqual(str(e), text)

    def test_processes(self) -> None:
        self.assertEqual(self.build().processes, 1)
        self.assertEqual(self.build("--processes", "2", *self.CLUSTER).processes, 2)
        self.assertRefused("--processes: expected an integer from 1 to 64, got '0'",
                           "--processes", "0")
        self.assertRefused("--processes: expected an integer from 1 to 64, got 'two'",
                           "--processes", "two")

    def test_processes_need_a_cluster(self) -> None:
        self.assertRefused("--processes: more than 1 process needs redis.url (--redis): the "
                           "workers are cluster nodes, sharing sessions and node ids in Redis",
                           "--processes", "2")
        self.assertRefused("--processes: more than 1 process needs mysql.url (--mysql): SQLite "
                           "cannot be shared by processes",
                           "--processes", "2", "--redis", "redis://127.0.0.1/1")

    def test_shared_listeners_need_a_port(self) -> None:
        self.assertRefused("--gate: the 2 processes share this listener's port: give a tcp: or "
                           "ssl: port number (not 0), got 'tcp:0:interface=127.0.0.1'",
                           "--processes", "2", *self.CLUSTER, "--gate", "tcp:0:interface=127.0.0.1")

    def test_node_id_range(self) -> None:
        self.assertRefused("node.id: worker K leases node id 1022 + K, past 1023 with 3 processes",
                           "--processes", "3", "--node-id", "1022", *self.CLUSTER)

    def test_worker_index(self) -> None:
        self.assertRefused("--worker: expected an integer from 0 to 1, got '2'",
                           "--processes", "2", *self.CLUSTER, "--worker", "2")

    def test_config_key(self) -> None:
        from daojia_msg.config import parse_config

        app = '[apps.1]\nusersystem = "u"\nsecret = "a-secret-1"\napi_key = "a-key-1"\n'
        self.assertEqual(parse_config("[node]\nprocesses = 4\n" + app).processes, 4)
        e = self.assertRaises(ConfigError, parse_config, "[node]\nprocesses = 0\n" + app)
        self.assertEqual(str(e), "node.processes: expected an integer from 1 to 64, got 0")
        config = default_config().replace(processes=2, redis=RedisConfig(url="redis://h"),
                                          mysql=MySQLConfig(url="mysql://u@h/d"))
        processes.check_processes(config)


class ReusePortTests(TestCase):
    """Two listeners on one port through :class:`ReusePortReactor`."""

    def listen(self, port: int, factory: Any) -> Any:
        listening = ReusePortReactor(R).listenTCP(port, factory, 50, "127.0.0.1")
        self.addCleanup(listening.stopListening)
        return listening

    def test_two_listeners_share_a_port(self) -> None:
        first = self.listen(0, Factory.forProtocol(Protocol))
        port = first.getHost().port
        second = self.listen(port, Factory.forProtocol(Protocol))
        self.assertEqual(second.getHost().port, port)
        self.assertEqual(second.getHost().host, "127.0.0.1")

    def test_a_port_held_without_reuseport_cannot_be_shared(self) -> None:
        plain = socket.socket()
        self.addCleanup(plain.close)
        plain.bind(("127.0.0.1", 0))
        plain.listen(1)
        port = plain.getsockname()[1]
        e = self.assertRaises(CannotListenError, ReusePortReactor(R).listenTCP, port,
                              Factory.forProtocol(Protocol), 50, "127.0.0.1")
        self.assertEqual(e.port, port)

    def test_ssl_wraps_the_factory_in_tls(self) -> None:
        factory = Factory.forProtocol(Protocol)
        listening = ReusePortReactor(R).listenSSL(0, factory, CertificateOptions(), 50,
                                                  "127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.assertIsInstance(listening.factory, TLSMemoryBIOFactory)
        self.assertIs(listening.factory.wrappedFactory, factory)

    def test_everything_else_is_the_reactor(self) -> None:
        self.assertIs(ReusePortReactor(R).adoptStreamPort.__self__, R)


class VerdictTests(SynchronousTestCase):
    def test_a_worker_without_its_supervisors_pipe_still_starts(self) -> None:
        from daojia_msg.tap import _Verdict

        fd = os.open(os.devnull, os.O_RDONLY)  # writing to it fails
        self.addCleanup(os.close, fd)
        _Verdict(None, fd).report(None)  # logged, not raised

    def test_stop_once(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        from daojia_msg.tap import stop_once

        class Reactor:
            stops = 0

            def stop(self) -> None:
                self.stops += 1
                if self.stops > 1:
                    raise ReactorNotRunning()

        reactor = Reactor()
        stop_once(reactor)
        reactor.stop()
        reactor.stop()  # a second signal: nothing raised
        self.assertEqual(reactor.stops, 2)


class LabelTests(SynchronousTestCase):
    def test_a_workers_lines_name_it(self) -> None:
        from twisted.logger import Logger, LogLevel, LogPublisher, formatEventAsClassicLogText

        publisher = LogPublisher()
        processes.label_logs(1, publisher)
        lines: list[str] = []
        publisher.addObserver(lambda e: lines.append(formatEventAsClassicLogText(e) or ""))
        Logger(namespace="daojia_msg.node.Node", observer=publisher).info("node 3 serving")
        publisher({"log_system": "-", "log_format": "legacy", "log_level": LogLevel.info,
                   "log_time": 0.0})
        self.assertIn("[worker1 daojia_msg.node.Node#info] node 3 serving", lines[0])
        self.assertIn("[worker1 -] legacy", lines[1])

# -*- test-case-name: tests.test_processes,tests.test_processes_e2e -*-
"""Several node processes on one host (``node.processes``, ``--processes N``).

The process twistd starts is then a supervisor: it binds nothing, spawns N
workers (the same twistd command plus ``--worker K``), each a full cluster node
that leases a node id of its own. The workers share the gate's and the
WebSocket listener's port through ``SO_REUSEPORT`` (the kernel spreads new
connections over them); worker K's HTTP API, RPC and manhole listen on their
configured port plus K. The supervisor restarts a worker that dies (with a
backoff), stops everything when a worker fails to start three times running
before it ever served, forwards SIGTERM (each worker drains) and SIGHUP (TLS
reload), and exits once every worker has. docs/operations.md §3.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import LogEvent, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from daojia_msg.config import MAX_NODE_ID, Config, ConfigError

log = Logger()

#: The listeners every worker binds on the same port (SO_REUSEPORT).
SHARED = ("gate", "ws")
#: The listeners each worker binds on the configured port plus its index.
OWN = ("http", "rpc", "manhole")
#: The worker's file descriptor for its start-up verdict ("0", or "1 why").
STATUS_FD = 3

_COLON = re.compile(r"(?<!\\):")


# -- configuration ----------------------------------------------------------------------

def _parts(description: str) -> tuple[list[str], int]:
    """A description's colon-separated parts and the index of its endpoint
    type (past a ``haproxy:`` wrapper)."""
    parts = _COLON.split(description)
    return parts, 1 if parts[0] == "haproxy" and len(parts) > 1 else 0


def listener_port(description: str) -> int | None:
    """The TCP port of a ``tcp:``, ``tcp6:`` or ``ssl:`` description (also
    behind ``haproxy:``); None for any other kind."""
    parts, kind = _parts(description)
    if parts[kind] not in ("tcp", "tcp6", "ssl"):
        return None
    for j, part in enumerate(parts[kind + 1:]):
        value = part if j == 0 and "=" not in part else (
            part[5:] if part.startswith("port=") else None)
        if value is not None:
            return int(value) if value.isdigit() else None
    return None


def offset_listener(description: str, index: int) -> str:
    """Worker ``index``'s copy of a listener: its TCP port plus ``index`` (0
    stays 0: any free port), a UNIX socket's path with ``.index`` appended."""
    if not description or index == 0:
        return description
    parts, kind = _parts(description)
    for j in range(kind + 1, len(parts)):
        part = parts[j]
        if parts[kind] in ("tcp", "tcp6", "ssl"):
            positional = j == kind + 1 and part.isdigit()
            if positional or (part.startswith("port=") and part[5:].isdigit()):
                port = int(part.rsplit("=", 1)[-1])
                new = str(port + index if port else 0)
                parts[j] = new if positional else f"port={new}"
                break
        elif parts[kind] == "unix":
            if j == kind + 1 and "=" not in part:
                parts[j] = f"{part}.{index}"
                break
            if part.startswith("address="):
                parts[j] = f"{part}.{index}"
                break
    return ":".join(parts)


def check_processes(config: Config) -> None:
    """What several processes need, checked before anything starts; a
    ConfigError naming the key otherwise."""
    if config.processes == 1:
        return
    if not config.redis.url:
        raise ConfigError("more than 1 process needs redis.url (--redis): the workers are "
                          "cluster nodes, sharing sessions and node ids in Redis",
                          ("node", "processes"))
    if not config.mysql.url:
        raise ConfigError("more than 1 process needs mysql.url (--mysql): SQLite cannot be "
                          "shared by processes", ("node", "processes"))
    for name in SHARED:
        description = getattr(config.listen, name)
        if description and not listener_port(description):
            raise ConfigError(f"the {config.processes} processes share this listener's port: "
                              f"give a tcp: or ssl: port number (not 0), got {description!r}",
                              ("listen", name))
    if config.node_id is not None and config.node_id + config.processes - 1 > MAX_NODE_ID:
        raise ConfigError(f"worker K leases node id {config.node_id} + K, past {MAX_NODE_ID} "
                          f"with {config.processes} processes", ("node", "id"))


def worker_config(config: Config, index: int) -> Config:
    """Worker ``index``'s config: its own HTTP, RPC and manhole ports (+ index)
    and node id (+ index, when one is set)."""
    listen = replace(config.listen, **{name: offset_listener(getattr(config.listen, name), index)
                                       for name in OWN})
    node_id = config.node_id + index if config.node_id is not None else None
    return config.replace(listen=listen, node_id=node_id)


# -- listening with SO_REUSEPORT -------------------------------------------------------

def reuse_port_socket(interface: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``interface:port`` that other
    processes of this user may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface or ("::" if family == socket.AF_INET6 else ""), port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ReusePortReactor:
    """The reactor, for an endpoint to listen with: ``listenTCP`` and
    ``listenSSL`` bind with SO_REUSEPORT (Twisted's own cannot set it before
    the bind) and hand the socket to ``adoptStreamPort``. Endpoint parsing,
    ``ssl:`` (with its reloadable certificate) and the ``haproxy:`` wrapper
    stay Twisted's; everything else is the real reactor's."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,  # noqa: N802
                  interface: str = "") -> Any:
        try:
            sock = reuse_port_socket(interface, port, backlog)
        except OSError as e:
            raise CannotListenError(interface, port, e) from None
        try:
            return self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()  # the port holds its own duplicate

    def listenSSL(self, port: int, factory: Any, contextFactory: Any,  # noqa: N802, N803
                  backlog: int = 50, interface: str = "") -> Any:
        listening = self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory),
                                   backlog, interface)
        listening._type = "TLS"
        return listening


# -- the supervisor --------------------------------------------------------------------

class WorkerHandle(Protocol):
    """A running worker, as the supervisor sees it."""

    pid: int | None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker (nothing if it is gone)."""


class WorkerEvents(Protocol):
    """What a launcher reports about the worker it started."""

    def ready(self) -> None:
        """The worker serves."""

    def failed(self, why: str) -> None:
        """The worker could not start (it exits next)."""

    def ended(self, status: str) -> None:
        """The worker exited; ``status`` says how (``status 1``, ``signal 9``)."""


#: Starts worker ``index``, which reports to the events; returns its handle.
Launcher = Callable[[int, WorkerEvents], WorkerHandle]


@dataclass
class _Slot:
    """One worker index and its history."""

    index: int
    handle: WorkerHandle | None = None
    serving: bool = False
    ever_served: bool = False
    start_failures: int = 0  # running, before it ever served
    crashes: int = 0  # running, each within stable_s of its start
    started_at: float = 0.0
    why: str = ""
    restart: IDelayedCall | None = None
    generation: int = 0


class _Events:
    """Reports about one start of one slot; those of a worker already
    replaced are ignored."""

    def __init__(self, supervisor: Supervisor, slot: _Slot) -> None:
        self._supervisor, self._slot = supervisor, slot
        self._generation = slot.generation

    def _current(self) -> bool:
        return self._slot.generation == self._generation

    def ready(self) -> None:
        if self._current():
            self._supervisor._ready(self._slot)

    def failed(self, why: str) -> None:
        if self._current():
            self._slot.why = why

    def ended(self, status: str) -> None:
        if self._current():
            self._slot.generation += 1
            self._supervisor._ended(self._slot, status)


class Supervisor(Service):
    """Keeps ``count`` workers running (see the module's docstring).

    ``ready`` fires once every worker has served; ``give_up(why)`` is called
    when a worker failed to start ``max_start_failures`` times running
    before it ever served (the caller stops the process with that line).
    """

    def __init__(self, count: int, launch: Launcher, clock: Any, give_up: Callable[[str], object],
                 *, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_start_failures: int = 3, stable_s: float = 60.0,
                 stop_timeout_s: float = 60.0) -> None:
        self.slots = [_Slot(i) for i in range(count)]
        self.launch, self.clock, self.give_up = launch, clock, give_up
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_start_failures, self.stable_s = max_start_failures, stable_s
        self.stop_timeout_s = stop_timeout_s
        self.ready: Deferred[None] = Deferred()
        self.stopping = False
        self.gave_up: str | None = None
        self._all_ended: Deferred[None] | None = None

    def pids(self) -> list[int]:
        return [s.handle.pid for s in self.slots if s.handle is not None and s.handle.pid]

    def startService(self) -> None:
        super().startService()
        log.info("supervisor: starting {count} workers", count=len(self.slots))
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> None:
        slot.restart = None
        slot.serving, slot.why = False, ""
        slot.started_at = self.clock.seconds()
        slot.handle = handle = self.launch(slot.index, _Events(self, slot))
        log.info("worker {index} started (pid {pid})", index=slot.index, pid=handle.pid)

    def _ready(self, slot: _Slot) -> None:
        slot.serving = slot.ever_served = True
        slot.start_failures = 0
        assert slot.handle is not None
        log.info("worker {index} (pid {pid}) serving", index=slot.index, pid=slot.handle.pid)
        if not self.ready.called and all(s.serving for s in self.slots):
            log.info("supervisor: {count} workers serving (pids {pids})",
                     count=len(self.slots), pids=" ".join(map(str, self.pids())))
            self.ready.callback(None)

    def _ended(self, slot: _Slot, status: str) -> None:
        pid = slot.handle.pid if slot.handle is not None else None
        slot.handle = None
        if self.stopping or self.gave_up is not None:
            log.info("worker {index} (pid {pid}) exited ({status})", index=slot.index, pid=pid,
                     status=status)
            self._check_all_ended()
            return
        if not slot.ever_served:
            slot.start_failures += 1
            why = slot.why or f"worker {slot.index} exited ({status}) before serving"
            if slot.start_failures >= self.max_start_failures:
                self._give_up(f"worker {slot.index} failed to start {slot.start_failures} times: "
                              f"{why}")
                return
            delay = self._delay(slot.start_failures)
            log.error("worker {index} (pid {pid}) failed to start: {why}; retrying in {delay} s",
                      index=slot.index, pid=pid, why=why, delay=delay)
        else:
            ran = self.clock.seconds() - slot.started_at
            slot.crashes = slot.crashes + 1 if ran < self.stable_s else 1
            delay = self._delay(slot.crashes)
            log.error("worker {index} (pid {pid}) exited ({status}){why} after {ran:.1f} s; "
                      "restarting it in {delay} s", index=slot.index, pid=pid, status=status,
                      why=f": {slot.why}" if slot.why else "", ran=ran, delay=delay)
        slot.serving = False
        slot.restart = self.clock.callLater(delay, self._start, slot)

    def _delay(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))

    def _give_up(self, why: str) -> None:
        self.gave_up = why
        self._cancel_restarts()
        self.give_up(why)  # the caller logs it as the reason start-up failed

    def _cancel_restarts(self) -> None:
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None

    def forward(self, sig: int) -> int:
        """Send ``sig`` to every running worker; how many."""
        handles = [s.handle for s in self.slots if s.handle is not None]
        for handle in handles:
            handle.signal(sig)
        return len(handles)

    def stopService(self) -> Deferred[None]:
        """SIGTERM to every worker (each drains as one node does); fires once
        all have exited. One still running after ``stop_timeout_s`` is killed."""
        super().stopService()
        self.stopping = True
        self._cancel_restarts()
        count = self.forward(signal.SIGTERM)
        if count == 0:
            return succeed(None)
        log.info("supervisor: SIGTERM to {count} workers; waiting for them to drain", count=count)
        self._all_ended = Deferred()
        killer = self.clock.callLater(self.stop_timeout_s, self._kill)
        self._all_ended.addBoth(lambda r: killer.cancel() if killer.active() else None)
        return self._all_ended

    def _kill(self) -> None:
        count = self.forward(signal.SIGKILL)
        log.error("supervisor: {count} workers still running after {timeout} s: SIGKILL",
                  count=count, timeout=self.stop_timeout_s)

    def _check_all_ended(self) -> None:
        if self._all_ended is not None and all(s.handle is None for s in self.slots):
            done, self._all_ended = self._all_ended, None
            log.info("supervisor: every worker has exited")
            done.callback(None)


# -- real worker processes -------------------------------------------------------------

class WorkerProcess(ProcessProtocol):
    """A worker child: its verdict on :data:`STATUS_FD`, its end. Its standard
    output and error are the supervisor's own (the same terminal or journal)."""

    def __init__(self, events: WorkerEvents) -> None:
        self.events = events
        self.status = b""
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == STATUS_FD:
            self.status += data

    def childConnectionLost(self, childFD: int) -> None:
        if childFD != STATUS_FD:
            return
        if self.status == b"0":
            self.events.ready()
        elif self.status.startswith(b"1"):
            self.events.failed(self.status[2:].decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        status = (f"signal {value.signal}" if getattr(value, "signal", None)
                  else f"status {getattr(value, 'exitCode', None) or 0}")
        self.events.ended(status)

    def signal(self, sig: int) -> None:
        try:
            self.transport.signalProcess(sig)  # type: ignore[union-attr]
        except (ProcessExitedAlready, OSError, AttributeError):
            pass


def twistd_command() -> list[str]:
    """How to run twistd again: the script this process runs, or twistd's module."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script).startswith("twistd") and os.path.isfile(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def worker_logfile(logfile: str, index: int) -> str:
    """Worker ``index``'s log file beside the supervisor's: ``node.log`` ->
    ``node-worker1.log``."""
    stem, ext = os.path.splitext(logfile)
    return f"{stem}-worker{index}{ext}"


def worker_argv(index: int, twistd: dict[str, Any], plugin_args: list[str]) -> list[str]:
    """The command line of worker ``index``: in the foreground, no pid file,
    the supervisor's reactor and logging (its own file when the supervisor
    logs to one), then ``msgplatform`` with the supervisor's options."""
    argv = [*twistd_command(), "--nodaemon", "--pidfile="]
    if twistd.get("reactor"):
        argv += ["--reactor", twistd["reactor"]]
    logfile = twistd.get("logfile")
    if not twistd.get("nodaemon") and not logfile and not twistd.get("syslog"):
        logfile = "twistd.log"  # twistd's default for a daemon
    if logfile and logfile != "-":
        argv += ["--logfile", worker_logfile(logfile, index)]
    if twistd.get("syslog"):
        argv += ["--syslog", "--prefix", str(twistd.get("prefix") or "twisted")]
    return [*argv, "msgplatform", *plugin_args, "--worker", str(index)]


def spawn_launcher(reactor: Any, argv_of: Callable[[int], list[str]]) -> Launcher:
    """A launcher that runs worker ``index`` as ``argv_of(index)`` in this
    process's directory and environment."""

    def launch(index: int, events: WorkerEvents) -> WorkerHandle:
        argv = argv_of(index)
        process = WorkerProcess(events)
        reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ), path=os.getcwd(),
                             childFDs={0: "w", 1: 1, 2: 2, STATUS_FD: "r"})
        return process

    return launch


def watch_parent(reactor: Any, parent: int, stop: Callable[[], object],
                 every_s: float = 1.0) -> LoopingCall:
    """A worker stops (draining) once its supervisor ``parent`` is gone
    (killed with SIGKILL, say), instead of serving on as an orphan."""

    def check() -> None:
        if os.getppid() != parent:
            log.warn("the supervisor (pid {pid}) is gone: stopping", pid=parent)
            loop.stop()
            stop()

    loop = LoopingCall(check)
    loop.clock = reactor
    loop.start(every_s, now=False)
    return loop


def label_logs(index: int, publisher: Any) -> Callable[[LogEvent], None]:
    """Make every line worker ``index`` logs say so, as its system
    (``[worker1 daojia_msg.node.Node#info] ...``): the workers write to the
    supervisor's output. Added to ``publisher`` before twistd's own observers,
    which see the labelled event; returns the observer."""

    def label(event: LogEvent) -> None:
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        event["log_system"] = f"worker{index} {system}"

    publisher.addObserver(label)
    return label

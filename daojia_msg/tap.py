# -*- test-case-name: tests.test_tap -*-
"""``twistd msgplatform``: the options and the one place that wires the node.

Every option overrides the config file (docs/operations.md §1). A bad option or config
stops start-up with one line that names the key and the problem, and exit 1.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

import daojia_msg
from daojia_msg import processes, tls
from daojia_msg.admin.manhole import check_manhole_config
from daojia_msg.config import (
    MAX_NODE_ID,
    MAX_PROCESSES,
    MAX_TRACE_BUFFER,
    Config,
    ConfigError,
    check_urls,
    default_config,
    load_config,
)
from daojia_msg.node import check_cluster_config
from daojia_msg.sockets import listens_on_loopback

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run one msgplatform node. With no options: the embedded default (gate on "
        "127.0.0.1:7000, HTTP API on 127.0.0.1:8080, data under ./var, development-only demo "
        "apps 1001 and 1002). etc/msgplatform.toml documents every config key."
    )
    optFlags = [
        ["demo", None, "Allow a gate beyond loopback while the demo apps (public secrets) run."],
    ]
    def opt_version(self) -> None:
        """Print the version of msgplatform and exit."""
        print(_version_line())
        sys.exit(0)

    optParameters = [
        ["config", "c", None, "TOML config file (etc/msgplatform.toml documents every key)."],
        ["gate", None, None, "Gate listener, a Twisted endpoint (default tcp:7000; "
                             "tcp:7000:interface=127.0.0.1 with the demo apps)."],
        ["ws", None, None, "The gate over WebSocket, path /v1/ws (default "
                           "tcp:7070:interface=127.0.0.1; \"\" = off)."],
        ["http", None, None, "HTTP API listener (default tcp:8080:interface=127.0.0.1)."],
        ["rpc", None, None, "Internal RPC listener, bound only in a cluster (--redis)."],
        ["manhole", None, None, "Admin manhole listener (loopback; needs a password)."],
        ["manhole-password-file", None, None,
         "File holding the manhole password (its first line), instead of "
         "admin.manhole_password in a config file."],
        ["node-id", None, None, "Snowflake node id, 0 to 1023."],
        ["data-dir", None, None, "Directory for the embedded store (default ./var)."],
        ["redis", None, None, "Redis URL: sessions and node registry in Redis."],
        ["mysql", None, None, "MySQL URL: messages in MySQL."],
        ["bus", None, None, "C2S bus URL: memory:, redis://, amqp://, http(s)://."],
        ["trace-buffer", None, None, "Keep the last N message events in memory for "
                                     "GET /v1/trace/{logid} (log.trace_buffer; 0 = off; "
                                     "10000 with the demo apps)."],
        ["processes", None, None, "Node processes on this host sharing the gate's port "
                                  "(node.processes; default 1); more than 1 needs --redis "
                                  "and --mysql."],
        ["worker", None, None, "(internal) Run as worker K of a --processes supervisor."],
    ]


#: The config key each option sets: an error about a value given as an option
#: names the option, not the key.
OPTION_KEYS: dict[tuple[str, ...], str] = {
    ("listen", "gate"): "--gate",
    ("listen", "ws"): "--ws",
    ("listen", "http"): "--http",
    ("listen", "rpc"): "--rpc",
    ("listen", "manhole"): "--manhole",
    ("redis", "url"): "--redis",
    ("mysql", "url"): "--mysql",
    ("bus", "url"): "--bus",
    ("node", "data_dir"): "--data-dir",
    ("log", "trace_buffer"): "--trace-buffer",
    ("node", "processes"): "--processes",
}


def _version_line() -> str:
    return f"msgplatform {daojia_msg.__version__}"


def build_config(options: Any) -> Config:
    """The config that ``options`` ask for; raises :class:`ConfigError` naming
    the key, or the option when the value came from one."""
    try:
        return _build_config(options)
    except ConfigError as e:
        option = OPTION_KEYS.get(e.path)
        if option is not None and options[option[2:]] is not None:
            raise ConfigError(e.msg, (option,)) from None
        raise


def _build_config(options: Any) -> Config:
    config = load_config(options["config"]) if options["config"] else default_config()
    listen = config.listen
    for opt in ("gate", "ws", "http", "rpc", "manhole"):
        value = options[opt]
        if value is not None:
            listen = listen.__class__(**{**_fields(listen), opt: value})
    for opt in ("gate", "ws", "http", "rpc", "manhole"):
        value = getattr(listen, opt)
        if value:
            try:
                tls.server_endpoint(None, value)  # an ssl: one loads its files
            except tls.TLSError as e:
                raise ConfigError(str(e), ("listen", opt)) from None
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"not a valid endpoint description {value!r}: {e}",
                                  ("listen", opt)) from None
    changes: dict[str, Any] = {"listen": listen}
    if options["node-id"] is not None:
        raw = options["node-id"]
        if not raw.isdigit() or int(raw) > MAX_NODE_ID:
            raise ConfigError(f"expected an integer from 0 to {MAX_NODE_ID}, got {raw!r}",
                              ("--node-id",))
        changes["node_id"] = int(raw)
    if options["data-dir"] is not None:
        changes["data_dir"] = options["data-dir"]
    if options["redis"] is not None:
        changes["redis"] = dataclasses.replace(config.redis, url=options["redis"])
    if options["mysql"] is not None:
        changes["mysql"] = dataclasses.replace(config.mysql, url=options["mysql"])
    if options["bus"] is not None:
        changes["bus"] = dataclasses.replace(config.bus, url=options["bus"])
    if options["trace-buffer"] is not None:
        raw = options["trace-buffer"]
        if not raw.isdigit() or int(raw) > MAX_TRACE_BUFFER:
            raise ConfigError(f"expected an integer from 0 to {MAX_TRACE_BUFFER}, got {raw!r}",
                              ("--trace-buffer",))
        changes["log"] = dataclasses.replace(config.log, trace_buffer=int(raw))
    if options["processes"] is not None:
        changes["processes"] = _int_option(options["processes"], 1, MAX_PROCESSES, "--processes")
    if options["manhole-password-file"] is not None:
        changes["admin"] = dataclasses.replace(
            config.admin, manhole_password=_read_secret(options["manhole-password-file"],
                                                        "--manhole-password-file"))
    config = config.replace(**changes)
    check_urls(config)
    check_demo_gate(config, allowed=bool(options["demo"]))
    check_cluster_config(config)
    check_manhole_config(config.listen.manhole, config.admin.manhole_password)
    processes.check_processes(config)
    if options["worker"] is not None:
        _int_option(options["worker"], 0, config.processes - 1, "--worker")
    return config


def _int_option(raw: str, lo: int, hi: int, option: str) -> int:
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ConfigError(f"expected an integer from {lo} to {hi}, got {raw!r}", (option,))
    return int(raw)


def check_demo_gate(config: Config, allowed: bool) -> None:
    """The demo apps' secrets are public: anyone who reaches their gate can log
    in as any user. Refuse a gate beyond loopback unless ``--demo`` allows it."""
    if config.demo and not allowed and not listens_on_loopback(config.listen.gate):
        raise ConfigError(
            "the demo apps have public secrets, so their gate stays on loopback: pass --demo "
            "to listen beyond it anyway, or use a config file with apps of your own",
            ("listen", "gate"))


def _read_secret(path: str, option: str) -> str:
    """The first line of ``path`` (a secret kept out of the command line and
    the config file); a ConfigError naming ``option`` when unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise ConfigError(f"{os.path.abspath(path)!r} may be read by other users: "
                                  f"chmod 600 it", (option,))
            secret = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {os.path.abspath(path)!r}: {e}", (option,)) from None
    if not secret:
        raise ConfigError(f"{os.path.abspath(path)!r} is empty: its first line is the password",
                          (option,))
    return secret


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


class _Verdict(MultiService):
    """Holds the node and tells twistd's waiting parent how start-up went.

    Without ``-n`` twistd forks; the parent waits on a pipe for the child's
    verdict, which twistd writes as soon as the services' ``startService``
    returns. The node starts asynchronously (backends, then listeners), so
    this takes the pipe from twistd's config while the services start and
    writes the verdict itself once the node is ready or has failed: a daemon
    that cannot start exits 1 with its reason, instead of 0."""

    def __init__(self, runner: Any, pipe: int | None = None) -> None:
        super().__init__()
        self.runner = runner
        #: A worker's verdict goes to its supervisor (daojia_msg/processes.py).
        self.pipe: int | None = pipe
        self.limit = 100 if pipe is None else 4000  # what twistd's parent reads

    def startService(self) -> None:
        if self.runner is not None and self.runner.get("statusPipe") is not None:
            self.pipe = self.runner.pop("statusPipe")  # twistd's own options keep it there
        super().startService()

    def report(self, why: str | None) -> None:
        """Write the verdict: ``None`` for started, else the reason (once)."""
        pipe, self.pipe = self.pipe, None
        if pipe is None:
            return
        message = b"0" if why is None else f"1 {why}".encode("ascii", "backslashreplace")
        message = message[:self.limit]
        try:
            os.write(pipe, message)
            os.close(pipe)
        except OSError as e:  # a worker run by hand, without its supervisor's pipe
            log.warn("cannot report the start-up verdict: {error}", error=e)


def makeService(options: Any) -> IService:
    try:
        config = build_config(options)
    except ConfigError as e:
        sys.exit(f"msgplatform: {e}")
    from twisted.internet import reactor

    from daojia_msg import gctune, steadyclock
    from daojia_msg.node import Node

    runner = getattr(options, "parent", None)  # twistd's options, when run by twistd
    if config.processes > 1:
        # systemd's default KillMode signals the workers as well as the
        # supervisor, which forwards the signal: the second one is no error.
        stop_once(reactor)
        if options["worker"] is None:
            return _supervise(config, options, runner, reactor)

    # Timers, msgids and send dates on a clock a step of the wall clock does
    # not move (daojia_msg/steadyclock.py).
    steadyclock.install(reactor)

    worker = options["worker"]
    if worker is not None:  # one of several processes (daojia_msg/processes.py)
        config = processes.worker_config(config, int(worker))
        processes.label_logs(int(worker), globalLogPublisher)
    try:
        node = Node(config, reactor, reuse_port=worker is not None)
    except OSError as e:
        key = "--data-dir" if options["data-dir"] is not None else "node.data_dir"
        sys.exit(f"msgplatform: {key}: cannot use {os.path.abspath(config.data_dir)!r}: "
                 f"{e.strerror}")
    verdict = _Verdict(runner, processes.STATUS_FD if worker is not None else None)
    node.setServiceParent(verdict)

    def started(_: object) -> None:
        verdict.report(None)
        gctune.tune_after_start()

    def failed(failure: Failure) -> None:
        # The pid file goes first: the waiting parent returns on the verdict.
        _remove_pidfile(runner.get("pidfile") if runner is not None else None)
        verdict.report(failure.getErrorMessage())
        _start_failed(failure.getErrorMessage(), reactor, getattr(failure.type, "__name__", ""))

    node.ready.addCallbacks(started, failed)
    reactor.callWhenRunning(_watch_sighup, node.reload_tls, reactor)
    if worker is not None:
        # Its own process group: a terminal's Ctrl-C reaches the supervisor,
        # which stops the workers; and a worker whose supervisor is gone stops.
        os.setpgid(0, 0)
        parent = os.getppid()
        reactor.callWhenRunning(processes.watch_parent, reactor, parent,
                                functools.partial(_stop, reactor))
    return verdict


def _supervise(config: Config, options: Any, runner: Any, reactor: Any) -> IService:
    """The supervisor of ``config.processes`` workers (daojia_msg/processes.py):
    each runs this command again with ``--worker K``."""
    twistd = dict(runner) if runner is not None else {}
    args = plugin_args(options)
    verdict = _Verdict(runner)

    def give_up(why: str) -> None:
        _remove_pidfile(twistd.get("pidfile"))
        verdict.report(why)
        _start_failed(why, reactor)

    supervisor = processes.Supervisor(
        config.processes,
        processes.spawn_launcher(reactor, lambda i: processes.worker_argv(i, twistd, args)),
        reactor, give_up)
    supervisor.setServiceParent(verdict)
    supervisor.ready.addCallback(lambda _: verdict.report(None))

    def forward_sighup() -> None:
        count = supervisor.forward(signal.SIGHUP)
        log.info("SIGHUP: forwarded to {count} workers", count=count)

    reactor.callWhenRunning(_watch_sighup, forward_sighup, reactor)
    return verdict


def plugin_args(options: Any) -> list[str]:
    """The msgplatform options given (a worker gets them again), but ``--worker``."""
    args = [f"--{name}" for name, *_ in Options.optFlags if options[name]]
    args += [f"--{name}={options[name]}" for name, *_ in Options.optParameters
             if options[name] is not None and name != "worker"]
    return args


def _watch_sighup(reload: Callable[[], object], reactor: Any) -> None:
    """SIGHUP reloads the TLS certificates (and ends no node, TLS or not).
    Installed once the reactor runs, after twistd's own handlers, and calling
    any SIGHUP handler that was there before (twistd rotates its log on SIGUSR1)."""
    reactor.addSystemEventTrigger("after", "shutdown", tls.on_sighup(reload, reactor))


def stop_once(reactor: Any) -> None:
    """Make ``reactor.stop()`` do nothing once the reactor is stopping (a
    second SIGTERM or SIGINT ran it again, and Twisted logged the error)."""
    stop = reactor.stop

    def once() -> None:
        try:
            stop()
        except ReactorNotRunning:
            pass

    reactor.stop = once


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:  # already stopping
        pass


def _start_failed(why: str, reactor: Any, error: str = "") -> None:
    """A backend, a listener or a worker could not start: one clear line, then exit 1."""
    log.critical("msgplatform: start-up failed: {why}", why=why, error=error)
    # twistd has no exit status of its own: leave with 1 once shutdown is done.
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    # A start that fails before its first wait fails before twistd runs the
    # reactor (a data directory another node holds): stop once it runs.
    reactor.callWhenRunning(_stop, reactor)


def _remove_pidfile(pidfile: str | None) -> None:
    """Remove twistd's pid file if it is ours (twistd removes it only when it
    exits by itself, not when we leave with status 1)."""
    if not pidfile:
        return
    try:
        with open(pidfile) as f:
            ours = f.read().strip() == str(os.getpid())
        if ours:
            os.remove(pidfile)
    except OSError:
        pass

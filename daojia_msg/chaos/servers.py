# -*- test-case-name: tests.chaos.test_cli -*-
"""The fault suite's own servers: a private Redis, a private MariaDB, a
private RabbitMQ (for the rabbitmq-restart fault), the nodes and HAProxy,
each a child process on free loopback ports with its files in the run's
directory. Nothing here touches the machine's shared servers (Redis 6379,
MariaDB 3306, RabbitMQ 5672 and its Erlang distribution port 25672): every
port is a fresh one, and the RabbitMQ node has a name of its own.

Each :class:`Proc` writes its output to ``<dir>/<name>.log`` and knows the line
that says it is up; faults act on it with signals (:meth:`Proc.send`),
and :meth:`Proc.start` starts it again with the same command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

TAIL = 8192


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def which(*names: str) -> str | None:
    """The first of ``names`` found on PATH or in /usr/sbin, /sbin."""
    for name in names:
        found = shutil.which(name) or next(
            (p for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
             if os.access(p := os.path.join(d, name), os.X_OK)), None)
        if found:
            return found
    return None


def faketime_library() -> str | None:
    """libfaketime (apt-get install faketime), for the clock-step fault."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                   + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


def faketime_env(library: str, rc_file: str) -> dict[str, str]:
    """The environment of a process whose wall clock follows ``rc_file``
    (an offset such as "+30", read again every second). Only the wall clock
    steps, like an NTP step: CLOCK_MONOTONIC is left alone.

    ``FAKETIME_FORCE_MONOTONIC_FIX=0``: on glibc, libfaketime otherwise turns
    on a workaround under which ``pthread_cond_timedwait`` returns early, and
    a node's threads (the GIL's timed waits, the pool's queues) spin: that
    node then burned ~60% of a core at 100 messages/s, against ~10% for the
    others, and on a busy machine fell behind its 1.5 s lease. Without it the
    node costs what the others do, and the step still shows in its clock."""
    with open(rc_file, "w") as f:
        f.write("+0\n")
    return {**os.environ, "LD_PRELOAD": library, "FAKETIME_TIMESTAMP_FILE": rc_file,
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DONT_FAKE_MONOTONIC": "1", "FAKETIME_FORCE_MONOTONIC_FIX": "0"}


def rabbitmq_server() -> str | None:
    """RabbitMQ's own start script (apt-get install rabbitmq-server). Not
    Debian's /usr/sbin/rabbitmq-server: that one switches to the rabbitmq
    user and its files in /var/lib/rabbitmq."""
    import glob

    found = sorted(glob.glob("/usr/lib/rabbitmq/bin/rabbitmq-server")
                   + glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return next((path for path in found if os.access(path, os.X_OK)), None)


def rabbitmq_env(directory: str, port: int, dist_port: int, name: str,
                 also: str | None = None) -> dict[str, str]:
    """The environment of a private RabbitMQ node ``name``: AMQP on
    127.0.0.1:``port`` only, its Erlang distribution on ``dist_port``, no
    plugins, its database, logs (to stdout) and Erlang cookie (``HOME``) in
    ``directory``/rabbitmq. With ``also`` (the run's bridge address, see
    :mod:`daojia_msg.chaos.netns`) AMQP listens there too and guest may log
    in from it."""
    base = os.path.join(directory, "rabbitmq")
    for sub in ("home", "mnesia", "log"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    config = os.path.join(base, "rabbitmq.conf")
    with open(config, "w") as f:
        f.write(f"listeners.tcp.default = 127.0.0.1:{port}\n"
                + (f"listeners.tcp.bridge = {also}:{port}\nloopback_users = none\n" if also
                   else "loopback_users.guest = true\n")
                + "disk_free_limit.absolute = 10MB\n")
    plugins = os.path.join(base, "enabled_plugins")
    with open(plugins, "w") as f:
        f.write("[].\n")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    return {**keep, "HOME": os.path.join(base, "home"),
            "RABBITMQ_NODENAME": name, "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(base, "log"), "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": config, "RABBITMQ_ENABLED_PLUGINS_FILE": plugins}


class GroupProc:
    """Mixed into :class:`Proc` for a child started by ``setsid`` (so its
    process group is its pid): SIGKILL goes to the whole group, the Erlang VM
    that RabbitMQ's start script runs included."""

    pid: int

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def twistd() -> str:
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def prerequisites() -> tuple[dict[str, str], list[str]]:
    """The programs found (name -> path) and what is missing, each with its fix."""
    wanted = {
        "redis-server": (("redis-server",), "apt-get install redis-server"),
        "mariadbd": (("mariadbd", "mysqld"), "apt-get install mariadb-server"),
        "mariadb-install-db": (("mariadb-install-db", "mysql_install_db"),
                               "apt-get install mariadb-server"),
        "haproxy": (("haproxy",), "apt-get install haproxy"),
    }
    found: dict[str, str] = {}
    missing: list[str] = []
    for key, (names, fix) in wanted.items():
        path = which(*names)
        if path is None:
            missing.append(f"{key} not found: {fix}")
        else:
            found[key] = path
    if os.access(twistd(), os.X_OK):
        found["twistd"] = twistd()
    else:
        missing.append(f"twistd not found next to {sys.executable}: pip install msgplatform")
    return found, missing


class Proc(ProcessProtocol):
    """A child process: its log file, a Deferred for its ready line, one for its end."""

    def __init__(self, reactor: Any, name: str, argv: Sequence[str], directory: str,
                 ready: bytes | None, env: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.name = name
        self.argv = list(argv)
        self.directory = directory
        self.ready_text = ready
        self.env = env
        self.log_path = os.path.join(directory, f"{name}.log")
        self.tail = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.ended.callback(None)
        self.stopped = False  # SIGSTOPped by a fault
        #: the line that said it is ready (a node's "node N serving")
        self.ready_line = b""
        self._log: Any = None
        self.pid = 0

    @property
    def running(self) -> bool:
        return not self.ended.called

    def start(self, timeout: float = 60.0) -> Deferred[None]:
        """Start it (again); fires once its ready line appeared (or at once)."""
        assert not self.running, f"{self.name} is running"
        self.tail = b""
        self.ready = Deferred()
        self.ended = Deferred()
        self.stopped = False
        self._log = open(self.log_path, "ab")
        self._log.write(b"==== start: " + " ".join(self.argv).encode() + b"\n")
        env = dict(os.environ) if self.env is None else self.env
        transport = self.reactor.spawnProcess(self, self.argv[0], self.argv, env=env,
                                              path=self.directory)
        self.pid = int(transport.pid)
        if self.ready_text is None:
            self.ready.callback(None)
        return self.ready.addTimeout(timeout, self.reactor)

    def outReceived(self, data: bytes) -> None:
        if self._log is not None:
            self._log.write(data)
        self.tail = (self.tail + data)[-TAIL:]
        if self.ready_text and not self.ready.called and self.ready_text in self.tail:
            at = self.tail.index(self.ready_text)
            start = self.tail.rfind(b"\n", 0, at) + 1
            self.ready_line = self.tail[start:].split(b"\n")[0]
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if self._log is not None:
            self._log.write(f"==== ended: {reason.getErrorMessage()}\n".encode())
            self._log.close()
            self._log = None
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                f"{self.name} exited before it was ready (see {self.log_path}):\n"
                + self.tail.decode(errors="replace")[-2000:]))
        self.ended.callback(None)

    def send(self, sig: int) -> None:
        if not self.running:
            return
        try:
            self.transport.signalProcess(sig)  # type: ignore[union-attr]
        except (ProcessExitedAlready, ProcessLookupError, OSError):
            return
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """End it with ``sig`` (SIGKILL after ``timeout``) and wait for its end."""
        if not self.running:
            return
        if self.stopped:
            self.send(signal.SIGCONT)
        self.send(sig)
        try:
            await self.ended.addTimeout(timeout, self.reactor)
        except Exception:
            self.send(signal.SIGKILL)
            await self.ended


async def wait_port(reactor: Any, port: int, timeout: float = 30.0) -> None:
    """Until something accepts on 127.0.0.1:port (polled, without blocking)."""
    for _ in range(int(timeout / 0.1)):
        s = socket.socket()
        s.settimeout(0.2)
        try:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        finally:
            s.close()
        await deferLater(reactor, 0.1, lambda: None)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class RabbitProc(Proc, GroupProc):
    """The private RabbitMQ: SIGTERM to its start script stops the node
    cleanly (the script's trap); SIGKILL kills its whole process group."""

    def send(self, sig: int) -> None:
        if sig == signal.SIGKILL and self.running and self.pid:
            self.kill_group()
            return
        super().send(sig)


def rabbitmq_proc(reactor: Any, path: str, directory: str, port: int, dist_port: int,
                  also: str | None = None) -> Proc:
    name = f"chaos-{os.getpid()}-{port}@localhost"
    setsid = which("setsid") or "setsid"
    return RabbitProc(reactor, "rabbitmq", [setsid, path], directory, b"Server startup complete",
                      env=rabbitmq_env(directory, port, dist_port, name, also))


def redis_proc(reactor: Any, path: str, directory: str, port: int,
               also: str | None = None) -> Proc:
    data = os.path.join(directory, "redis")
    os.makedirs(data, exist_ok=True)
    return Proc(reactor, "redis", [
        path, "--port", str(port), "--bind", "127.0.0.1",
        # On the run's bridge too (private: no uplink), without protected mode's refusal.
        *([also, "--protected-mode", "no"] if also else []), "--save", "", "--appendonly", "no",
        "--dir", data, "--daemonize", "no", "--logfile", ""], directory,
        b"Ready to accept connections")


def mariadb_proc(reactor: Any, programs: dict[str, str], directory: str, port: int,
                 also: str | None = None, extra: Sequence[str] = ()) -> Proc:
    """``mariadbd`` with a data directory of its own (initialised here, blocking),
    root without a password on loopback; ``--user=root`` so it runs as root in CI;
    ``extra`` options last (e.g. ``--ssl-cert=...``)."""
    data = os.path.join(directory, "mariadb")
    subprocess.run([programs["mariadb-install-db"], "--no-defaults", f"--datadir={data}",
                    "--user=root", "--auth-root-authentication-method=normal",
                    "--skip-test-db"], check=True, capture_output=True, timeout=120)
    return Proc(reactor, "mariadb", [
        programs["mariadbd"], "--no-defaults", f"--datadir={data}", "--user=root",
        f"--port={port}", "--bind-address=127.0.0.1" + (f",{also}" if also else ""),
        "--skip-name-resolve",
        f"--socket={os.path.join(directory, 'mariadb.sock')}",
        f"--pid-file={os.path.join(directory, 'mariadb.pid')}",
        "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--max-connections=500", *extra],
        directory, b"ready for connections", env={})


def create_database(port: int, name: str, host: str = "127.0.0.1") -> str:
    """The database; its URL for nodes that reach MariaDB at ``host`` (not
    loopback: a user ``chaos`` for that /24, root being loopback only)."""
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=port, user="root")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
            if host != "127.0.0.1":
                hosts = host.rsplit(".", 1)[0] + ".%"
                cur.execute(f"CREATE USER IF NOT EXISTS 'chaos'@'{hosts}' IDENTIFIED BY 'chaos'")
                cur.execute(f"GRANT ALL ON `{name}`.* TO 'chaos'@'{hosts}'")
    finally:
        conn.close()
    if host != "127.0.0.1":
        return f"mysql://chaos:chaos@{host}:{port}/{name}"
    return f"mysql://root@127.0.0.1:{port}/{name}"


APP = 1001
SECRET = "chaos-secret-1001"
API_KEY = "chaos-key-1001"
C2S_MSGTYPE = 3
TOPIC = "chaos-c2s"
#: The C2S msgtype routed to the private RabbitMQ (bus "rabbit"), its topic,
#: and the consumer's durable queue (it keeps what arrives while the consumer
#: reconnects, and persistent messages across the broker's restart).
AMQP_MSGTYPE = 4
AMQP_TOPIC = "chaos-c2s-amqp"
AMQP_QUEUE = "chaos-c2s-amqp"


def amqp_url(port: int, host: str = "127.0.0.1") -> str:
    return f"amqp://guest:guest@{host}:{port}/"


def node_config(directory: str, i: int, redis_port: int, mysql_url: str,
                amqp_port: int | None = None, host: str = "127.0.0.1") -> str:
    """Node ``i``'s configuration; ``host``: where it reaches Redis and RabbitMQ."""
    path = os.path.join(directory, f"node{i}.toml")
    with open(path, "w") as f:
        f.write(f"""
[redis]
url = "redis://{host}:{redis_port}/0"
key_prefix = "chaos:"
[mysql]
url = "{mysql_url}"
shards = 4
pool_min = 2
pool_max = 8
[bus]
url = "redis://{host}:{redis_port}/0"
[cluster]
heartbeat_s = 0.5
ttl_s = 1.5
drain_grace_s = 0.0
rpc_secret = "chaos-rpc-secret-0123456789"
[apps.{APP}]
usersystem = "chaos"
secret = "{SECRET}"
api_key = "{API_KEY}"
[[routes]]
appcode = {APP}
msgtype = {C2S_MSGTYPE}
topic = "{TOPIC}"
geo = true
""")
        if amqp_port is not None:
            f.write(f"""[buses.rabbit]
url = "{amqp_url(amqp_port, host)}"
[[routes]]
appcode = {APP}
msgtype = {AMQP_MSGTYPE}
topic = "{AMQP_TOPIC}"
bus = "rabbit"
""")
    return path


def node_proc(reactor: Any, directory: str, i: int, config: str,
              gate: int, http: int, rpc: int, env: dict[str, str] | None = None,
              address: str = "127.0.0.1", prefix: Sequence[str] = ()) -> Proc:
    """Node ``i`` listening on ``address``; ``prefix`` runs it elsewhere (a
    network namespace)."""
    home = os.path.join(directory, f"node{i}")
    os.makedirs(home, exist_ok=True)
    return Proc(reactor, f"node{i}", [
        *prefix, twistd(), "-n", "--pidfile=", "msgplatform", "--config", config,
        "--data-dir", home,
        "--gate", f"haproxy:tcp:{gate}:interface={address}:backlog=1024",
        "--http", f"tcp:{http}:interface={address}",
        "--rpc", f"tcp:{rpc}:interface={address}",
        "--ws", "tcp:0:interface=127.0.0.1"], directory, b" serving", env=env)


def haproxy_config(gate: int, api: int, nodes: Sequence[tuple[int, int]],
                   hosts: Sequence[str] = ()) -> str:
    """An HAProxy config: phones on ``gate`` (send-proxy to the nodes' haproxy:
    gates, checked on their ``/healthz``), the HTTP APIs on ``api``; ``nodes``
    is (gate port, http port) per node, at ``hosts`` (default loopback)."""
    hosts = list(hosts) or ["127.0.0.1"] * len(nodes)
    gates = "\n".join(f"    server node{i} {hosts[i]}:{g} check port {h}"
                      for i, (g, h) in enumerate(nodes))
    apis = "\n".join(f"    server node{i} {hosts[i]}:{h} check"
                     for i, (_, h) in enumerate(nodes))
    return f"""
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend gate
    bind 127.0.0.1:{gate}
    default_backend nodes
backend nodes
    balance leastconn
    retries 3
    option redispatch
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 300ms fall 1 rise 1 send-proxy
{gates}
frontend api
    bind 127.0.0.1:{api}
    mode http
    timeout client 30s
    default_backend apis
backend apis
    mode http
    timeout server 30s
    retries 2
    option httpchk GET /healthz
    default-server inter 300ms fall 1 rise 1
{apis}
"""


def haproxy_proc(reactor: Any, path: str, directory: str, gate: int, api: int,
                 nodes: Sequence[tuple[int, int]], hosts: Sequence[str] = ()) -> Proc:
    """HAProxy with :func:`haproxy_config`, its config file in ``directory``."""
    config = os.path.join(directory, "haproxy.cfg")
    with open(config, "w") as f:
        f.write(haproxy_config(gate, api, nodes, hosts))
    return Proc(reactor, "haproxy", [path, "-db", "-f", config], directory, None)

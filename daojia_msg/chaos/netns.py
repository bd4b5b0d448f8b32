# -*- test-case-name: tests.chaos.test_netns -*-
"""Network namespaces for the node-partition fault: each node on a network
stack of its own, so one can be cut off from its peers while it still
reaches Redis, MariaDB and the bus.

A bridge of the run's own in the root namespace holds a private /24 (one no
interface uses; no uplink, nothing routed): the servers listen on its .1 as
well as on loopback, node ``i`` lives in namespace ``chaos<run>-<i>`` at
.``10+i`` behind a veth pair. Cutting node ``i`` off adds, in its namespace,
a blackhole route to each peer's address: its packets to them, and its
answers to their connection attempts, go nowhere; Redis, MariaDB and the bus
stay reachable. Needs root (CAP_NET_ADMIN) and ``ip`` (iproute2); nothing
else on the machine is touched, and :meth:`Network.teardown` removes it all.

A run's names carry its pid (``chb<pid>``, ``chaos<pid>-<i>``): a run killed
with SIGKILL leaves its network behind, and the next run removes the
leftovers of runs whose process is gone (:func:`remove_leftovers`).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence

FIRST_HOST = 10


def available() -> str | None:
    """The ``ip`` program if this process may create namespaces, else None:
    root, and a namespace made and removed (a container may refuse it)."""
    from daojia_msg.chaos.servers import which

    path = which("ip")
    if path is None or os.geteuid() != 0:
        return None
    probe = f"chaosprobe{os.getpid()}"
    made = subprocess.run([path, "netns", "add", probe], capture_output=True, timeout=30)
    if made.returncode != 0:
        return None
    subprocess.run([path, "netns", "del", probe], capture_output=True, timeout=30)
    return path


def free_subnet(addresses: str, base: str = "10.231") -> str:
    """The first ``base.N`` (N from 1) that no address in ``addresses`` (the
    text of ``ip -4 -o addr``) is in."""
    used = {int(n) for n in re.findall(re.escape(base) + r"\.(\d+)\.", addresses)}
    return f"{base}.{next(n for n in range(1, 255) if n not in used)}"


class Network:
    """The bridge and the nodes' namespaces of one run (``tag``: a few digits)."""

    def __init__(self, ip: str, tag: str, nodes: int, subnet: str) -> None:
        self.ip = ip
        self.bridge = f"chb{tag}"
        self.host = f"{subnet}.1"
        self.namespaces = [f"chaos{tag}-{i}" for i in range(nodes)]
        self.addresses = [f"{subnet}.{FIRST_HOST + i}" for i in range(nodes)]
        self._veths = [(f"chv{tag}h{i}", f"chv{tag}n{i}") for i in range(nodes)]
        self.up = False

    def setup_commands(self) -> list[list[str]]:
        ip = self.ip
        commands = [[ip, "link", "add", self.bridge, "type", "bridge"],
                    [ip, "addr", "add", f"{self.host}/24", "dev", self.bridge],
                    [ip, "link", "set", self.bridge, "up"]]
        for ns, address, (outer, inner) in zip(self.namespaces, self.addresses, self._veths,
                                               strict=True):
            commands += [[ip, "netns", "add", ns],
                         [ip, "link", "add", outer, "type", "veth", "peer", "name", inner],
                         [ip, "link", "set", outer, "master", self.bridge],
                         [ip, "link", "set", outer, "up"],
                         [ip, "link", "set", inner, "netns", ns],
                         [ip, "-n", ns, "addr", "add", f"{address}/24", "dev", inner],
                         [ip, "-n", ns, "link", "set", inner, "up"],
                         [ip, "-n", ns, "link", "set", "lo", "up"]]
        return commands

    def teardown_commands(self) -> list[list[str]]:
        """Each namespace (its veth end goes with it, and the other end too), the bridge."""
        return ([[self.ip, "netns", "del", ns] for ns in self.namespaces]
                + [[self.ip, "link", "del", self.bridge]])

    def cut_commands(self, i: int, add: bool = True) -> list[list[str]]:
        """Blackhole routes in node ``i``'s namespace to every peer (``add``),
        or their removal."""
        verb = "add" if add else "del"
        return [[self.ip, "-n", self.namespaces[i], "route", verb, "blackhole", f"{peer}/32"]
                for j, peer in enumerate(self.addresses) if j != i]

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program in node ``i``'s namespace
        (``ip netns exec`` execs it: signals reach the program itself)."""
        return [self.ip, "netns", "exec", self.namespaces[i]]

    def setup(self) -> None:
        self.up = True  # a half-made network is torn down too
        run(self.setup_commands())

    def teardown(self) -> None:
        if self.up:
            self.up = False
            run(self.teardown_commands(), check=False)


def run(commands: Sequence[Sequence[str]], check: bool = True) -> None:
    """Each command in turn (blocking: each takes milliseconds)."""
    for argv in commands:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


#: A run's namespaces and bridge, in ``ip netns list`` and ``ip -o link show type bridge``.
RUN_NAMESPACE = re.compile(r"^(chaos(\d+)-\d+)\b", re.MULTILINE)
RUN_BRIDGE = re.compile(r"^\d+:\s+(chb(\d+))[:@]", re.MULTILINE)


def a_run_is_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is a fault-suite run."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"chaos" in f.read()
    except OSError:
        return False


def leftover_commands(ip: str, namespaces: str, bridges: str,
                      alive: Callable[[int], bool] = a_run_is_alive) -> list[list[str]]:
    """The commands that remove the namespaces and bridges (listed in
    ``namespaces`` and ``bridges``: the output of ``ip netns list`` and ``ip
    -o link show type bridge``) of runs whose process is gone."""
    commands = [[ip, "netns", "del", name] for name, pid in RUN_NAMESPACE.findall(namespaces)
                if not alive(int(pid))]
    commands += [[ip, "link", "del", name] for name, pid in RUN_BRIDGE.findall(bridges)
                 if not alive(int(pid))]
    return commands


def listed(ip: str, *argv: str) -> str:
    """What ``ip argv...`` prints."""
    return subprocess.run([ip, *argv], capture_output=True, text=True, timeout=30).stdout


def remove_leftovers(ip: str) -> list[str]:
    """Remove what runs killed with SIGKILL left; the names removed."""
    commands = leftover_commands(ip, listed(ip, "netns", "list"),
                                 listed(ip, "-o", "link", "show", "type", "bridge"))
    run(commands, check=False)
    return [argv[-1] for argv in commands]


def new_network(ip: str, nodes: int) -> Network:
    """The network of this run, named by its pid (call :func:`remove_leftovers`
    first: the subnets of dead runs become free again)."""
    return Network(ip, str(os.getpid()), nodes, free_subnet(listed(ip, "-4", "-o", "addr")))

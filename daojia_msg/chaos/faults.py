# -*- test-case-name: tests.chaos.test_cli -*-
"""The faults, one at a time, each held for ``hold`` seconds then healed.

A fault is an async function of the :class:`Cluster` (anything with
``nodes``, ``redis``, ``mariadb`` and ``rabbitmq``
:class:`~daojia_msg.chaos.servers.Proc` attributes), the hold time and the phase number (which picks the victim
node); it returns facts about the fault for the report (how long the healing
took). ``none`` is the control phase: traffic, no fault.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.task import deferLater

Fault = Callable[[Any, float, int], Awaitable[dict[str, Any]]]


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def _restart(cluster: Any, proc: Any, hold: float, sig: int) -> dict[str, Any]:
    reactor = cluster.reactor
    await proc.stop(sig)
    await sleep(reactor, hold)
    started = reactor.seconds()
    await proc.start(timeout=90)
    return {"victim": proc.name, "down_s": hold,
            "restart_s": round(reactor.seconds() - started, 2)}


async def _pause(cluster: Any, proc: Any, hold: float) -> dict[str, Any]:
    proc.send(signal.SIGSTOP)
    await sleep(cluster.reactor, hold)
    proc.send(signal.SIGCONT)
    return {"victim": proc.name, "stopped_s": hold}


async def none(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    await sleep(cluster.reactor, hold)
    return {}


async def node_kill(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """SIGKILL one node; after ``hold`` start it again (same ports and config)."""
    return await _restart(cluster, cluster.nodes[n % len(cluster.nodes)], hold, signal.SIGKILL)


async def node_stop(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """SIGSTOP one node for ``hold`` seconds, then SIGCONT."""
    return await _pause(cluster, cluster.nodes[n % len(cluster.nodes)], hold)


async def redis_restart(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """Stop the private redis-server (SIGTERM; no persistence: it comes back
    empty), start it again on the same port after ``hold`` seconds."""
    return await _restart(cluster, cluster.redis, hold, signal.SIGTERM)


async def mysql_stop(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """SIGSTOP the private mariadbd (a stalled database), then SIGCONT."""
    return await _pause(cluster, cluster.mariadb, hold)


async def mysql_restart(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """Stop the private mariadbd (SIGTERM, a clean shutdown), start it again."""
    return await _restart(cluster, cluster.mariadb, hold, signal.SIGTERM)


async def node_partition(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """Cut one node off from its peers (blackhole routes to them in its
    network namespace; Redis, MariaDB and the bus stay reachable), then heal."""
    from daojia_msg.chaos.netns import run

    i = n % len(cluster.nodes)
    run(cluster.network.cut_commands(i))
    try:
        await sleep(cluster.reactor, hold)
    finally:
        run(cluster.network.cut_commands(i, add=False))
    return {"victim": cluster.nodes[i].name, "cut_off_s": hold}


async def rabbitmq_restart(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """Stop the private RabbitMQ that carries one C2S route (SIGTERM to its
    start script: a clean shutdown; its durable queue and persistent messages
    stay on disk), start it again after ``hold`` seconds."""
    return await _restart(cluster, cluster.rabbitmq, hold, signal.SIGTERM)


#: How far the clock-step fault moves the wall clock.
CLOCK_STEP_S = 30


async def clock_step(cluster: Any, hold: float, n: int) -> dict[str, Any]:
    """Step the wall clock of the last node (started under libfaketime; only
    its process) ``CLOCK_STEP_S`` ahead, hold, then step it back: both an
    NTP step forward and one backward. CLOCK_MONOTONIC does not move."""
    def offset(seconds: int) -> None:
        with open(cluster.clock_file, "w") as f:
            f.write(f"{seconds:+d}\n")

    offset(CLOCK_STEP_S)
    await sleep(cluster.reactor, hold)
    offset(0)
    await sleep(cluster.reactor, 1.5)  # libfaketime reads the file again every second
    return {"victim": cluster.nodes[-1].name, "stepped_s": CLOCK_STEP_S, "held_s": hold}


FAULTS: dict[str, Fault] = {
    "none": none,
    "node-kill": node_kill,
    "node-stop": node_stop,
    "redis-restart": redis_restart,
    "mysql-stop": mysql_stop,
    "mysql-restart": mysql_restart,
    "node-partition": node_partition,
    "rabbitmq-restart": rabbitmq_restart,
    # Last, as before the node's clock stopped following steps
    # (daojia_msg/steadyclock.py): a regression would spill into a next phase.
    "clock-step": clock_step,
}

#: Faults that need a program not every machine has: the program's key in
#: the runner's programs, how to find it, and how to install it. Without it,
#: the fault is left out of the default list (a line says so) and refused
#: when asked for by name.
OPTIONAL: dict[str, tuple[str, str]] = {
    "clock-step": ("libfaketime", "apt-get install faketime"),
    "rabbitmq-restart": ("rabbitmq-server", "apt-get install rabbitmq-server"),
    "node-partition": ("ip-netns", "needs root and ip: apt-get install iproute2"),
}

"""The node-partition fault's network: the commands that build, cut, heal
and remove it (nothing is run here), and the fault's order with task.Clock."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.chaos import faults, netns


def network() -> netns.Network:
    return netns.Network("/sbin/ip", "123", 3, "10.231.7")


class LeftoversTests(TestCase):
    NAMESPACES = "chaos123-0 (id: 3)\nchaos123-1 (id: 4)\nchaos77-0\nmine\n"
    BRIDGES = ("5: chb123: <BROADCAST,MULTICAST> mtu 1500\n"
               "6: chb77: <BROADCAST,MULTICAST,UP> mtu 1500\n7: br0: <BROADCAST> mtu 1500\n")

    def test_only_the_dead_runs_networks_go(self) -> None:
        commands = netns.leftover_commands("/sbin/ip", self.NAMESPACES, self.BRIDGES,
                                           alive=lambda pid: pid == 77)
        self.assertEqual(commands, [["/sbin/ip", "netns", "del", "chaos123-0"],
                                    ["/sbin/ip", "netns", "del", "chaos123-1"],
                                    ["/sbin/ip", "link", "del", "chb123"]])

    def test_nothing_left(self) -> None:
        self.assertEqual(netns.leftover_commands("/sbin/ip", "", "", alive=lambda pid: False), [])

    def test_a_run_is_a_live_process_that_says_chaos(self) -> None:
        run = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                                "msgplatform-chaos"], stdin=subprocess.PIPE)
        other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
        try:
            self.assertTrue(netns.a_run_is_alive(run.pid))
            self.assertFalse(netns.a_run_is_alive(other.pid))
        finally:
            for process in (run, other):
                assert process.stdin is not None
                process.stdin.close()
                process.wait()
        self.assertFalse(netns.a_run_is_alive(run.pid))  # gone
        self.assertFalse(netns.a_run_is_alive(2 ** 22 + 1))  # above pid_max: no such process

    def test_names_fit_an_interface_name_for_any_pid(self) -> None:
        """Linux interface names are at most 15 characters; pids at most 2**22."""
        network = netns.Network("/sbin/ip", str(2 ** 22), 9, "10.231.7")
        names = [network.bridge, *(n for pair in network._veths for n in pair)]
        self.assertLessEqual(max(len(n) for n in names), 15)


class NetworkTests(TestCase):
    def test_a_subnet_no_interface_uses(self) -> None:
        text = ("1: lo    inet 127.0.0.1/8 scope host lo\n"
                "5: chb9    inet 10.231.1.1/24 scope global chb9\n"
                "6: eth0    inet 10.231.3.4/16 scope global eth0\n")
        self.assertEqual(netns.free_subnet(text), "10.231.2")
        self.assertEqual(netns.free_subnet(""), "10.231.1")

    def test_addresses_and_names(self) -> None:
        n = network()
        self.assertEqual((n.bridge, n.host), ("chb123", "10.231.7.1"))
        self.assertEqual(n.namespaces, ["chaos123-0", "chaos123-1", "chaos123-2"])
        self.assertEqual(n.addresses, ["10.231.7.10", "10.231.7.11", "10.231.7.12"])
        self.assertEqual(n.prefix(1), ["/sbin/ip", "netns", "exec", "chaos123-1"])
        # Linux interface names: at most 15 characters.
        self.assertTrue(all(len(a) <= 15 and len(b) <= 15 for a, b in n._veths))

    def test_setup_puts_each_node_behind_a_veth_on_the_bridge(self) -> None:
        commands = [" ".join(c[1:]) for c in network().setup_commands()]
        self.assertEqual(commands[:3], ["link add chb123 type bridge",
                                        "addr add 10.231.7.1/24 dev chb123", "link set chb123 up"])
        self.assertEqual(commands[3:11], [
            "netns add chaos123-0", "link add chv123h0 type veth peer name chv123n0",
            "link set chv123h0 master chb123", "link set chv123h0 up",
            "link set chv123n0 netns chaos123-0",
            "-n chaos123-0 addr add 10.231.7.10/24 dev chv123n0",
            "-n chaos123-0 link set chv123n0 up", "-n chaos123-0 link set lo up"])
        self.assertEqual(len(commands), 3 + 3 * 8)

    def test_cut_and_heal_route_the_peers_to_a_blackhole(self) -> None:
        n = network()
        self.assertEqual([" ".join(c[1:]) for c in n.cut_commands(1)], [
            "-n chaos123-1 route add blackhole 10.231.7.10/32",
            "-n chaos123-1 route add blackhole 10.231.7.12/32"])
        self.assertEqual([c[4] for c in n.cut_commands(1, add=False)], ["del", "del"])

    def test_teardown_only_once_and_only_after_setup(self) -> None:
        ran: list[list[str]] = []
        self.patch(netns, "run", lambda commands, check=True: ran.extend(commands))
        n = network()
        n.teardown()
        self.assertEqual(ran, [])
        n.setup()
        n.teardown()
        n.teardown()
        self.assertEqual([" ".join(c[1:]) for c in ran[-4:]], [
            "netns del chaos123-0", "netns del chaos123-1", "netns del chaos123-2",
            "link del chb123"])
        self.assertEqual(len(ran), 3 + 3 * 8 + 4)


class PartitionFaultTests(TestCase):
    def test_cut_off_for_the_hold_then_healed(self) -> None:
        ran: list[list[str]] = []
        self.patch(netns, "run", lambda commands, check=True: ran.extend(commands))

        class Cluster:
            reactor = Clock()
            network = network()
            nodes: list[Any] = [type("P", (), {"name": f"node{i}"})() for i in range(3)]

        done = Deferred.fromCoroutine(faults.FAULTS["node-partition"](Cluster, 4.0, 5))  # type: ignore[arg-type]
        self.assertEqual([c[4] for c in ran], ["add", "add"])
        self.assertEqual({c[2] for c in ran}, {"chaos123-2"})
        Cluster.reactor.advance(4.0)
        self.assertEqual([c[4] for c in ran], ["add", "add", "del", "del"])
        self.assertEqual(self.successResultOf(done), {"victim": "node2", "cut_off_s": 4.0})

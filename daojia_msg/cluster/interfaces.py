# -*- test-case-name: tests.cluster.test_rpc -*-
"""What logic needs of the other nodes of a cluster."""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as the registry lists it."""

    node_id: int
    gate_host: str
    gate_port: int
    rpc_host: str
    rpc_port: int
    connections: int
    started_ms: int
    heartbeat_ms: int


class IPeers(Interface):
    """Hand work to the node that holds a session (internal RPC)."""

    def deliver(record, message):
        """Push ``message`` (:class:`StoredMessage`) to the session ``record``
        (:class:`SessionRecord`) on ``record.node_id``.

        Fires with True once that node pushed it to that session (not a
        delivery receipt), False when the session is not there; fails with
        :class:`~daojia_msg.store.errors.StoreUnavailable` when the node cannot
        be reached in time. In both failure cases the message stays pending.
        """

    def kick(record, reason_code, reason):
        """KICKOUT the session ``record`` on its node; fires with True if it was
        there and was kicked."""


class INodeRegistry(Interface):
    """Live nodes, their addresses and load, and this node's lease."""

    def live_nodes():
        """Fires with the list of :class:`NodeInfo` of nodes whose heartbeat is alive."""

    def node(node_id):
        """Fires with the :class:`NodeInfo` of ``node_id``, or None when it is not alive."""

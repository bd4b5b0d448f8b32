# -*- test-case-name: tests.cluster.test_rpc -*-
"""The node registry: which nodes are alive, where, and how loaded."""

from __future__ import annotations

from zope.interface import Interface


class INodeRegistry(Interface):
    """Live nodes, their addresses and load, and this node's lease."""

    def live_nodes():
        """Fires with the list of :class:`NodeInfo` of nodes whose heartbeat is alive."""

    def node(node_id):
        """Fires with the :class:`NodeInfo` of ``node_id``, or None when it is not alive."""

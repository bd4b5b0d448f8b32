"""The internal RPC between the nodes of a cluster (docs/architecture.md §1), over Twisted AMP.

A node that must push to a session held by another node hands the push to that
node's RPC listener: :class:`~daojia_msg.cluster.rpc.client.RpcPeers` is the
client side, :class:`~daojia_msg.cluster.rpc.server.RpcServerFactory` the
listener, :mod:`~daojia_msg.cluster.rpc.commands` what travels between them.
"""

from daojia_msg.cluster.rpc.client import RpcPeers, registry_addresses
from daojia_msg.cluster.rpc.commands import (
    AUTH_TIMEOUT_S,
    AUTH_WINDOW_S,
    MAX_VALUE,
    Auth,
    BadMessage,
    Deliver,
    InternalError,
    Kick,
    PeerTrace,
    TraceEvents,
    Unauthorized,
    auth_mac,
    check_auth,
)
from daojia_msg.cluster.rpc.server import RpcServerFactory, RpcServerProtocol

__all__ = [
    "AUTH_TIMEOUT_S", "AUTH_WINDOW_S", "MAX_VALUE", "Auth", "BadMessage", "Deliver",
    "InternalError", "Kick", "PeerTrace", "RpcPeers", "RpcServerFactory", "RpcServerProtocol",
    "TraceEvents", "Unauthorized", "auth_mac", "check_auth", "registry_addresses",
]

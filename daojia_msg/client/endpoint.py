# -*- test-case-name: tests.client.test_tls -*-
"""Where a client connects: a node's gate, over TCP or TLS (docs/protocol.md §7.1).

::

    endpoint = gate_endpoint(reactor, "msg.example.com", 7443, tls=True, ca="ca.pem")
    client = MsgClient(reactor, endpoint, uid, appcode, token_factory=mint)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from daojia_msg.tls import client_endpoint, client_options


def gate_endpoint(reactor: Any, host: str, port: int, *, tls: bool = False,
                  ca: str | None = None, timeout: float = 10.0,
                  bind: tuple[str, int] | None = None) -> IStreamClientEndpoint:
    """The gate at ``host:port``. With ``tls`` the connection is TLS 1.2 or 1.3
    and the node's certificate is verified: signed by the CA of the PEM file
    ``ca`` (default: the system's CAs) and naming ``host`` (a name or an
    address). A CA file that cannot be used raises
    :class:`daojia_msg.tls.TLSError`."""
    options = client_options(host, ca=ca) if tls else None
    return client_endpoint(reactor, host, port, tls=options, timeout=timeout, bind=bind)

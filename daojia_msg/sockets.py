# -*- test-case-name: tests.test_e2e -*-
"""Socket options every msgplatform TCP connection wants."""

from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off (TCP_NODELAY) on a TCP transport.

    Every frame of the protocol is a small request or answer that the peer
    waits for: with Nagle on, a second small write waits for the ACK of the
    first, which the peer's delayed ACK holds back up to 40 ms. Wrapped
    transports (PROXY protocol, TLS) pass the call through; transports that are
    not TCP (tests' string transports, UNIX sockets) are left as they are.
    """
    set_option = getattr(transport, "setTcpNoDelay", None)
    if set_option is None:
        return
    try:
        set_option(True)
    except OSError:  # e.g. a UNIX socket behind a wrapper, or already closed
        pass

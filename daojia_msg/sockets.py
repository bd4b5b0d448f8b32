# -*- test-case-name: tests.test_e2e -*-
"""Socket options every msgplatform TCP connection wants, and which
interface a listener binds."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)


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


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[2001:db8::1]:7000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listen_interface(description: str) -> str | None:
    """The interface a server endpoint description binds ("" or a wildcard:
    every interface), or None for a listener that is not TCP (a UNIX socket).
    Raises ValueError (or KeyError, TypeError) for a description that does
    not parse."""
    endpoint: Any = serverFromString(None, description)
    endpoint = getattr(endpoint, "_wrappedEndpoint", endpoint)  # haproxy: and the like
    if isinstance(endpoint, UNIXServerEndpoint):
        return None
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint | SSL4ServerEndpoint):
        return str(getattr(endpoint, "_interface", ""))
    return ""  # an endpoint type that does not say: take it for every interface


def listens_on_loopback(description: str) -> bool:
    """Whether a listener of ``description`` is reachable from this machine
    only: a loopback interface or a UNIX socket."""
    interface = listen_interface(description)
    return interface is None or is_loopback(interface)

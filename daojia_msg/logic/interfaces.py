# -*- test-case-name: tests.logic.test_service -*-
"""The narrow view logic has of a client connection (DESIGN.md §4: logic never
imports the gate)."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IClientConnection(Interface):
    """One client's connection as logic sees it."""

    peer = Attribute("str: the peer address, for logs")
    connected = Attribute("bool: False once the connection is closing or closed")
    session = Attribute("the Session attached (its uid and appcode name the recipient in "
                        "log lines), or None")

    def attach(session):
        """The connection now belongs to ``session`` (a LOGIN in progress):
        pushes and kicks carry its identity; pushes are held until the LOGIN
        answer has been written."""

    def detach():
        """The LOGIN failed after :meth:`attach`: forget the session and any held pushes."""

    def push(cmd, msgtype, body):
        """Write a server push (S2C, C2C delivery) to the logged-in identity with
        the connection's next nonzero sequenceid; returns that sequenceid."""

    def kick(reason_code, reason):
        """Send KICKOUT with ``reason_code`` and close politely."""

# -*- test-case-name: tests.bus.test_memory -*-
"""The message-bus interface: where C2S frames go (docs/operations.md §7)."""

from __future__ import annotations

from zope.interface import Interface


class IMessageBus(Interface):
    """A bus may also count ``reconnects`` (an int: connections to its
    broker made again after a loss, for ``/metrics``); one without counts none."""

    def start():
        """Connect; fires with None when ready to publish."""

    def stop():
        """Disconnect; fires with None."""

    def publish(topic, payload, logid):
        """Publish ``payload`` (a serialized ``Message`` of kind C2S) to ``topic``.

        Fires with None once the bus has accepted it; fails with
        :class:`daojia_msg.core.errors.BusUnavailable` when it cannot.
        """

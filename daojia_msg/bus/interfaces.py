# -*- test-case-name: tests.bus.test_memory -*-
"""The message-bus interface: where C2S frames go (docs/operations.md §7)."""

from __future__ import annotations

from zope.interface import Interface

from daojia_msg.bus.envelope import CONTENT_TYPE


class IMessageBus(Interface):
    """A bus may also count ``reconnects`` (an int: connections to its
    broker made again after a loss, for ``/metrics``); one without counts none."""

    def start():
        """Connect; fires with None when ready to publish."""

    def stop():
        """Disconnect; fires with None."""

    def publish(topic, payload, logid, content_type=CONTENT_TYPE):
        """Publish ``payload`` (a serialized ``Message`` of kind C2S, or what
        the media type ``content_type`` says) to ``topic``, the media type
        travelling with it (see :data:`daojia_msg.bus.envelope.CONTENT_TYPE`).

        Fires with None once the bus has accepted it; fails with
        :class:`daojia_msg.core.errors.BusUnavailable` when it cannot.
        """

# -*- test-case-name: tests.store.test_sqlite -*-
"""The storage interfaces. Each implementation is checked with ``verifyObject``
and runs the shared behaviour suite in ``tests/store/suites.py``.

Every method returns a Deferred; on a backend failure it fails with
:class:`daojia_msg.store.errors.StoreUnavailable` and nothing happened.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMessageStore(Interface):
    """Pending (offline) messages, delivery state, history and send de-duplication."""

    def start():
        """Open the backend and create or migrate the schema; fires with None."""

    def stop():
        """Close the backend; fires with None once pending writes are done."""

    def store(messages):
        """Make a batch of :class:`NewMessage` durable, as pending.

        Fires with a list of :class:`StoreOutcome`, one per message, in order,
        once every message of the batch is durable. A message whose
        ``(from_uid, from_appcode, client_msg_id)`` was stored before (within the
        de-duplication window) is not stored again: its outcome carries the first
        ``msgid``/``logid`` and ``duplicate=True``; the same holds within one batch.
        """

    def ack(uid, appcode, msgids):
        """Mark those of ``msgids`` that are pending for ``(uid, appcode)`` delivered.

        Unknown ids, ids already delivered and ids of other recipients are
        ignored. Fires, once the change is durable, with the list of
        :class:`AckedMessage` that changed state.
        """

    def pull(uid, appcode, after_msgid, limit):
        """Pending messages of ``(uid, appcode)`` with ``msgid > after_msgid``.

        Fires with a :class:`Page`: at most ``limit`` messages, ascending by msgid,
        ``has_more`` when more pending ones follow.
        """

    def pending_message(to_uid, msgid):
        """Fires with the :class:`StoredMessage` ``msgid`` addressed to ``to_uid``
        if it is still pending, else None (delivered, unknown, or another's)."""

    def count_pending(uid, appcode):
        """Fires with the number of pending messages of ``(uid, appcode)``."""

    def history(usersystem, uid, before_msgid, limit, peer_uid):
        """The message list of ``(usersystem, uid)``: messages it sent or received.

        Each message once, descending by msgid, ``msgid < before_msgid`` (0: from
        the newest), at most ``limit``; only those exchanged with ``peer_uid``
        unless it is 0. Fires with a :class:`Page`.
        """

    def max_msgid():
        """Fires with the largest msgid stored (0 when empty)."""

    def purge_dedup(before_ms):
        """Forget de-duplication keys recorded before Unix ms ``before_ms``;
        fires with how many were dropped."""


class ISessionStore(Interface):
    """Online sessions: ``(uid, appcode) -> SessionRecord``. One per key."""

    def register(record):
        """Make ``record`` the session of ``(record.uid, record.appcode)``.

        Fires with the :class:`SessionRecord` it replaced (another session that
        must now be kicked), or None.
        """

    def unregister(record):
        """Remove the session of ``(record.uid, record.appcode)`` only if it is
        still ``record.session_id``; fires with True if it removed it."""

    def lookup(uid, appcode):
        """Fires with the :class:`SessionRecord` of ``(uid, appcode)`` or None."""

    def lookup_uid(uid):
        """Fires with the list of :class:`SessionRecord` of ``uid`` (any appcode)."""

    def lookup_many(keys):
        """Fires with the :class:`SessionRecord` (or None) of each ``(uid,
        appcode)`` of ``keys``, in order: one round trip for a batch of pushes."""

    def purge_node(node_id):
        """Remove every session held by ``node_id``; fires with how many."""


class IClock(Interface):
    """What the stores need of a reactor: ``seconds()`` and ``callLater``."""

    seconds = Attribute("seconds() -> float")

# -*- test-case-name: tests.logic.test_service -*-
"""The ports of logic: what it needs of the parts around it.

Logic owns these interfaces and imports none of their implementations: the
gate implements :class:`IClientConnection`, the stores :class:`IMessageStore`,
:class:`ISessionStore` and :class:`IPositions`, the bus router :class:`IPublisher`, the cluster's
RPC client :class:`IPeers`; logic implements :class:`ILocalNode` for the RPC
listener. Each store implementation is checked with ``verifyObject`` and runs
the shared behaviour suite in ``tests/store/suites.py``.

Every store method returns a Deferred; on a backend failure it fails with
:class:`~daojia_msg.core.errors.StoreUnavailable` and nothing happened.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IClientConnection(Interface):
    """One client's connection as logic sees it."""

    peer = Attribute("str: the peer address, for logs")
    host = Attribute("str | None: the peer's IP address (behind a PROXY-protocol balancer, the "
                     "client's), once known")
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
        the connection's next nonzero sequenceid; returns that sequenceid, or 0
        when nothing was written (no session, closing, or the peer does not
        read): the message then stays pending."""

    def kick(reason_code, reason):
        """Send KICKOUT with ``reason_code`` and close politely."""


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
        fires with how many were dropped. (The node's purge rounds do this in
        batches, :meth:`purge`; this is the one-shot form.)"""

    def purge(cutoffs, counts=None):
        """One purge round (:class:`PurgeCutoffs`): expired pending messages
        (counted per route), delivered ones, history past its retention and
        old de-duplication keys, at most ``cutoffs.batch`` rows per DELETE,
        each batch its own transaction, never in the writes' way; tables
        another node is purging are skipped. Fires with :class:`PurgeCounts`:
        ``counts`` if given, which holds what the committed batches did as
        they commit (so a round that fails half-way still tells what it deleted).

        The reads never return what expired or left the retention (by msgid:
        the purge lags behind), from the store's ``[store]`` config."""

    def storage():
        """Fires with :class:`StorageFigures`: rows and bytes per table kind
        and the oldest pending msgid (estimates on MySQL)."""


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


class IPositions(Interface):
    """The latest position of each online uid per appcode (geo routes):
    in memory on one node, a Redis GEO set in a cluster. Positions are
    degrees, times Unix ms."""

    def update(appcode, uid, session_id, lat, lon, now_ms):
        """Record ``(lat, lon)`` as the position of ``uid`` (session
        ``session_id``) at ``now_ms``; fires with None."""

    def drop(appcode, uid, session_id):
        """Forget the position of ``uid`` if the session ``session_id``
        reported it (a newer session's position is kept); fires with True if
        one was dropped."""

    def nearby(appcode, lat, lon, radius_m, limit, since_ms):
        """Fires with up to ``limit``
        :class:`~daojia_msg.core.geo.Located`, nearest first: the positions
        within ``radius_m`` of ``(lat, lon)`` reported at ``since_ms`` or later."""

    def expire(appcodes, before_ms):
        """Drop the positions of ``appcodes`` reported before ``before_ms``;
        fires with how many were dropped."""

    def stop():
        """Write what waits to be written (reports may be batched); fires
        once done."""


class IOfferStore(Interface):
    """Nearby order offers (:mod:`daojia_msg.logic.offers`): in memory on one
    node, in Redis in a cluster, so any node can run an offer's next wave or
    its expiry. Every change of state is atomic (one Redis script); times are
    Unix ms. Due work is kept by time: :meth:`claim` takes what is due and
    leases it for a while, so a node that dies holding it only delays it."""

    def create(offer, due_ms):
        """Store the :class:`~daojia_msg.core.offers.NewOffer` ``offer``
        (open, no wave run), its first work due at ``due_ms``; fires with None."""

    def claim(now_ms, lease_until_ms, limit):
        """Take up to ``limit`` offer ids whose work is due at ``now_ms``,
        each due again at ``lease_until_ms`` (unless it is rescheduled or
        finished first); fires with the ids."""

    def load(offer_id):
        """Fires with the :class:`~daojia_msg.core.offers.Offer`, or None
        when unknown (never created, or forgotten after its retention)."""

    def begin_wave(offer_id, wave, uids, now_ms):
        """Record ``uids`` as wave ``wave``'s recipients if the offer is open,
        before its deadline, ``wave`` is its next one and none is being
        pushed; fires with True if recorded."""

    def end_wave(offer_id, wave, due_ms):
        """Wave ``wave`` was pushed: if the offer is still open, the next wave
        (or its expiry) is due at ``due_ms``; fires with True if so."""

    def reschedule(offer_id, due_ms):
        """An open offer's work is due at ``due_ms``; fires with None."""

    def accept(offer_id, appcode, uid, now_ms, lease_until_ms):
        """The accept of ``uid`` (of ``appcode``); fires with an
        :class:`~daojia_msg.core.offers.AcceptResult`. When it is ``WON`` the
        offer is accepted by ``uid``, its notification leased until
        ``lease_until_ms``."""

    def expire(offer_id, now_ms, lease_until_ms):
        """Expire the offer if it is open and its deadline is past ``now_ms``,
        its notification leased until ``lease_until_ms``; fires with True if
        this call expired it (exactly one call does)."""

    def hold(offer_id, until_ms):
        """A decided offer whose outcome is not told yet: its telling is
        held (no claim takes it) until ``until_ms``; fires with None."""

    def notified(offer_id):
        """The outcome was told: no more work is due; fires with None."""

    def forget(offer_id):
        """No more work is due for ``offer_id`` (e.g. it is unknown); fires with None."""


class IClock(Interface):
    """What the stores need of a reactor: ``seconds()`` and ``callLater``."""

    seconds = Attribute("seconds() -> float")


class IPublisher(Interface):
    """Where C2S messages go: the node's buses behind one bounded buffer."""

    def publish(route, payload, logid, content_type="application/x-protobuf"):
        """Publish ``payload`` (a serialized ``Message`` of kind C2S, or what
        the media type ``content_type`` says: the offers' outcomes are
        ``application/json``) on the bus and topic of ``route`` (a
        :class:`~daojia_msg.config.Route`), the media type travelling with it.

        Fires with None once the bus accepted it; fails with
        :class:`~daojia_msg.core.errors.BusUnavailable` when it did not (the
        bus refused, or the publish timed out).
        """


class IPeers(Interface):
    """Hand work to the node that holds a session (internal RPC)."""

    def deliver(record, message):
        """Push ``message`` (:class:`StoredMessage`) to the session ``record``
        (:class:`SessionRecord`) on ``record.node_id``.

        Fires with True once that node pushed it to that session (not a
        delivery receipt), False when the session is not there; fails with
        :class:`~daojia_msg.core.errors.PeerUnavailable` when the node cannot
        be reached in time. In both failure cases the message stays pending.
        """

    def kick(record, reason_code, reason):
        """KICKOUT the session ``record`` on its node; fires with True if it was
        there and was kicked; fails with
        :class:`~daojia_msg.core.errors.PeerUnavailable` when the node cannot
        be reached in time."""


class ILocalNode(Interface):
    """What another node may ask of this node's logic (the RPC listener calls it)."""

    def deliver_local(session_id, msg):
        """Push ``msg`` to this node's session ``session_id`` of its recipient;
        True when it was pushed (or already waits for its ACK)."""

    def kick_local(uid, appcode, session_id, reason_code, reason):
        """KICKOUT this node's session ``session_id`` of ``(uid, appcode)``;
        True if it was there."""


class ILoginThrottle(Interface):
    """Failed LOGINs counted per ``(source IP, appcode, uid)`` and per IP, and the
    lockouts they lead to (docs/operations.md §2, "Login brute force")."""

    def locked(host, appcode, uid):
        """Fires with the scope of a lockout that holds for this LOGIN
        (``"identity"`` or ``"ip"``), or None when it may proceed."""

    def failed(host, appcode, uid):
        """Count a LOGIN whose token was forged or malformed (an expired one is
        not counted); fires with None once counted."""


class IEscalations(Interface):
    """Offline escalations waiting for their due time (docs/operations.md
    §14): in memory on one node, in Redis in a cluster (shared
    by every node, so a dead node's entries are picked up by another). Times
    are Unix ms; entries are keyed by msgid."""

    def start():
        """Open the backend (create its table); fires with None."""

    def stop():
        """Close the backend once the calls under way are done; fires with None."""

    def schedule(entries):
        """Keep each :class:`~daojia_msg.core.escalation.Escalation` of
        ``entries`` until it is finished; fires with None once kept."""

    def claim(now_ms, lease_ms, limit, token):
        """Claim at most ``limit`` entries due at ``now_ms`` or before, for
        ``lease_ms``: no other claim gets them until the lease runs out (then
        any node may claim them again). Fires with the list of
        :class:`~daojia_msg.core.escalation.EscalationClaim` (``token`` in each)."""

    def finish(claim):
        """Drop the entry of ``claim`` (POSTed, ACKed, or given up) if the
        claim still holds; fires with True if it did (False: the lease ran
        out and another claim took it)."""

    def retry(claim, due_ms):
        """Make the entry of ``claim`` due again at ``due_ms`` with one more
        failed attempt counted, if the claim still holds; fires with True if it did."""

    def cancel(msgids):
        """Drop the entries of ``msgids`` (ACKed), claimed or not; fires with None."""


class IEscalationPoster(Interface):
    """The HTTP client that POSTs escalations to the apps' ``escalation_url``."""

    def post(url, body, headers):
        """POST ``body`` (bytes) to ``url`` with ``headers`` (name -> str);
        fires with the answer's status once it was read, fails when no
        complete answer came (a connection error, the attempt's time limit)."""

    def stop():
        """Fail what is under way and close the connections; fires once done."""

# -*- test-case-name: tests.client.test_protocol,tests.client.test_tls -*-
"""One client connection: :class:`MsgClientProtocol`. docs/protocol.md is the contract.

Every request method returns a Deferred that fires with the parsed response
body, or fails with an error of :mod:`daojia_msg.client.errors`. Pushed messages
are de-duplicated by ``msgid`` and ACKed. The reconnecting, logging-in wrapper
is :class:`daojia_msg.client.client.MsgClient`.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.client.errors import (
    ConnectionLost,
    KickedOut,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    ResultError,
    TLSFailed,
    cmd_name,
    kick_reason_name,
)
from daojia_msg.protocol.codec import Frame, FrameDecoder, FrameError, encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.sockets import no_delay
from daojia_msg.tls import tls_failure

OnMessage = Callable[[pb.Message], object]
OnKickout = Callable[[int, str], object]

MAX_ACK_IDS = 1000  # docs/protocol.md §6.3: at most 1,000 msgids per ACK
PAGE_CAP = 100  # the server caps PULL/HISTORY pages at 100
DEFAULT_HEARTBEAT_S = 60.0
#: Server frames are bounded by the server's own limits; a PULL page of 100
#: messages of 65,000 bytes is ~6.5 MB, so the client allows more than that.
DEFAULT_MAX_BODY = 16 * 1024 * 1024

_RESPONSE_TYPES: dict[int, Any] = {
    Cmd.LOGIN: pb.LoginResponse,
    Cmd.PULL: pb.PullResponse,
    Cmd.HISTORY: pb.HistoryResponse,
}


def _chunks(ids: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


class RecentIds:
    """A bounded LRU memory of recently seen msgids (for at-least-once de-duplication)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, msgid: object) -> bool:
        return msgid in self._ids

    def add(self, msgid: int) -> bool:
        """Remember ``msgid``; True if it is new, False if it was seen recently."""
        if msgid in self._ids:
            self._ids.move_to_end(msgid)
            return False
        self._ids[msgid] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class _Pending:
    __slots__ = ("cmd", "deferred", "timer")

    def __init__(self, cmd: int, deferred: Deferred[Any], timer: IDelayedCall) -> None:
        self.cmd = cmd
        self.deferred = deferred
        self.timer = timer


@implementer(IHandshakeListener)
class MsgClientProtocol(Protocol):
    """One client connection: requests matched to responses by sequenceid, pushes ACKed.

    Over TLS (an endpoint of :func:`daojia_msg.client.endpoint.gate_endpoint`)
    requests wait in the TLS layer until the handshake is done; a handshake
    that fails fails them with :class:`TLSFailed`.

    :param clock: schedules request timeouts, keepalives and ACK coalescing.
    :param heartbeat_s: KEEPALIVE interval after login; ``None`` takes the
        server's ``LoginResponse.heartbeat_s``, ``0`` sends none.
    :param recent: the msgid memory; share one between connections so a
        message pushed before a reconnect and pulled after it is delivered once.
    :param auto_ack: ACK pushed messages (turn off only for read-only tools).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        uid: int,
        appcode: int,
        *,
        on_message: OnMessage | None = None,
        on_kickout: OnKickout | None = None,
        request_timeout: float = 10.0,
        heartbeat_s: float | None = None,
        recent: RecentIds | None = None,
        auto_ack: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.clock = clock
        self.uid = uid
        self.appcode = appcode
        self.on_message = on_message
        self.on_kickout = on_kickout
        self.request_timeout = request_timeout
        self.heartbeat_s = heartbeat_s
        self.recent = recent if recent is not None else RecentIds()
        self.auto_ack = auto_ack
        #: True from connectionMade until the stream breaks or connectionLost.
        self.connected_ok = False
        self.closed = False
        self.logged_in = False
        self.session_id = ""
        #: ``(reason_code, reason)`` of the KICKOUT received, if any.
        self.kickout: tuple[int, str] | None = None
        #: Whether the transport is TLS, and whether its handshake is done.
        self.tls = False
        self.handshake_done = False
        #: Why the TLS handshake failed, if it did.
        self.tls_error: TLSFailed | None = None
        self._decoder = FrameDecoder(max_body)
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._ack_queue: list[int] = []
        self._ack_call: IDelayedCall | None = None
        self._heartbeat: LoopingCall | None = None
        self._closed_waiters: list[Deferred[None]] = []

    # -- connection life

    def connectionMade(self) -> None:
        self.connected_ok = True
        self.tls = ISSLTransport.providedBy(self.transport)
        no_delay(self.transport)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tls and not self.handshake_done:
            why = tls_failure(reason.value)
            if why is not None:
                self.tls_error = TLSFailed(why, reason)
        self.connected_ok = False
        self.closed = True
        self.logged_in = False
        self._stop_heartbeat()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        self._ack_queue = []
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer.active():
                entry.timer.cancel()
            if self.kickout is not None:
                entry.deferred.errback(KickedOut(*self.kickout))
            elif self.tls_error is not None:
                entry.deferred.errback(self.tls_error)
            else:
                entry.deferred.errback(ConnectionLost(reason))
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires with None once the connection is closed (at once if it is)."""
        if self.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    # -- requests

    def login(
        self, token: str, device_id: str = "", client_version: str = ""
    ) -> Deferred[pb.LoginResponse]:
        """LOGIN; fires with the ``LoginResponse`` and starts the keepalive timer."""
        body = pb.LoginRequest(token=token, device_id=device_id, client_version=client_version)
        d: Deferred[pb.LoginResponse] = self._request(Cmd.LOGIN, body.SerializeToString())
        return d.addCallback(self._logged_in)

    def _logged_in(self, response: pb.LoginResponse) -> pb.LoginResponse:
        self.logged_in = True
        self.session_id = response.session_id
        interval = self.heartbeat_s
        if interval is None:
            interval = float(response.heartbeat_s or DEFAULT_HEARTBEAT_S)
        self._stop_heartbeat()
        if interval > 0:
            self._heartbeat = LoopingCall(self._send_keepalive)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(interval, now=False)
        self.log.info(
            "logged in as {uid}@{appcode}, session {session_id}, {offline_count} offline",
            uid=self.uid,
            appcode=self.appcode,
            session_id=response.session_id,
            offline_count=response.offline_count,
        )
        return response

    def logout(self) -> Deferred[pb.Result]:
        """LOGOUT (after any ACK still queued); the server answers, then closes."""
        self._stop_heartbeat()
        if self._ack_call is not None:
            self._ack_call.cancel()
            self._flush_acks()
        d: Deferred[pb.Result] = self._request(Cmd.LOGOUT, b"")
        return d

    def keepalive(self) -> Deferred[pb.Result]:
        """KEEPALIVE; fires with a ``Result`` carrying ``server_time_ms``."""
        d: Deferred[pb.Result] = self._request(Cmd.KEEPALIVE, b"")
        return d

    def c2s(self, msgtype: int, content: bytes, logid: str = "") -> Deferred[pb.Result]:
        """C2S upload to the topic ``(appcode, msgtype)`` routes to."""
        body = pb.C2SRequest(content=content, logid=logid)
        d: Deferred[pb.Result] = self._request(Cmd.C2S, body.SerializeToString(), msgtype)
        return d

    def c2c(
        self,
        to_uid: int,
        to_appcode: int,
        msgtype: int,
        content: bytes,
        client_msg_id: str | None = None,
        logid: str = "",
    ) -> Deferred[pb.Result]:
        """C2C; fires with the ``Result`` (``msgid``, ``logid``) once the message is durable.

        ``client_msg_id`` defaults to a fresh uuid4 hex; resend with the same one
        to make a retry idempotent.
        """
        body = pb.C2CRequest(
            to_uid=to_uid,
            to_appcode=to_appcode,
            content=content,
            client_msg_id=client_msg_id or uuid.uuid4().hex,
            logid=logid,
        )
        d: Deferred[pb.Result] = self._request(Cmd.C2C, body.SerializeToString(), msgtype)
        return d

    def ack(self, msgids: Iterable[int]) -> Deferred[pb.Result]:
        """ACK up to 1,000 msgids (the server refuses more with BAD_REQUEST)."""
        d: Deferred[pb.Result] = self._request(Cmd.ACK, pb.Ack(msgids=msgids).SerializeToString())
        return d

    def pull(self, after_msgid: int = 0, limit: int = 0) -> Deferred[pb.PullResponse]:
        """One PULL page of pending messages with ``msgid > after_msgid``."""
        body = pb.PullRequest(after_msgid=after_msgid, limit=limit)
        d: Deferred[pb.PullResponse] = self._request(Cmd.PULL, body.SerializeToString())
        return d

    def history(
        self, peer_uid: int = 0, before_msgid: int = 0, limit: int = 0
    ) -> Deferred[pb.HistoryResponse]:
        """One HISTORY page, newest first."""
        body = pb.HistoryRequest(peer_uid=peer_uid, before_msgid=before_msgid, limit=limit)
        d: Deferred[pb.HistoryResponse] = self._request(Cmd.HISTORY, body.SerializeToString())
        return d

    def drain(self, ack: bool = True, limit: int = PAGE_CAP) -> Deferred[int]:
        """PULL from 0 until ``has_more`` is false, delivering each new message to
        ``on_message`` and (with ``ack``) ACKing all of them in batches of at most
        1,000. Fires with the number of messages the drain returned."""
        return Deferred.fromCoroutine(self._drain(ack, limit))

    async def _drain(self, ack: bool, limit: int) -> int:
        after, count = 0, 0
        to_ack: list[int] = []
        while True:
            page = await self.pull(after, limit)
            for message in page.messages:
                self._deliver(message)
                to_ack.append(message.msgid)
            count += len(page.messages)
            while ack and len(to_ack) >= MAX_ACK_IDS:
                await self.ack(to_ack[:MAX_ACK_IDS])
                del to_ack[:MAX_ACK_IDS]
            if not page.has_more or not page.messages:
                break
            after = page.messages[-1].msgid
        if ack and to_ack:
            await self.ack(to_ack)
        return count

    def _request(self, cmd: int, body: bytes, msgtype: int = 0) -> Deferred[Any]:
        if not self.connected_ok or self.transport is None:
            return fail(NotConnected(f"cannot send {cmd_name(cmd)}: not connected"))
        seq = self._next_seq()
        d: Deferred[Any] = Deferred(lambda _: self._forget(seq))
        timer = self.clock.callLater(self.request_timeout, self._timed_out, seq)
        self._pending[seq] = _Pending(cmd, d, timer)
        self.transport.write(encode(cmd, self.appcode, msgtype, self.uid, seq, body))
        return d

    def _next_seq(self) -> int:
        while True:  # nonzero, 32 bits, never one still outstanding
            self._seq = self._seq % 0xFFFFFFFF + 1
            if self._seq not in self._pending:
                return self._seq

    def _forget(self, seq: int) -> None:
        entry = self._pending.pop(seq, None)
        if entry is not None and entry.timer.active():
            entry.timer.cancel()

    def _timed_out(self, seq: int) -> None:
        entry = self._pending.pop(seq, None)
        if entry is not None:
            self.log.warn("{cmd} sequenceid {seq} timed out", cmd=cmd_name(entry.cmd), seq=seq)
            entry.deferred.errback(RequestTimeout(entry.cmd, seq, self.request_timeout))

    # -- incoming frames

    def dataReceived(self, data: bytes) -> None:
        if not self.connected_ok:
            return
        self._decoder.feed(data)
        while self.connected_ok:
            try:
                frame = self._decoder.next()
            except FrameError as e:
                self.log.error("bad frame from the server ({error!r}); closing", error=e)
                self.connected_ok = False
                if self.transport is not None:
                    self.transport.loseConnection()
                return
            if frame is None:
                return
            self._frame_received(frame)

    def _frame_received(self, frame: Frame) -> None:
        if frame.cmd & RESPONSE_BIT:
            self._response(frame)
        elif frame.cmd in (Cmd.S2C, Cmd.C2C):
            self._push(frame)
        elif frame.cmd == Cmd.KICKOUT:
            self._kicked(frame)
        else:
            self.log.warn("ignoring unexpected frame cmd {cmd}", cmd=cmd_name(frame.cmd))

    def _response(self, frame: Frame) -> None:
        entry = self._pending.pop(frame.sequenceid, None)
        if entry is None:
            self.log.info("response to unknown or timed-out sequenceid {seq}", seq=frame.sequenceid)
            return
        if entry.timer.active():
            entry.timer.cancel()
        cmd = frame.cmd & ~RESPONSE_BIT
        if cmd != entry.cmd:
            entry.deferred.errback(
                ProtocolError(f"{cmd_name(cmd)} response to {cmd_name(entry.cmd)} request")
            )
            return
        try:
            response = _RESPONSE_TYPES.get(cmd, pb.Result).FromString(frame.body)
        except DecodeError as e:
            entry.deferred.errback(ProtocolError(f"bad {cmd_name(cmd)} response body: {e}"))
            return
        if response.code != Code.OK:
            entry.deferred.errback(ResultError(response.code, response.reason, response))
        else:
            entry.deferred.callback(response)

    def _push(self, frame: Frame) -> None:
        try:
            message = pb.Message.FromString(frame.body)
        except DecodeError:
            self.log.error("undecodable pushed message, sequenceid {seq}", seq=frame.sequenceid)
            return
        self._deliver(message)
        if self.auto_ack:
            self._ack_queue.append(message.msgid)
            if self._ack_call is None:
                self._ack_call = self.clock.callLater(0, self._flush_acks)

    def _deliver(self, message: pb.Message) -> bool:
        """Hand a message to ``on_message`` unless it was seen recently."""
        if not self.recent.add(message.msgid):
            self.log.debug("duplicate {msgid}", msgid=message.msgid, logid=message.logid)
            return False
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:
                self.log.failure(
                    "on_message failed for {msgid}", msgid=message.msgid, logid=message.logid
                )
        return True

    def _flush_acks(self) -> None:
        """One ACK frame for every push of the reactor turn (at most 1,000 ids each)."""
        self._ack_call = None
        ids = list(dict.fromkeys(self._ack_queue))
        self._ack_queue = []
        for batch in _chunks(ids, MAX_ACK_IDS):
            self.ack(batch).addErrback(self._ack_failed, batch)

    def _ack_failed(self, failure: Failure, batch: list[int]) -> None:
        # The messages stay pending; the server pushes them again or a drain returns them.
        self.log.warn(
            "ACK of {count} msgids failed: {error}",
            count=len(batch),
            error=failure.getErrorMessage(),
        )

    def _kicked(self, frame: Frame) -> None:
        try:
            body = pb.Kickout.FromString(frame.body)
        except DecodeError:
            body = pb.Kickout()
        self.kickout = (body.reason_code, body.reason)
        self._stop_heartbeat()
        self.log.warn(
            "kicked out: {reason_name} ({reason})",
            reason_name=kick_reason_name(body.reason_code),
            reason=body.reason,
        )
        if self.on_kickout is not None:
            self.on_kickout(body.reason_code, body.reason)

    # -- keepalive

    def _send_keepalive(self) -> None:
        self.keepalive().addErrback(self._keepalive_failed)

    def _keepalive_failed(self, failure: Failure) -> None:
        if failure.check(RequestTimeout) and self.transport is not None:
            self.log.warn("keepalive timed out; dropping the connection")
            self.transport.loseConnection()
        elif not failure.check(ConnectionLost, NotConnected):
            self.log.warn("keepalive failed: {error}", error=failure.getErrorMessage())

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

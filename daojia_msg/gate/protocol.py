# -*- test-case-name: tests.gate.test_protocol,tests.test_tls_close -*-
"""One client connection: frames in, checks, logic calls, responses out.

Checks run in the order of docs/protocol.md §6.2: magic, version, size (in the
codec), rate limit, known command, logged in, header uid/appcode, body parse.

Requests are answered as they complete and matched by ``sequenceid``; LOGIN
and LOGOUT are barriers (later frames wait until they are answered), and at
most ``limits.max_inflight`` requests run at once per connection: past that
the gate stops reading the socket (back-pressure) until answers go out.

Commands are dispatched through the table :data:`HANDLERS` (body type and
handler per command).

Closing is polite, because closing with unread input in flight makes Linux
send RST, which drops replies still queued: stop handling frames, flush, half
close (over TLS: close_notify), keep reading and discarding, abort only after
``close_grace_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

# The wrapper of Twisted's haproxy: endpoints (public only through serverFromString).
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.gate.batches import BATCHED, FrameBatch
from daojia_msg.gate.host import ConnectionHost
from daojia_msg.gate.lanes import CONTROL, NORMAL, PRIORITY, Lanes
from daojia_msg.gate.limits import OVER_CAPACITY, TokenBucket
from daojia_msg.logic.interfaces import IClientConnection
from daojia_msg.protocol import errors
from daojia_msg.protocol.codec import (
    BadMagic,
    BadVersion,
    BodyTooLarge,
    Frame,
    FrameDecoder,
    encode,
)
from daojia_msg.protocol.codes import (
    BEFORE_LOGIN,
    CLIENT_REQUESTS,
    RESPONSE_BIT,
    Cmd,
    Code,
    KickReason,
)
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.sockets import no_delay

if TYPE_CHECKING:
    from daojia_msg.logic.sessions import Session


#: The response body type of each command; the others answer with ``Result``.
#: All share ``code = 1`` and ``reason = 2``, so error answers look alike on the wire.
RESPONSE_TYPES: dict[int, type[PbMessage]] = {
    Cmd.LOGIN: pb.LoginResponse,
    Cmd.PULL: pb.PullResponse,
    Cmd.HISTORY: pb.HistoryResponse,
}
MAX_SEQ = 0xFFFFFFFF

#: Result-code and command names by value, for the counters' labels.
CODE_NAMES = {code.value: code.name for code in Code}
COMMAND_NAMES: dict[int, str] = {int(cmd): Cmd(cmd).name for cmd in CLIENT_REQUESTS}


#: The requests that pass admission control, and their ready-made refusal.
ADMITTED = frozenset({Cmd.C2C, Cmd.C2S})
OVER_CAPACITY_BODY = pb.Result(code=Code.RATE_LIMITED, reason=OVER_CAPACITY).SerializeToString()


@implementer(IClientConnection, IPushProducer)
class GateProtocol(Protocol):
    log = Logger()

    def __init__(self, factory: ConnectionHost) -> None:
        self.factory = factory
        self.logic = factory.logic
        self.inbox = factory.inbox
        self.limits = factory.limits
        self.clock = factory.clock
        #: The host this connection is counted against (the per-IP cap), if any.
        self.host: str | None = None
        self.peer = ""
        self._identified = False
        self.connected = False
        self.session: Session | None = None
        self._decoder = FrameDecoder(self.limits.max_body)
        self._closing = False
        self._barrier = False
        self._inflight = 0
        self._paused = False
        self._processing = False
        #: The ACK or C2C frames of this read, sent together (daojia_msg/gate/batches.py).
        self._batch = FrameBatch()
        self._push_seq = 0
        self._connected_at = 0.0
        self._last_rx = 0.0  # any bytes: the token bucket's clock
        self._last_frame = 0.0  # whole frames: the idle timeout's clock
        self._timer: IDelayedCall | None = None
        self._grace: IDelayedCall | None = None
        #: Pushes written during a LOGIN, before its answer, with their
        #: lanes; None when not held.
        self._held: list[tuple[int, bytes]] | None = None
        #: Frames waiting while the socket is congested (daojia_msg/gate/lanes.py).
        self._lanes = Lanes(self.limits.lane_max)
        #: The msgtypes whose pushes take the priority lane (the session's app's).
        self._priority: frozenset[int] = frozenset()
        #: A LOGOUT waiting for the answers of earlier requests.
        self._logout: Frame | None = None
        #: The peer does not read: the transport paused us as its producer.
        self._write_blocked = False
        self._stall: IDelayedCall | None = None
        self._bucket: TokenBucket

    # -- connection life -----------------------------------------------------

    def _admit(self) -> bool:
        """Count this connection against its peer's host; close it at the cap."""
        address: Any = self.transport.getPeer()  # type: ignore[union-attr]
        host = str(getattr(address, "host", address))
        if host == self.host:
            return True
        self.peer = f"{host}:{getattr(address, 'port', '')}"
        if self.factory.admit(self, host):
            return True
        self._closing = True
        self.transport.loseConnection()  # type: ignore[union-attr]
        return False

    def connectionMade(self) -> None:
        now = self.clock.seconds()
        self.factory.connection_made(self)
        # Behind a PROXY-protocol listener the peer is the proxy until the
        # header is parsed: count the connection at its first data, against
        # the real client. Until then the login timeout bounds its life.
        if not isinstance(self.transport, HAProxyProtocolWrapper) and not self._admit():
            return
        self.connected = True
        no_delay(self.transport)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._connected_at = self._last_rx = self._last_frame = now
        limits = self.limits
        self._bucket = TokenBucket(
            limits.rate_per_s, limits.rate_burst, now, limits.abuse_excess, limits.abuse_window_s
        )
        self._timer = self.clock.callLater(limits.login_timeout_s, self._on_timer)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._closing = True
        for timer in (self._timer, self._grace, self._stall):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._grace = self._stall = None
        self._held = None
        self._lanes.clear()  # their messages stay pending
        self._release_session()
        self.factory.connection_lost(self)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        if self.session is None:
            deadline = self._connected_at + self.limits.login_timeout_s
            why = "login timeout"
        else:
            deadline = self._last_frame + self.limits.idle_timeout_s
            why = "idle timeout"
        if now >= deadline:
            self.log.info("closing {peer}: {why}", peer=self.peer, why=why,
                          uid=self.session.uid if self.session else 0,
                          appcode=self.session.appcode if self.session else 0)
            self.close()
            return
        self._timer = self.clock.callLater(deadline - now, self._on_timer)

    def _release_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            self.logic.connection_lost(session)

    def close(self) -> None:
        """Close politely: answers already written still reach the peer."""
        if self._closing:
            return
        self._closing = True
        self.connected = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release_session()
        transport: Any = self.transport
        if self._paused:
            transport.resumeProducing()  # keep reading (and discarding): no RST
            self._paused = False
        if ISSLTransport.providedBy(self.transport):
            # Through the TLS layer: close_notify, then the TCP close once the
            # peer answers with its own. (Its loseWriteConnection would be the
            # TCP socket's, half-closing under TLS.) It closes only once no
            # producer is registered.
            transport.unregisterProducer()
            transport.loseConnection()
        else:
            half_close = getattr(transport, "loseWriteConnection", None)
            if half_close is not None:
                half_close()
            else:
                transport.loseConnection()
        self._grace = self.clock.callLater(self.limits.close_grace_s, self._abort)

    def _abort(self) -> None:
        self._grace = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- IClientConnection ---------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._push_seq = self._push_seq % MAX_SEQ + 1
        return seq

    def attach(self, session: Session) -> None:
        self.session = session
        self._held = []
        self._priority = self.factory.priority_msgtypes.get(session.appcode, frozenset())

    def detach(self) -> None:
        self.session = None
        self._held = None

    def push(self, cmd: int, msgtype: int, body: bytes) -> int:
        """Write a push (or queue it in its lane while the peer does not
        read); 0 (nothing written) while closing, or when its lane was full
        (the connection is then closed: the message stays pending)."""
        session = self.session
        if session is None or self._closing:
            return 0
        seq = self._next_seq()
        frame = encode(cmd, session.appcode, msgtype, session.uid, seq, body)
        lane = PRIORITY if msgtype in self._priority else NORMAL
        if self._held is not None:
            self._held.append((lane, frame))
        elif not self._out(lane, frame):
            return 0
        return seq

    def _out(self, lane: int, frame: bytes) -> bool:
        """Write ``frame``, or queue it in ``lane`` while the socket is
        congested (or frames wait there: they leave first). A full lane
        closes the connection: False."""
        self.factory.counters.bytes_out += len(frame)
        lanes = self._lanes
        if not self._write_blocked and not lanes:
            self.transport.write(frame)  # type: ignore[union-attr]
            return True
        if lanes.add(lane, frame):
            return True
        self.log.info("closing {peer}: {count} {lane} frames wait for it to read",
                      peer=self.peer, count=lanes.max_frames, lane=Lanes.NAMES[lane])
        self._closing = True
        lanes.clear()
        self.transport.abortConnection()  # type: ignore[union-attr]
        return False

    # -- IPushProducer: the transport pauses us while the peer does not read --

    def pauseProducing(self) -> None:
        self._write_blocked = True
        if self._stall is None and not self._closing:
            self._stall = self.clock.callLater(self.limits.write_stall_s, self._stalled)
        self._throttle()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._lanes and not self._closing:  # may congest the socket again
            self._lanes.drain(self.transport.write,  # type: ignore[union-attr]
                              lambda: self._write_blocked)
        if not self._closing:
            self._throttle()
            self._process()

    def stopProducing(self) -> None:
        pass

    def _stalled(self) -> None:
        self._stall = None
        self.log.info("closing {peer}: it has not read for {seconds} s", peer=self.peer,
                      seconds=self.limits.write_stall_s)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def kick(self, reason_code: int, reason: str) -> None:
        if self._closing:
            return
        self._held = None  # a kicked LOGIN is never answered: drop what it held
        session = self.session
        uid, appcode = (session.uid, session.appcode) if session else (0, 0)
        self.factory.counters.kickouts.inc(KickReason(reason_code).name)
        body = pb.Kickout(reason_code=reason_code, reason=reason).SerializeToString()
        frame = encode(Cmd.KICKOUT, appcode, 0, uid, self._next_seq(), body)
        self.factory.counters.bytes_out += len(frame)
        self.transport.write(frame)  # type: ignore[union-attr]
        self.log.info("kickout {uid}@{appcode} at {peer}: {reason}", uid=uid, appcode=appcode,
                      peer=self.peer, reason=KickReason(reason_code).name)
        self.close()

    # -- frames in -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._identified:
            # Behind a PROXY-protocol listener the real peer is known only now.
            self._identified = True
            if self.host is None and not self._admit():
                return
        self._last_rx = self.clock.seconds()
        self.factory.counters.bytes_in += len(data)
        self._decoder.feed(data)
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            decoder = self._decoder
            while not self._closing:
                if self._busy():
                    if self._send_batch():  # it may be answered at once, and free the connection
                        continue
                    break
                try:
                    frame = decoder.next()
                except BadMagic:
                    self.log.info("bad magic from {peer}: closing", peer=self.peer)
                    self.close()
                    return
                except BadVersion as e:
                    self._reply_error(e.header, Code.UNSUPPORTED_VERSION, "unsupported version")
                    self.close()
                    return
                except BodyTooLarge as e:
                    self._reply_error(e.header, Code.TOO_LARGE,
                                      f"body is over {self.limits.max_body} bytes")
                    self.close()
                    return
                if frame is None:
                    if self._send_batch():
                        continue
                    break
                self._frame(frame)
        finally:
            self._send_batch()  # a frame that closed the connection: the frames before it count
            self._processing = False
        self._throttle()

    def throttle(self) -> None:
        """Read the socket again, or stop, after the factory's pressure changed."""
        self._throttle()
        if not self._paused:
            self._process()

    def _busy(self) -> bool:
        return (self._barrier or self._write_blocked or self.factory.pressure
                or self._inflight >= self.limits.max_inflight)

    def _throttle(self) -> None:
        """Stop reading the socket while requests wait (or the buses lag); read
        again once they are answered."""
        if self._closing:
            return
        busy = self._busy()
        if busy and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        elif not busy and self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _frame(self, frame: Frame) -> None:
        self._last_frame = self._last_rx
        bucket = self._bucket
        if not bucket.take(self._last_rx):
            if bucket.abusive:
                self.kick(KickReason.ABUSE, "too many frames over the rate limit")
            else:
                self._reply_error(frame, Code.RATE_LIMITED, "rate limited")
            return
        cmd = frame.cmd
        if cmd not in CLIENT_REQUESTS:
            self._reply_error(frame, Code.UNKNOWN_CMD, f"unknown command {cmd:#04x}")
            return
        self.factory.counters.requests.inc(COMMAND_NAMES[cmd])
        session = self.session
        if session is None:
            if cmd not in BEFORE_LOGIN:
                self._reply_error(frame, Code.NOT_LOGGED_IN, "log in first")
                return
        elif frame.uid != session.uid or frame.appcode != session.appcode:
            self._reply_error(frame, Code.UID_MISMATCH, "uid/appcode differ from the session's")
            return
        if cmd in ADMITTED and self.factory.admission.full():
            # Over capacity: refused before its body is parsed, with an answer
            # encoded once, so that refusing stays much cheaper than serving.
            self.factory.counters.refused.inc("RATE_LIMITED")
            self._reply_body(frame, OVER_CAPACITY_BODY)
            return
        body_type, handle = HANDLERS[cmd]
        if cmd not in BATCHED:
            self._send_batch()  # those before this frame go first
        if body_type is None:  # the body is ignored
            handle(self, frame, None)
            return
        body = self._parse(frame, body_type)
        if body is not None:
            handle(self, frame, body)

    # -- one handler per command (the table HANDLERS below) ------------------

    def _on_keepalive(self, frame: Frame, _: None) -> None:
        self._reply(frame, pb.Result(code=Code.OK, server_time_ms=self.logic.now_ms()))

    def _on_logout(self, frame: Frame, _: None) -> None:
        """Answered after every earlier request."""
        self._barrier = True
        if self._inflight:
            self._logout = frame
        else:
            self._call(frame, self._do_logout())

    def _on_login(self, frame: Frame, req: pb.LoginRequest) -> None:
        self._barrier = True
        self._call(frame, self._login(frame, req))

    def _on_c2c(self, frame: Frame, req: pb.C2CRequest) -> None:
        self._collect(frame, req)

    def _on_c2s(self, frame: Frame, req: pb.C2SRequest) -> None:
        self._call(frame, self.logic.c2s(self._session(), frame.msgtype, req))

    def _on_ack(self, frame: Frame, req: pb.Ack) -> None:
        self._collect(frame, req.msgids)

    def _collect(self, frame: Frame, body: Any) -> None:
        """Hold an ACK or C2C frame, to go with the others of its command in this read."""
        self._inflight += 1
        if self._batch.cmd != frame.cmd:
            self._send_batch()
        self._batch.add(frame, body, self._session())

    def _send_batch(self) -> bool:
        """Send the frames collected (:meth:`_collect`); False when there were none."""
        if not self._batch:
            return False
        self._batch.send(self.logic, self._answer, self._failed)
        return True

    def _on_pull(self, frame: Frame, req: pb.PullRequest) -> None:
        self._call(frame, self.inbox.pull(self._session(), req))

    def _on_history(self, frame: Frame, req: pb.HistoryRequest) -> None:
        self._call(frame, self.inbox.history(self._session(), req))

    def _session(self) -> Session:
        session = self.session
        assert session is not None  # _frame let only LOGIN and KEEPALIVE through without one
        return session

    def _parse(self, frame: Frame, cls: Any) -> Any:
        msg = cls()
        try:
            msg.ParseFromString(frame.body)
        except DecodeError:
            self._reply_error(frame, Code.BAD_REQUEST, f"body is not a valid {cls.__name__}")
            return None
        return msg

    def _login(self, frame: Frame, req: pb.LoginRequest) -> Deferred[PbMessage]:
        """(A callback on logic's Deferred, not a coroutine of its own: it runs per LOGIN.)"""
        if self.session is not None:  # the same identity: _frame checked uid/appcode
            return Deferred.fromCoroutine(self.logic.relogin(self.session, req))
        d = Deferred.fromCoroutine(self.logic.login(self, frame.appcode, frame.uid, req))
        return d.addCallback(self._logged_in)

    def _logged_in(self, result: tuple[Session, PbMessage]) -> PbMessage:
        session, response = result
        if self._closing:
            self.logic.connection_lost(session)
        else:
            self.session = session
        return response

    async def _do_logout(self) -> PbMessage:
        session, self.session = self.session, None
        assert session is not None
        await self.logic.logout(session)
        return pb.Result(code=Code.OK, server_time_ms=self.logic.now_ms())

    # -- answers out -----------------------------------------------------------

    def _call(self, frame: Frame, work: Any) -> None:
        """Answer ``frame`` with what ``work`` (a Deferred, or a coroutine) gives."""
        self._inflight += 1
        d: Deferred[PbMessage] = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(frame,), errbackArgs=(frame,))

    def _done(self, frame: Frame) -> None:
        self._inflight -= 1
        if frame.cmd == Cmd.LOGOUT:
            self.close()
        elif frame.cmd == Cmd.LOGIN:
            self._barrier = False
            held, self._held = self._held, None
            if held and not self._closing:  # pushes that came during the LOGIN
                for lane, pushed in held:
                    if not self._out(lane, pushed):
                        break
        if self._logout is not None and not self._inflight and not self._closing:
            logout, self._logout = self._logout, None
            self._call(logout, self._do_logout())
            return
        if not self._processing and not self._closing:
            self._process()

    def _answer(self, response: PbMessage, frame: Frame) -> None:
        self._reply(frame, response)
        self._done(frame)

    def _failed(self, failure: Failure, frame: Frame) -> None:
        if frame.cmd == Cmd.LOGIN and self._held is not None:
            self.detach()  # logic already dropped the session
        error = failure.value
        if isinstance(error, errors.RequestError):
            self._reply_error(frame, error.code, error.reason)
        else:
            self.log.failure("request {cmd:#04x} from {peer} failed", failure,
                             cmd=frame.cmd, peer=self.peer, uid=frame.uid, appcode=frame.appcode)
            self._reply_error(frame, Code.INTERNAL, "internal error")
        self._done(frame)

    def _reply(self, frame: Frame, response: PbMessage) -> None:
        code = response.code  # every answer body has one
        if code or frame.cmd == Cmd.LOGIN:
            counters = self.factory.counters
            name = CODE_NAMES.get(code)
            if name is not None:
                if frame.cmd == Cmd.LOGIN:
                    counters.logins.inc(name)
                if code:
                    counters.refused.inc(name)
        self._reply_body(frame, response.SerializeToString())

    def _reply_body(self, frame: Frame, body: bytes) -> None:
        if self._closing and frame.cmd != Cmd.LOGOUT:
            return
        self._out(CONTROL, encode(frame.cmd | RESPONSE_BIT, frame.appcode, frame.msgtype,
                                  frame.uid, frame.sequenceid, body))

    def _reply_error(self, frame: Frame, code: int, reason: str) -> None:
        if self._closing:
            return
        self._reply(frame, RESPONSE_TYPES.get(frame.cmd, pb.Result)(code=code, reason=reason))


Handler = Callable[[GateProtocol, Frame, Any], None]

#: What each client request is: its body type (None: the body is ignored) and
#: its handler. Every command of ``CLIENT_REQUESTS`` is here.
HANDLERS: dict[int, tuple[type[PbMessage] | None, Handler]] = {
    Cmd.LOGIN: (pb.LoginRequest, GateProtocol._on_login),
    Cmd.LOGOUT: (None, GateProtocol._on_logout),
    Cmd.C2S: (pb.C2SRequest, GateProtocol._on_c2s),
    Cmd.C2C: (pb.C2CRequest, GateProtocol._on_c2c),
    Cmd.KEEPALIVE: (None, GateProtocol._on_keepalive),
    Cmd.ACK: (pb.Ack, GateProtocol._on_ack),
    Cmd.PULL: (pb.PullRequest, GateProtocol._on_pull),
    Cmd.HISTORY: (pb.HistoryRequest, GateProtocol._on_history),
}

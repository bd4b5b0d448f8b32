"""Test harness: a node's logic on a fake clock, gate connections on StringTransports."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

from google.protobuf.message import Message as PbMessage
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from daojia_msg.auth import mint_token
from daojia_msg.bus.memory import MemoryBus
from daojia_msg.bus.router import BusRouter
from daojia_msg.config import Config, StoreConfig, default_config
from daojia_msg.gate.factory import GateFactory
from daojia_msg.gate.protocol import GateProtocol
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.inbox import Inbox
from daojia_msg.logic.service import LogicService
from daojia_msg.protocol.codec import Frame, FrameDecoder, encode
from daojia_msg.protocol.codes import Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.store.login_throttle import MemoryLoginThrottle
from daojia_msg.store.memory import MemorySessionStore
from daojia_msg.store.offers import MemoryOffers
from daojia_msg.store.positions import MemoryPositions
from daojia_msg.store.sqlite import SQLiteMessageStore, inline_sqlite_pool

#: A fixed, realistic start time (2026-11-26) for the fake clock.
T0 = 1795700000.0


_scratch: list[str] = []


def scratch_dir() -> str:
    """A new folder for a test's files, under one folder per test process that
    is removed when the process exits (a :class:`Stack` has no test case to
    clean up after it)."""
    if not _scratch:
        root = tempfile.mkdtemp(prefix="msgplatform-test-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _scratch.append(root)
    return tempfile.mkdtemp(dir=_scratch[0])


def inline_store(directory: str | None = None, clock: Clock | None = None,
                 retention: StoreConfig | None = None) -> SQLiteMessageStore:
    """A started SQLite store whose interactions run inline (deterministic);
    ``retention``: its ``[store]`` (what expires), None keeps everything."""
    directory = directory or scratch_dir()
    path = os.path.join(directory, "messages.db")
    if clock is None:
        clock = Clock()
        clock.advance(T0)
    store = SQLiteMessageStore(path, clock, pool=inline_sqlite_pool(path), retention=retention)
    store.start()
    return store


class Stack:
    """Logic + inbox + gate factory on a :class:`Clock`, in one place for tests."""

    def __init__(self, config: Config | None = None, store: Any = None, bus: Any = None,
                 node_id: int = 1, clock: Clock | None = None) -> None:
        self.config = config or default_config()
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(T0)
        self.store = (store if store is not None
                      else inline_store(clock=self.clock, retention=self.config.store))
        self.bus = bus if bus is not None else MemoryBus()
        self.router = BusRouter(self.config, self.clock, buses={"": self.bus})
        self.sessions = MemorySessionStore()
        self.ids = IdGenerator(node_id, self.clock.seconds)
        self.throttle = MemoryLoginThrottle(self.clock, self.config.limits.login_ip_failures)
        self.positions = MemoryPositions()
        self.offers = MemoryOffers()
        self.logic = LogicService(self.config, self.clock, self.sessions, self.store, self.router,
                                  self.ids, throttle=self.throttle, positions=self.positions,
                                  offers=self.offers)
        self.inbox = Inbox(self.store, self.config.limits, self.logic.stats, self.logic.answers)
        self.factory = GateFactory(self.logic, self.inbox, self.config.limits, self.clock)

    def connect(self, host: str = "10.0.0.1", port: int = 40000) -> Conn:
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, port))
        conn = Conn(self, proto, host, port)
        assert not conn.closing, "refused by the per-IP cap"
        return conn

    def token(self, uid: int, appcode: int = 1001, ttl: float = 3600) -> str:
        app = self.config.app(appcode)
        secret = app.secret if app else "no-such-app-secret"
        return mint_token(secret, appcode, uid, int(self.clock.seconds() + ttl))

    def stall_store(self) -> list[Deferred[object]]:
        """From now on the store holds every write until its Deferred in the
        returned list fires."""
        held: list[Deferred[object]] = []
        real_store = self.store.store

        def slow_store(batch: object) -> Deferred[object]:
            d: Deferred[object] = Deferred()
            held.append(d)
            d.addCallback(lambda _: real_store(batch))
            return d

        self.store.store = slow_store
        return held

    def login(self, uid: int, appcode: int = 1001, host: str = "10.0.0.1") -> Conn:
        conn = self.connect(host)
        response = conn.login(uid, appcode)
        assert response.code == 0, response
        return conn


class Conn:
    """A client side of one gate connection: send frames, read what came back."""

    def __init__(self, stack: Stack, proto: GateProtocol, host: str = "10.0.0.1",
                 port: int = 40000) -> None:
        self.stack = stack
        self.proto = proto
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.decoder = FrameDecoder(10 * 1024 * 1024)
        self.seq = 0
        self.uid = 0
        self.appcode = 0
        proto.makeConnection(self.transport)

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting

    def send_raw(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def frame(self, cmd: int, body: bytes | PbMessage = b"", *, uid: int | None = None,
              appcode: int | None = None, msgtype: int = 0, seq: int | None = None) -> bytes:
        if isinstance(body, PbMessage):
            body = body.SerializeToString()
        if seq is None:
            self.seq += 1
            seq = self.seq
        return encode(cmd, self.appcode if appcode is None else appcode, msgtype,
                      self.uid if uid is None else uid, seq, body)

    def send(self, cmd: int, body: bytes | PbMessage = b"", **kw: Any) -> None:
        self.send_raw(self.frame(cmd, body, **kw))

    def received(self) -> list[Frame]:
        """Frames the server wrote since the last call."""
        self.decoder.feed(self.transport.value())
        self.transport.clear()
        frames = []
        while (frame := self.decoder.next()) is not None:
            frames.append(frame)
        return frames

    def request(self, cmd: int, body: bytes | PbMessage = b"", response: type[Any] = pb.Result,
                **kw: Any) -> Any:
        """Send one request; return its parsed response (pushes are kept in ``pushes``)."""
        self.send(cmd, body, **kw)
        return self.response(response)

    pushes: list[Frame]

    def response(self, response: type[Any] = pb.Result) -> Any:
        frames = self.received()
        self.pushes = [f for f in frames if not f.cmd & 0x80]
        answers = [f for f in frames if f.cmd & 0x80]
        assert len(answers) == 1, f"expected one response, got {answers}"
        msg = response()
        msg.ParseFromString(answers[0].body)
        self.last = answers[0]
        return msg

    def login(self, uid: int, appcode: int = 1001, token: str | None = None) -> pb.LoginResponse:
        self.uid, self.appcode = uid, appcode
        req = pb.LoginRequest(token=token if token is not None else self.stack.token(uid, appcode))
        return self.request(Cmd.LOGIN, req, pb.LoginResponse)

    def c2c(self, to_uid: int, text: bytes = b"hi", to_appcode: int = 1001, msgtype: int = 7,
            client_msg_id: str = "", logid: str = "") -> pb.Result:
        req = pb.C2CRequest(to_uid=to_uid, to_appcode=to_appcode, content=text,
                            client_msg_id=client_msg_id, logid=logid)
        return self.request(Cmd.C2C, req, msgtype=msgtype)

    def ack(self, msgids: list[int]) -> pb.Result:
        return self.request(Cmd.ACK, pb.Ack(msgids=msgids))

    def pull(self, after: int = 0, limit: int = 0) -> pb.PullResponse:
        return self.request(Cmd.PULL, pb.PullRequest(after_msgid=after, limit=limit),
                            pb.PullResponse)

    def history(self, peer: int = 0, before: int = 0, limit: int = 0) -> pb.HistoryResponse:
        return self.request(Cmd.HISTORY, pb.HistoryRequest(peer_uid=peer, before_msgid=before,
                                                           limit=limit), pb.HistoryResponse)

    def pushed_messages(self) -> list[pb.Message]:
        """Server pushes received since the last call, parsed."""
        frames = self.received()
        assert not [f for f in frames if f.cmd & 0x80], frames
        out = []
        for f in frames:
            m = pb.Message()
            m.ParseFromString(f.body)
            out.append(m)
        return out


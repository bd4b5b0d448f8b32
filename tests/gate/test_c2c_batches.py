"""The C2C frames of one read go to the store as one write, and each frame is
answered as if it had gone alone (daojia_msg/gate/batches.py,
``Sending.c2c_frames``)."""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable, StoreUncertain
from daojia_msg.core.model import StoredMessage
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.gate.test_protocol import with_limits
from tests.helpers import Conn, Stack


class C2CBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.setup(Stack())

    def setup(self, stack: Stack) -> None:
        self.stack = stack
        self.a, self.b = stack.login(42), stack.login(43)
        self.writes: list[list[str]] = []  # the store's writes: the contents of each
        real = stack.store.store

        def counted(batch: list[Any]) -> Any:
            self.writes.append([new.message.content.decode() for new in batch])
            return real(batch)

        stack.store.store = counted

    def c2c(self, seq: int, text: str, to_uid: int = 43, **kw: Any) -> bytes:
        req = pb.C2CRequest(to_uid=to_uid, to_appcode=kw.pop("to_appcode", 1001),
                            content=text.encode(), **kw)
        return self.a.frame(Cmd.C2C, req, msgtype=7, seq=seq)

    def send(self, conn: Conn, *frames: bytes) -> dict[int, pb.Result]:
        """``frames`` in one read; the answers by sequenceid."""
        conn.send_raw(b"".join(frames))
        return self.answers(conn)

    @staticmethod
    def answers(conn: Conn) -> dict[int, pb.Result]:
        return {f.sequenceid: pb.Result.FromString(f.body) for f in conn.received()
                if f.cmd & 0x80}

    #: Requests in flight per connection (None: the default, larger than any batch here).
    limit: int | None = None

    def assertWrites(self, writes: list[list[str]]) -> None:
        """The store's writes were ``writes``; with a per-connection limit,
        the same messages in the same order in more writes."""
        if self.limit is None:
            self.assertEqual(self.writes, writes)
            return
        self.assertEqual([m for w in self.writes for m in w], [m for w in writes for m in w])
        self.assertGreater(len(self.writes), len(writes))

    def pending(self) -> list[bytes]:
        return [m.content for m in self.successResultOf(self.stack.store.pull(43, 1001, 0, 100)).messages]

    def test_one_write_one_answer_each(self) -> None:
        answers = self.send(self.a, *(self.c2c(10 + i, f"m{i}") for i in range(5)))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {10 + i: Code.OK for i in range(5)})
        self.assertWrites([[f"m{i}" for i in range(5)]])
        msgids = [answers[10 + i].msgid for i in range(5)]
        self.assertEqual(msgids, sorted(set(msgids)))  # each its own, in the order sent
        self.assertEqual([(m.msgid, m.content) for m in self.b.pushed_messages()],
                         [(msgids[i], b"m%d" % i) for i in range(5)])
        self.assertEqual(self.pending(), [b"m%d" % i for i in range(5)])  # until ACKed
        self.assertEqual(self.a.proto._inflight, 0)
        self.assertEqual(self.stack.factory.admission.inflight, 0)

    def test_a_lone_c2c_goes_alone(self) -> None:
        self.assertEqual(self.send(self.a, self.c2c(7, "one"))[7].code, Code.OK)
        self.assertEqual(self.writes, [["one"]])

    def test_a_refused_frame_is_refused_alone(self) -> None:
        answers = self.send(
            self.a, self.c2c(1, "ok1"), self.c2c(2, "to nobody", to_appcode=9999),
            self.c2c(3, "to me", to_uid=42), self.c2c(4, "x", client_msg_id="c" * 1000),
            self.a.frame(Cmd.C2C, b"\xff\xff not protobuf", msgtype=7, seq=5),
            self.c2c(6, "ok2"))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.OK, 2: Code.UNKNOWN_APPCODE, 3: Code.BAD_REQUEST,
                          4: Code.BAD_REQUEST, 5: Code.BAD_REQUEST, 6: Code.OK})
        self.assertIn("oneself", answers[3].reason)
        self.assertWrites([["ok1", "ok2"]])
        self.assertEqual(self.pending(), [b"ok1", b"ok2"])

    def test_a_read_of_refusals_only_writes_nothing(self) -> None:
        answers = self.send(self.a, self.c2c(1, "a", to_uid=42), self.c2c(2, "b", to_uid=42))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.BAD_REQUEST, 2: Code.BAD_REQUEST})
        self.assertEqual(self.writes, [])
        self.assertEqual(self.stack.factory.admission.inflight, 0)

    def test_client_msg_ids_dedup_within_and_across_reads(self) -> None:
        """A resend in the same read, or in a later one, is answered with the
        first send's msgid and stored once."""
        answers = self.send(self.a, self.c2c(1, "first", client_msg_id="k1"),
                            self.c2c(2, "first", client_msg_id="k1"),
                            self.c2c(3, "other", client_msg_id="k2"))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.OK, 2: Code.OK, 3: Code.OK})
        self.assertEqual(answers[2].msgid, answers[1].msgid)
        self.assertNotEqual(answers[3].msgid, answers[1].msgid)
        again = self.send(self.a, self.c2c(4, "first", client_msg_id="k1"),
                          self.c2c(5, "new"))
        self.assertEqual(again[4].msgid, answers[1].msgid)
        self.assertEqual(self.pending(), [b"first", b"other", b"new"])

    def test_a_resend_of_a_pending_message_reaches_its_recipient(self) -> None:
        """A resend (the sender never saw its answer) is answered with the
        first msgid once the pending message is pushed again: here to a
        recipient that logged in after the first send (a LOGIN pushes
        nothing: the phone PULLs)."""
        first = self.send(self.a, self.c2c(1, "early", to_uid=77, client_msg_id="k"))[1]
        late = self.stack.connect()
        late.uid, late.appcode = 77, 1001
        late.send(Cmd.LOGIN, pb.LoginRequest(token=self.stack.token(77)))
        self.assertEqual([f.cmd for f in late.received()], [Cmd.LOGIN | 0x80])
        answers = self.send(self.a, self.c2c(2, "early", to_uid=77, client_msg_id="k"),
                            self.c2c(3, "next", to_uid=77))
        self.assertEqual((answers[2].code, answers[2].msgid), (Code.OK, first.msgid))
        self.assertEqual(answers[3].code, Code.OK)
        self.assertEqual([m.content for m in late.pushed_messages()], [b"early", b"next"])
        self.assertEqual([m.content for m in
                          self.successResultOf(self.stack.store.pull(77, 1001, 0, 10)).messages],
                         [b"early", b"next"])  # stored once, pending until ACKed

    def test_an_offline_recipient_keeps_them_pending(self) -> None:
        answers = self.send(self.a, self.c2c(1, "p1", to_uid=77), self.c2c(2, "p2", to_uid=77),
                            self.c2c(3, "online"))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.OK, 2: Code.OK, 3: Code.OK})
        self.assertEqual([m.content for m in
                          self.successResultOf(self.stack.store.pull(77, 1001, 0, 10)).messages],
                         [b"p1", b"p2"])

    def test_a_slow_delivery_holds_its_own_answer_only(self) -> None:
        """A push that waits on another node (held here) answers its frame
        when it is done, and no other frame waits for it."""
        routing = self.stack.logic.routing
        held: list[Deferred[bool]] = []
        real_local = routing.push_if_local

        def far_for_77(msg: StoredMessage) -> bool:
            return msg.to_uid != 77 and real_local(msg)

        def deliver(msg: StoredMessage) -> Deferred[bool]:
            held.append(Deferred())
            return held[-1]

        routing.push_if_local = far_for_77  # type: ignore[method-assign]
        routing.deliver = deliver  # type: ignore[method-assign,assignment]
        answers = self.send(self.a, self.c2c(1, "near"), self.c2c(2, "far", to_uid=77),
                            self.c2c(3, "near too"))
        self.assertEqual({seq: r.code for seq, r in answers.items()}, {1: Code.OK, 3: Code.OK})
        self.assertEqual(len(held), 1)
        self.assertEqual(self.stack.factory.admission.inflight, 1)
        held[0].callback(True)
        self.assertEqual({seq: r.code for seq, r in self.answers(self.a).items()}, {2: Code.OK})
        self.assertEqual((self.a.proto._inflight, self.stack.factory.admission.inflight), (0, 0))
        # Past the answer time limit (counted from the read), it is TIMEOUT.
        self.send(self.a, self.c2c(4, "near"), self.c2c(5, "far", to_uid=77))
        self.stack.clock.advance(self.stack.config.store.answer_timeout_s)
        self.assertEqual({seq: r.code for seq, r in self.answers(self.a).items()},
                         {5: Code.TIMEOUT})
        held[1].callback(True)  # the late answer is dropped
        self.assertEqual(self.a.received(), [])

    def test_other_frames_keep_their_place(self) -> None:
        """C2Cs before another request go before it; those after it, after;
        ACKs and C2Cs in one read are two batches."""
        m = self.send(self.a, self.c2c(1, "x"))[1].msgid
        self.b.received()
        self.b.send_raw(self.b.frame(Cmd.C2C, pb.C2CRequest(to_uid=42, to_appcode=1001,
                                                            content=b"b1"), msgtype=7, seq=1)
                        + self.b.frame(Cmd.C2C, pb.C2CRequest(to_uid=42, to_appcode=1001,
                                                              content=b"b2"), msgtype=7, seq=2)
                        + self.b.frame(Cmd.ACK, pb.Ack(msgids=[m]), seq=3)
                        + self.b.frame(Cmd.KEEPALIVE, seq=4)
                        + self.b.frame(Cmd.C2C, pb.C2CRequest(to_uid=42, to_appcode=1001,
                                                              content=b"b3"), msgtype=7, seq=5))
        self.assertEqual({seq: r.code for seq, r in self.answers(self.b).items()},
                         {i: Code.OK for i in range(1, 6)})
        self.assertEqual(self.writes, [["x"], ["b1", "b2"], ["b3"]])
        self.assertEqual([p.content for p in self.a.pushed_messages()], [b"b1", b"b2", b"b3"])

    def test_a_refusal_does_not_wait_for_the_store(self) -> None:
        """A frame refused for its content is answered at once, as it would
        be alone, while the other frames of its read wait for the store."""
        held = self.stack.stall_store()
        self.a.send_raw(self.c2c(1, "ok") + self.c2c(2, "me", to_uid=42) + self.c2c(3, "ok2"))
        self.assertEqual({seq: r.code for seq, r in self.answers(self.a).items()},
                         {2: Code.BAD_REQUEST})
        self.assertEqual((self.a.proto._inflight, self.stack.factory.admission.inflight), (2, 2))
        for d in held:
            d.callback(None)
        self.assertEqual({seq: r.code for seq, r in self.answers(self.a).items()},
                         {1: Code.OK, 3: Code.OK})
        self.assertEqual((self.a.proto._inflight, self.stack.factory.admission.inflight), (0, 0))

    def test_a_late_store_with_a_slow_push_logs_nothing(self) -> None:
        """The store confirms after the answers timed out; the push that then
        waits on another node times out too: nobody takes its answer, and
        nothing is left as an unhandled error."""
        routing = self.stack.logic.routing
        real_local = routing.push_if_local
        routing.push_if_local = (  # type: ignore[method-assign]
            lambda msg: msg.to_uid != 77 and real_local(msg))
        routing.deliver = lambda msg: Deferred()  # type: ignore[method-assign,assignment]
        held = self.stack.stall_store()
        self.a.send_raw(self.c2c(1, "near") + self.c2c(2, "far", to_uid=77))
        timeout = self.stack.config.store.answer_timeout_s
        self.stack.clock.advance(timeout)
        self.assertEqual({seq: r.code for seq, r in self.answers(self.a).items()},
                         {1: Code.TIMEOUT, 2: Code.TIMEOUT})
        for d in held:
            d.callback(None)
        self.stack.clock.advance(timeout)
        self.assertEqual(self.a.received(), [])
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((self.a.proto._inflight, self.stack.factory.admission.inflight), (0, 0))

    def test_a_logic_that_raises_answers_each_internal(self) -> None:
        """A bug that raises out of the logic call still answers every frame
        (INTERNAL) and frees its places."""
        def boom(*args: Any) -> Any:
            raise RuntimeError("bug")

        self.stack.logic.c2c_frames = boom  # type: ignore[method-assign]
        self.stack.logic.c2c = boom  # type: ignore[method-assign]
        self.a.proto.logic = type(self.a.proto.logic)(self.stack.logic,  # type: ignore[call-arg]
                                                      self.stack.factory.admission)
        answers = self.send(self.a, self.c2c(1, "a"), self.c2c(2, "b"))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.INTERNAL, 2: Code.INTERNAL})
        self.assertEqual(self.send(self.a, self.c2c(3, "alone"))[3].code, Code.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.assertEqual((self.a.proto._inflight, self.stack.factory.admission.inflight), (0, 0))

    def test_frames_before_one_that_closes_the_connection_count(self) -> None:
        """A read whose last bytes close the connection (here: no magic):
        the C2Cs before them are stored and pushed as they would be alone
        (unanswered: the connection is closing; a resend is de-duplicated)."""
        self.a.send_raw(self.c2c(1, "a") + self.c2c(2, "b") + b"no magic at all here")
        self.assertTrue(self.a.closing)
        self.assertEqual(self.writes, [["a", "b"]])
        self.assertEqual([m.content for m in self.b.pushed_messages()], [b"a", b"b"])
        self.assertEqual(self.stack.factory.admission.inflight, 0)

    def test_the_stores_failure_answers_each(self) -> None:
        self.stack.store.store = lambda batch: fail(StoreUnavailable("down"))
        answers = self.send(self.a, self.c2c(1, "a"), self.c2c(2, "b", to_uid=42),
                            self.c2c(3, "c"))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.UNAVAILABLE, 2: Code.BAD_REQUEST, 3: Code.UNAVAILABLE})
        self.stack.store.store = lambda batch: fail(StoreUncertain("lost during the commit"))
        answers = self.send(self.a, self.c2c(4, "a"), self.c2c(5, "b"))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {4: Code.TIMEOUT, 5: Code.TIMEOUT})
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.stack.factory.admission.inflight, 0)

    def test_late_store_times_out_each(self) -> None:
        held = self.stack.stall_store()
        self.a.send_raw(self.c2c(1, "a") + self.c2c(2, "b"))
        self.assertEqual(self.a.received(), [])
        self.stack.clock.advance(self.stack.config.store.answer_timeout_s)
        self.assertEqual({seq: r.code for seq, r in self.answers(self.a).items()},
                         {1: Code.TIMEOUT, 2: Code.TIMEOUT})
        for d in held:
            d.callback(None)  # the store finishes late: stored and pushed, the answer dropped
        self.assertEqual(self.a.received(), [])
        self.assertEqual([m.content for m in self.b.pushed_messages()], [b"a", b"b"])
        self.assertEqual(self.stack.factory.admission.inflight, 0)


class C2CBatchLimitTests(C2CBatchTests):
    """With two requests in flight per connection, a read of several C2Cs is
    still answered whole: the batch goes when the connection is busy."""

    limit = 2

    def setUp(self) -> None:
        self.setup(with_limits(max_inflight=2))

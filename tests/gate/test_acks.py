"""The ACK frames of one read go to the store as one write, and each frame is
answered as if it had gone alone (daojia_msg/gate/acks.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable, StoreUncertain
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.gate.test_protocol import with_limits
from tests.helpers import Conn, Stack


class AckBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.setup(Stack())

    def setup(self, stack: Stack) -> None:
        self.stack = stack
        self.a, self.b = stack.login(42), stack.login(43)
        self.msgids = [self.a.c2c(43, b"m%d" % i).msgid for i in range(5)]
        self.b.received()  # the pushes
        self.acks: list[list[int]] = []
        real = stack.store.ack

        def counted(uid: int, appcode: int, msgids: list[int]) -> Any:
            self.acks.append(list(msgids))
            return real(uid, appcode, msgids)

        stack.store.ack = counted

    def send(self, conn: Conn, *frames: bytes) -> dict[int, pb.Result]:
        """``frames`` in one read; the answers by sequenceid."""
        conn.send_raw(b"".join(frames))
        out = {}
        for f in conn.received():
            if f.cmd == Cmd.ACK | 0x80:
                result = pb.Result()
                result.ParseFromString(f.body)
                out[f.sequenceid] = result
        return out

    def ack(self, msgids: list[int], seq: int) -> bytes:
        return self.b.frame(Cmd.ACK, pb.Ack(msgids=msgids), seq=seq)

    #: Requests in flight per connection (None: the default, larger than any batch here).
    limit: int | None = None

    def assertBatches(self, batches: list[list[int]]) -> None:
        """The store's ACK calls were ``batches``; with a per-connection limit,
        the same msgids in the same order in more calls (a lone frame goes as
        it came, repeats included)."""
        if self.limit is None:
            self.assertEqual(self.acks, batches)
            return
        self.assertEqual(list(dict.fromkeys(m for b in self.acks for m in b)),
                         [m for b in batches for m in b])
        self.assertGreater(len(self.acks), len(batches))

    def pending(self) -> int:
        return int(self.successResultOf(self.stack.store.count_pending(43, 1001)))

    def test_one_write_one_answer_each(self) -> None:
        answers = self.send(self.b, *(self.ack([m], 100 + i) for i, m in enumerate(self.msgids)))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {100 + i: Code.OK for i in range(5)})
        self.assertBatches([self.msgids])
        self.assertEqual(self.pending(), 0)
        self.assertEqual(self.b.proto._inflight, 0)

    def test_a_lone_ack_goes_alone(self) -> None:
        self.assertEqual(self.send(self.b, self.ack(self.msgids[:2], 7))[7].code, Code.OK)
        self.assertEqual(self.acks, [self.msgids[:2]])

    def test_a_frame_over_the_limit_is_refused_alone(self) -> None:
        too_many = list(range(1, 1002))
        answers = self.send(self.b, self.ack([self.msgids[0]], 1), self.ack(too_many, 2),
                            self.ack(self.msgids[1:3] + [self.msgids[1]], 3))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.OK, 2: Code.BAD_REQUEST, 3: Code.OK})
        self.assertBatches([self.msgids[:3]])  # once each
        self.assertEqual(self.pending(), 2)

    def test_a_refusal_does_not_wait_for_the_store(self) -> None:
        """A frame over ``max_ack_ids`` is answered at once, as it would be
        alone, while the others of its read wait for the store."""
        held: list[Deferred[Any]] = []
        real = self.stack.store.ack

        def slow(*args: Any) -> Deferred[Any]:
            held.append(Deferred())
            return held[-1].addCallback(lambda _: real(*args))

        self.stack.store.ack = slow
        answers = self.send(self.b, self.ack([self.msgids[0]], 1), self.ack(list(range(1, 1002)), 2))
        self.assertEqual({seq: r.code for seq, r in answers.items()}, {2: Code.BAD_REQUEST})
        held[0].callback(None)
        self.assertEqual({f.sequenceid: pb.Result.FromString(f.body).code
                          for f in self.b.received()}, {1: Code.OK})
        self.assertEqual(self.b.proto._inflight, 0)

    def test_empty_acks_are_answered(self) -> None:
        """ACK frames naming no msgid are answered OK, batched as alone."""
        answers = self.send(self.b, self.ack([], 1), self.ack([], 2))
        self.assertEqual({seq: r.code for seq, r in answers.items()}, {1: Code.OK, 2: Code.OK})
        self.assertEqual(self.b.proto._inflight, 0)
        self.assertEqual(self.pending(), 5)

    def test_other_frames_keep_their_place(self) -> None:
        """ACKs before another request go before it; those after it, after."""
        c2c = self.b.frame(Cmd.C2C, pb.C2CRequest(to_uid=42, to_appcode=1001, content=b"x"),
                           msgtype=7, seq=3)
        self.send(self.b, self.ack([self.msgids[0]], 1), self.ack([self.msgids[1]], 2), c2c,
                  self.ack([self.msgids[2]], 4), self.ack([self.msgids[3]], 5))
        self.assertEqual(self.acks, [self.msgids[:2], self.msgids[2:4]])

    def test_acks_before_a_frame_that_closes_the_connection_count(self) -> None:
        self.b.send_raw(self.ack([self.msgids[0]], 1) + self.ack([self.msgids[1]], 2)
                        + b"no magic at all here")
        self.assertTrue(self.b.closing)
        self.assertEqual(self.acks, [self.msgids[:2]])  # as one write, also at two in flight
        self.assertEqual(self.pending(), 3)

    def test_the_stores_failure_answers_each(self) -> None:
        self.stack.store.ack = lambda *a: fail(StoreUnavailable("down"))
        answers = self.send(self.b, self.ack([self.msgids[0]], 1), self.ack([self.msgids[1]], 2),
                            self.ack(list(range(1, 1002)), 3))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {1: Code.UNAVAILABLE, 2: Code.UNAVAILABLE, 3: Code.BAD_REQUEST})
        self.stack.store.ack = lambda *a: fail(StoreUncertain("lost during the commit"))
        answers = self.send(self.b, self.ack([self.msgids[0]], 4), self.ack([self.msgids[1]], 5))
        self.assertEqual({seq: r.code for seq, r in answers.items()},
                         {4: Code.TIMEOUT, 5: Code.TIMEOUT})
        self.assertEqual(self.pending(), 5)

    def test_late_store_times_out_each(self) -> None:
        held: list[Deferred[Any]] = []
        self.stack.store.ack = lambda *a: held.append(Deferred()) or held[-1]
        self.b.send_raw(self.ack([self.msgids[0]], 1) + self.ack([self.msgids[1]], 2))
        self.assertEqual(self.b.received(), [])
        self.stack.clock.advance(self.stack.config.store.answer_timeout_s)
        answers = {f.sequenceid: pb.Result.FromString(f.body).code for f in self.b.received()}
        self.assertEqual(answers, {1: Code.TIMEOUT, 2: Code.TIMEOUT})
        held[0].callback([])  # the late answer is dropped
        self.assertEqual(self.b.received(), [])


class AckBatchLimitTests(AckBatchTests):
    """With one request in flight per connection, a read of several ACKs is
    still answered whole: the batch goes when the connection is busy."""

    limit = 2

    def setUp(self) -> None:
        self.setup(with_limits(max_inflight=2))

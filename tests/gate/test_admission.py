"""Admission control at the gate: at most ``limits.node_max_inflight`` C2C and
C2S requests in work on the whole node; the rest are answered RATE_LIMITED at
once, and admitted again once answers went out."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.admission import Admission
from daojia_msg.gate.factory import AdmittedLogic
from daojia_msg.gate.limits import OVER_CAPACITY
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.gate.test_protocol import with_limits
from tests.helpers import Conn, Stack


def answers(frames: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    """(sequenceid, code) of each C2C answer."""
    out = []
    for f in frames:
        if f.cmd == Cmd.C2C | 0x80:
            result = pb.Result()
            result.ParseFromString(f.body)
            out.append((f.sequenceid, result.code))
    return out


class AdmissionTests(SynchronousTestCase):
    def test_counter(self) -> None:
        admission = Admission(2)
        self.assertEqual([admission.enter() for _ in range(3)], [True, True, False])
        self.assertEqual((admission.inflight, admission.refused), (2, 1))
        admission.leave()
        self.assertTrue(admission.enter())
        unbounded = Admission(0)
        self.assertTrue(all(unbounded.enter() for _ in range(10_000)))

    def test_full_counts_what_it_refuses(self) -> None:
        admission = Admission(1)
        self.assertFalse(admission.full())
        self.assertTrue(admission.enter())
        self.assertEqual([admission.full(), admission.full()], [True, True])
        self.assertEqual((admission.inflight, admission.refused), (1, 2))
        self.assertFalse(Admission(0).full())

    def test_a_standing_queue_cuts_the_limit_in_proportion(self) -> None:
        """When even the quickest answer of an interval took longer than the
        target, the limit shrinks by target/quickest (at most halved), and is
        judged again only by requests admitted after the cut."""
        clock = Clock()
        admission = Admission(1000, 0.1, clock.seconds)
        old = [admission.now() for _ in range(800) if admission.enter()]
        clock.advance(0.125)  # quickest 125 ms > 100 ms: x0.8
        admission.leave(old.pop())
        self.assertEqual(admission.limit, 800)
        clock.advance(0.5)  # requests admitted before the cut do not count
        for started in old[:100]:
            admission.leave(started)
        self.assertEqual(admission.limit, 800)
        fresh = admission.now()
        self.assertTrue(admission.enter())
        clock.advance(1.0)  # quickest 1 s: halved, not cut to a tenth
        admission.leave(fresh)
        self.assertEqual(admission.limit, 400)

    def test_never_below_the_floor(self) -> None:
        clock = Clock()
        admission = Admission(1000, 0.1, clock.seconds)
        for _ in range(20):
            admission.enter()
            started = admission.now()
            clock.advance(5.0)
            admission.leave(started)
        self.assertEqual(admission.limit, Admission.FLOOR)
        small = Admission(8, 0.1, clock.seconds)
        small.enter()
        started = small.now()
        clock.advance(5.0)
        small.leave(started)
        self.assertEqual(small.limit, 8)  # a cap below the floor stays the bound

    def test_grows_back_by_a_tenth_when_quick_and_refusing(self) -> None:
        """Quick answers grow the limit only in an interval where it refused
        something; up to the cap."""
        clock = Clock()
        admission = Admission(100, 0.1, clock.seconds)
        admission.limit = 50
        for _ in range(3):  # quick, nothing refused: stays
            clock.advance(0.11)
            self.assertTrue(admission.enter())
            admission.leave(admission.now())
        self.assertEqual(admission.limit, 50)
        limits = []
        for _ in range(12):
            clock.advance(0.11)
            started = admission.now()
            while admission.enter():
                pass
            for _ in range(admission.inflight):  # answered at once
                admission.leave(started)
            limits.append(admission.limit)
        self.assertEqual(limits[:3], [55, 60, 66])
        self.assertEqual(limits[-1], 100)

    def test_without_a_target_the_count_is_fixed(self) -> None:
        clock = Clock()
        for admission in (Admission(10), Admission(10, 0.0, clock.seconds),
                          Admission(0, 0.1, clock.seconds)):
            admission.enter()
            started = admission.now()
            clock.advance(10.0)
            admission.leave(started)
            self.assertEqual(admission.limit, admission.cap)

    def test_the_gate_learns_the_sojourn_of_its_requests(self) -> None:
        """Through the gate: a C2C held by a stalled store for longer than the
        target cuts the bound in force (seen as msgplatform_admission_limit)."""
        stack = with_limits(node_max_inflight=1000, admission_target_ms=100.0)
        conn = stack.login(42)
        stack.login(43)
        held = stack.stall_store()
        conn.send(Cmd.C2C, pb.C2CRequest(to_uid=43, to_appcode=1001, content=b"x"))
        stack.clock.advance(0.4)
        held[0].callback(None)
        self.assertEqual(stack.factory.admission.limit, 500)

    def test_refused_before_the_body_is_parsed(self) -> None:
        """Over capacity, a C2C is refused from its header alone: even one
        whose body would not parse gets RATE_LIMITED, not BAD_REQUEST, and the
        answer is the ready-made one."""
        stack = with_limits(node_max_inflight=1)
        one, two = stack.login(42), stack.login(43)
        held = stack.stall_store()
        one.send(Cmd.C2C, pb.C2CRequest(to_uid=43, to_appcode=1001, content=b"x"))
        self.assertEqual(len(held), 1)
        two.send_raw(two.frame(Cmd.C2C, b"\xff\xff not protobuf", seq=9))
        [answer] = [f for f in two.received() if f.cmd == Cmd.C2C | 0x80]
        self.assertEqual(answer.sequenceid, 9)
        self.assertEqual(answer.body, pb.Result(code=Code.RATE_LIMITED,
                                                reason=OVER_CAPACITY).SerializeToString())
        held[0].callback(None)
        two.send_raw(two.frame(Cmd.C2C, b"\xff\xff not protobuf", seq=10))
        result = pb.Result()
        result.ParseFromString([f for f in two.received() if f.cmd == Cmd.C2C | 0x80][-1].body)
        self.assertEqual(result.code, Code.BAD_REQUEST)  # with room, the body is parsed again

    def test_over_capacity_is_rate_limited_at_once_across_connections(self) -> None:
        stack = with_limits(node_max_inflight=2)
        one, two = stack.login(42), stack.login(43)
        stack.login(44)
        held = stack.stall_store()
        req = pb.C2CRequest(to_uid=44, to_appcode=1001, content=b"x")
        one.send_raw(one.frame(Cmd.C2C, req, seq=1))
        one.send_raw(one.frame(Cmd.C2C, req, seq=2))
        two.send_raw(two.frame(Cmd.C2C, req, seq=7))
        self.assertEqual(len(held), 2)  # the third never reached the store
        [(seq, code)] = answers(two.received())
        self.assertEqual((seq, code), (7, Code.RATE_LIMITED))
        self.assertEqual(stack.factory.admission.refused, 1)
        # C2S is bounded by the same count; other requests are not.
        two.send(Cmd.C2S, pb.C2SRequest(content=b"order"), msgtype=2)
        c2s = pb.Result()
        c2s.ParseFromString(two.received()[-1].body)
        self.assertEqual((c2s.code, c2s.reason), (Code.RATE_LIMITED, OVER_CAPACITY))
        self.assertEqual(two.request(Cmd.KEEPALIVE).code, Code.OK)
        self.assertEqual(two.pull().code, Code.OK)
        # Answers free the places: new requests are admitted again.
        held[0].callback(None)
        held[1].callback(None)
        self.assertEqual(sorted(answers(one.received())), [(1, Code.OK), (2, Code.OK)])
        self.assertEqual(stack.factory.admission.inflight, 0)
        two.send_raw(two.frame(Cmd.C2C, req, seq=8))
        self.assertEqual(len(held), 3)
        held[2].callback(None)
        self.assertEqual(answers(two.received()), [(8, Code.OK)])

    def three_in_one_read(self, node_max_inflight: int) -> tuple[Stack, Conn, list[Deferred[object]]]:
        """Three C2C frames in one read, with the store holding its writes."""
        stack = with_limits(node_max_inflight=node_max_inflight)
        one = stack.login(42)
        stack.login(43)
        held = stack.stall_store()
        req = pb.C2CRequest(to_uid=43, to_appcode=1001, content=b"x")
        one.send_raw(b"".join(one.frame(Cmd.C2C, req, seq=seq) for seq in (1, 2, 3)))
        return stack, one, held

    def test_the_frames_of_one_read_are_admitted_each(self) -> None:
        """C2C frames of one read go to the store together, but each passes
        admission control: those past the bound are refused alone, and each
        admitted one frees its place when it is answered."""
        stack, one, held = self.three_in_one_read(node_max_inflight=2)
        self.assertEqual(len(held), 1)  # one write
        self.assertEqual(answers(one.received()), [(3, Code.RATE_LIMITED)])
        self.assertEqual((stack.factory.admission.inflight, stack.factory.admission.refused),
                         (2, 1))
        held[0].callback(None)
        self.assertEqual(sorted(answers(one.received())), [(1, Code.OK), (2, Code.OK)])
        self.assertEqual(stack.factory.admission.inflight, 0)

    def test_a_batch_the_store_failed_frees_every_place(self) -> None:
        stack, one, held = self.three_in_one_read(node_max_inflight=4)
        held[0].errback(RuntimeError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)  # a bug: logged per frame
        self.assertEqual(sorted(answers(one.received())),
                         [(1, Code.INTERNAL), (2, Code.INTERNAL), (3, Code.INTERNAL)])
        self.assertEqual(stack.factory.admission.inflight, 0)

    def test_a_failed_request_frees_its_place(self) -> None:
        stack = with_limits(node_max_inflight=1)
        conn = stack.login(42)
        stack.login(43)
        held = stack.stall_store()
        conn.send(Cmd.C2C, pb.C2CRequest(to_uid=43, to_appcode=1001, content=b"x"))
        held[0].errback(RuntimeError("boom"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(stack.factory.admission.inflight, 0)


class AdmittedLogicTests(SynchronousTestCase):
    def test_the_rest_is_the_logics_own_and_kept(self) -> None:
        """What the gate calls besides C2C and C2S is the logic's own method,
        looked up once (a method is kept on the wrapper), a value each time."""
        class Logic:
            value = 1

            def ack(self, n: int) -> int:
                return n + 1

        logic = Logic()
        admitted = AdmittedLogic(logic, Admission(1))  # type: ignore[arg-type]
        self.assertEqual(admitted.ack(1), 2)
        self.assertIn("ack", vars(admitted))
        self.assertEqual(admitted.ack(2), 3)
        logic.value = 2
        self.assertEqual((admitted.value, "value" in vars(admitted)), (2, False))

"""The fault suite's senders: what they resend, with which id, and the
outcome they write in the ledger (fake connections, task.Clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.chaos.ledger import OK, REFUSED, UNANSWERED, UNCERTAIN, Ledger, parse_content
from daojia_msg.chaos.traffic import Traffic, position_for
from daojia_msg.client.errors import ConnectionLost, RequestTimeout, ResultError
from daojia_msg.core.geo import parse_position
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb


class FakeProto:
    """Answers each request with the next of ``answers`` (an exception or a msgid)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[Any, ...]] = []

    def _next(self, *args: Any) -> Deferred[pb.Result]:
        self.calls.append(args)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(pb.Result(code=0, msgid=answer))

    c2c = c2s = _next


class FakeClient:
    def __init__(self, proto: FakeProto) -> None:
        self.proto = proto

    def when_ready(self) -> Deferred[FakeProto]:
        return succeed(self.proto)


def traffic(answers: list[Any], give_up_s: float = 30.0,
            amqp_msgtype: int | None = None) -> tuple[Traffic, FakeProto, Clock]:
    clock = Clock()
    t = Traffic(clock, Ledger(), gate=1, api=2, users=1, appcode=1001, secret="s" * 8,
                api_key="k", c2s_msgtype=3, answer_s=5.0, give_up_s=give_up_s,
                log=lambda text: None, amqp_msgtype=amqp_msgtype)
    proto = FakeProto(answers)
    t.clients = {1: FakeClient(proto)}  # type: ignore[dict-item]
    return t, proto, clock


class SenderTests(TestCase):
    def test_c2c_resends_with_its_client_msg_id_until_ok(self) -> None:
        t, proto, clock = traffic([ResultError(Code.TIMEOUT, ""), ConnectionLost(),
                                   ResultError(Code.UNAVAILABLE, ""), 77])
        d = t.send_one("c2c")
        clock.pump([0.5] * 20)
        self.successResultOf(d)
        [sent] = t.ledger.sent.values()
        self.assertEqual((sent.outcome, sent.msgid, sent.attempts), (OK, 77, 4))
        self.assertEqual({call[3] for call in proto.calls}, {b"chaos c2c 1"})
        self.assertEqual({call[4] for call in proto.calls}, {"chaos-c2c-1"})
        self.assertEqual(t.outstanding, set())

    def test_c2c_refused_for_good(self) -> None:
        t, proto, clock = traffic([ResultError(Code.BAD_REQUEST, "no")])
        self.successResultOf(t.send_one("c2c"))
        [sent] = t.ledger.sent.values()
        self.assertEqual((sent.outcome, sent.last_error), (REFUSED, "BAD_REQUEST"))

    def test_c2c_gives_up_unanswered_or_uncertain(self) -> None:
        # Resends after 0.5, 1 and 2 s: the fourth attempt is past 2 s.
        t, proto, clock = traffic([RequestTimeout(5, 1, 5.0)] * 4, give_up_s=2.0)
        d = t.send_one("c2c")
        clock.pump([0.5] * 10)
        self.successResultOf(d)
        [sent] = t.ledger.sent.values()
        self.assertEqual((sent.outcome, sent.no_answer), (UNANSWERED, 4))
        t, proto, clock = traffic([ResultError(Code.TIMEOUT, "")] * 4, give_up_s=2.0)
        d = t.send_one("c2c")
        clock.pump([0.5] * 10)
        self.assertEqual(list(t.ledger.sent.values())[0].outcome, UNCERTAIN)

    def test_c2s_is_not_resent_after_timeout(self) -> None:
        t, proto, clock = traffic([ResultError(Code.TIMEOUT, ""), 5])
        self.successResultOf(t.send_one("c2s"))
        [sent] = t.ledger.sent.values()
        self.assertEqual((sent.outcome, len(proto.calls)), (UNCERTAIN, 1))

    def test_c2s_resent_after_unavailable(self) -> None:
        t, proto, clock = traffic([ResultError(Code.UNAVAILABLE, ""), 5])
        d = t.send_one("c2s")
        clock.pump([0.5] * 4)
        self.successResultOf(d)
        [sent] = t.ledger.sent.values()
        self.assertEqual((sent.outcome, sent.msgid, len(proto.calls)), (OK, 5, 2))

    def test_c2s_on_the_rabbitmq_route_has_its_msgtype_and_kind(self) -> None:
        t, proto, clock = traffic([ResultError(Code.UNAVAILABLE, ""), 9], amqp_msgtype=4)
        d = t.send_one("c2s-amqp")
        clock.pump([0.5] * 4)
        self.successResultOf(d)
        [sent] = t.ledger.sent.values()
        self.assertEqual((sent.kind, sent.outcome, sent.msgid), ("c2s-amqp", OK, 9))
        self.assertEqual(proto.calls, [(4, b"chaos c2s-amqp 1", "chaos-c2s-amqp-1")] * 2)
        self.successResultOf(t.send_one("c2s"))
        self.assertEqual(proto.calls[-1], (3, position_for(1), "chaos-c2s-1"))
        self.assertEqual(parse_content(position_for(1)), ("c2s", 1))
        self.assertEqual(parse_position(position_for(1)), (31.20001, 121.40001))

    def test_the_mix_has_the_rabbitmq_route_only_with_one(self) -> None:
        from daojia_msg.chaos import traffic as module

        self.assertEqual([kind for kind, _ in traffic([])[0].mix], ["c2c", "s2c", "c2s"])
        t = traffic([], amqp_msgtype=4)[0]
        self.assertEqual(dict(t.mix), {"c2c": 0.5, "s2c": 0.25, "c2s": 0.125, "c2s-amqp": 0.125})
        self.patch(module.random, "random", lambda: 0.99)
        self.assertEqual(t._pick(), "c2s-amqp")

    def test_offered_rate(self) -> None:
        t, proto, clock = traffic([1] * 1000)
        t._pick = lambda: "c2c"  # type: ignore[method-assign]
        t.start("p", 40.0)
        clock.pump([0.05] * 20)
        t.stop()
        self.assertEqual(len(t.ledger.sent), 40)
        self.assertEqual({s.phase for s in t.ledger.sent.values()}, {"p"})

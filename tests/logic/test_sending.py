"""Sending on one node: C2C and S2C durable, answered, pushed, ACKed, re-pushed; C2S to its topic."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import parse_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind
from daojia_msg.logic.service import PushItem, PushOutcome
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack


class C2CTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()
        self.a = self.stack.login(1)
        self.b = self.stack.login(2)

    def test_c2c_online(self) -> None:
        result = self.a.c2c(2, b"hello \xff", msgtype=9, logid="trace-1")
        self.assertEqual(result.code, Code.OK)
        self.assertEqual(result.logid, "trace-1")
        self.assertGreater(result.msgid, 0)
        [push] = self.b.received()
        self.assertEqual((push.cmd, push.uid, push.appcode, push.msgtype), (Cmd.C2C, 2, 1001, 9))
        self.assertNotEqual(push.sequenceid, 0)
        msg = pb.Message()
        msg.ParseFromString(push.body)
        self.assertEqual(
            (msg.msgid, msg.from_uid, msg.from_appcode, msg.to_uid, msg.to_appcode, msg.msgtype,
             msg.content, msg.logid, msg.kind),
            (result.msgid, 1, 1001, 2, 1001, 9, b"hello \xff", "trace-1", pb.C2C),
        )
        self.assertEqual(msg.send_time_ms, int(self.stack.clock.seconds() * 1000))
        self.assertEqual(self.b.ack([msg.msgid]).code, Code.OK)
        self.assertEqual(list(self.b.pull().messages), [])
        stats = self.stack.logic.stats.totals()
        self.assertEqual((stats["accepted"], stats["pushed"], stats["acked"]), (1, 1, 1))

    def test_server_logid_when_none_given(self) -> None:
        result = self.a.c2c(2)
        self.assertEqual(result.logid, format(result.msgid, "x"))

    def test_bad_logid(self) -> None:
        self.assertEqual(self.a.c2c(2, logid="has space").code, Code.BAD_REQUEST)
        self.assertEqual(self.a.c2c(2, logid="x" * 65).code, Code.BAD_REQUEST)

    def test_c2c_checks(self) -> None:
        self.assertEqual(self.a.c2c(2, to_appcode=4242).code, Code.UNKNOWN_APPCODE)
        self.assertEqual(self.a.c2c(0).code, Code.BAD_REQUEST)
        self.assertEqual(self.a.c2c(1).code, Code.BAD_REQUEST)  # oneself
        self.assertEqual(self.a.c2c(2, b"x" * 65001).code, Code.BAD_REQUEST)
        self.assertEqual(self.a.c2c(2, b"x" * 65000).code, Code.OK)
        self.assertEqual(self.a.c2c(2, client_msg_id="c" * 129).code, Code.BAD_REQUEST)
        # To one's own other appcode is allowed.
        self.assertEqual(self.a.c2c(1, to_appcode=1002).code, Code.OK)

    def test_repush_on_ack_timeout(self) -> None:
        result = self.a.c2c(2)
        clock = self.stack.clock
        self.assertEqual(len(self.b.pushed_messages()), 1)
        clock.advance(9.9)
        self.assertEqual(self.b.pushed_messages(), [])
        pushes = []
        for _ in range(5):
            clock.advance(10)
            pushes += self.b.pushed_messages()
        # Three more times, on the same connection, then no more.
        self.assertEqual([m.msgid for m in pushes], [result.msgid] * 3)
        self.assertEqual(self.stack.logic.stats.totals()["repushed"], 3)
        self.assertEqual(clock.getDelayedCalls().__len__(), 2)  # only the two idle timers
        # ... and it stays pending.
        self.assertEqual([m.msgid for m in self.b.pull().messages], [result.msgid])

    def test_ack_stops_repush(self) -> None:
        result = self.a.c2c(2)
        self.b.received()
        self.b.ack([result.msgid])
        self.stack.clock.advance(60)
        self.assertEqual(self.b.received(), [])

    def test_repush_sequenceids_increase(self) -> None:
        self.a.c2c(2)
        first = self.b.received()[0].sequenceid
        self.stack.clock.advance(10)
        second = self.b.received()[0].sequenceid
        self.assertEqual(second, first + 1)

    def test_close_leaves_pending(self) -> None:
        result = self.a.c2c(2)
        self.b.proto.connectionLost(None)
        self.stack.clock.advance(60)
        b2 = self.stack.connect()
        response = b2.login(2)
        self.assertEqual(response.offline_count, 1)
        self.assertEqual(b2.received(), [])  # nothing is pushed at LOGIN
        self.assertEqual([m.msgid for m in b2.pull().messages], [result.msgid])

    def test_offline_then_pull(self) -> None:
        results = [self.a.c2c(3, b"m%d" % i) for i in range(3)]
        c = self.stack.connect()
        self.assertEqual(c.login(3).offline_count, 3)
        page = c.pull()
        self.assertEqual([m.msgid for m in page.messages], [r.msgid for r in results])
        self.assertEqual([m.content for m in page.messages], [b"m0", b"m1", b"m2"])
        self.assertFalse(page.has_more)
        self.assertEqual(self.stack.logic.stats.totals()["stored"], 3)
        self.assertEqual(self.stack.logic.stats.totals()["pulled"], 3)

    def test_dedup_by_client_msg_id(self) -> None:
        first = self.a.c2c(2, b"once", client_msg_id="cm-1")
        again = self.a.c2c(2, b"other content", client_msg_id="cm-1", logid="other")
        self.assertEqual((again.code, again.msgid, again.logid), (Code.OK, first.msgid, first.logid))
        self.assertEqual(len(self.b.pushed_messages()), 1)
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 1)
        # The same client_msg_id from another sender is another message.
        self.assertNotEqual(self.b.c2c(1, client_msg_id="cm-1").msgid, first.msgid)

    def test_ack_ignores_foreign_and_unknown(self) -> None:
        to_b = self.a.c2c(2)
        c = self.stack.login(3)
        self.assertEqual(c.ack([to_b.msgid, 12345]).code, Code.OK)
        self.assertEqual([m.msgid for m in self.b.pull().messages], [to_b.msgid])

    def test_ack_too_many(self) -> None:
        self.assertEqual(self.b.ack(list(range(1, 1002))).code, Code.BAD_REQUEST)
        self.assertEqual(self.b.ack(list(range(1, 1001))).code, Code.OK)

    def test_sender_answered_before_push_is_durable_first(self) -> None:
        # Hold the store: no answer and no push until the write is durable.
        held: list[Deferred[object]] = []
        real = self.stack.store.store

        def slow(batch: object) -> Deferred[object]:
            d: Deferred[object] = Deferred()
            held.append(d)
            return d.addCallback(lambda _: real(batch))

        self.stack.store.store = slow  # type: ignore[method-assign]
        self.a.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x"))
        self.assertEqual(self.a.received(), [])
        self.assertEqual(self.b.received(), [])
        held[0].callback(None)
        self.assertEqual(len(self.a.received()), 1)
        self.assertEqual(len(self.b.received()), 1)


    def test_push_is_handed_over_before_the_sender_is_answered(self) -> None:
        """Durable, then the push, then the sender's Result: a node that dies
        in between has answered nothing, so the sender resends and the resend
        re-delivers (LogicService._c2c_stored)."""
        held: list[Deferred[object]] = []
        real = self.stack.store.store

        def later(batch: object) -> Deferred[object]:  # as the real stores answer
            d: Deferred[object] = Deferred()
            held.append(d)
            return d.addCallback(lambda _: real(batch))

        self.stack.store.store = later  # type: ignore[method-assign]
        sender_bytes_at_push: list[int] = []
        write = self.b.transport.write

        def spy(data: bytes) -> None:
            sender_bytes_at_push.append(len(self.a.transport.value()))
            write(data)

        self.b.transport.write = spy  # type: ignore[method-assign]
        self.a.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x"))
        held[0].callback(None)
        [answer] = self.a.received()
        self.assertEqual((answer.cmd, len(self.b.pushed_messages())), (Cmd.C2C | 0x80, 1))
        self.assertEqual(sender_bytes_at_push, [0])


class S2CTests(SynchronousTestCase):
    def test_push_online_and_offline(self) -> None:
        stack = Stack()
        b = stack.login(2)
        push = stack.logic.push_s2c
        results = self.successResultOf(Deferred.fromCoroutine(push([
            PushItem(2, 1001, 5, b"online", "L-1"),
            PushItem(3, 1001, 5, b"offline"),
            PushItem(3, 9999, 5, b"bad appcode"),
            PushItem(0, 1001, 5, b"bad uid"),
        ])))
        online, offline, bad_app, bad_uid = results
        assert isinstance(online, PushOutcome) and isinstance(offline, PushOutcome)
        self.assertEqual((online.online, online.logid), (True, "L-1"))
        self.assertFalse(offline.online)
        self.assertIsInstance(bad_app, errors.UnknownAppcode)
        self.assertIsInstance(bad_uid, errors.BadRequest)
        [frame] = b.received()
        self.assertEqual((frame.cmd, frame.uid, frame.appcode, frame.msgtype), (Cmd.S2C, 2, 1001, 5))
        msg = pb.Message()
        msg.ParseFromString(frame.body)
        self.assertEqual((msg.kind, msg.from_uid, msg.content), (pb.S2C, 0, b"online"))
        routes = stack.logic.stats.by_route
        self.assertEqual(routes[(1001, 5, Kind.S2C)][:2], [2, 1])  # accepted, pushed


class S2CBatchLookupTests(SynchronousTestCase):
    """A push batch asks the session store once for all its recipients not on
    this node; only those online elsewhere go the per-message way."""

    def setUp(self) -> None:
        self.stack = Stack()
        self.b = self.stack.login(2)
        sessions = self.stack.sessions
        self.lookups: list[tuple[int, int]] = []
        self.batches: list[list[tuple[int, int]]] = []
        real_lookup, real_many = sessions.lookup, sessions.lookup_many

        def lookup(uid: int, appcode: int) -> Deferred[object]:
            self.lookups.append((uid, appcode))
            return real_lookup(uid, appcode)

        def lookup_many(keys: list[tuple[int, int]]) -> Deferred[object]:
            self.batches.append(list(keys))
            return real_many(keys)

        sessions.lookup = lookup  # type: ignore[method-assign]
        sessions.lookup_many = lookup_many  # type: ignore[method-assign]

    def push(self, uids: list[int]) -> list[object]:
        items = [PushItem(uid, 1001, 5, b"x") for uid in uids]
        return self.successResultOf(Deferred.fromCoroutine(self.stack.logic.push_s2c(items)))

    def test_offline_recipients_in_one_lookup(self) -> None:
        results = self.push([2, 3, 4, 5])
        self.assertEqual([r.online for r in results], [True, False, False, False])  # type: ignore[attr-defined]
        self.assertEqual(self.batches, [[(3, 1001), (4, 1001), (5, 1001)]])
        self.assertEqual(self.lookups, [])
        self.assertEqual(self.stack.logic.stats.by_route[(1001, 5, Kind.S2C)][:2], [4, 1])
        self.assertEqual(self.stack.logic.stats.totals()["stored"], 3)
        self.assertEqual(len(self.b.received()), 1)

    def test_session_store_down_falls_back_to_each(self) -> None:
        self.stack.sessions.lookup_many = (  # type: ignore[method-assign]
            lambda keys: fail(StoreUnavailable("down")))
        results = self.push([3, 4])
        self.assertEqual([r.online for r in results], [False, False])  # type: ignore[attr-defined]
        self.assertEqual(self.lookups, [(3, 1001), (4, 1001)])
        self.assertEqual(self.stack.logic.stats.totals()["stored"], 2)


class C2STests(SynchronousTestCase):
    def test_route_to_topic(self) -> None:
        stack = Stack()
        a = stack.login(1)
        got: list[tuple[str, bytes, str]] = []
        stack.bus.subscribe("gps", lambda *e: got.append(e))
        result = a.request(Cmd.C2S, pb.C2SRequest(content=b"31.2,121.4", logid="gps-1"), msgtype=1)
        self.assertEqual((result.code, result.logid), (Code.OK, "gps-1"))
        [(topic, payload, logid)] = got
        self.assertEqual((topic, logid), ("gps", "gps-1"))
        msg = pb.Message()
        msg.ParseFromString(payload)
        self.assertEqual((msg.kind, msg.from_uid, msg.from_appcode, msg.msgtype, msg.content,
                          msg.msgid), (pb.C2S, 1, 1001, 1, b"31.2,121.4", result.msgid))
        order = a.request(Cmd.C2S, pb.C2SRequest(content=b"{}"), msgtype=2)
        self.assertEqual(order.code, Code.OK)
        self.assertEqual(len(stack.bus.topics["order-events"]), 1)

    def test_no_route(self) -> None:
        stack = Stack()
        a = stack.login(1)
        self.assertEqual(a.request(Cmd.C2S, pb.C2SRequest(content=b"x"), msgtype=9).code,
                         Code.NO_ROUTE)

    def test_c2s_too_big(self) -> None:
        stack = Stack()
        a = stack.login(1)
        self.assertEqual(a.request(Cmd.C2S, pb.C2SRequest(content=b"x" * 65001), msgtype=1).code,
                         Code.BAD_REQUEST)


class ConfigRoutesTests(SynchronousTestCase):
    def test_other_user_system(self) -> None:
        config = parse_config("""
[apps.2001]
usersystem = "customers"
secret = "customer-secret"
[apps.3001]
usersystem = "merchants"
secret = "merchant-secret"
""")
        stack = Stack(config)
        customer = stack.login(5, 2001)
        merchant = stack.login(5, 3001)
        m = customer.c2c(5, b"hello merchant 5", to_appcode=3001).msgid
        self.assertEqual([x.from_appcode for x in merchant.pushed_messages()], [2001])
        # The same uid in two user systems is two people: each sees it once.
        self.assertEqual([x.msgid for x in customer.history().messages], [m])
        self.assertEqual([x.msgid for x in merchant.history().messages], [m])

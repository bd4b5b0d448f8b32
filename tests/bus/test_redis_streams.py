"""The Redis Streams bus on a real Redis: the exact entries, MAXLEN trimming,
one command per batch, failures that never hang; and the batching and its
deadline on a fake connection and a Clock.

(One test flushes the server's script cache, ``SCRIPT FLUSH``: every user of a
script here loads it again on ``NOSCRIPT``.)
"""

from __future__ import annotations

import hashlib
import time
from typing import cast

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, ITransport
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus.envelope import CONTENT_TYPE
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.redis_streams import MAX_BATCH, MAX_BATCH_BYTES, XADD_BATCH, RedisStreamsBus
from daojia_msg.config import BusConfig, parse_redis_url
from daojia_msg.core.errors import BusTimeout, BusUnavailable
from tests.bus.helpers import unavailable
from tests.bus.redis_streams_helpers import (
    NOSCRIPT,
    QUICK,
    TIMEOUT,
    ControlledProxyFactory,
    RawRedis,
    RedisTestCase,
    Silent,
    fake_bus,
    log_events,
    message,
    xadd_args,
)
from tests.servers import closed_port, listen


class PublishTests(RedisTestCase):
    async def test_provides_interface(self) -> None:
        bus = await self.open_bus()
        self.assertTrue(verifyObject(IMessageBus, bus))

    async def test_entry_holds_exact_bytes_and_logid(self) -> None:
        bus = await self.open_bus()
        payload = message()
        with self.assertRaises(UnicodeDecodeError):
            payload.decode()
        numeric = b"12345"  # would come back as an int with convertNumbers
        await bus.publish(self.topic, payload, "log-1")
        await bus.publish(self.topic, numeric, "42")
        await bus.publish(self.topic, b"", "")
        entries = await self.entries(self.topic)
        self.assertEqual([fields for _, fields in entries], [
            {b"msg": payload, b"logid": b"log-1"},
            {b"msg": numeric, b"logid": b"42"},
            {b"msg": b"", b"logid": b""},
        ])
        # Field order as docs/operations.md §7 has it: msg, then logid.
        flat = (await self.raw.execute_command("XRANGE", self.topic, "-", "+"))[0][1]
        self.assertEqual(flat[::2], [b"msg", b"logid"])

    async def test_another_media_type_is_a_third_field(self) -> None:
        bus = await self.open_bus()
        await bus.publish(self.topic, b'{"offer_id":"1"}', "1", "application/json")
        flat = (await self.raw.execute_command("XRANGE", self.topic, "-", "+"))[0][1]
        self.assertEqual(flat, [b"msg", b'{"offer_id":"1"}', b"logid", b"1",
                                b"content_type", b"application/json"])

    async def test_maxlen_trims_approximately(self) -> None:
        bus = await self.open_bus(stream_maxlen=10)
        count = 1000
        await gatherResults([bus.publish(self.topic, message(n), f"l{n}") for n in range(count)])
        # "~" trims whole stream nodes only: at most one node over the limit stays.
        _, node = await self.raw.execute_command("CONFIG", "GET", "stream-node-max-entries")
        length = await self.xlen(self.topic)
        self.assertGreaterEqual(length, 10)
        self.assertLessEqual(length, 10 + int(node))
        self.assertLess(length, count // 4)
        entries = await self.entries(self.topic)
        self.assertEqual(entries[-1][1][b"logid"], f"l{count - 1}".encode())

    async def test_one_turn_is_one_batch(self) -> None:
        bus = await self.open_bus(max_batch=1000)
        count = 500
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(count)]
        self.assertEqual(bus.batches, 0)  # nothing sent before the turn ends
        self.assertEqual(await gatherResults(ds), [None] * count)
        self.assertEqual((bus.batches, bus.commands), (1, 1))
        self.assertEqual(bus.largest_batch, count)
        self.assertEqual(await self.logids(self.topic), [f"l{n}".encode() for n in range(count)])

    async def test_a_batch_is_one_command_on_the_wire(self) -> None:
        """300 entries to three streams: one EVALSHA reaches Redis, no XADD."""
        bus, proxy, _ = await self.proxied()
        await bus.publish(self.topic, message(), "warm-up")  # EVAL, if Redis lacked it
        del proxy.commands[:]
        topics = [self.topic, self.stream(), self.stream()]
        ds = [bus.publish(topics[n % 3], message(n), f"l{n}") for n in range(300)]
        await gatherResults(ds)
        self.assertEqual([c[0].upper() for c in proxy.commands], [b"EVALSHA"])
        command = proxy.commands[0]
        self.assertEqual(command[1:3], [XADD_BATCH.sha.encode(), b"300"])
        self.assertEqual(command[3:303], [topics[n % 3].encode() for n in range(300)])
        self.assertEqual(command[303], b"1000000")  # bus.stream_maxlen
        self.assertEqual(len(command), 304 + 3 * 300)
        for i, topic in enumerate(topics):
            expected = [b"warm-up"] if i == 0 else []
            expected += [f"l{n}".encode() for n in range(i, 300, 3)]
            self.assertEqual(await self.logids(topic), expected)

    async def test_batches_are_bounded(self) -> None:
        self.assertEqual(RedisStreamsBus(self.url, BusConfig(), reactor).max_batch, MAX_BATCH)
        bus = await self.open_bus(max_batch=100)
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(450)]
        await gatherResults(ds)
        self.assertEqual((bus.batches, bus.commands), (5, 5))
        self.assertEqual(bus.largest_batch, 100)
        self.assertEqual(await self.logids(self.topic), [f"l{n}".encode() for n in range(450)])

    async def test_order_within_each_stream_across_batches(self) -> None:
        """Entries land in publish order in each stream, over batches and
        topics, whatever bytes they hold."""
        bus = await self.open_bus(max_batch=7)
        topics = [self.topic, self.stream(), self.stream()]
        payloads = [b"\r\n-ERR x\r\n", b"$3\r\nabc", b"*1\r\n", b"\x00", message()]
        sent: dict[str, list[tuple[bytes, bytes]]] = {t: [] for t in topics}
        ds = []
        for n in range(100):
            topic, payload = topics[(n * n) % 3], payloads[n % 5] + str(n).encode()
            sent[topic].append((payload, f"l{n}".encode()))
            ds.append(bus.publish(topic, payload, f"l{n}"))
        await gatherResults(ds)
        self.assertEqual(bus.batches, 15)
        for topic in topics:
            entries = await self.entries(topic)
            self.assertEqual([(f[b"msg"], f[b"logid"]) for _, f in entries], sent[topic])
            self.assertEqual([list(f) for _, f in entries], [[b"msg", b"logid"]] * len(entries))

    async def test_noscript_loads_the_script_with_eval(self) -> None:
        """After SCRIPT FLUSH (a restart, a failover) the batch goes again as EVAL."""
        bus, proxy, _ = await self.proxied()
        await bus.publish(self.topic, message(), "first")
        await self.raw.execute_command("SCRIPT", "FLUSH")
        del proxy.commands[:]
        commands = bus.commands
        events = log_events(self)
        await gatherResults([bus.publish(self.topic, message(n), f"l{n}") for n in range(3)])
        self.assertEqual([c[0].upper() for c in proxy.commands], [b"EVALSHA", b"EVAL"])
        self.assertEqual(proxy.commands[1][1], XADD_BATCH.source.encode())
        self.assertEqual(proxy.commands[0][2:], proxy.commands[1][2:])
        self.assertEqual(bus.commands, commands + 2)
        self.assertEqual(await self.logids(self.topic), [b"first", b"l0", b"l1", b"l2"])
        self.assertTrue([e for e in events if "does not know the XADD script" in e["log_format"]])
        # Loaded again: EVALSHA alone from now on.
        del proxy.commands[:]
        await bus.publish(self.topic, message(), "again")
        self.assertEqual([c[0].upper() for c in proxy.commands], [b"EVALSHA"])

    async def test_script_answers_entry_ids_as_status_replies(self) -> None:
        """One line per entry: txredisapi's pure-Python parser (without
        hiredis) reads each bulk string of a reply in a reactor turn of its
        own, a status line at once. Checked on the wire."""
        not_a_stream = self.stream()
        await self.raw.execute_command("SET", not_a_stream, "x")
        u = parse_redis_url(self.url)
        wire = RawRedis()
        await connectProtocol(TCP4ClientEndpoint(reactor, u.host, u.port), wire)
        self.addCleanup(cast(ITransport, wire.transport).loseConnection)
        eval_ = [b"EVAL", XADD_BATCH.source.encode(), b"3", self.topic.encode(),
                 not_a_stream.encode(), self.topic.encode(), b"100",
                 b"a", b"la", b"", b"b", b"lb", b"", b"c", b"lc", b""]
        auth = [[b"AUTH", u.password.encode()]] if u.password else []
        reply = await wire.send(*auth, [b"SELECT", str(u.db).encode()], eval_)
        ids = [entry_id for entry_id, _ in await self.entries(self.topic)]
        self.assertEqual(reply.split(b"\r\n")[len(auth):], [
            b"+OK", b"*3", b"+" + ids[0],
            b"-WRONGTYPE Operation against a key holding the wrong kind of value",
            b"+" + ids[1], b"+PONG", b""])

    async def test_publishes_during_a_round_trip_share_the_next_batch(self) -> None:
        bus = await self.open_bus()
        first = bus.publish(self.topic, message(), "first")
        later: list[Deferred[None]] = []
        seen: list[int] = []

        def while_in_flight() -> None:
            # Runs right after the flush (scheduled before it, same delay).
            seen.append(bus.batches)
            later.extend(bus.publish(self.topic, message(n), f"l{n}") for n in range(80))

        reactor.callLater(0, while_in_flight)
        await first
        await gatherResults(later)
        self.assertEqual(seen, [1])
        self.assertEqual(bus.batches, 2)
        self.assertEqual(bus.largest_batch, 80)
        self.assertEqual(await self.xlen(self.topic), 81)

    async def test_error_reply_fails_only_its_caller(self) -> None:
        bus = await self.open_bus()
        not_a_stream = self.stream()
        await self.raw.execute_command("SET", not_a_stream, "x")
        events = log_events(self)
        topics = [self.topic, not_a_stream, self.topic, not_a_stream, self.topic]
        ds = [bus.publish(topic, message(n), f"l{n}") for n, topic in enumerate(topics)]
        for n, d in enumerate(ds):
            if n % 2:
                error = await unavailable(self, d)
                self.assertIn("WRONGTYPE", str(error))
                self.assertIn(bus.where, str(error))
            else:
                await d
        self.assertEqual((bus.batches, bus.commands), (1, 1))
        self.assertEqual(await self.logids(self.topic), [b"l0", b"l2", b"l4"])
        self.assertEqual(await self.raw.execute_command("GET", not_a_stream), b"x")
        warned = [e for e in events if e.get("failed") is not None]
        self.assertEqual([(e["failed"], e["count"]) for e in warned], [(2, 5)])

    async def test_not_started_or_stopped_fails(self) -> None:
        bus = RedisStreamsBus(self.url, BusConfig(url=self.url), reactor)
        error = await unavailable(self, bus.publish(self.topic, b"x", "l"))
        self.assertIn("not connected", str(error))
        bus = await self.open_bus()
        await bus.stop()
        self.failureResultOf(bus.publish(self.topic, b"x", "l"), BusUnavailable)
        self.assertEqual(await self.xlen(self.topic), 0)

    async def test_stop_fails_queued_publishes(self) -> None:
        bus = await self.open_bus()
        d = bus.publish(self.topic, b"x", "l")
        await bus.stop()
        self.assertIn("stopped", str(self.failureResultOf(d, BusUnavailable).value))


class UnavailableTests(RedisTestCase):
    """Every failure is a prompt :class:`BusUnavailable`, never a hang."""

    async def test_start_on_closed_port(self) -> None:
        port = await closed_port(self)
        bus = RedisStreamsBus(f"redis://127.0.0.1:{port}/15", BusConfig(), reactor,
                              reply_timeout_s=TIMEOUT)
        started = time.monotonic()
        error = await unavailable(self, bus.start())
        self.assertTrue(str(error).startswith(f"cannot connect to Redis at 127.0.0.1:{port}/15"),
                        str(error))
        self.assertLess(time.monotonic() - started, QUICK)
        await bus.stop()

    async def test_start_on_silent_server(self) -> None:
        _, port = listen(self, ServerFactory.forProtocol(Silent))
        bus = RedisStreamsBus(f"redis://127.0.0.1:{port}/0", BusConfig(), reactor,
                              reply_timeout_s=TIMEOUT)
        started = time.monotonic()
        await unavailable(self, bus.start())
        self.assertLess(time.monotonic() - started, QUICK)

    async def proxied_bus(self) -> tuple[RedisStreamsBus, ControlledProxyFactory, IListeningPort]:
        bus, proxy, listening = await self.proxied(reply_timeout_s=TIMEOUT)
        await bus.publish(self.topic, message(), "before")
        return bus, proxy, listening

    async def test_server_went_away(self) -> None:
        bus, proxy, listening = await self.proxied_bus()
        await cast(Deferred[None], listening.stopListening())
        for server in proxy.servers:
            server.transport.loseConnection()
        started = time.monotonic()
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(50)]
        for d in ds:
            # Refused, or, for a batch written before the close arrived,
            # TIMEOUT: it may have been published (here it was not).
            await self.assertFailure(d, BusUnavailable, BusTimeout)
        # And later ones at once, while it has no connection.
        await unavailable(self, bus.publish(self.topic, message(), "again"))
        self.assertLess(time.monotonic() - started, QUICK)
        self.assertEqual(await self.xlen(self.topic), 1)

    async def test_server_goes_silent(self) -> None:
        """The reply timeout fails the batch (and drops the connection)."""
        bus, proxy, _ = await self.proxied_bus()
        proxy.frozen = True
        started = time.monotonic()
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(50)]
        for d in ds:
            error = await self.assertFailure(d, BusTimeout)  # written: it may have run
            self.assertIn("no reply within", str(error))  # the batch deadline
        self.assertLess(time.monotonic() - started, QUICK)

    async def test_connection_that_gave_up_is_replaced(self) -> None:
        """txredisapi stops reconnecting for good when SELECT fails on a
        reconnect; the bus then starts a new connection."""
        bus = await self.open_bus()
        gone = bus._conn
        await gone.disconnect()  # the state txredisapi leaves behind: stopped, empty
        error = await unavailable(self, bus.publish(self.topic, b"x", "l"))
        self.assertIn("not connected", str(error))
        self.assertIsNot(bus._conn, gone)
        self.assertEqual(bus.reconnects, 0)
        await bus._conn.ping()  # waits for the new connection
        await bus.publish(self.topic, message(), "after")
        self.assertEqual(await self.xlen(self.topic), 1)
        self.assertEqual(bus.reconnects, 1)  # msgplatform_bus_reconnects_total


class BatchTests(SynchronousTestCase):
    """One command per batch, its replies, NOSCRIPT: on a fake connection."""

    def test_script_is_the_one_redis_runs(self) -> None:
        self.assertEqual(XADD_BATCH.sha, hashlib.sha1(XADD_BATCH.source.encode()).hexdigest())
        self.assertIn("redis.pcall('XADD', topic, 'MAXLEN', '~', maxlen, '*',", XADD_BATCH.source)
        self.assertIn("'msg', ARGV[at], 'logid', ARGV[at + 1])", XADD_BATCH.source)
        self.assertIn("'msg', ARGV[at], 'logid', ARGV[at + 1], 'content_type', ARGV[at + 2])",
                      XADD_BATCH.source)

    def test_the_media_type_goes_with_its_entry(self) -> None:
        """Empty for the envelope's protobuf (no field), else the media type."""
        bus, clock, redis = fake_bus()
        a = bus.publish("offers", b"{}", "l1", "application/json")
        b = bus.publish("gps", b"\xff", "l2", CONTENT_TYPE)
        clock.advance(0)
        self.assertEqual(redis.commands, [(b"EVALSHA", XADD_BATCH.sha.encode(), *xadd_args(
            (b"offers", b"{}", b"l1", b"application/json"), (b"gps", b"\xff", b"l2", b"")))])
        redis.replies[0].callback(["1-0", "1-1"])
        self.assertIsNone(self.successResultOf(a))
        self.assertIsNone(self.successResultOf(b))

    def test_a_turn_is_one_evalsha(self) -> None:
        bus, clock, redis = fake_bus()
        a = bus.publish("gps", b"\xff1", "l1")
        b = bus.publish("chat", b"", "")
        c = bus.publish("gps", b"3", "l3")
        self.assertEqual(redis.commands, [])
        clock.advance(0)
        self.assertEqual(redis.commands, [(b"EVALSHA", XADD_BATCH.sha.encode(), *xadd_args(
            (b"gps", b"\xff1", b"l1"), (b"chat", b"", b""), (b"gps", b"3", b"l3")))])
        for d in (a, b, c):
            self.assertNoResult(d)
        redis.replies[0].callback(["1-0", "1-1", "1-2"])
        for d in (a, b, c):
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual((bus.batches, bus.commands, bus.largest_batch), (1, 1, 3))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_an_error_entry_fails_only_its_caller(self) -> None:
        events = log_events(self)
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", f"l{n}") for n in range(3)]
        clock.advance(0)
        wrongtype = txredisapi.ResponseError(
            "WRONGTYPE Operation against a key holding the wrong kind of value")
        redis.replies[0].callback(["1-0", wrongtype, "1-1"])
        self.successResultOf(ds[0])
        error = self.failureResultOf(ds[1], BusUnavailable).value
        self.assertEqual(str(error), "redis XADD to 127.0.0.1:1/15: " + str(wrongtype))
        self.successResultOf(ds[2])
        [warned] = [e for e in events if e.get("failed") is not None]
        self.assertEqual((warned["failed"], warned["count"]), (1, 3))

    def test_noscript_sends_the_batch_again_as_eval(self) -> None:
        events = log_events(self)
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", f"l{n}") for n in range(2)]
        clock.advance(0)
        redis.replies[0].errback(NOSCRIPT)
        args = xadd_args((b"t", b"x", b"l0"), (b"t", b"x", b"l1"))
        self.assertEqual(redis.commands[1], (b"EVAL", XADD_BATCH.source.encode(), *args))
        for d in ds:
            self.assertNoResult(d)
        redis.replies[1].callback(["1-0", "1-1"])
        for d in ds:
            self.successResultOf(d)
        self.assertEqual((bus.batches, bus.commands), (1, 2))
        self.assertTrue([e for e in events if "does not know the XADD script" in e["log_format"]])

    def test_other_error_of_the_command_fails_the_batch(self) -> None:
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", f"l{n}") for n in range(2)]
        clock.advance(0)
        redis.replies[0].errback(txredisapi.ResponseError("BUSY Redis is busy running a script"))
        self.assertEqual(len(redis.commands), 1)  # no EVAL
        for d in ds:
            self.assertIn("BUSY", str(self.failureResultOf(d, BusUnavailable).value))

    def test_a_reply_of_the_wrong_shape_fails_the_batch(self) -> None:
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", f"l{n}") for n in range(2)]
        clock.advance(0)
        redis.replies[0].callback(["1-0"])
        for d in ds:
            self.assertIn("answered", str(self.failureResultOf(d, BusUnavailable).value))

    def test_one_batch_in_flight_the_next_grows_meanwhile(self) -> None:
        bus, clock, redis = fake_bus()
        first = bus.publish("t", b"x", "l0")
        clock.advance(0)
        later = [bus.publish("t", b"x", f"l{n}") for n in range(1, 5)]
        clock.advance(0)
        self.assertEqual(len(redis.commands), 1)
        redis.replies[0].callback(["1-0"])
        self.successResultOf(first)
        # Sent the moment the first one had its reply.
        self.assertEqual(redis.commands[1][2], 4)
        redis.replies[1].callback(["1-1", "1-2", "1-3", "1-4"])
        for d in later:
            self.successResultOf(d)
        self.assertEqual((bus.batches, bus.largest_batch), (2, 4))

    def test_batches_are_capped_at_max_batch(self) -> None:
        bus, clock, redis = fake_bus(max_batch=2)
        ds = [bus.publish("t", b"x", f"l{n}") for n in range(5)]
        clock.advance(0)
        for sizes in ([2], [2, 2], [2, 2, 1]):
            self.assertEqual([c[2] for c in redis.commands], sizes)
            redis.replies[-1].callback([b"1-0"] * sizes[-1])
        for d in ds:
            self.successResultOf(d)
        self.assertEqual([c[3:3 + c[2]] for c in redis.commands], [(b"t", b"t")] * 2 + [(b"t",)])

    def test_batches_are_capped_in_payload_bytes(self) -> None:
        """A batch takes no more entries once its payloads reach the cap
        (one entry goes on its own, however big)."""
        bus, clock, redis = fake_bus(max_batch_bytes=10)
        ds = [bus.publish("t", b"x" * size, f"l{n}") for n, size in enumerate([4, 4, 4, 30, 1])]
        clock.advance(0)
        for sizes in ([3], [3, 1], [3, 1, 1]):
            self.assertEqual([c[2] for c in redis.commands], sizes)
            redis.replies[-1].callback([b"1-0"] * sizes[-1])
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(MAX_BATCH_BYTES, 1 << 20)

    def test_frames_already_answered_are_not_sent(self) -> None:
        """A frame the router timed out (cancelled) is left out of the batch."""
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", f"l{n}") for n in range(3)]
        ds[1].cancel()
        self.failureResultOf(ds[1])
        clock.advance(0)
        self.assertEqual(redis.commands[0][2:],
                         xadd_args((b"t", b"x", b"l0"), (b"t", b"x", b"l2")))

    def test_not_connected_fails_at_once(self) -> None:
        bus, clock, redis = fake_bus(connected=False)
        d = bus.publish("t", b"x", "l")
        clock.advance(0)
        self.assertIn("not connected", str(self.failureResultOf(d, BusUnavailable).value))
        self.assertEqual(redis.commands, [])


class DeadlineTests(SynchronousTestCase):
    """The backstop deadline and the bounded queue, on a Clock."""

    def test_deadline_when_no_reply_ever_comes(self) -> None:
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", "l") for _ in range(3)]
        clock.advance(0)
        self.assertEqual((bus.batches, len(redis.commands)), (1, 1))
        clock.advance(TIMEOUT * 1.5 - 0.01)
        for d in ds:
            self.assertNoResult(d)
        clock.advance(0.01)
        for d in ds:  # the command went out: Redis may have run it
            error = self.failureResultOf(d, BusTimeout).value
            self.assertIn("no reply within 0.3 s", str(error))
        self.assertTrue(redis.replies[0].called)  # cancelled
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_connection_lost_after_the_command_went_out(self) -> None:
        """Redis may have run the batch: TIMEOUT, not UNAVAILABLE (a client
        resends after UNAVAILABLE, and that would publish it twice)."""
        bus, clock, redis = fake_bus()
        ds = [bus.publish("t", b"x", "l") for _ in range(2)]
        clock.advance(0)
        redis.replies[0].errback(txredisapi.ConnectionError("Lost connection"))
        for d in ds:
            error = self.failureResultOf(d, BusTimeout).value
            self.assertIn("Lost connection", str(error))
        # An error reply: Redis did not run it, a resend is safe.
        d = bus.publish("t", b"x", "l")
        clock.advance(0)
        redis.replies[1].errback(txredisapi.ResponseError("BUSY Redis is busy running a script"))
        self.failureResultOf(d, BusUnavailable)

    def test_deadline_covers_the_eval_after_noscript(self) -> None:
        bus, clock, redis = fake_bus()
        d = bus.publish("t", b"x", "l")
        clock.advance(0)
        clock.advance(TIMEOUT)
        redis.replies[0].errback(NOSCRIPT)
        clock.advance(TIMEOUT * 0.5)
        self.assertIn("no reply within", str(self.failureResultOf(d, BusTimeout).value))
        self.assertTrue(redis.replies[1].called)  # cancelled

    def test_a_stall_of_the_node_is_not_a_timeout(self) -> None:
        """The timer ran late (the node was busy): the reply read after it
        counts, and the connection stays."""
        bus, clock, redis = fake_bus()
        d = bus.publish("t", b"x", "l")
        clock.advance(0)
        clock.advance(3 * bus.deadline)
        self.assertNoResult(d)
        self.assertFalse(redis.replies[0].called)
        redis.replies[0].callback([b"1-0"])
        self.assertIsNone(self.successResultOf(d))

    def test_queue_is_bounded(self) -> None:
        self.assertEqual(fake_bus()[0].max_queued, 2 * BusConfig().max_pending)
        bus, clock, _ = fake_bus(BusConfig(max_pending=10), max_batch=2)
        first = bus.publish("t", b"x", "l")
        clock.advance(0)  # in flight now
        queued = [bus.publish("t", b"x", "l") for _ in range(bus.max_queued)]
        self.assertEqual(bus.max_queued, 40)
        refused = bus.publish("t", b"x", "l")
        self.assertIn("already wait", str(self.failureResultOf(refused, BusUnavailable).value))
        for d in [first, *queued]:
            self.assertNoResult(d)
        self.successResultOf(bus.stop())
        for d in queued:
            self.failureResultOf(d, BusUnavailable)
        clock.advance(bus.deadline)  # the one in flight: its own deadline
        self.failureResultOf(first, BusTimeout)

    def test_reply_timeout_fits_in_the_publish_timeout(self) -> None:
        bus = RedisStreamsBus("redis://h/1", BusConfig(publish_timeout_s=0.6), Clock())
        self.assertAlmostEqual(bus.deadline, 0.6)
        bus = RedisStreamsBus("redis://h/1", BusConfig(), Clock())
        self.assertEqual((bus.reply_timeout, bus.deadline), (2.0, 3.0))

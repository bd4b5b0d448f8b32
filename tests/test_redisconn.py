"""The Redis wrapper's own path: commands written straight to an idle pool
connection, one reply-timeout timer for all of them, RESP encoding, and Lua
scripts loaded on NOSCRIPT. Deterministic: a fake pool around a real
txredisapi protocol on a StringTransport, and a Clock. (Failures on a real
server and the pool's own path are in tests.store.test_redis.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.redisconn import (
    RECONNECT_INITIAL_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    Redis,
    Script,
    encode_command,
    execute,
    fast_reconnect,
)

TIMEOUT = 0.2


def connection() -> Any:
    conn = txredisapi.HiredisProtocol(charset=None)
    conn.transport = StringTransport()
    conn.connected = 1
    return conn


class FakePool:
    """txredisapi's pool as :class:`Redis` sees it; ``execute_command`` (its
    slow path) records the commands it was given."""

    def __init__(self, *conns: Any) -> None:
        self._factory = SimpleNamespace(size=len(conns),
                                        connectionQueue=SimpleNamespace(pending=list(conns)))
        self.slow: list[tuple[Any, ...]] = []
        self.slow_replies: list[Deferred[Any]] = []

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.slow.append(args)
        self.slow_replies.append(Deferred())
        return self.slow_replies[-1]


class DirectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.conn = connection()
        self.pool = FakePool(self.conn)
        self.redis = Redis(self.pool, "p:", TIMEOUT, self.clock)

    def test_written_straight_to_an_idle_connection(self) -> None:
        d = self.redis.call("HGET", "p:sess:1", 10)
        self.assertEqual(self.conn.transport.value(),
                         b"*3\r\n$4\r\nHGET\r\n$8\r\np:sess:1\r\n$2\r\n10\r\n")
        self.assertEqual(self.pool.slow, [])
        self.assertNoResult(d)
        self.conn.dataReceived(b"$5\r\nvalue\r\n")
        self.assertEqual(self.successResultOf(d), b"value")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replies_in_order(self) -> None:
        ds = [self.redis.call("GET", f"k{i}") for i in range(3)]
        self.conn.dataReceived(b"$1\r\na\r\n$-1\r\n:7\r\n")
        self.assertEqual([self.successResultOf(d) for d in ds], [b"a", None, 7])

    def test_one_timer_for_every_command(self) -> None:
        for i in range(5):
            self.redis.call("GET", f"k{i}")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_reply_timeout_drops_the_connection(self) -> None:
        first = self.redis.call("GET", "a")
        self.clock.advance(TIMEOUT / 2)
        second = self.redis.call("GET", "b")
        self.clock.advance(TIMEOUT / 2 - 0.01)
        self.assertNoResult(first)
        self.clock.advance(0.01)
        error = self.failureResultOf(first, StoreUnavailable).value
        self.assertEqual(str(error), "redis GET: no reply within 0.2 s")
        # Later replies on it would be out of step: txredisapi fails the rest
        # once the connection is gone, and the pool reconnects.
        self.assertTrue(self.conn.transport.disconnected)
        self.conn.connectionLost(None)
        self.assertIn("Lost connection", str(self.failureResultOf(second, StoreUnavailable).value))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.redis.errors, {"timeout": 1, "error": 0, "connection": 1})

    def test_a_stalled_node_reads_the_reply_it_was_late_for(self) -> None:
        """The node was busy past the deadline (the timer runs late): the reply
        that came meanwhile is read, the connection stays. One more timeout
        without it, and the connection is dropped."""
        answered = self.redis.call("GET", "a")
        silent = self.redis.call("GET", "b")
        self.clock.advance(2 * TIMEOUT)
        self.assertNoResult(answered)
        self.assertFalse(self.conn.transport.disconnected)
        self.conn.dataReceived(b"$1\r\na\r\n")
        self.assertEqual(self.successResultOf(answered), b"a")
        self.clock.advance(TIMEOUT)
        self.assertIn("no reply within", str(self.failureResultOf(silent, StoreUnavailable).value))
        self.assertTrue(self.conn.transport.disconnected)

    def test_error_reply(self) -> None:
        d = self.redis.call("INCR", "s")
        self.conn.dataReceived(b"-ERR value is not an integer\r\n")
        self.assertEqual(str(self.failureResultOf(d, StoreUnavailable).value),
                         "redis INCR: ERR value is not an integer")
        self.assertEqual(self.redis.errors["error"], 1)
        self.assertEqual(sum(self.redis.latency.counts["INCR"]), 1)  # a reply all the same

    def test_dead_or_busy_connection_goes_through_the_pool(self) -> None:
        self.conn.pipelining = True
        self.redis.call("GET", "a")
        self.conn.pipelining = False
        self.conn.connected = 0
        d = self.redis.call("GET", "b")
        self.assertEqual(self.pool.slow, [("GET", "a"), ("GET", "b")])
        self.assertEqual(self.conn.transport.value(), b"")
        self.pool.slow_replies[1].callback(b"x")
        self.assertEqual(self.successResultOf(d), b"x")

    def test_empty_queue_goes_through_the_pool(self) -> None:
        self.pool._factory.connectionQueue.pending.clear()
        self.redis.call("GET", "a")
        self.assertEqual(self.pool.slow, [("GET", "a")])

    def test_script_loaded_on_noscript(self) -> None:
        script = Script("return ARGV[1]")
        d = script(self.redis, ["k"], ["v"])
        self.assertIn(b"EVALSHA", self.conn.transport.value())
        self.conn.transport.clear()
        self.conn.dataReceived(b"-NOSCRIPT No matching script\r\n")
        self.assertIn(b"EVAL\r\n", self.conn.transport.value())
        self.assertNoResult(d)
        self.conn.dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), b"v")

    def test_script_error_is_not_retried(self) -> None:
        d = Script("return x")(self.redis, [], [])
        self.conn.transport.clear()
        self.conn.dataReceived(b"-ERR boom\r\n")
        self.assertEqual(self.conn.transport.value(), b"")
        self.assertIn("boom", str(self.failureResultOf(d, StoreUnavailable).value))


class EncodeTests(SynchronousTestCase):
    def test_same_bytes_as_txredisapi(self) -> None:
        conn = connection()
        for args in [("PING",), ("EVALSHA", "ab" * 20, 1, "p:sess:7", 1001, b"0|\x00\xff|1"),
                     ("HSET", "k", "\u00fc\u4e2d", -5, 2**64 - 1), ("SET", "k", b"")]:
            self.assertEqual(encode_command(args), conn._build_command(*args), args)

    def test_other_types_left_to_txredisapi(self) -> None:
        self.assertIsNone(encode_command(("SET", "k", 1.5)))
        self.assertIsNone(encode_command(("SET", "k", True)))
        self.assertIsNone(encode_command(("SET", "\udcff", "v")))
        conn = connection()
        redis = Redis(FakePool(conn), "p:", TIMEOUT, Clock())
        redis.call("SET", "k", 1.5)
        self.assertEqual(conn.transport.value(), conn._build_command("SET", "k", 1.5))


class ExecuteTests(SynchronousTestCase):
    """:func:`execute`: the Redis Streams bus's way to send its batches."""

    def test_written_straight_to_an_idle_connection(self) -> None:
        conn = connection()
        conn.convertNumbers = False  # as the bus's connection
        pool = FakePool(conn)
        d = execute(pool, b"EVALSHA", b"abc", 1, b"k", b"\x00\xff")
        self.assertEqual(conn.transport.value(), encode_command(
            (b"EVALSHA", b"abc", 1, b"k", b"\x00\xff")))
        self.assertEqual(pool.slow, [])
        conn.dataReceived(b"*2\r\n+1-0\r\n-ERR no\r\n")  # an entry's error stays in the list
        ok, error = self.successResultOf(d)
        self.assertIn(ok, (b"1-0", "1-0"))  # status replies: bytes with hiredis, else str
        self.assertIsInstance(error, txredisapi.ResponseError)

    def test_error_reply_raised(self) -> None:
        conn = connection()
        d = execute(FakePool(conn), b"EVALSHA", b"abc", 0)
        conn.dataReceived(b"-NOSCRIPT No matching script\r\n")
        self.assertIn("NOSCRIPT", str(self.failureResultOf(d, txredisapi.ResponseError).value))

    def test_no_idle_connection_goes_through_the_pool(self) -> None:
        pool = FakePool()
        d = execute(pool, b"PING")
        self.assertEqual(pool.slow, [(b"PING",)])
        pool.slow_replies[0].callback("PONG")
        self.assertEqual(self.successResultOf(d), "PONG")


class ReconnectTests(SynchronousTestCase):
    """:func:`fast_reconnect`: a pool whose connections were lost tries again
    within half a second, however long Redis was away (txredisapi: up to 10 s)."""

    def test_backoff_is_capped(self) -> None:
        self.patch(txredisapi.random, "normalvariate", lambda mean, _: mean)  # no jitter
        factory = txredisapi.RedisFactory("redis", 0, 4)
        self.assertEqual(factory.retryDelay(4), 10)  # txredisapi's own cap
        fast_reconnect(SimpleNamespace(_factory=factory))
        delays = [factory.retryDelay(attempt) for attempt in range(1, 40)]
        self.assertEqual(delays[0], RECONNECT_INITIAL_DELAY_S)
        self.assertEqual(max(delays), RECONNECT_MAX_DELAY_S)
        self.assertLessEqual(RECONNECT_MAX_DELAY_S, 0.5)
        # The class (other pools, the bus's connection) is left alone.
        self.assertEqual(txredisapi.RedisFactory("redis", 0, 1).retryDelay(4), 10)

    def test_other_pools_left_alone(self) -> None:
        pool = FakePool()
        fast_reconnect(pool)  # its factory is no RedisFactory: nothing to set
        self.assertFalse(hasattr(pool._factory, "maxDelay"))

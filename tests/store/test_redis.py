"""The Redis session store: the shared session suite on a real Redis, what is
Redis's own (key layout, node sets, races across nodes, exact round trips), and
failures (no server, a server that went away or never answers, connect()).

Other tests share the Redis database: each test has its own random key prefix
and deletes its keys at cleanup; nothing here flushes a database.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import uuid4

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from daojia_msg.config import ConfigError, RedisConfig, parse_redis_url
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import SessionRecord
from daojia_msg.redisconn import Redis, connect
from daojia_msg.store.redis import PURGE_BATCH, RedisSessionStore
from tests.servers import (
    TrackingProxyFactory,
    closed_port,
    delete_redis_keys,
    listen,
    require_redis,
)
from tests.store.suites import make_session_store_tests, session

TIMEOUT = 0.2
#: "Quickly" for failures on the real reactor: a few timeouts, with room for a
#: loaded machine; a hang would take txredisapi's reconnect backoff or forever.
QUICK = 2.0


def new_prefix() -> str:
    return f"msgp-test-{uuid4().hex[:8]}:"


delete_keys = delete_redis_keys


async def open_redis(test: TestCase) -> Redis:
    """A connected :class:`Redis` on a fresh prefix; its keys are deleted and
    the pool closed at cleanup."""
    redis = await connect(RedisConfig(url=require_redis(), key_prefix=new_prefix()))

    async def clean() -> None:
        try:
            await delete_keys(redis)
        finally:
            await redis.close()

    test.addCleanup(lambda: Deferred.fromCoroutine(clean()))
    return redis


def redis_fixture(test: TestCase) -> Deferred[RedisSessionStore]:
    async def make() -> RedisSessionStore:
        return RedisSessionStore(await open_redis(test), node_id=1)

    return Deferred.fromCoroutine(make())


class RedisSessionStoreTests(make_session_store_tests(redis_fixture)):  # type: ignore[misc]
    """The suite on :class:`RedisSessionStore` and a real Redis."""


class RedisLayoutTests(TestCase):
    """What only the Redis store has: the keys, the node sets, the races."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.store = await redis_fixture(self)
        self.redis = self.store.redis

    async def members(self, node_id: int) -> set[bytes]:
        return set(await self.redis.call("SMEMBERS", self.redis.key("nodesess", node_id)))

    async def exists(self, *parts: object) -> bool:
        return bool(await self.redis.call("EXISTS", self.redis.key(*parts)))

    async def test_key_layout(self) -> None:
        await self.store.register(SessionRecord(7, 10, 3, "abc", 1_700_000_000_123))
        value = await self.redis.call("HGET", self.redis.key("sess", 7), 10)
        self.assertEqual(value, b"3|abc|1700000000123")
        self.assertEqual(await self.members(3), {b"7:10"})
        self.assertEqual(self.redis.key("sess", 7), self.redis.prefix + "sess:7")

    async def test_cross_node_register_moves_membership(self) -> None:
        await self.store.register(session(node_id=1, session_id="a"))
        await self.store.register(session(appcode=11, node_id=1, session_id="b"))
        old = await self.store.register(session(node_id=2, session_id="c"))
        self.assertEqual(old, session(node_id=1, session_id="a"))
        self.assertEqual(await self.members(1), {b"1:11"})
        self.assertEqual(await self.members(2), {b"1:10"})

    async def test_same_node_register_keeps_membership(self) -> None:
        await self.store.register(session(node_id=1, session_id="a"))
        await self.store.register(session(node_id=1, session_id="b"))
        self.assertEqual(await self.members(1), {b"1:10"})

    async def test_unregister_clears_hash_and_node_set(self) -> None:
        await self.store.register(session())
        self.assertTrue(await self.store.unregister(session()))
        self.assertFalse(await self.exists("sess", 1))
        self.assertFalse(await self.exists("nodesess", 1))

    async def test_late_close_on_old_node_keeps_newer_login_elsewhere(self) -> None:
        old = session(node_id=1, session_id="old")
        new = session(node_id=2, session_id="new")
        await self.store.register(old)
        self.assertEqual(await self.store.register(new), old)
        self.assertFalse(await self.store.unregister(old))
        self.assertEqual(await self.store.lookup(1, 10), new)
        self.assertEqual(await self.members(2), {b"1:10"})
        self.assertEqual(await self.members(1), set())

    async def test_concurrent_logins_on_two_nodes_leave_one_consistent_session(self) -> None:
        records = [session(node_id=n % 3, session_id=f"s{n}") for n in range(30)]
        replaced = await gatherResults([self.store.register(r) for r in records])
        winner = await self.store.lookup(1, 10)
        assert winner is not None
        # Each login replaced exactly the one before it, in the order Redis ran them.
        self.assertEqual(len([r for r in replaced if r is None]), 1)
        self.assertEqual(len({r.session_id for r in replaced if r is not None}), 29)
        self.assertNotIn(winner.session_id, {r.session_id for r in replaced if r is not None})
        for node in range(3):
            expected = {b"1:10"} if node == winner.node_id else set()
            self.assertEqual(await self.members(node), expected)

    async def test_purge_node_spares_sessions_moved_to_another_node(self) -> None:
        await self.store.register(session(1, 10, node_id=1, session_id="a"))
        await self.store.register(session(1, 10, node_id=2, session_id="b"))  # moved
        await self.store.register(session(2, 10, node_id=1, session_id="c"))
        await self.store.register(session(3, 10, node_id=2, session_id="d"))
        self.assertEqual(await self.store.purge_node(1), 1)
        self.assertEqual(await self.store.lookup(1, 10), session(1, 10, node_id=2, session_id="b"))
        self.assertIsNone(await self.store.lookup(2, 10))
        self.assertFalse(await self.exists("nodesess", 1))
        self.assertEqual(await self.members(2), {b"1:10", b"3:10"})

    async def test_purge_node_skips_stale_members(self) -> None:
        """The hash is the truth: a member left in a node's set whose field
        names another node (or is gone) is dropped without deleting anything."""
        await self.store.register(session(1, 10, node_id=2, session_id="b"))
        await self.redis.call("SADD", self.redis.key("nodesess", 1), "1:10", "5:10", "junk")
        self.assertEqual(await self.store.purge_node(1), 0)
        self.assertEqual(await self.store.lookup(1, 10), session(1, 10, node_id=2, session_id="b"))
        self.assertFalse(await self.exists("nodesess", 1))

    async def test_purge_node_in_batches(self) -> None:
        count = 2 * PURGE_BATCH + 7
        await gatherResults([
            self.store.register(session(uid, 10, node_id=4, session_id=f"s{uid}"))
            for uid in range(count)
        ])
        await self.store.register(session(0, 11, node_id=5, session_id="other"))
        self.assertEqual(await self.store.purge_node(4), count)
        self.assertFalse(await self.exists("nodesess", 4))
        self.assertEqual(await self.store.lookup_uid(0), [session(0, 11, 5, "other")])
        self.assertIsNone(await self.store.lookup(count - 1, 10))

    async def test_values_round_trip_exactly(self) -> None:
        odd_ids = ["", "a|b|c", "uid:1:2", "会话-ü", "12345", "1.5", "-7", " sp ace\n"]
        uid = 2**64 - 1
        records = [SessionRecord(uid, 2**31 - 1 - i, 2**63 - 1, sid, 2**62 + i)
                   for i, sid in enumerate(odd_ids)]
        for record in records:
            self.assertIsNone(await self.store.register(record))
            self.assertEqual(await self.store.lookup(record.uid, record.appcode), record)
        self.assertEqual(await self.store.lookup_uid(uid),
                         sorted(records, key=lambda r: r.appcode))
        self.assertEqual(await self.store.lookup_uid(uid - 1), [])
        self.assertFalse(await self.store.unregister(
            SessionRecord(uid, records[1].appcode, 2**63 - 1, "a|b", 0)))
        self.assertTrue(await self.store.unregister(records[1]))
        self.assertEqual(await self.store.purge_node(2**63 - 1), len(records) - 1)
        self.assertEqual(await self.store.lookup_uid(uid), [])






class Silent(Protocol):
    """A server that accepts and never answers."""


class UnavailableTests(TestCase):
    """Every failure is a prompt :class:`StoreUnavailable`, never a hang."""

    def calls(self, store: RedisSessionStore) -> list[Deferred[Any]]:
        return [store.register(session()), store.unregister(session()), store.lookup(1, 10),
                store.lookup_uid(1), store.purge_node(1)]

    async def test_no_server_fails_at_once(self) -> None:
        """A reconnecting pool with no live connection would queue commands
        until it reconnects (txredisapi#112); the store fails them at once."""
        port = await closed_port(self)
        pool = txredisapi.lazyConnectionPool(
            "127.0.0.1", port, poolsize=1, reconnect=True, charset=None,
            connectTimeout=TIMEOUT, replyTimeout=TIMEOUT)
        self.addCleanup(pool.disconnect)
        store = RedisSessionStore(Redis(pool, new_prefix(), TIMEOUT, Clock()), node_id=1)
        for d in self.calls(store):
            self.assertIn("not connected", str(self.failureResultOf(d, StoreUnavailable).value))

    def test_deadline_when_no_reply_ever_comes(self) -> None:
        """The backstop: a call still unanswered after 1.5 reply timeouts fails
        (and the call underneath is cancelled)."""
        waiting: list[Deferred[Any]] = []

        class Stuck:
            def execute_command(self, *args: Any) -> Deferred[Any]:
                waiting.append(Deferred())
                return waiting[-1]

        clock = Clock()
        store = RedisSessionStore(Redis(Stuck(), new_prefix(), TIMEOUT, clock), node_id=1)
        calls = self.calls(store)
        clock.advance(TIMEOUT * 1.5 - 0.01)
        for d in calls:
            self.assertNoResult(d)
        clock.advance(0.01)
        for d in calls:
            self.assertIn("no reply within 0.3 s",
                          str(self.failureResultOf(d, StoreUnavailable).value))
        self.assertTrue(all(w.called for w in waiting))
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_server_never_answers(self) -> None:
        """A connected server that goes silent: the reply timeout fails the call
        (and txredisapi drops the connection) well before the deadline."""
        _, port = listen(self, ServerFactory.forProtocol(Silent))
        pool = await txredisapi.ConnectionPool(
            "127.0.0.1", port, poolsize=1, reconnect=True, charset=None,
            connectTimeout=TIMEOUT, replyTimeout=TIMEOUT)
        self.addCleanup(pool.disconnect)
        store = RedisSessionStore(Redis(pool, new_prefix(), TIMEOUT), node_id=1)
        started = time.monotonic()
        conn = pool._factory.pool[0]
        failure = await self.assertFailure(store.lookup(1, 10), StoreUnavailable)
        # The reply timeout, not the store's backstop deadline, ended it...
        self.assertIn("no reply within 0.2 s", str(failure))
        self.assertLess(time.monotonic() - started, QUICK)
        # ...and dropped the connection (its later replies would be out of order).
        await deferLater(cast(Any, reactor), 0.05, lambda: None)
        self.assertEqual(conn.connected, 0)

    async def test_server_went_away(self) -> None:
        url = parse_redis_url(require_redis())
        proxy = TrackingProxyFactory(url.host, url.port)
        listening, port = listen(self, proxy)
        redis = await connect(RedisConfig(
            url=f"redis://127.0.0.1:{port}/{url.db}",
            key_prefix=new_prefix(), reply_timeout_s=TIMEOUT, pool_size=1))
        self.addCleanup(redis.close)
        store = RedisSessionStore(redis, node_id=1)
        self.assertIsNone(await store.register(session()))
        await delete_keys(redis)  # while it can: the cleanup could not
        await cast(Deferred[None], listening.stopListening())
        for server in proxy.servers:
            server.transport.loseConnection()
        started = time.monotonic()
        await self.assertFailure(store.lookup(1, 10), StoreUnavailable)
        await self.assertFailure(store.register(session()), StoreUnavailable)
        self.assertLess(time.monotonic() - started, QUICK)


class ConnectTests(TestCase):
    """:func:`daojia_msg.redisconn.connect` refuses an unusable server."""

    async def test_closed_port_names_redis_url(self) -> None:
        port = await closed_port(self)
        started = time.monotonic()
        error: Any = await self.assertFailure(
            Deferred.fromCoroutine(connect(RedisConfig(
                url=f"redis://127.0.0.1:{port}/15", reply_timeout_s=TIMEOUT))),
            ConfigError)
        self.assertEqual(error.path, ("redis", "url"))
        self.assertTrue(str(error).startswith("redis.url: cannot connect to Redis"))
        self.assertLess(time.monotonic() - started, QUICK)

    async def test_closed_port_logs_no_retry(self) -> None:
        """Start-up fails at once on a closed port: nothing says it will retry."""
        port = await closed_port(self)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.assertFailure(
            Deferred.fromCoroutine(connect(RedisConfig(
                url=f"redis://127.0.0.1:{port}/15", reply_timeout_s=TIMEOUT))),
            ConfigError)
        said = [formatEvent(e) for e in events]
        self.assertEqual([line for line in said if "retry" in line.lower()], [], said)

    async def test_silent_server_names_redis_url(self) -> None:
        _, port = listen(self, ServerFactory.forProtocol(Silent))
        error: Any = await self.assertFailure(
            Deferred.fromCoroutine(connect(RedisConfig(
                url=f"redis://127.0.0.1:{port}/0",
                reply_timeout_s=TIMEOUT))),
            ConfigError)
        self.assertEqual(error.path, ("redis", "url"))
        self.assertIn("redis.url:", str(error))

    async def test_connects_and_calls(self) -> None:
        redis = await open_redis(self)
        # Status replies (+PONG) are not decoded by hiredis (a dependency:
        # txredisapi's reply parser when installed); nothing relies on their type.
        self.assertIn(await redis.call("PING"), ("PONG", b"PONG"))
        store = RedisSessionStore(redis, node_id=9)
        self.assertEqual(store.node_id, 9)


class StallTests(TestCase):
    """On the real reactor: a node busy for longer than the reply timeout does
    not take its own delay for Redis's (the commands it wrote meanwhile go out
    only once it is free again, and the answers are read after its timers)."""

    async def test_busy_node_keeps_its_connection_and_its_answers(self) -> None:
        # After the stall the PINGs have one more timeout to go out and come
        # back: 0.5 s, room for a loaded machine.
        timeout = 0.5
        redis = await connect(RedisConfig(url=require_redis(), key_prefix=new_prefix(),
                                          reply_timeout_s=timeout))
        self.addCleanup(lambda: Deferred.fromCoroutine(redis.close()))
        await redis.call("PING")
        pings = [redis.call("PING") for _ in range(5)]
        busy_until = time.monotonic() + 3 * timeout
        while time.monotonic() < busy_until:  # work that holds the reactor
            pass
        answers = await gatherResults(pings)
        self.assertEqual([a if isinstance(a, bytes) else a.encode() for a in answers],
                         [b"PONG"] * 5)
        self.assertEqual(redis.replies.stalls, 1)
        self.assertIn(await redis.call("PING"), ("PONG", b"PONG"))  # the same pool, alive


class PurgeDeadNodeTests(TestCase):
    async def test_a_node_alive_again_keeps_its_sessions(self) -> None:
        redis = await open_redis(self)
        store = RedisSessionStore(redis, node_id=1)
        await store.register(SessionRecord(5, 1001, 1, "s5", 1))
        alive = redis.key("node", 1)
        await redis.call("HSET", alive, "gate_port", 7000)  # it re-registered meanwhile
        self.assertEqual(await store.purge_dead_node(1, alive), 0)
        self.assertIsNotNone(await store.lookup(5, 1001))
        await redis.call("DEL", alive)  # really dead
        self.assertEqual(await store.purge_dead_node(1, alive), 1)
        self.assertIsNone(await store.lookup(5, 1001))

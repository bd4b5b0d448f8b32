# -*- test-case-name: tests.test_redisconn,tests.store.test_redis -*-
"""One Redis connection pool for a node, with the traps of txredisapi handled.

- Every call has a reply timeout (``redis.reply_timeout_s``): with
  ``reconnect=True`` txredisapi otherwise waits forever while disconnected
  (txredisapi#112, #72). That timeout only starts once the pool hands out a
  connection, so a call also fails at once when the pool holds none, and every
  call has a backstop deadline of :data:`DEADLINE_FACTOR` x the reply timeout
  (longer than it: cancelling a sent command also cancels txredisapi's own
  reply timer, and the stuck connection would never be dropped).
- A command is normally written straight to an idle connection of the pool
  (the one txredisapi would pick), skipping the pool's per-command generator,
  wrappers and DelayedCall; its reply timeout is then one shared timer
  (:class:`~daojia_msg.deadlines.Deadlines`) that drops the connection when it
  expires, as txredisapi's own timeout does. Only when no idle connection is
  at hand does a command go through the pool (and its backstop deadline).
- Replies are raw ``bytes`` (``charset=None``): binary values stay binary.
- Any failure of a call (timeout, lost connection, error reply) raises
  :class:`~daojia_msg.core.errors.StoreUnavailable`: the operation may not
  have happened; callers answer UNAVAILABLE, never hang.
- :func:`connect` first checks the server with one PING on a connection that
  does not reconnect, so start-up fails with one clear line when Redis is down.
- Lua scripts go through ``EVALSHA`` with a ``NOSCRIPT`` fallback (:class:`Script`).
- The pool reconnects quickly (:func:`fast_reconnect`): txredisapi backs off
  to 10 s between attempts, so a 5 s Redis restart left a node without Redis
  for up to 10 s more; here attempts come every :data:`RECONNECT_MAX_DELAY_S`
  at most, and the node notices Redis answering again within a second.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any, cast

import txredisapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.config import ConfigError, RedisConfig, parse_redis_url
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.deadlines import Deadlines
from daojia_msg.metrics.histograms import LabeledHistogram

log = Logger()


DEADLINE_FACTOR = 1.5
#: Seconds before the pool's first attempt to reconnect a lost connection, and
#: the most between two attempts (txredisapi: 1 s, growing by e to 10 s). Its
#: jitter (12 %) stays, so the slots of a pool and the nodes of a cluster do
#: not all knock at once; a refused attempt costs one SYN.
RECONNECT_INITIAL_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 0.5


def fast_reconnect(pool: Any) -> None:
    """Cap the reconnect backoff of txredisapi pool ``pool`` (see the module
    docstring); a pool that is not txredisapi's is left alone."""
    factory = getattr(pool, "_factory", None)
    if factory is None or not hasattr(factory, "maxDelay"):
        return
    factory.initialDelay = RECONNECT_INITIAL_DELAY_S
    factory.maxDelay = RECONNECT_MAX_DELAY_S


def _has_connection(pool: Any) -> bool:
    """Whether txredisapi's pool holds a live connection (unknown pools: yes)."""
    factory = getattr(pool, "_factory", None)
    size = getattr(factory, "size", None)
    return not isinstance(size, int) or size > 0


def idle_connection(pool: Any) -> Any:
    """A connection of txredisapi's pool a command may be written to, or None.

    ``pool.execute_command`` peeks at a random connection of the pool's queue
    (the connections no ``MULTI`` or pipeline holds) through an
    ``inlineCallbacks`` generator and two wrapper callbacks per command. None
    (go that way, which also drops dead connections) when the queue is empty,
    the connection picked is dead or pipelining, or the pool is not txredisapi's.
    """
    factory = getattr(pool, "_factory", None)
    queue = getattr(factory, "connectionQueue", None)
    pending = getattr(queue, "pending", None)
    if not pending:
        return None
    conn = pending[0] if len(pending) == 1 else random.choice(pending)
    if not getattr(conn, "connected", 0) or getattr(conn, "pipelining", True):
        return None
    return conn


def encode_command(args: tuple[Any, ...]) -> bytes | None:
    """The RESP array of ``args`` (bytes, str as UTF-8, int in decimal), or None
    for any other argument (txredisapi's encoder then builds it)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            value = arg
        elif kind is str:
            try:
                value = arg.encode()
            except UnicodeError:
                return None
        elif kind is int:
            value = b"%d" % arg
        else:
            return None
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


def write_command(conn: Any, args: tuple[Any, ...]) -> Deferred[Any]:
    """Write the command ``args`` to txredisapi connection ``conn`` (encoded by
    :func:`encode_command`, or by txredisapi when it cannot) and return its
    raw reply from the connection's reply queue, as ``execute_command`` does:
    an error reply, or the connection's loss, comes as an exception object."""
    command = encode_command(args)
    if command is None:
        command = conn._build_command(*args)
    conn.transport.write(command)
    return cast("Deferred[Any]", conn.replyQueue.get())


def execute(pool: Any, *args: Any) -> Deferred[Any]:
    """``pool.execute_command(*args)``, written straight to an idle connection
    when there is one (:func:`idle_connection`, :func:`write_command`): the
    reply as txredisapi gives it (an error reply raised), with no reply
    timeout of its own (the caller's deadline must drop the connection)."""
    conn = idle_connection(pool)
    if conn is None:
        return cast("Deferred[Any]", pool.execute_command(*args))
    try:
        reply = write_command(conn, args)
    except Exception:
        return fail()
    return reply.addCallback(_raise_error_reply)


def _raise_error_reply(reply: Any) -> Any:
    if isinstance(reply, Exception):  # as txredisapi's handle_reply
        raise reply
    return reply


#: Upper bounds of the Redis reply-time buckets, seconds.
REDIS_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5)


class Redis:
    """A connected pool; ``prefix`` starts every key of this platform.

    ``clock`` times the reply timeouts and the backstop deadline (the reactor;
    tests pass a Clock).
    """

    def __init__(self, pool: Any, prefix: str, timeout: float,
                 clock: IReactorTime | None = None) -> None:
        self.pool = pool
        self.prefix = prefix
        self.timeout = timeout
        if clock is None:
            from twisted.internet import reactor  # txredisapi runs on it too

            clock = cast(IReactorTime, reactor)
        self.clock: Any = clock
        #: The reply timeout of the commands written straight to a connection.
        self.replies = Deadlines(clock, timeout, "redis replies")
        #: The backstop deadline of the commands that go through the pool.
        self.deadlines = Deadlines(clock, timeout * DEADLINE_FACTOR, "redis pool calls")
        #: The replies' time by command (``time.perf_counter`` seconds; the
        #: commands written straight to a connection, nearly all) and the
        #: failures by kind (timeout, error, connection), for the metrics.
        self.latency = LabeledHistogram(REDIS_SECONDS)
        self.errors = dict.fromkeys(("timeout", "error", "connection"), 0)

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(map(str, parts))

    def call(self, *args: Any) -> Deferred[Any]:
        """One command; its reply (bytes, int, list, None; status replies: str
        or bytes). Fails with :class:`StoreUnavailable` (never hangs).

        The command is written straight to an idle connection of the pool when
        there is one (:meth:`_send`); otherwise it goes through txredisapi's
        pool (its reply timeout, and the backstop deadline).
        """
        if not _has_connection(self.pool):
            return fail(StoreUnavailable(f"redis {args[0]}: not connected"))
        conn = idle_connection(self.pool)
        if conn is not None:
            return self._send(conn, args)
        try:
            d: Deferred[Any] = self.pool.execute_command(*args)
        except Exception:
            d = fail()
        return self.deadlines.watch(d).addErrback(self._failed, args[0],
                                                  self.deadlines.timeout)

    def _send(self, conn: Any, args: tuple[Any, ...]) -> Deferred[Any]:
        """Write the command to ``conn`` and wait for its reply in the
        connection's reply queue, as ``execute_command`` does, without its
        result Deferred, its three callbacks and its DelayedCall per command
        (this runs twice per LOGIN).

        The reply timeout is one timer for all such commands
        (:class:`~daojia_msg.deadlines.Deadlines`); when it expires the
        connection is dropped, as txredisapi's own timeout does: every reply
        still awaited on it then fails at once (its order would be lost), and
        the pool reconnects.
        """
        try:
            reply = write_command(conn, args)
        except Exception:
            return fail().addErrback(self._failed, args[0], self.timeout)
        d: Deferred[Any] = self.replies.watch(reply)
        return d.addCallbacks(self._replied, self._no_reply,
                              callbackArgs=(args[0], time.perf_counter()),
                              errbackArgs=(conn, args[0]))

    def _replied(self, reply: Any, command: str, started: float) -> Any:
        self.latency.observe(command, time.perf_counter() - started)
        if isinstance(reply, Exception):  # an error reply, or the connection was lost
            self._failed(Failure(reply), command, self.timeout)
        return reply

    def _no_reply(self, failure: Failure, conn: Any, command: str) -> None:
        if failure.check(DeferredTimeout):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self._failed(failure, command, self.timeout)

    def _failed(self, failure: Failure, command: str, timeout: float) -> None:
        e = failure.value
        errors = self.errors
        if isinstance(e, DeferredTimeout):
            errors["timeout"] += 1
            raise StoreUnavailable(f"redis {command}: no reply within {timeout:g} s") from None
        if isinstance(e, txredisapi.ResponseError):
            if not str(e).startswith("NOSCRIPT"):  # Script loads it: not an error
                errors["error"] += 1
                log.error("redis {command} failed: {error}", command=command, error=str(e))
            raise StoreUnavailable(f"redis {command}: {e}") from e
        if isinstance(e, (txredisapi.ConnectionError, txredisapi.RedisError)):
            errors["connection"] += 1
            raise StoreUnavailable(f"redis {command}: {e}") from e
        failure.raiseException()

    async def close(self) -> None:
        self.replies.stop()
        self.deadlines.stop()
        await self.pool.disconnect()


class Script:
    """A Lua script run with ``EVALSHA``, loaded on ``NOSCRIPT``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """Fires with the script's reply (no coroutine per call: it runs per LOGIN)."""
        d = as_deferred(redis.call("EVALSHA", self.sha, len(keys), *keys, *args))
        return d.addErrback(self._load, redis, keys, args)

    def _load(self, failure: Failure, redis: Redis, keys: list[str],
              args: list[Any]) -> Deferred[Any]:
        failure.trap(StoreUnavailable)
        if "NOSCRIPT" not in str(failure.value):
            failure.raiseException()
        return as_deferred(redis.call("EVAL", self.source, len(keys), *keys, *args))


def as_deferred(result: Any) -> Deferred[Any]:
    """``Redis.call``'s Deferred (or the coroutine of a stand-in that tests use) as a Deferred."""
    return result if isinstance(result, Deferred) else Deferred.fromCoroutine(result)


async def _tcp_probe(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection to ``host:port``; fails when refused
    or not answered within ``timeout`` seconds."""
    from twisted.internet import reactor  # txredisapi runs on it too

    endpoint = HostnameEndpoint(reactor, host, port, timeout=max(1, int(timeout + 0.999)))
    factory = Factory.forProtocol(Protocol)
    factory.noisy = False
    protocol = cast(Protocol, await endpoint.connect(factory))
    assert protocol.transport is not None
    protocol.transport.loseConnection()


async def connect(config: RedisConfig) -> Redis:
    """Connect to ``config.url``; raises :class:`ConfigError` naming ``redis.url``
    when the server cannot be reached (start-up then stops with that line)."""
    url = parse_redis_url(config.url)
    timeout = config.reply_timeout_s
    where = f"{url.host}:{url.port}/{url.db}"
    try:
        # Plain TCP first: txredisapi would log a retry it does not make.
        await _tcp_probe(url.host, url.port, timeout)
    except Exception as e:
        raise ConfigError(f"cannot connect to Redis at {where}: {e}", ("redis", "url")) from None
    try:
        probe = await txredisapi.Connection(
            url.host, url.port, dbid=url.db, reconnect=False, charset=None,
            password=url.password or None, connectTimeout=timeout, replyTimeout=timeout,
        )
    except Exception as e:
        raise ConfigError(f"cannot connect to Redis at {where}: {e}", ("redis", "url")) from None
    try:
        await probe.ping()
    except Exception as e:
        raise ConfigError(f"Redis at {where} does not answer: {e}", ("redis", "url")) from None
    finally:
        await probe.disconnect()
    pool = await txredisapi.ConnectionPool(
        url.host, url.port, dbid=url.db, poolsize=config.pool_size, reconnect=True,
        charset=None, password=url.password or None, connectTimeout=timeout,
        replyTimeout=timeout,
    )
    fast_reconnect(pool)
    log.info("connected to Redis at {where}", where=where)
    return Redis(pool, config.key_prefix, timeout)

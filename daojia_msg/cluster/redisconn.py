# -*- test-case-name: tests.store.test_redis -*-
"""One Redis connection pool for a node, with the traps of txredisapi handled.

- Every call has a reply timeout (``redis.reply_timeout_s``): with
  ``reconnect=True`` txredisapi otherwise waits forever while disconnected
  (txredisapi#112, #72). That timeout only starts once the pool hands out a
  connection, so a call also fails at once when the pool holds none, and every
  call has a backstop deadline of :data:`DEADLINE_FACTOR` x the reply timeout
  (longer than it: cancelling a sent command also cancels txredisapi's own
  reply timer, and the stuck connection would never be dropped).
- Replies are raw ``bytes`` (``charset=None``): binary values stay binary.
- Any failure of a call (timeout, lost connection, error reply) raises
  :class:`~daojia_msg.store.errors.StoreUnavailable`: the operation may not
  have happened; callers answer UNAVAILABLE, never hang.
- :func:`connect` first checks the server with one PING on a connection that
  does not reconnect, so start-up fails with one clear line when Redis is down.
- Lua scripts go through ``EVALSHA`` with a ``NOSCRIPT`` fallback (:class:`Script`).
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import txredisapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.config import ConfigError, RedisConfig, parse_redis_url
from daojia_msg.deadlines import Deadlines
from daojia_msg.store.errors import StoreUnavailable

log = Logger()


DEADLINE_FACTOR = 1.5


def _has_connection(pool: Any) -> bool:
    """Whether txredisapi's pool holds a live connection (unknown pools: yes)."""
    factory = getattr(pool, "_factory", None)
    size = getattr(factory, "size", None)
    return not isinstance(size, int) or size > 0


class Redis:
    """A connected pool; ``prefix`` starts every key of this platform.

    ``clock`` times the backstop deadline (the reactor; tests pass a Clock).
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
        #: The backstop deadline of every command, on one timer.
        self.deadlines = Deadlines(clock, timeout * DEADLINE_FACTOR)

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def call(self, *args: Any) -> Deferred[Any]:
        """One command; its reply (bytes, int, list, None; status replies: str
        or bytes). Fails with :class:`StoreUnavailable` (never hangs)."""
        if not _has_connection(self.pool):
            return fail(StoreUnavailable(f"redis {args[0]}: not connected"))
        try:
            d: Deferred[Any] = self.pool.execute_command(*args)
        except Exception:
            d = fail()
        return self.deadlines.watch(d).addErrback(self._failed, args[0])

    def _failed(self, failure: Failure, command: str) -> None:
        e = failure.value
        if isinstance(e, DeferredTimeout):
            raise StoreUnavailable(
                f"redis {command}: no reply within {self.deadlines.timeout:g} s") from None
        if isinstance(e, txredisapi.ResponseError):
            if not str(e).startswith("NOSCRIPT"):  # Script loads it: not an error
                log.error("redis {command} failed: {error}", command=command, error=str(e))
            raise StoreUnavailable(f"redis {command}: {e}") from e
        if isinstance(e, (txredisapi.ConnectionError, txredisapi.RedisError)):
            raise StoreUnavailable(f"redis {command}: {e}") from e
        failure.raiseException()

    async def close(self) -> None:
        self.deadlines.stop()
        await self.pool.disconnect()


class Script:
    """A Lua script run with ``EVALSHA``, loaded on ``NOSCRIPT``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except StoreUnavailable as e:
            if "NOSCRIPT" not in str(e):
                raise
        return await redis.call("EVAL", self.source, len(keys), *keys, *args)


async def connect(config: RedisConfig) -> Redis:
    """Connect to ``config.url``; raises :class:`ConfigError` naming ``redis.url``
    when the server cannot be reached (start-up then stops with that line)."""
    url = parse_redis_url(config.url)
    timeout = config.reply_timeout_s
    where = f"{url.host}:{url.port}/{url.db}"
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
    log.info("connected to Redis at {where}", where=where)
    return Redis(pool, config.key_prefix, timeout)

"""Real servers for integration tests: skip outside CI, fail in CI (CI=true).

Each ``require_*`` returns connection details or raises ``SkipTest`` with a
clear reason; with ``CI=true`` a missing server is a failure instead, so a CI
run cannot go green by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from typing import Any

from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import FailTest, SkipTest

CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("MSGP_TEST_REDIS", "redis://127.0.0.1:6379/15")
MYSQL_HOST = os.environ.get("MSGP_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("MSGP_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("MSGP_TEST_MYSQL_USER", "root")


def missing(what: str) -> None:
    if CI:
        raise FailTest(f"{what} (CI=true: integration tests must not skip)")
    raise SkipTest(what)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_redis() -> str:
    """The test Redis URL (database 15, flushed by the tests that use it)."""
    from daojia_msg.config import parse_redis_url

    url = parse_redis_url(REDIS_URL)
    if not _reachable(url.host, url.port):
        missing(f"Redis is not running at {url.host}:{url.port} (set MSGP_TEST_REDIS)")
    return REDIS_URL


def require_mysql() -> str:
    """A fresh, empty database on the test MySQL/MariaDB; returns its mysql:// URL.

    The caller drops it with :func:`drop_mysql_database` (addCleanup).
    """
    if not _reachable(MYSQL_HOST, MYSQL_PORT):
        missing(f"MySQL/MariaDB is not running at {MYSQL_HOST}:{MYSQL_PORT}")
    return create_mysql_database(MYSQL_HOST, MYSQL_PORT, MYSQL_USER,
                                 f"msgp_test_{uuid.uuid4().hex[:12]}")


def create_mysql_database(host: str, port: int, user: str, name: str) -> str:
    """``CREATE DATABASE name`` (utf8mb4) on that server; its mysql:// URL."""
    from daojia_msg.store.mysqldriver import connect

    conn = connect(host=host, port=port, user=user)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return f"mysql://{user}@{host}:{port}/{name}"


def drop_mysql_database(url: str) -> None:
    from daojia_msg.store.mysqldriver import connect

    name = url.rsplit("/", 1)[1]
    conn = connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def require_haproxy() -> str:
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                       else None)
    if path is None:
        missing("haproxy is not installed (apt-get install haproxy)")
    assert path is not None
    return path


def redis_prefix(test: Any) -> str:
    """A fresh key prefix for ``test``, whose keys are deleted once everything
    the test registered after this call has run (a node writes keys as it
    stops), over a connection of the cleanup's own."""
    url = require_redis()
    prefix = f"msgp-test-{uuid.uuid4().hex[:12]}:"

    async def cleanup() -> None:
        from daojia_msg.config import RedisConfig
        from daojia_msg.redisconn import connect

        redis = await connect(RedisConfig(url=url))
        try:
            await delete_redis_keys(redis, prefix)
        finally:
            await redis.close()

    test.addCleanup(cleanup)
    return prefix


async def delete_redis_keys(redis: Any, prefix: str | None = None) -> None:
    """Delete the keys under ``prefix`` (default: the connection's own prefix),
    never anyone else's: tests share the Redis database and never FLUSHDB."""
    pattern = (redis.prefix if prefix is None else prefix) + "*"
    cursor: Any = b"0"
    while True:
        cursor, keys = await redis.call("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
        if keys:
            await redis.call("DEL", *keys)
        if int(cursor) == 0:
            return


def listen(test: Any, factory: Any, port: int = 0) -> tuple[Any, int]:
    """Listen on 127.0.0.1 (a free port by default) until the test's cleanup;
    the listening port and its number."""
    from twisted.internet import reactor

    listening: Any = reactor.listenTCP(port, factory, interface="127.0.0.1")
    test.addCleanup(listening.stopListening)
    return listening, int(listening.getHost().port)


async def closed_port(test: Any) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    from twisted.internet.protocol import ServerFactory

    listening, port = listen(test, ServerFactory())
    await listening.stopListening()
    return port


def hangup_port(test: Any) -> int:
    """A TCP port on 127.0.0.1 (until the test's cleanup) that accepts and
    closes each connection at its first bytes, without a byte in answer: a
    port that is not the server the client expects."""
    from twisted.internet.protocol import Factory, Protocol

    class Hangup(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

    return listen(test, Factory.forProtocol(Hangup))[1]


class TrackingProxyFactory(ProxyFactory):
    """A TCP proxy to a real server that remembers its connections
    (``servers``), so a test can cut them: "the server went away"."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.servers: list[ProxyServer] = []

    def buildProtocol(self, addr: Any) -> ProxyServer | None:
        p = super().buildProtocol(addr)
        if p is not None:
            self.servers.append(p)
        return p


MQTT_HOST = os.environ.get("MSGP_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("MSGP_TEST_MQTT_PORT", "1883"))


def require_mosquitto() -> tuple[str, int]:
    if not _reachable(MQTT_HOST, MQTT_PORT):
        missing(f"no MQTT broker (Mosquitto) at {MQTT_HOST}:{MQTT_PORT} (set MSGP_TEST_MQTT_HOST/PORT)")
    return MQTT_HOST, MQTT_PORT

"""The MySQL store as a whole: the shared behaviour suite on one database and on
two (rows of one message then span both), its life (start, restart), the
de-dup purge and a message too big for the server.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from daojia_msg.config import ConfigError, MySQLConfig
from daojia_msg.core.errors import StoreError, StoreUnavailable
from daojia_msg.core.model import StoreOutcome
from daojia_msg.store.mysql import MySQLMessageStore
from daojia_msg.store.mysql import store as store_module
from tests.servers import drop_mysql_database, require_mysql
from tests.store.mysql.fixtures import fresh_database, msgids, mysql_config, started
from tests.store.suites import (
    USERS,
    MessageStoreFixture,
    c2c,
    ids,
    make_message_store_tests,
    message,
)


async def one_database(test: TestCase) -> MessageStoreFixture:
    store = await started(test, mysql_config(fresh_database(test)))
    return MessageStoreFixture(store, lambda: store.committer.flushes, ordered=False)


async def two_databases(test: TestCase) -> MessageStoreFixture:
    """2 databases x 2 tables: uid 1 and 5 in the first, 2 and 3 in the
    second, so the suite's messages from 1 to 2 span both."""
    config = mysql_config(fresh_database(test), fresh_database(test), shards=2)
    store = await started(test, config)
    return MessageStoreFixture(store, lambda: store.committer.flushes, ordered=False)


class MySQLMessageStoreTests(make_message_store_tests(one_database)):  # type: ignore[misc]
    """The suite on one database, three shard tables, real threaded pools."""


class TwoDatabaseMySQLMessageStoreTests(make_message_store_tests(two_databases)):  # type: ignore[misc]
    """The suite on two databases (the cross-database write path)."""


class ConfigTests(TestCase):
    def test_no_url(self) -> None:
        self.assertRaises(ValueError, MySQLMessageStore, MySQLConfig(), reactor)

    async def test_a_missing_database_stops_start_with_one_line(self) -> None:
        """A URL naming a database that does not exist is a config error that
        names the key and says what to do, not a failed interaction."""
        server = require_mysql()  # (a fresh database: only its server is used here)
        self.addCleanup(drop_mysql_database, server)
        url = server.rsplit("/", 1)[0] + "/msgp_no_such_database"
        store = MySQLMessageStore(mysql_config(url), reactor)
        self.addCleanup(store.stop)
        with self.assertRaises(ConfigError) as e:
            await store.start()
        self.assertEqual(e.exception.path, ("mysql", "url"))
        self.assertIn("the database does not exist (create it: CREATE DATABASE "
                      "msgp_no_such_database)", str(e.exception))

    async def test_an_unreachable_second_database_is_named(self) -> None:
        good = fresh_database(self)
        bad = "mysql://root@127.0.0.1:1/anything"
        store = MySQLMessageStore(mysql_config(good, bad, connect_timeout_s=2.0), reactor)
        self.addCleanup(store.stop)
        with self.assertRaises(StoreUnavailable) as e:
            await store.start()
        self.assertIn("root@127.0.0.1:1/anything: cannot connect (is MySQL running", str(e.exception))


class RestartTests(TestCase):
    async def test_pending_messages_survive_a_restart(self) -> None:
        url = fresh_database(self)
        first = await started(self, mysql_config(url))
        await first.store([c2c(i, client_msg_id=f"c{i}") for i in (1, 2, 3)])
        await first.ack(2, 10, [2])
        await first.stop()
        self.assertFalse(first.pools[0].running)

        second = await started(self, mysql_config(url))
        page = await second.pull(2, 10, 0, 10)
        self.assertEqual(page.messages, [message(1), message(3)])
        self.assertEqual(await second.max_msgid(), 3)
        again = await second.store([c2c(9, client_msg_id="c3")])
        self.assertEqual(again, [StoreOutcome(3, "log-3", duplicate=True)])
        self.assertEqual(ids(await second.history(USERS, 1, 0, 10, 0)), [3, 2, 1])


class PurgeTests(TestCase):
    async def test_purge_in_chunks_over_every_table(self) -> None:
        self.patch(store_module, "PURGE_CHUNK", 2)
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=2))
        await store.store([c2c(i, 1 + i % 2, 10, client_msg_id=f"k{i}") for i in range(1, 8)])
        self.assertEqual(await store.purge_dedup(0), 0)
        self.assertEqual(await store.purge_dedup(2**62), 7)
        self.assertEqual(msgids(url, "dedup_0") + msgids(url, "dedup_1"), [])


class TooBigTests(TestCase):
    async def test_a_row_over_the_packet_size_fails_alone(self) -> None:
        store = await started(self, mysql_config(fresh_database(self)))
        self.assertGreaterEqual(store.max_packet_bytes, 1 << 20)  # read from the server
        store.max_packet_bytes = 100_000
        too_big = store.store([c2c(1, content=b"x" * 60_000)])
        fine = store.store([c2c(2, content=b"x" * 40_000)])
        error: Any = await self.assertFailure(too_big, StoreError)
        self.assertIn("max_allowed_packet", str(error))
        self.assertEqual(await fine, [StoreOutcome(2, "log-2")])

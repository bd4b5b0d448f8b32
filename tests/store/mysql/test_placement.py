"""Where the MySQL store's rows go: the slot of a uid, and the tables rows land in."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from daojia_msg.core.model import StoreOutcome
from daojia_msg.store.mysql.placement import Placement
from tests.store.mysql.fixtures import fresh_database, msgids, mysql_config, query, started
from tests.store.suites import USERS, c2c, ids


class PlacementTests(TestCase):
    def test_slots(self) -> None:
        p = Placement(shards=4, databases=3)
        self.assertEqual([p.place(uid) for uid in (0, 3, 4, 11, 12, 2**64 - 1)],
                         [(0, 0), (0, 3), (1, 0), (2, 3), (0, 0), (0, 3)])  # fmt: skip


class PlacementOnDiskTests(TestCase):
    async def test_rows_land_in_their_slot_tables(self) -> None:
        """shards=4, one database: message to uid 6 in messages_2, history of
        5 in history_1 and of 6 in history_2, the key of sender 5 in dedup_1."""
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=4))
        await store.store([c2c(77, 5, 10, 6, 11, client_msg_id="k")])
        for n in range(4):
            self.assertEqual(msgids(url, f"messages_{n}"), [77] if n == 2 else [])
            self.assertEqual(msgids(url, f"history_{n}"), [77] if n in (1, 2) else [])
            self.assertEqual(msgids(url, f"dedup_{n}"), [77] if n == 1 else [])
        self.assertEqual(msgids(url, "history_1", "owner_uid"), [5])
        self.assertEqual(
            query(url, "SELECT owner_sys, peer_uid, msgcontent, to_appcode FROM history_1"),
            [(USERS.encode(), 6, b"hi", 11)],
        )

    async def test_two_databases_place_rows_by_slot(self) -> None:
        """2 databases x 2 tables = 4 slots: uid 4 -> (0, 0), uid 3 -> (1, 1)."""
        a, b = fresh_database(self), fresh_database(self)
        store = await started(self, mysql_config(a, b, shards=2))
        new = c2c(9, 3, 10, 4, 10, client_msg_id="k")
        self.assertEqual(await store.store([new]), [StoreOutcome(9, "log-9")])
        self.assertEqual(msgids(a, "messages_0"), [9])
        self.assertEqual(msgids(a, "history_0", "owner_uid"), [4])
        self.assertEqual(msgids(b, "history_1", "owner_uid"), [3])
        self.assertEqual(msgids(b, "dedup_1", "uid"), [3])
        for url, tables in ((a, ("messages_1", "history_1", "dedup_0", "dedup_1")),
                            (b, ("messages_0", "messages_1", "history_0", "dedup_0"))):  # fmt: skip
            for table in tables:
                self.assertEqual(msgids(url, table), [], f"{table} of {url}")
        # Everything round-trips, whichever database it reads.
        self.assertEqual((await store.pull(4, 10, 0, 10)).messages, [new.message])
        self.assertEqual(ids(await store.history(USERS, 3, 0, 10, 4)), [9])
        self.assertEqual(ids(await store.history(USERS, 4, 0, 10, 3)), [9])
        again = await store.store([c2c(10, 3, 10, 4, 10, client_msg_id="k")])
        self.assertEqual(again, [StoreOutcome(9, "log-9", duplicate=True)])
        await store.store([c2c(2**63 + 1, 4, 10, 3, 10)])  # stored in b
        self.assertEqual(await store.max_msgid(), 2**63 + 1)
        self.assertEqual([a.msgid for a in await store.ack(4, 10, [9])], [9])
        self.assertEqual(await store.count_pending(4, 10), 0)
        self.assertEqual(await store.purge_dedup(2**62), 1)

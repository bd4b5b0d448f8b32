"""Behaviour suites of the store interfaces, written once (flocker's
``make_istatepersister_tests`` pattern) and run against every backend::

    class SQLiteMessageStoreTests(make_message_store_tests(fixture)):
        pass

The suites use trial's asynchronous ``TestCase``: with an inline pool every
Deferred has fired already; with a real backend they fire on trial's reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from daojia_msg.core.model import (
    AckedMessage,
    Kind,
    NewMessage,
    SessionRecord,
    StoredMessage,
    StoreOutcome,
)
from daojia_msg.logic.interfaces import IMessageStore, ISessionStore

# Two user systems; appcodes 10, 11 are in "users", 20 in "merchants".
USERS = "users"
MERCHANTS = "merchants"
NOT_UTF8 = b"\xff\xfe\x00\x80caf\xc3(\xa0\xa1"


def message(
    msgid: int,
    from_uid: int = 1,
    from_appcode: int = 10,
    to_uid: int = 2,
    to_appcode: int = 10,
    *,
    kind: Kind = Kind.C2C,
    msgtype: int = 7,
    content: bytes = b"hi",
) -> StoredMessage:
    return StoredMessage(
        msgid=msgid,
        from_uid=from_uid,
        from_appcode=from_appcode,
        to_uid=to_uid,
        to_appcode=to_appcode,
        msgtype=msgtype,
        kind=kind,
        content=content,
        send_time_ms=1_700_000_000_000 + msgid,
        logid=f"log-{msgid}",
    )


def c2c(
    msgid: int,
    from_uid: int = 1,
    from_appcode: int = 10,
    to_uid: int = 2,
    to_appcode: int = 10,
    *,
    client_msg_id: str = "",
    from_system: str = USERS,
    to_system: str = USERS,
    content: bytes = b"hi",
) -> NewMessage:
    return NewMessage(
        message=message(msgid, from_uid, from_appcode, to_uid, to_appcode, content=content),
        to_system=to_system,
        from_system=from_system,
        client_msg_id=client_msg_id,
    )


def s2c(msgid: int, to_uid: int = 2, to_appcode: int = 10) -> NewMessage:
    """An app server's push: from uid 0, no sender history."""
    return NewMessage(
        message=message(msgid, 0, to_appcode, to_uid, to_appcode, kind=Kind.S2C),
        to_system=USERS,
    )


def ids(page: Any) -> list[int]:
    return [m.msgid for m in page.messages]


@dataclass
class MessageStoreFixture:
    """What a message store fixture hands the suite.

    :ivar store: a started :class:`IMessageStore` (the fixture arranges, with
        ``addCleanup``, for it to be stopped).
    :ivar transactions: how many write transactions the backend ran so far.
    :ivar hold: for a backend that runs transactions inline: make them wait,
        returning the function that lets them run. None for a backend whose
        transactions run in other threads (writes then queue on their own).
    :ivar ordered: every write runs in the order submitted, one transaction at
        a time (SQLite). False for a backend with several transactions in
        flight: only the writes of one uid keep their order (MySQL).
    """

    store: Any
    transactions: Callable[[], int]
    hold: Callable[[], Callable[[], None]] | None = None
    ordered: bool = True


MessageFixture = Callable[[TestCase], "MessageStoreFixture | Deferred[MessageStoreFixture]"]


def make_message_store_tests(fixture: MessageFixture) -> type[TestCase]:
    """A ``TestCase`` of the :class:`IMessageStore` behaviour, on ``fixture(test)``."""

    class MessageStoreTests(TestCase):
        async def setUp(self) -> None:  # type: ignore[override]
            made = maybeDeferred(cast(Callable[[TestCase], Any], fixture), self)
            self.fixture: MessageStoreFixture = await made
            self.store = self.fixture.store

        async def pull_all(self, uid: int, appcode: int) -> list[int]:
            page = await self.store.pull(uid, appcode, 0, 1000)
            return ids(page)

        def test_interface(self) -> None:
            self.assertTrue(verifyObject(IMessageStore, self.store))

        async def test_round_trip(self) -> None:
            new = c2c(41, 1, 10, 2, 11, client_msg_id="c-1", content=NOT_UTF8)
            outcomes = await self.store.store([new])
            self.assertEqual(outcomes, [StoreOutcome(41, "log-41", duplicate=False)])
            page = await self.store.pull(2, 11, 0, 10)
            self.assertEqual(page.messages, [new.message])
            self.assertIsInstance(page.messages[0].kind, Kind)
            self.assertIsInstance(page.messages[0].content, bytes)
            self.assertFalse(page.has_more)

        async def test_empty_batches(self) -> None:
            self.assertEqual(await self.store.store([]), [])
            self.assertEqual(await self.store.ack(2, 10, []), [])

        async def test_pull_in_pages(self) -> None:
            """250 pending, pulled 100 at a time: ascending, each once, has_more right."""
            mine = [c2c(1000 + 3 * i, to_uid=2, to_appcode=10) for i in range(250)]
            others = [c2c(1001, to_uid=3, to_appcode=10), c2c(1002, to_uid=2, to_appcode=11)]
            await self.store.store(mine[:120] + others)
            await self.store.store(mine[120:])
            seen: list[int] = []
            after, more = 0, True
            pages = []
            while more:
                page = await self.store.pull(2, 10, after, 100)
                self.assertLessEqual(len(page.messages), 100)
                pages.append((len(page.messages), page.has_more))
                seen.extend(ids(page))
                after, more = seen[-1], page.has_more
            self.assertEqual(pages, [(100, True), (100, True), (50, False)])
            self.assertEqual(seen, [m.message.msgid for m in mine])
            self.assertEqual(await self.pull_all(3, 10), [1001])

        async def test_pull_after_and_exact_limit(self) -> None:
            await self.store.store([c2c(i) for i in (5, 6, 7)])
            page = await self.store.pull(2, 10, 5, 2)
            self.assertEqual((ids(page), page.has_more), ([6, 7], False))
            page = await self.store.pull(2, 10, 7, 2)
            self.assertEqual((ids(page), page.has_more), ([], False))

        async def test_ack(self) -> None:
            await self.store.store([c2c(i) for i in (1, 2, 3)])
            acked = await self.store.ack(2, 10, [3, 1])
            self.assertEqual(
                sorted(acked, key=lambda a: a.msgid),
                [
                    AckedMessage(1, 7, Kind.C2C, 1_700_000_000_001, "log-1"),
                    AckedMessage(3, 7, Kind.C2C, 1_700_000_000_003, "log-3"),
                ],
            )
            self.assertEqual(await self.pull_all(2, 10), [2])
            self.assertEqual(await self.store.count_pending(2, 10), 1)

        async def test_ack_ignores_what_is_not_pending_for_the_caller(self) -> None:
            await self.store.store(
                [c2c(1), c2c(2), c2c(3, to_uid=3), c2c(4, to_appcode=11), c2c(5)]
            )
            self.assertEqual([a.msgid for a in await self.store.ack(2, 10, [5])], [5])
            # 99 unknown, 3 another uid's, 4 another appcode's, 5 already acked.
            acked = await self.store.ack(2, 10, [99, 3, 4, 5, 1, 1])
            self.assertEqual([a.msgid for a in acked], [1])
            self.assertEqual(await self.pull_all(2, 10), [2])
            self.assertEqual(await self.pull_all(3, 10), [3])
            self.assertEqual(await self.pull_all(2, 11), [4])

        async def test_nothing_after_ack(self) -> None:
            await self.store.store([c2c(i) for i in range(1, 131)])
            self.assertEqual(len(await self.store.ack(2, 10, list(range(1, 131)))), 130)
            page = await self.store.pull(2, 10, 0, 100)
            self.assertEqual((page.messages, page.has_more), ([], False))
            self.assertEqual(await self.store.count_pending(2, 10), 0)

        async def test_count_pending(self) -> None:
            self.assertEqual(await self.store.count_pending(2, 10), 0)
            await self.store.store([c2c(1), c2c(2), c2c(3, to_appcode=11), s2c(4)])
            self.assertEqual(await self.store.count_pending(2, 10), 3)
            self.assertEqual(await self.store.count_pending(2, 11), 1)
            self.assertEqual(await self.store.count_pending(1, 10), 0)

        async def test_pending_message(self) -> None:
            [stored] = [c2c(5, content=b"\xff\x00 one")]
            await self.store.store([stored])
            found = await self.store.pending_message(2, 5)
            self.assertEqual(found, stored.message)
            self.assertIsNone(await self.store.pending_message(3, 5))  # another recipient's
            self.assertIsNone(await self.store.pending_message(2, 6))  # unknown
            await self.store.ack(2, 10, [5])
            self.assertIsNone(await self.store.pending_message(2, 5))  # delivered

        async def test_dedup_across_calls(self) -> None:
            first = await self.store.store([c2c(1, client_msg_id="k")])
            again = await self.store.store([c2c(2, client_msg_id="k", content=b"other")])
            self.assertEqual(first, [StoreOutcome(1, "log-1")])
            self.assertEqual(again, [StoreOutcome(1, "log-1", duplicate=True)])
            self.assertEqual(await self.pull_all(2, 10), [1])
            self.assertEqual(await self.store.max_msgid(), 1)
            page = await self.store.history(USERS, 1, 0, 10, 0)
            self.assertEqual(ids(page), [1])

        async def test_dedup_within_one_batch(self) -> None:
            outcomes = await self.store.store(
                [c2c(1, client_msg_id="a"), c2c(2, client_msg_id="b"), c2c(3, client_msg_id="a")]
            )
            self.assertEqual(
                outcomes,
                [
                    StoreOutcome(1, "log-1"),
                    StoreOutcome(2, "log-2"),
                    StoreOutcome(1, "log-1", duplicate=True),
                ],
            )
            self.assertEqual(await self.pull_all(2, 10), [1, 2])

        async def test_dedup_key_is_per_sender(self) -> None:
            """Same client_msg_id from another uid or appcode; no client_msg_id at all."""
            outcomes = await self.store.store(
                [c2c(1, 1, 10, client_msg_id="k"), c2c(2, 1, 11, client_msg_id="k"),
                 c2c(3, 5, 10, client_msg_id="k"), c2c(4), c2c(5)]
            )  # fmt: skip
            self.assertEqual([o.duplicate for o in outcomes], [False] * 5)
            self.assertEqual(await self.pull_all(2, 10), [1, 2, 3, 4, 5])

        async def test_purge_dedup(self) -> None:
            await self.store.store([c2c(1, client_msg_id="k")])
            self.assertEqual(await self.store.purge_dedup(0), 0)
            again = await self.store.store([c2c(2, client_msg_id="k")])
            self.assertTrue(again[0].duplicate)
            self.assertEqual(await self.store.purge_dedup(2**62), 1)
            anew = await self.store.store([c2c(3, client_msg_id="k")])
            self.assertEqual(anew, [StoreOutcome(3, "log-3")])
            self.assertEqual(await self.pull_all(2, 10), [1, 3])

        async def test_history_of_both_parties(self) -> None:
            await self.store.store(
                [
                    c2c(1, 1, 10, 2, 20, to_system=MERCHANTS),
                    c2c(2, 2, 20, 1, 11, from_system=MERCHANTS),
                ]
            )
            sender = await self.store.history(USERS, 1, 0, 10, 0)
            receiver = await self.store.history(MERCHANTS, 2, 0, 10, 0)
            self.assertEqual(ids(sender), [2, 1])
            self.assertEqual(ids(receiver), [2, 1])
            self.assertEqual(sender.messages[1], message(1, 1, 10, 2, 20))
            self.assertFalse(sender.has_more)
            # The same uid in the other user system is someone else.
            self.assertEqual(ids(await self.store.history(USERS, 2, 0, 10, 0)), [])

        async def test_history_of_self_c2c_across_appcodes(self) -> None:
            await self.store.store([c2c(1, 1, 10, 1, 11)])
            page = await self.store.history(USERS, 1, 0, 10, 0)
            self.assertEqual((ids(page), page.has_more), ([1], False))
            self.assertEqual(ids(await self.store.history(USERS, 1, 0, 10, 1)), [1])

        async def test_history_of_s2c(self) -> None:
            await self.store.store([s2c(1, to_uid=2)])
            self.assertEqual(ids(await self.store.history(USERS, 2, 0, 10, 0)), [1])
            self.assertEqual(ids(await self.store.history(USERS, 0, 0, 10, 0)), [])
            self.assertEqual(ids(await self.store.history("", 0, 0, 10, 0)), [])

        async def test_history_keeps_delivered_messages(self) -> None:
            await self.store.store([c2c(1)])
            await self.store.ack(2, 10, [1])
            self.assertEqual(ids(await self.store.history(USERS, 2, 0, 10, 0)), [1])

        async def test_history_peer_filter(self) -> None:
            await self.store.store(
                [c2c(1, 1, 10, 2, 10), c2c(2, 3, 10, 1, 10), c2c(3, 1, 11, 3, 10),
                 c2c(4, 2, 10, 1, 11), s2c(5, to_uid=1)]
            )  # fmt: skip
            self.assertEqual(ids(await self.store.history(USERS, 1, 0, 10, 2)), [4, 1])
            self.assertEqual(ids(await self.store.history(USERS, 1, 0, 10, 3)), [3, 2])
            self.assertEqual(ids(await self.store.history(USERS, 1, 0, 10, 0)), [5, 4, 3, 2, 1])

        async def test_history_pages_descending(self) -> None:
            await self.store.store([c2c(i, 1, 10, 2 + i % 2, 10) for i in range(1, 26)])
            seen: list[int] = []
            before, more, pages = 0, True, []
            while more:
                page = await self.store.history(USERS, 1, before, 10, 0)
                pages.append(page.has_more)
                seen.extend(ids(page))
                before, more = seen[-1], page.has_more
            self.assertEqual(pages, [True, True, False])
            self.assertEqual(seen, list(range(25, 0, -1)))
            page = await self.store.history(USERS, 1, 20, 3, 3)
            self.assertEqual((ids(page), page.has_more), ([19, 17, 15], True))

        async def test_max_msgid(self) -> None:
            self.assertEqual(await self.store.max_msgid(), 0)
            await self.store.store([c2c(7), c2c(2**62 + 5), c2c(3)])
            self.assertEqual(await self.store.max_msgid(), 2**62 + 5)

        async def test_group_commit(self) -> None:
            """Writes that arrive while one is in flight share the next transaction.

            One sender's stores keep their order (the first send of a key
            wins) on every backend; an ACK queued behind them sees them where
            writes are ordered, and is sent once they are done (as a client
            would: after the push) where they are not."""
            before = self.fixture.transactions()
            release = self.fixture.hold() if self.fixture.hold else None
            calls = [self.store.store([c2c(10 + i, client_msg_id=f"g{i % 3}")]) for i in range(6)]
            if self.fixture.ordered:
                calls.append(self.store.ack(2, 10, [10, 11]))
            else:
                stored = gatherResults(list(calls))
                calls.append(stored.addCallback(lambda _: self.store.ack(2, 10, [10, 11])))
            if release is not None:
                release()
            results = await gatherResults(calls)
            self.assertEqual(
                results[:6],
                [[StoreOutcome(10, "log-10")], [StoreOutcome(11, "log-11")],
                 [StoreOutcome(12, "log-12")], [StoreOutcome(10, "log-10", True)],
                 [StoreOutcome(11, "log-11", True)], [StoreOutcome(12, "log-12", True)]],
            )  # fmt: skip
            self.assertEqual([a.msgid for a in results[6]], [10, 11])
            self.assertLess(self.fixture.transactions() - before, len(calls))
            self.assertEqual(await self.pull_all(2, 10), [12])

    return MessageStoreTests


SessionFixture = Callable[[TestCase], Any]


def session(
    uid: int = 1, appcode: int = 10, node_id: int = 1, session_id: str = "s1"
) -> SessionRecord:
    return SessionRecord(uid, appcode, node_id, session_id, since_ms=1_700_000_000_000)


def make_session_store_tests(fixture: SessionFixture) -> type[TestCase]:
    """A ``TestCase`` of the :class:`ISessionStore` behaviour on the store (or
    Deferred of one) that ``fixture(test)`` makes."""

    class SessionStoreTests(TestCase):
        async def setUp(self) -> None:  # type: ignore[override]
            self.store = await maybeDeferred(fixture, self)

        def test_interface(self) -> None:
            self.assertTrue(verifyObject(ISessionStore, self.store))

        async def test_register_and_lookup(self) -> None:
            self.assertIsNone(await self.store.lookup(1, 10))
            self.assertIsNone(await self.store.register(session()))
            self.assertEqual(await self.store.lookup(1, 10), session())
            self.assertIsNone(await self.store.lookup(1, 11))
            self.assertIsNone(await self.store.lookup(2, 10))

        async def test_register_replaces_and_returns_the_other_session(self) -> None:
            await self.store.register(session(session_id="old"))
            new = session(node_id=2, session_id="new")
            self.assertEqual(await self.store.register(new), session(session_id="old"))
            self.assertEqual(await self.store.lookup(1, 10), new)

        async def test_register_same_session_twice(self) -> None:
            self.assertIsNone(await self.store.register(session()))
            self.assertIsNone(await self.store.register(session()))
            self.assertEqual(await self.store.lookup(1, 10), session())

        async def test_other_appcodes_are_not_replaced(self) -> None:
            await self.store.register(session(appcode=10, session_id="a"))
            self.assertIsNone(await self.store.register(session(appcode=11, session_id="b")))
            self.assertEqual((await self.store.lookup(1, 10)).session_id, "a")

        async def test_unregister(self) -> None:
            await self.store.register(session())
            self.assertTrue(await self.store.unregister(session()))
            self.assertIsNone(await self.store.lookup(1, 10))
            self.assertFalse(await self.store.unregister(session()))

        async def test_late_unregister_keeps_newer_login(self) -> None:
            await self.store.register(session(session_id="old"))
            await self.store.register(session(session_id="new"))
            self.assertFalse(await self.store.unregister(session(session_id="old")))
            self.assertEqual((await self.store.lookup(1, 10)).session_id, "new")

        async def test_lookup_uid_sorted_by_appcode(self) -> None:
            for appcode in (30, 10, 20):
                await self.store.register(session(appcode=appcode, session_id=f"s{appcode}"))
            await self.store.register(session(uid=2, appcode=15))
            found = await self.store.lookup_uid(1)
            self.assertEqual([r.appcode for r in found], [10, 20, 30])
            self.assertEqual(found[0], session(appcode=10, session_id="s10"))
            self.assertEqual(await self.store.lookup_uid(3), [])

        async def test_lookup_many_in_order(self) -> None:
            await self.store.register(session(1, 10, session_id="a|b"))
            await self.store.register(session(2, 11, session_id="c"))
            found = await self.store.lookup_many([(2, 11), (1, 11), (1, 10), (2**64 - 1, 10)])
            self.assertEqual(found, [session(2, 11, session_id="c"), None,
                                     session(1, 10, session_id="a|b"), None])
            self.assertEqual(await self.store.lookup_many([]), [])

        async def test_purge_node(self) -> None:
            await self.store.register(session(1, 10, node_id=1, session_id="a"))
            await self.store.register(session(1, 11, node_id=2, session_id="b"))
            await self.store.register(session(2, 10, node_id=1, session_id="c"))
            self.assertEqual(await self.store.purge_node(1), 2)
            self.assertIsNone(await self.store.lookup(1, 10))
            self.assertIsNone(await self.store.lookup(2, 10))
            self.assertEqual([r.session_id for r in await self.store.lookup_uid(1)], ["b"])
            self.assertEqual(await self.store.purge_node(1), 0)

    return SessionStoreTests

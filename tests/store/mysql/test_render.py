"""The MySQL store's SQL text: values as literals, statements sent several to a
query (and the COMMIT among them), and values that read back the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pymysql
from twisted.trial.unittest import TestCase

from daojia_msg.core.model import Kind, NewMessage, StoreOutcome
from daojia_msg.store.mysql.render import execute_batch, flush_renderers, sql_literal, sql_row
from tests.store.mysql.fixtures import TestPool, fresh_database, msgids, mysql_config, started
from tests.store.suites import NOT_UTF8, USERS, message


class LiteralTests(TestCase):
    """Multi-row inserts are written as literals, not bound parameters."""

    def test_literals(self) -> None:
        self.assertEqual(sql_literal(0), "0")
        self.assertEqual(sql_literal(2**64 - 1), "18446744073709551615")
        self.assertEqual(sql_literal(-5), "-5")
        self.assertEqual(sql_literal(Kind.S2C), str(int(Kind.S2C)))  # not "Kind.S2C"
        self.assertEqual(sql_literal(b"\x00'\\"), "X'00275c'")
        self.assertEqual(sql_literal(b""), "X''")
        self.assertEqual(sql_literal("it's"), "_utf8mb4 X'69742773'")
        self.assertEqual(sql_literal("\u4f60"), "_utf8mb4 X'e4bda0'")
        self.assertEqual(sql_literal(None), "NULL")
        self.assertEqual(sql_row((1, b"a", "b")), "(1, X'61', _utf8mb4 X'62')")
        for value in (True, 1.5, object()):
            self.assertRaises(TypeError, sql_literal, value)

    def test_flush_renderers_match_sql_row(self) -> None:
        """A flush renders each message's values once, for its pending row and
        its history rows; the text is what sql_row gives."""
        render_message, render_history = flush_renderers()
        row = (2**63 - 1, 1, 10, 2, 10, 7, int(Kind.C2C), b"\x00'x", 1764210000000, "a|b")
        other = (5, *row[1:])
        for text, expected in [
            (render_message(row), sql_row(row)),
            (render_history((b"default", 1, 2, *row)), sql_row((b"default", 1, 2, *row))),
            (render_history((b"shop", 2, 1, *row)), sql_row((b"shop", 2, 1, *row))),
            (render_history((b"x", 2, 1, *other)), sql_row((b"x", 2, 1, *other))),
            (render_history(("text", 2, 1, *row)), sql_row(("text", 2, 1, *row))),
        ]:
            self.assertEqual(text, expected)


class ExecuteBatchTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.url = url = fresh_database(self)
        config = mysql_config(url)
        self.pool = TestPool(url, config)
        self.store = await started(self, config, [self.pool])
        self.pool.queries.clear()

    async def test_results_in_order_and_packets_bounded(self) -> None:
        statements = [
            "INSERT INTO dedup_0 (uid, appcode, client_msg_sha256, msgid, logid, created_ms)"
            f" VALUES (1, 1, X'{i:064x}', {i}, 'l', 0)"
            for i in range(1, 4)
        ] + ["SELECT msgid FROM dedup_0 ORDER BY msgid", "UPDATE dedup_0 SET logid = 'm'"]
        results = await self.pool.runInteraction(execute_batch, statements, 1 << 20)
        self.assertEqual(results, [(1, []), (1, []), (1, []), (3, [(1,), (2,), (3,)]), (3, [])])
        self.assertEqual(len(self.pool.queries), 1)
        self.pool.queries.clear()
        small = len(statements[0]) * 2 + 2  # two inserts per query, at most
        done = await self.pool.runInteraction(
            execute_batch, ["DELETE FROM dedup_0"] + statements, small
        )
        self.assertEqual([n for n, _ in done], [3, 1, 1, 1, 3, 3])
        self.assertEqual(len(self.pool.queries), 3)  # DELETE + 1, 2 + 3, SELECT + UPDATE
        self.assertLessEqual(max(len(q) for q in self.pool.queries), small)

    async def test_a_failing_statement_stops_the_batch_and_fails_it(self) -> None:
        statements = ["SELECT 1", "SELECT no_such_column FROM dedup_0", "SELECT 3"]
        await self.assertFailure(
            self.pool.runInteraction(execute_batch, statements, 1 << 20),
            pymysql.err.OperationalError,
        )
        again = await self.pool.runInteraction(execute_batch, ["SELECT 4"], 1 << 20)
        self.assertEqual(again, [(1, [(4,)])])

    async def test_a_batch_that_commits_is_not_committed_again(self) -> None:
        """``commit=True``: COMMIT rides in the last query and adbapi's commit
        then sends nothing (the server counts one COMMIT for the transaction)."""
        pool = TestPool(self.url, mysql_config(self.url, pool_min=1, pool_max=1))
        self.addCleanup(pool.close)
        insert = (
            "INSERT INTO dedup_0 (uid, appcode, client_msg_sha256, msgid, logid,"
            " created_ms) VALUES (1, 1, X'00', 7, 'l', 0)"
        )

        def commits(txn: Any) -> int:
            txn.execute("SHOW SESSION STATUS LIKE 'Com_commit'")
            return int(txn.fetchone()[1])

        def run(txn: Any) -> tuple[list[Any], int, int]:
            before = commits(txn)
            done = execute_batch(txn, [insert, "SELECT 2"], 1 << 20, commit=True)
            return done, before, commits(txn)

        done, before, after = await pool.runInteraction(run)
        self.assertEqual(done, [(1, []), (1, [(2,)])])  # COMMIT's own result is not returned
        self.assertEqual(after, before + 1)
        self.assertIn(f"{insert};\nSELECT 2;\nCOMMIT", pool.queries)
        self.assertEqual(msgids(self.url, "dedup_0"), [7])
        # The one connection again: adbapi's commit after run() sent nothing.
        self.assertEqual(await pool.runInteraction(commits), after)
        # A plain interaction's commit is sent.
        self.assertEqual(await pool.runInteraction(commits), after + 1)

    async def test_a_failing_batch_commits_nothing(self) -> None:
        insert = (
            "INSERT INTO dedup_0 (uid, appcode, client_msg_sha256, msgid, logid,"
            " created_ms) VALUES (1, 1, X'00', 8, 'l', 0)"
        )
        await self.assertFailure(
            self.pool.runInteraction(
                execute_batch, [insert, "SELECT nothing FROM dedup_0"], 1 << 20, True
            ),
            pymysql.err.OperationalError,
        )
        self.assertEqual(msgids(self.url, "dedup_0"), [])


class LiteralRoundTripTests(TestCase):
    async def test_values_written_as_literals_read_back_the_same(self) -> None:
        """Content with quotes, backslashes, NUL and invalid UTF-8; a logid
        with quotes, a backslash and non-ASCII text; the largest ids."""
        store = await started(self, mysql_config(fresh_database(self)))
        content = b"'\\\x00\"; DROP TABLE x; --" + NOT_UTF8
        sent = replace(
            message(2**63 + 7, 2**64 - 1, 2**32 - 1, 2**64 - 2, 10, content=content),
            logid="it's \\ \u4f60\u597d",
        )
        key = "k'\\"
        self.assertEqual(await store.store([NewMessage(sent, USERS, USERS, key)]),
                         [StoreOutcome(sent.msgid, sent.logid)])  # fmt: skip
        self.assertEqual((await store.pull(sent.to_uid, 10, 0, 10)).messages, [sent])
        self.assertEqual((await store.history(USERS, sent.from_uid, 0, 10, 0)).messages, [sent])
        resend = replace(sent, msgid=6, content=b"", logid="x")
        self.assertEqual(await store.store([NewMessage(resend, USERS, USERS, key)]),
                         [StoreOutcome(sent.msgid, sent.logid, duplicate=True)])  # fmt: skip
        other = await store.store([NewMessage(message(5), USERS, USERS, key)])
        self.assertEqual(other, [StoreOutcome(5, "log-5")])  # another sender: another key

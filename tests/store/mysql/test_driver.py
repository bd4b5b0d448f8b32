"""daojia_msg.store.mysqldriver: one TLS "preferred" context for all connections."""

from __future__ import annotations

import ssl

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.store import mysqldriver
from tests.servers import MYSQL_HOST, MYSQL_PORT, MYSQL_USER, require_mysql


class PreferredTLSContextTests(SynchronousTestCase):
    def test_built_once_as_pymysql_builds_it(self) -> None:
        """No TLS option: the same context every time, unverified as PyMySQL's
        own "preferred" one; an explicit option still builds its own."""
        conn = object.__new__(mysqldriver.Connection)
        first = conn._create_ssl_ctx({})
        self.assertIs(conn._create_ssl_ctx({}), first)
        self.assertIsInstance(first, ssl.SSLContext)
        theirs = mysqldriver.pymysql.connections.Connection._create_ssl_ctx(None, {})
        self.assertIsNot(theirs, first)
        self.assertEqual((first.verify_mode, first.check_hostname),
                         (theirs.verify_mode, theirs.check_hostname))
        explicit = conn._create_ssl_ctx({"verify_mode": "required"})
        self.assertIsNot(explicit, first)
        self.assertEqual(explicit.verify_mode, ssl.CERT_REQUIRED)

    def test_real_connections_share_it(self) -> None:
        url = require_mysql()
        self.addCleanup(_drop, url)
        conns = [mysqldriver.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER)
                 for _ in range(2)]
        try:
            self.assertIs(conns[0].ctx, conns[1].ctx)
            for conn in conns:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    self.assertEqual(cur.fetchone(), (1,))
        finally:
            for conn in conns:
                conn.close()


def _drop(url: str) -> None:
    from tests.servers import drop_mysql_database

    drop_mysql_database(url)

"""TLS to MySQL, by the URL's ``ssl-mode`` and ``ssl-ca``: the driver options
of each mode, a connection that should be encrypted and is not refused, the
test server as it is (TLS or not), and a private MariaDB with TLS on, whose
certificate is checked against the right CA and refused against another."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.chaos import servers as chaos_servers
from daojia_msg.config import ConfigError
from daojia_msg.store.mysql import MySQLMessageStore
from daojia_msg.store.mysql.pools import TLS_ERROR, configure_connection
from daojia_msg.store.mysqldriver import tls_options
from tests.servers import missing
from tests.store.mysql.fixtures import fresh_database, mysql_config, query, started
from tests.tlscerts import CA

R: Any = reactor


def cipher(txn: Any) -> str:
    txn.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    return str(txn.fetchone()[1])


def with_query(url: str, query_text: str) -> str:
    return f"{url}?{query_text}"


class OptionsTests(SynchronousTestCase):
    def test_each_mode(self) -> None:
        self.assertEqual(tls_options("preferred"), {})
        self.assertEqual(tls_options("disabled"), {"ssl_disabled": True})
        required = tls_options("required")["ssl"]
        self.assertEqual((required.verify_mode, required.check_hostname), (ssl.CERT_NONE, False))
        verify_ca = tls_options("verify_ca")["ssl"]
        self.assertEqual((verify_ca.verify_mode, verify_ca.check_hostname),
                         (ssl.CERT_REQUIRED, False))
        identity = tls_options("verify_identity")["ssl"]
        self.assertEqual((identity.verify_mode, identity.check_hostname),
                         (ssl.CERT_REQUIRED, True))

    def test_ssl_ca_is_the_only_trust(self) -> None:
        ca = CA(self.mktemp())
        context = tls_options("verify_ca", ca.path)["ssl"]
        self.assertEqual([c["subject"] for c in context.get_ca_certs()],
                         [((("commonName", "msgplatform test CA"),),)])


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, statement: str) -> None:
        self.conn.statements.append(statement)

    def fetchone(self) -> tuple[str, str]:
        return ("Ssl_cipher", self.conn.cipher)


class FakeConnection:
    def __init__(self, cipher: str) -> None:
        self.cipher = cipher
        self.statements: list[str] = []
        self.committed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        self.committed = True


class OpenedConnectionTests(SynchronousTestCase):
    def test_a_required_connection_left_plain_is_refused_before_use(self) -> None:
        """pymysql before 2.2 goes on in plain text when the server has no
        TLS: the pool's first use of a connection checks."""
        conn = FakeConnection(cipher="")
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            configure_connection(conn, 5, "verify_identity")
        self.assertEqual(caught.exception.args[0], TLS_ERROR)
        self.assertIn("ssl-mode=verify_identity but the server did not encrypt",
                      caught.exception.args[1])
        self.assertEqual(len(conn.statements), 1)  # nothing else was sent
        self.assertFalse(conn.committed)

    def test_an_encrypted_one_is_set_up(self) -> None:
        conn = FakeConnection(cipher="TLS_AES_256_GCM_SHA384")
        configure_connection(conn, 5, "required")
        self.assertEqual(len(conn.statements), 3)
        self.assertTrue(conn.committed)

    def test_preferred_and_disabled_do_not_ask(self) -> None:
        for mode in ("preferred", "disabled"):
            conn = FakeConnection(cipher="")
            configure_connection(conn, 5, mode)
            self.assertEqual(len(conn.statements), 2, mode)


class TestServerTests(TestCase):
    """The test MySQL/MariaDB as it is configured: with TLS or without."""

    async def test_disabled_and_required(self) -> None:
        url = fresh_database(self)
        have_ssl = query(url, "SHOW GLOBAL VARIABLES LIKE 'have_ssl'")
        has_tls = bool(have_ssl) and have_ssl[0][1] == "YES"
        store = await started(self, mysql_config(with_query(url, "ssl-mode=disabled")))
        self.assertEqual(await store.pools[0].runInteraction(cipher), "")
        await store.stop()
        required = mysql_config(with_query(url, "ssl-mode=required"), connect_timeout_s=3.0)
        if has_tls:
            store = await started(self, required)
            self.assertNotEqual(await store.pools[0].runInteraction(cipher), "")
        else:
            store = MySQLMessageStore(required, R)
            self.addCleanup(store.stop)
            error: Any = await self.assertFailure(store.start(), ConfigError)
            self.assertRegex(str(error), r"^mysql\.url: root@127\.0\.0\.1:\d+/msgp_test_\w+: "
                                         "TLS: (SSL is required|.*did not encrypt).*turn TLS on")
            self.flushLoggedErrors()


class PrivateTLSServerTests(TestCase):
    """A MariaDB of the test's own with TLS on (a throw-away CA's certificate
    for 127.0.0.1): the modes that check the certificate pass with the right
    CA and fail with another, and every mode but ``disabled`` encrypts."""

    timeout = 180

    async def test_modes_against_a_server_with_tls(self) -> None:
        programs, lacking = chaos_servers.prerequisites()
        if "mariadbd" not in programs or "mariadb-install-db" not in programs:
            missing("mariadbd and mariadb-install-db are needed: apt-get install mariadb-server")
        # Short: MariaDB's socket path must fit in 107 bytes.
        directory = tempfile.mkdtemp(prefix="msgp-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        ca, other = CA(os.path.join(directory, "ca")), CA(os.path.join(directory, "other"),
                                                          "another CA")
        server = ca.issue("mariadb")
        port = chaos_servers.free_ports(1)[0]
        proc = chaos_servers.mariadb_proc(R, programs, directory, port, extra=(
            f"--ssl-cert={server.cert}", f"--ssl-key={server.key}", f"--ssl-ca={ca.path}"))
        await proc.start(timeout=120)
        self.addCleanup(proc.stop)
        base = chaos_servers.create_database(port, "tls_test")

        for query_text, encrypted in (("", True), ("ssl-mode=disabled", False),
                                      ("ssl-mode=required", True),
                                      (f"ssl-mode=verify_identity&ssl-ca={ca.path}", True),
                                      (f"ssl-ca={ca.path}", True)):
            url = with_query(base, query_text) if query_text else base
            store = await started(self, mysql_config(url))
            got = await store.pools[0].runInteraction(cipher)
            self.assertEqual(bool(got), encrypted, query_text)
            await store.stop()

        for query_text in (f"ssl-mode=verify_ca&ssl-ca={other.path}",
                           "ssl-mode=verify_identity"):  # the system's CAs did not sign it
            store = MySQLMessageStore(mysql_config(with_query(base, query_text),
                                                   connect_timeout_s=3.0), R)
            self.addCleanup(store.stop)
            error: Any = await self.assertFailure(store.start(), ConfigError)
            self.assertIn("TLS: [SSL: CERTIFICATE_VERIFY_FAILED]", str(error), query_text)
            self.assertIn("is ssl-ca the CA that signed", str(error), query_text)
            await store.stop()
        self.flushLoggedErrors()

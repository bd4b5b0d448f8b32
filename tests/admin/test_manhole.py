"""Tests for daojia_msg.admin.manhole: the telnet admin manhole.

Most tests connect a telnet client (Twisted's :class:`telnet.Telnet`, answering
option negotiation as a terminal user's client does) to the manhole's server
protocol through :mod:`twisted.test.iosim`, on a :class:`Clock`, so the login
pause and timeout are deterministic (:mod:`tests.admin.telnet`).
:class:`RealSocketTests` log in once over a TCP socket on loopback.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.admin.manhole import (
    FAILURE_DELAY_S,
    LOGIN_TIMEOUT_S,
    MANHOLE_USERNAME,
    AdminNamespace,
    check_manhole_config,
    make_manhole_factory,
)
from daojia_msg.config import ConfigError
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import NodeInfo, SessionRecord
from daojia_msg.protocol.codes import KickReason
from tests.admin.telnet import (
    PASSWORD,
    WRONG,
    FakeNode,
    ManholeTestCase,
    RawClient,
    TelnetClient,
    text_of,
)


class LoginTests(ManholeTestCase):
    def test_right_password_gets_a_prompt(self) -> None:
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        self.assertEqual(client.text, "Username: ")
        client.type(MANHOLE_USERNAME)
        pump.flush()
        self.assertTrue(client.text.endswith("Password: "))
        client.type(PASSWORD)
        pump.flush()
        self.assertIn("msgplatform admin manhole", client.text)
        self.assertTrue(client.text.endswith(">>> "))
        self.assertIn("6*7\n42\n>>> ", self.evaluate(client, pump, "6*7"))
        logins = [e for e in self.events if "login from" in e.get("log_format", "")]
        self.assertEqual([formatEvent(e) for e in logins],
                         ["admin manhole: login from 127.0.0.1:40000"])

    def test_wrong_password_is_refused_and_closed_after_three(self) -> None:
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        # Code typed at the prompts is a user name and a password, not code.
        for n, (user, password) in enumerate([(MANHOLE_USERNAME, WRONG),
                                              ("6*7", "print('ns', stats)"),
                                              (MANHOLE_USERNAME, WRONG)], 1):
            client.type(user)
            pump.flush()
            client.type(password)
            pump.flush()
            self.assertEqual(client.text.count("Authentication failed"), n)
            self.assertEqual(client.lost, n == 3)
            self.clock.advance(FAILURE_DELAY_S)
            pump.flush()
        self.assertTrue(client.text.endswith("Too many failed logins: closing.\n"))
        self.assertEqual(client.text.count("Username: "), 3)
        self.assertNotIn(">>>", client.text)
        self.assertNotIn("42", client.text)
        self.assertNotIn("ns ", client.text)
        failed = [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual(failed, [f"admin manhole: failed login from 127.0.0.1:40000 ({n} of 3)"
                                  for n in (1, 2, 3)])

    def test_right_password_wrong_user_is_refused(self) -> None:
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        client.type("root")
        pump.flush()
        client.type(PASSWORD)
        pump.flush()
        self.assertIn("Authentication failed", client.text)
        self.assertNotIn(">>>", client.text)

    def test_pause_after_a_wrong_password(self) -> None:
        """Lines typed during the pause are dropped; then it asks again."""
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        client.type(MANHOLE_USERNAME)
        pump.flush()
        client.type(WRONG)
        pump.flush()
        client.type(MANHOLE_USERNAME)
        client.type(PASSWORD)
        pump.flush()
        self.assertNotIn(">>>", client.text)
        self.assertEqual(client.text.count("Username: "), 1)
        self.clock.advance(FAILURE_DELAY_S)
        pump.flush()
        self.assertEqual(client.text.count("Username: "), 2)
        client.type(MANHOLE_USERNAME)
        pump.flush()
        client.type(PASSWORD)
        pump.flush()
        self.assertIn(">>> ", client.text)

    def test_login_timeout(self) -> None:
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        client.type(MANHOLE_USERNAME)
        pump.flush()
        self.clock.advance(LOGIN_TIMEOUT_S)
        pump.flush()
        self.assertIn("Login timed out.", client.text)
        self.assertTrue(client.lost)

    def test_disconnect_during_the_pause_leaves_no_timer(self) -> None:
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        client.type(MANHOLE_USERNAME)
        pump.flush()
        client.type(WRONG)
        pump.flush()
        self.assertTrue(self.clock.getDelayedCalls())
        # _disconnect (a cleanup) closes it and checks that no call is left.

    def test_login_without_negotiation(self) -> None:
        """A client that answers no telnet option (nc) logs in all the same,
        and what it typed ahead runs at the prompt."""
        client, pump = self.connect(RawClient())
        assert isinstance(client, RawClient) and client.transport is not None
        client.transport.write(f"{MANHOLE_USERNAME}\n{PASSWORD}\n6*7\n".encode())
        pump.flush()
        self.assertIn("42\n>>> ", text_of(client.output))

    def test_carriage_return_nul_ends_a_line(self) -> None:
        """Telnet in character mode ends a line with CR NUL."""
        client, pump = self.connect()
        assert isinstance(client, TelnetClient) and client.transport is not None
        client.transport.write(MANHOLE_USERNAME.encode() + b"\r\0")
        pump.flush()
        client.transport.write(PASSWORD.encode() + b"\r\0")
        pump.flush()
        self.assertIn(">>> ", client.text)

    def test_password_is_never_logged(self) -> None:
        client, pump = self.connect()
        assert isinstance(client, TelnetClient)
        client.type(WRONG)  # a password typed as the user name
        pump.flush()
        client.type(WRONG)
        pump.flush()
        self.clock.advance(FAILURE_DELAY_S)
        pump.flush()
        client.type(MANHOLE_USERNAME)
        pump.flush()
        client.type(PASSWORD)
        pump.flush()
        self.assertIn(">>> ", client.text)
        self.assertTrue(self.events)
        for event in self.events:
            for secret in (PASSWORD, WRONG):
                self.assertNotIn(secret, repr(event))
                self.assertNotIn(secret, formatEvent(event))

    def test_no_password_no_manhole(self) -> None:
        self.assertRaises(ValueError, make_manhole_factory, {}, "", self.clock)


class NamespaceTests(ManholeTestCase):
    def test_stats(self) -> None:
        client, pump = self.login()
        self.assertIn("{'totals': {'accepted': 7, 'acked': 6}, 'by_route': [], "
                      "'delivery_rate': 0.75}", self.evaluate(client, pump, "stats()"))

    def test_online(self) -> None:
        client, pump = self.login()
        self.assertIn("[{'appcode': 1001, 'node': 3, 'since_ms': 1700000000123}]",
                      self.evaluate(client, pump, "online(5)"))
        self.assertIn("\n[]\n", self.evaluate(client, pump, "online(6)"))
        self.assertIn("BadRequest: uid must be from 1 to", self.evaluate(client, pump, "online(0)"))

    def test_kick(self) -> None:
        client, pump = self.login()
        self.assertIn("\n1\n>>> ", self.evaluate(client, pump, "kick(5, 1001)"))
        self.assertEqual(self.node.kicked, [(5, 1001, KickReason.ADMIN)])

    def test_nodes_on_one_node(self) -> None:
        client, pump = self.login()
        self.assertIn("[{'node_id': 3, 'gate_host': '127.0.0.1', 'gate_port': 7000, "
                      "'connections': 1}]", self.evaluate(client, pump, "nodes()"))

    def test_nodes_in_a_cluster(self) -> None:
        self.node.cluster = [NodeInfo(1, "10.0.0.1", 7000, "10.0.0.1", 7100, 12, 1, 2),
                             NodeInfo(2, "10.0.0.2", 7000, "10.0.0.2", 7100, 34, 1, 2)]
        client, pump = self.login(clustered=True)
        shown = self.evaluate(client, pump, "[(n['node_id'], n['connections']) for n in nodes()]")
        self.assertIn("[(1, 12), (2, 34)]", shown)

    def test_trace(self) -> None:
        client, pump = self.login()
        self.assertIn("[{'log_format': 'c2c stored {msgid}', 'msgid': 77, 'logid': 'x'}]",
                      self.evaluate(client, pump, 'trace("x")'))
        self.assertIn("\n[]\n", self.evaluate(client, pump, 'trace("y")'))

    def test_trace_defaults_to_nothing(self) -> None:
        namespace = AdminNamespace(lookup_uid=self.node.lookup_uid, kickout=self.node.kickout,
                                   stats=self.node.stats, this_node=self.node.this_node)
        self.assertEqual(namespace.trace("x"), [])

    def test_help(self) -> None:
        client, pump = self.login()
        shown = self.evaluate(client, pump, "help(online)")
        self.assertIn('online(uid) -> [{"appcode", "node", "since_ms"}, ...]', shown)
        self.assertIn("cluster-wide", shown)
        for name, first_line in [("kick", "kick(uid, appcode) -> how many sessions were kicked"),
                                 ("stats", 'stats() -> {"totals": {...}, "by_route": [...]'),
                                 ("nodes", 'nodes() -> [{"node_id", "gate_host"'),
                                 ("trace", "trace(logid) -> [event, ...]")]:
            self.assertIn(first_line, self.evaluate(client, pump, f"help({name})"))

    def test_each_connection_has_its_own_globals(self) -> None:
        client, pump = self.login()
        self.evaluate(client, pump, "mine = 1")
        other, other_pump = self.login()
        self.assertIn("NameError", self.evaluate(other, other_pump, "mine"))


class AsyncAnswerTests(ManholeTestCase):
    def test_pending_answer_is_shown_when_it_comes(self) -> None:
        held: Deferred[list[SessionRecord]] = Deferred()
        self.node.answer = held
        client, pump = self.login()
        self.assertIn("<Deferred #0>\n>>> ", self.evaluate(client, pump, "online(5)"))
        client.output = b""
        held.callback(self.node.sessions[5])
        pump.flush()
        self.assertIn("Deferred #0 called back: [{'appcode': 1001, 'node': 3, "
                      "'since_ms': 1700000000123}]", client.text)
        self.assertTrue(client.text.endswith(">>> "))

    def test_pending_failure_is_shown_not_logged(self) -> None:
        held: Deferred[list[SessionRecord]] = Deferred()
        self.node.answer = held
        client, pump = self.login()
        self.evaluate(client, pump, "online(5)")
        client.output = b""
        held.errback(StoreUnavailable("redis is down"))
        pump.flush()
        self.assertIn("Deferred #0 failed: 'redis is down'", client.text)
        # Handled: nothing is left to be logged as an unhandled error.
        self.assertIn("current result: None", self.evaluate(client, pump, "_"))

    def test_immediate_failure_is_raised(self) -> None:
        self.node.answer = fail(StoreUnavailable("redis is down"))
        client, pump = self.login()
        shown = self.evaluate(client, pump, "online(5)")
        self.assertIn("StoreUnavailable: redis is down", shown)
        self.assertNotIn("<Deferred", shown)

    def test_coroutine_at_the_prompt(self) -> None:
        client, pump = self.login()
        self.evaluate(client, pump, "async def answer(): return 6 * 7")
        self.evaluate(client, pump, "")
        self.assertIn("\n42\n>>> ", self.evaluate(client, pump, "answer()"))


class ConfigTests(SynchronousTestCase):
    def assertRefused(self, listen: str, password: str, path: tuple[str, ...]) -> ConfigError:
        e = self.assertRaises(ConfigError, check_manhole_config, listen, password)
        self.assertEqual(e.path, path)
        return e

    def test_off(self) -> None:
        check_manhole_config("", "")
        check_manhole_config("", PASSWORD)

    def test_no_password(self) -> None:
        e = self.assertRefused("tcp:7300:interface=127.0.0.1", "", ("admin", "manhole_password"))
        self.assertTrue(str(e).startswith("admin.manhole_password: required when listen.manhole"))

    def test_loopback(self) -> None:
        for listen in ("tcp:7300:interface=127.0.0.1", "tcp:0:interface=127.0.0.2",
                       r"tcp6:7300:interface=\:\:1", "tcp:7300:interface=localhost",
                       "unix:/run/msgplatform/manhole.sock:mode=600"):
            check_manhole_config(listen, PASSWORD)

    def test_not_loopback(self) -> None:
        for listen in ("tcp:7300", "tcp:7300:interface=0.0.0.0", "tcp:7300:interface=10.0.0.5",
                       "tcp6:7300", r"tcp6:7300:interface=\:\:"):
            e = self.assertRefused(listen, PASSWORD, ("listen", "manhole"))
            self.assertIn("loopback", str(e))

    def test_not_an_endpoint(self) -> None:
        self.assertRefused("nonsense:7300", PASSWORD, ("listen", "manhole"))
        self.assertRefused("tcp:port", PASSWORD, ("listen", "manhole"))


class RealSocketTests(TestCase):
    """Log in over a real TCP socket on loopback and use the prompt."""

    timeout = 10

    async def test_login_and_stats(self) -> None:
        node = FakeNode()
        factory = make_manhole_factory(node.namespace(), PASSWORD, reactor)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = TelnetClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              client)
        await client.when_shown("Username: ")
        client.type(MANHOLE_USERNAME)
        await client.when_shown("Password: ")
        client.type(PASSWORD)
        await client.when_shown(">>> ")
        client.type("stats()['totals']")
        await client.when_shown("{'accepted': 7, 'acked': 6}\n>>> ")
        client.type("kick(5, 1002)")
        await client.when_shown("\n1\n>>> ")
        self.assertEqual(node.kicked, [(5, 1002, KickReason.ADMIN)])
        # Ctrl-D at an empty prompt: the server closes (so it is gone first).
        assert client.transport is not None
        client.transport.write(b"\x04")
        await client.on_lost

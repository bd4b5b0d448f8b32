"""daojia_msg.tls: PEM files into Twisted's contexts (TLS 1.2 and 1.3 only), ssl:
descriptions, reloading a listener's certificate, describing TLS failures, and
the SIGHUP handler that chains to the one before it. Handshakes run in memory."""

from __future__ import annotations

import os
import signal
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from daojia_msg import tls
from tests.tlscerts import CA, subject_of


def handshake(server: SSL.Connection, client: SSL.Connection) -> str:
    """Run a handshake between two memory-BIO connections; the version agreed
    on, or SSL.Error from whichever side gave up."""
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(20):
        done = 0
        for side, other in ((client, server), (server, client)):
            try:
                side.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
        if done == 2:
            return str(client.get_protocol_version_name())
    raise AssertionError("the handshake did not finish")


def wrapper(creator: Any, client: bool) -> Any:
    """The TLS protocol Twisted would hand ``creator`` for one connection."""
    return TLSMemoryBIOFactory(creator, client, Factory.forProtocol(Protocol)).buildProtocol(None)


def old_client(version: int) -> SSL.Connection:
    """A client that speaks only ``version`` (and accepts any certificate)."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(version)
    context.set_max_proto_version(version)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # let TLS 1.1 be offered at all
    return SSL.Connection(context, None)


class FilesTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.ca = CA(self.dir)
        self.server = self.ca.issue("node one", stem="server")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


class LoadingTests(FilesTestCase):
    def test_a_missing_file_is_named(self) -> None:
        e = self.assertRaises(tls.TLSError, tls.server_options, "nope.pem", self.server.key)
        self.assertEqual(str(e), "cannot read the certificate 'nope.pem': No such file or directory")
        self.assertEqual(e.role, "cert")
        e = self.assertRaises(tls.TLSError, tls.server_options, self.server.cert, "nope.key")
        self.assertEqual(e.role, "key")

    def test_a_file_without_a_certificate(self) -> None:
        junk = self.write("junk.pem", b"not a certificate\n")
        e = self.assertRaises(tls.TLSError, tls.server_options, junk, self.server.key)
        self.assertEqual(str(e), f"the certificate file {junk!r} holds no PEM certificate")

    def test_a_key_of_another_certificate(self) -> None:
        other = self.ca.issue("node two", stem="other")
        e = self.assertRaises(tls.TLSError, tls.server_options, self.server.cert, other.key)
        self.assertIn("does not belong to the certificate", str(e))
        self.assertEqual(e.role, "key")

    def test_a_key_that_is_no_key(self) -> None:
        e = self.assertRaises(tls.TLSError, tls.server_options, self.server.cert,
                              self.server.cert)
        self.assertIn("is not an unencrypted PEM key", str(e))

    def test_a_full_chain_file_sends_its_chain(self) -> None:
        with open(self.server.cert, "rb") as f, open(self.ca.path, "rb") as g:
            full = self.write("full.pem", f.read() + g.read())
        options = tls.server_options(full, self.server.key)
        self.assertEqual(len(options.extraCertChain), 1)
        self.assertEqual(subject_of(open(self.server.cert, "rb").read()), "node one")

    def test_a_ca_file_that_is_missing(self) -> None:
        e = self.assertRaises(tls.TLSError, tls.client_options, "localhost", ca="none.pem")
        self.assertEqual(e.role, "ca")
        self.assertIn("cannot read the CA certificate 'none.pem'", str(e))


class VersionTests(FilesTestCase):
    """Listeners speak TLS 1.2 and 1.3, and nothing older."""

    def listener(self) -> SSL.Connection:
        return SSL.Connection(tls.server_options(self.server.cert, self.server.key).getContext(),
                              None)

    def client(self, max_version: int | None = None) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        if max_version is not None:
            context.set_max_proto_version(max_version)
        return SSL.Connection(context, None)

    def test_tls_1_3(self) -> None:
        self.assertEqual(handshake(self.listener(), self.client()), "TLSv1.3")

    def test_tls_1_2(self) -> None:
        self.assertEqual(handshake(self.listener(), self.client(SSL.TLS1_2_VERSION)), "TLSv1.2")

    def test_tls_1_1_and_1_0_are_refused(self) -> None:
        for version in (SSL.TLS1_1_VERSION, SSL.TLS1_VERSION):
            self.assertRaises(SSL.Error, handshake, self.listener(), old_client(version))

    def test_the_old_client_speaks_to_a_server_that_allows_it(self) -> None:
        """The refusal above is the listener's: this client does finish a TLS
        1.1 handshake with a server that allows it."""
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate_file(self.server.cert)
        context.use_privatekey_file(self.server.key)
        self.assertEqual(handshake(SSL.Connection(context, None),
                                   old_client(SSL.TLS1_1_VERSION)), "TLSv1.1")

    def test_clients_refuse_old_servers_too(self) -> None:
        options = tls.client_options("127.0.0.1", ca=self.ca.path)
        client = options.clientConnectionForTLS(wrapper(options, True))
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate_file(self.server.cert)
        context.use_privatekey_file(self.server.key)
        self.assertRaises(SSL.Error, handshake, SSL.Connection(context, None), client)


class DescriptionTests(FilesTestCase):
    def test_an_ssl_description_is_a_reloadable_listener(self) -> None:
        endpoint, server = tls.server_endpoint(
            None, f"ssl:7443:interface=127.0.0.1:backlog=9:privateKey={self.server.key}:"
                  f"certKey={self.server.cert}", "gate")
        self.assertIsInstance(endpoint, SSL4ServerEndpoint)
        assert server is not None
        self.assertEqual((server.name, server.files["cert"]), ("gate", self.server.cert))
        ep: Any = endpoint
        self.assertEqual((ep._port, ep._interface, ep._backlog), (7443, "127.0.0.1", 9))
        self.assertIs(ep._sslContextFactory, server)

    def test_other_descriptions_are_twisteds(self) -> None:
        endpoint, server = tls.server_endpoint(None, "tcp:7000:interface=127.0.0.1")
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        self.assertIsNone(server)

    def test_sslmethod_is_refused(self) -> None:
        e = self.assertRaises(
            tls.TLSError, tls.server_endpoint, None,
            f"ssl:7443:privateKey={self.server.key}:sslmethod=TLSv1_METHOD")
        self.assertIn("does not take sslmethod (TLS 1.2 and 1.3 only", str(e))

    def test_haproxy_ssl_is_refused(self) -> None:
        e = self.assertRaises(tls.TLSError, tls.server_endpoint, None,
                              f"haproxy:ssl:7443:privateKey={self.server.key}")
        self.assertIn("haproxy:ssl: is not supported", str(e))

    def test_files_are_read_at_once(self) -> None:
        e = self.assertRaises(tls.TLSError, tls.server_endpoint, None,
                              "ssl:7443:privateKey=missing.key:certKey=missing.pem")
        self.assertIn("'missing.pem'", str(e))


class ReloadTests(FilesTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.listener = tls.ServerTLS("gate", self.server.cert, self.server.key)

    def presented(self) -> str:
        """The subject a new handshake sees."""
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        server = self.listener.serverConnectionForTLS(wrapper(self.listener, False))
        handshake(server, client)
        cert = client.get_peer_certificate()
        assert cert is not None
        return str(cert.get_subject().CN)

    def test_a_new_certificate_reaches_new_handshakes(self) -> None:
        before = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        old_server = self.listener.serverConnectionForTLS(wrapper(self.listener, False))
        handshake(old_server, before)
        self.ca.issue("node one, renewed", stem="server")  # over the same files
        self.assertTrue(self.listener.reload())
        self.assertEqual(self.presented(), "node one, renewed")
        cert = before.get_peer_certificate()
        assert cert is not None
        self.assertEqual(cert.get_subject().CN, "node one")  # the open one keeps its own
        self.assertIsNot(old_server.get_context(), self.listener.options.getContext())

    def test_a_bad_file_keeps_the_certificate_in_use(self) -> None:
        self.write("server.pem", b"half a certificate")
        self.assertFalse(self.listener.reload())
        self.assertEqual(self.presented(), "node one")
        errors = [e for e in self.events if e.get("log_level").name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("kept the TLS certificate in use", errors[0]["log_format"])
        self.assertIn("holds no PEM certificate", errors[0]["why"])

    def test_a_key_that_no_longer_matches_keeps_the_pair_in_use(self) -> None:
        other = self.ca.issue("node two", stem="other")
        os.replace(other.cert, self.server.cert)  # a new certificate, the old key
        self.assertFalse(self.listener.reload())
        self.assertEqual(self.presented(), "node one")


class FailureTests(SynchronousTestCase):
    def test_openssl_reasons(self) -> None:
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(tls.tls_failure(error), "certificate verify failed")

    def test_a_name_the_certificate_does_not_carry(self) -> None:
        self.assertEqual(tls.tls_failure(VerificationError(errors=[])),
                         "the server's certificate does not name the host connected to")

    def test_inside_the_http_clients_wrapper(self) -> None:
        error = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])
        wrapped = ResponseNeverReceived([Failure(error)])
        self.assertEqual(tls.tls_failure(wrapped), "tlsv1 alert unknown ca")

    def test_other_errors_are_not_tls(self) -> None:
        self.assertIsNone(tls.tls_failure(ConnectionResetError()))
        self.assertIsNone(tls.tls_failure(None))


class FakeReactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append(f)


class SighupTests(SynchronousTestCase):
    def setUp(self) -> None:
        original = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, original)
        self.reactor = FakeReactor()
        self.reloads: list[str] = []

    def reload(self) -> None:
        self.reloads.append("reload")

    def test_the_handler_before_is_called_too(self) -> None:
        seen: list[int] = []
        signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
        tls.on_sighup(self.reload, self.reactor)
        handler: Any = signal.getsignal(signal.SIGHUP)
        handler(signal.SIGHUP, None)
        self.assertEqual(self.reactor.calls, [self.reload])  # in the reactor, not the handler
        self.assertEqual(seen, [signal.SIGHUP])

    def test_no_handler_before(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        restore = tls.on_sighup(self.reload, self.reactor)
        handler: Any = signal.getsignal(signal.SIGHUP)
        handler(signal.SIGHUP, None)  # SIG_DFL is not called: it would end the process
        self.assertEqual(self.reactor.calls, [self.reload])
        restore()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)

    def test_restore_puts_the_handler_before_back(self) -> None:
        def before(signum: int, frame: Any) -> None:
            pass

        signal.signal(signal.SIGHUP, before)
        restore = tls.on_sighup(self.reload, self.reactor)
        restore()
        self.assertIs(signal.getsignal(signal.SIGHUP), before)

    def test_a_real_sighup(self) -> None:
        seen: list[int] = []
        signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
        tls.on_sighup(self.reload, self.reactor)
        os.kill(os.getpid(), signal.SIGHUP)  # Python runs the handler before the next line
        self.assertEqual((self.reactor.calls, seen), ([self.reload], [signal.SIGHUP]))

# -*- test-case-name: tests.test_tls,tests.test_tls_node,tests.test_tls_twistd -*-
"""TLS for msgplatform's TCP connections (docs/protocol.md §7.1): TLS 1.2 and 1.3 only.

The contexts are Twisted's: :class:`~twisted.internet.ssl.CertificateOptions`
for a listener, :func:`~twisted.internet.ssl.optionsForClientTLS` for a client
(which verifies the server's certificate and name). This module loads PEM files
into them and names the file when one cannot be used (:class:`TLSError`);
turns an ``ssl:`` endpoint description into a listener whose certificate
:meth:`ServerTLS.reload` swaps for new handshakes while open connections keep
theirs; and installs the node's SIGHUP handler after whatever handler was there,
calling it too (:func:`on_sighup`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_PEM, X509
from OpenSSL.crypto import Error as CryptoError
from service_identity import VerificationError
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    _parse,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    DiffieHellmanParameters,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

if TYPE_CHECKING:  # (Twisted names it only in a private module)
    from twisted.internet._sslverify import IOpenSSLTrustRoot

__all__ = [
    "MINIMUM", "ClientTLS", "ServerTLS", "TLSError", "client_endpoint", "client_options",
    "on_sighup", "server_endpoint", "server_options", "tls_failure", "trust_root",
]

log = Logger()

#: The oldest TLS version spoken, by listeners and clients alike.
MINIMUM = TLSVersion.TLSv1_2
#: What an ``ssl:`` description may say (Twisted's ``ssl:`` endpoint, less ``sslmethod``).
SSL_OPTIONS = ("interface", "backlog", "privateKey", "certKey", "extraCertChain",
               "dhParameters")


class TLSError(ValueError):
    """A certificate, key, CA or DH file that cannot be used; the message names
    the file. ``role`` says which: ``cert``, ``key``, ``ca``, ``chain``, ``dh``
    (or ``""`` for the description itself)."""

    def __init__(self, message: str, role: str = "") -> None:
        super().__init__(message)
        self.role = role


# -- loading PEM files ----------------------------------------------------------------

def _read(path: str, what: str, role: str) -> bytes:
    try:
        return FilePath(path).getContent()
    except OSError as e:
        raise TLSError(f"cannot read the {what} {path!r}: {e.strerror}", role) from None


def certificates(path: str, what: str = "certificate", role: str = "cert") -> list[Certificate]:
    """Every PEM certificate in the file ``path``, in order (at least one)."""
    data = _read(path, what, role)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSError(f"the {what} file {path!r} holds no PEM certificate", role) from None
    return [Certificate(X509.from_cryptography(c)) for c in found]


def private_certificate(cert: str, key: str) -> tuple[PrivateCertificate, list[Certificate]]:
    """The certificate of ``cert`` (its first) with the key of ``key``, and
    the chain that follows it in the same file (a ``fullchain.pem``)."""
    leaf, *chain = certificates(cert)
    data = _read(key, "private key", "key")
    try:
        pair = KeyPair.load(data, FILETYPE_PEM)
    except (CryptoError, ValueError):
        raise TLSError(f"the private key {key!r} is not an unencrypted PEM key", "key") from None
    try:
        return PrivateCertificate.fromCertificateAndKeyPair(leaf, pair), chain
    except VerifyError:
        raise TLSError(f"the private key {key!r} does not belong to the certificate {cert!r}",
                       "key") from None


def trust_root(ca: str) -> IOpenSSLTrustRoot:
    """The CA certificates of the file ``ca``, as the one trust root."""
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates(ca, "CA certificate", "ca"))
    return root


def server_options(cert: str, key: str, *, chain: str | None = None, dh: str | None = None,
                   ca: str | None = None) -> CertificateOptions:
    """A listener's context: TLS 1.2+, its certificate and key (and ``chain``,
    ``dh`` parameters); with ``ca``, clients must present a certificate that
    CA signed (mutual TLS). Built at once, so a bad file fails here."""
    own, extra = private_certificate(cert, key)
    if chain:
        extra += certificates(chain, "certificate chain", "chain")
    options = CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        extraCertChain=[c.original for c in extra] or None,
        dhParameters=DiffieHellmanParameters.fromFile(FilePath(dh)) if dh else None,
        trustRoot=trust_root(ca) if ca else None,
        raiseMinimumTo=MINIMUM,
    )
    try:
        options.getContext()
    except SSL.Error as e:  # e.g. DH parameters OpenSSL cannot read
        role = "dh" if dh else "cert"
        raise TLSError(f"OpenSSL refused {dh or cert!r}: {_reasons(e)}", role) from None
    return options


def client_options(hostname: str, *, ca: str | None = None, cert: str | None = None,
                   key: str | None = None) -> IOpenSSLClientConnectionCreator:
    """A client's context: TLS 1.2+, the server's certificate verified against
    ``ca`` (default: the system's CAs) and ``hostname`` (a name or an address);
    with ``cert`` and ``key``, presents that certificate (mutual TLS)."""
    own = private_certificate(cert, key or cert)[0] if cert else None
    creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(
        hostname, trust_root(ca) if ca else None, own,
        extraCertificateOptions={"raiseMinimumTo": MINIMUM})
    return creator


def client_endpoint(reactor: Any, host: str, port: int, *,
                    tls: IOpenSSLClientConnectionCreator | None = None, timeout: float = 30,
                    bind: tuple[str, int] | None = None) -> IStreamClientEndpoint:
    """A TCP client endpoint to ``host:port``, over TLS with ``tls``."""
    endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout,
                                                         bindAddress=bind)
    return wrapClientTLS(tls, endpoint) if tls is not None else endpoint


# -- what went wrong ------------------------------------------------------------------

def _reasons(error: SSL.Error) -> str:
    """OpenSSL's reasons (``certificate verify failed``), without its tuples."""
    details = error.args[0] if error.args else None
    if isinstance(details, list):
        reasons = [str(r[-1]) for r in details if isinstance(r, tuple) and r and r[-1]]
        if reasons:
            return ", ".join(dict.fromkeys(reasons))
    return str(error) or type(error).__name__


def tls_failure(error: BaseException | None) -> str | None:
    """One line on why TLS failed (a refused handshake, a certificate that did
    not verify, a name it does not carry), or None when ``error`` is no TLS
    failure. Looks into the failures that Twisted's HTTP client wraps."""
    if isinstance(error, SSL.Error):
        return _reasons(error)
    if isinstance(error, VerificationError):
        return "the server's certificate does not name the host connected to"
    for reason in getattr(error, "reasons", None) or ():
        why = tls_failure(getattr(reason, "value", None))
        if why is not None:
            return why
    return None


# -- listeners --------------------------------------------------------------------------

@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """A TLS listener's certificate and key (and CA, for mutual TLS) that a
    :meth:`reload` replaces. Twisted's TLS layer asks for a connection object
    at each new handshake, so a reload reaches new connections only; open
    connections keep the context they began with."""

    def __init__(self, name: str, cert: str, key: str, *, chain: str | None = None,
                 dh: str | None = None, ca: str | None = None) -> None:
        self.name = name
        self.files = {"cert": cert, "key": key, "chain": chain, "dh": dh, "ca": ca}
        self.options = self._load()

    def _load(self) -> CertificateOptions:
        f = self.files
        assert f["cert"] is not None and f["key"] is not None
        return server_options(f["cert"], f["key"], chain=f["chain"], dh=f["dh"], ca=f["ca"])

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.options.serverConnectionForTLS(tlsProtocol)
        return connection

    def reload(self) -> bool:
        """Read the files again; on any problem keep the certificate in use
        (logged). True when the new one is in use."""
        try:
            options = self._load()
        except TLSError as e:
            log.error("{name}: kept the TLS certificate in use: {why}", name=self.name, why=str(e))
            return False
        self.options = options
        subject, until = describe(options)
        log.info("{name}: TLS certificate reloaded from {cert} ({subject}, valid until {until})",
                 name=self.name, cert=self.files["cert"], subject=subject, until=until)
        return True


def describe(options: CertificateOptions) -> tuple[str, str]:
    """The subject and the end of validity of a context's certificate, for logs."""
    if options.certificate is None:
        return "no certificate", "-"
    cert = options.certificate.to_cryptography()
    return cert.subject.rfc4514_string(), cert.not_valid_after_utc.isoformat()


def server_endpoint(reactor: Any, description: str,
                    name: str = "") -> tuple[IStreamServerEndpoint, ServerTLS | None]:
    """The endpoint of a listener description, and its reloadable TLS when it is
    an ``ssl:`` one (TLS 1.2+ whatever it says; ``sslmethod`` is refused).
    Other descriptions are Twisted's, untouched. Raises :class:`TLSError`, or
    what Twisted raises for a description that does not parse."""
    args, kwargs = _parse(description)
    if args and args[0] == "haproxy" and len(args) > 1 and args[1] == "ssl":
        raise TLSError("haproxy:ssl: is not supported: the PROXY header comes before TLS, and "
                       "Twisted reads it inside; terminate TLS at the balancer, or use ssl: "
                       "without send-proxy")
    if not args or args[0] != "ssl":
        return serverFromString(reactor, description), None
    port = args[1] if len(args) == 2 and "port" not in kwargs else kwargs.pop("port", None)
    if len(args) > 2 or port is None or not str(port).isdigit():
        raise TLSError(f"expected ssl:PORT:privateKey=KEY:certKey=CERT, got {description!r}")
    unknown = sorted(set(kwargs) - set(SSL_OPTIONS))
    if unknown:
        allowed = ", ".join(SSL_OPTIONS)
        raise TLSError(f"ssl: does not take {', '.join(unknown)} (TLS 1.2 and 1.3 only; "
                       f"it takes {allowed})")
    key = kwargs.get("privateKey", "server.pem")
    tls = ServerTLS(name or description, kwargs.get("certKey", key), key,
                    chain=kwargs.get("extraCertChain"), dh=kwargs.get("dhParameters"))
    endpoint = SSL4ServerEndpoint(reactor, int(port), tls, backlog=int(kwargs.get("backlog", 50)),
                                  interface=kwargs.get("interface", ""))
    return endpoint, tls


def is_tls(description: str) -> bool:
    """Whether a listener description is an ``ssl:`` one."""
    return description.split(":", 1)[0] == "ssl"


# -- clients that present a certificate (mutual TLS) ------------------------------------

class ClientTLS:
    """A client's certificate and key and the CA it trusts, for mutual TLS
    (the internal RPC): one context per host name, rebuilt by :meth:`reload`."""

    def __init__(self, name: str, cert: str, key: str, ca: str) -> None:
        self.name = name
        self.cert, self.key, self.ca = cert, key, ca
        self._check()
        self._by_host: dict[str, IOpenSSLClientConnectionCreator] = {}

    def _check(self) -> None:
        private_certificate(self.cert, self.key)
        trust_root(self.ca)

    def options_for(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        options = self._by_host.get(hostname)
        if options is None:
            options = client_options(hostname, ca=self.ca, cert=self.cert, key=self.key)
            self._by_host[hostname] = options
        return options

    def reload(self) -> bool:
        """Check the files again; new connections use them, unless one is bad
        (logged, the old ones stay in use)."""
        try:
            self._check()
        except TLSError as e:
            log.error("{name}: kept the TLS client certificate in use: {why}", name=self.name,
                      why=str(e))
            return False
        self._by_host = {}
        return True


# -- SIGHUP -----------------------------------------------------------------------------

def on_sighup(reload: Callable[[], object], reactor: Any) -> Callable[[], None]:
    """Run ``reload()`` in the reactor on every SIGHUP, after calling the
    SIGHUP handler installed before this one, if any. Returns what puts that
    handler back. Call it once the reactor runs, after twistd set up its own
    handlers (docs/operations.md §1)."""
    previous = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGHUP) is handler:
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)

    return restore

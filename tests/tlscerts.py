"""Throw-away certificates for the TLS tests, made at test time (no private key
is ever committed): a CA, server certificates for 127.0.0.1 and localhost,
client certificates, and a second CA that signed none of them; and a TLS
connection in memory (real TLS, fake sockets)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import IOPump, connectedServerAndClient

#: The names every server certificate carries.
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Issued:
    """A certificate file and its key file."""

    cert: str
    key: str


class CA:
    """A certificate authority whose files live in ``directory``."""

    def __init__(self, directory: str, name: str = "msgplatform test CA") -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = os.path.join(directory, f"{_slug(name)}.pem")
        _write(self.path, self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, names: tuple[str, ...] = SERVER_NAMES,
              purpose: str = "server", stem: str | None = None) -> Issued:
        """A certificate for ``names`` whose ``purpose`` is ``server``, ``client``
        or ``both`` (a cluster node's), written as ``<stem>.pem`` and ``<stem>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        alternative: list[x509.GeneralName] = []
        for n in names:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alternative.append(x509.DNSName(n))
        usages = {"server": [ExtendedKeyUsageOID.SERVER_AUTH],
                  "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
                  "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]}
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages[purpose]), critical=False)
        )
        if alternative:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative),
                                            critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = stem or _slug(common_name)
        issued = Issued(os.path.join(self.directory, f"{stem}.pem"),
                        os.path.join(self.directory, f"{stem}.key"))
        _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(issued.key, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        return issued


class _One(Factory):
    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Any:
        return self.proto


def tls_in_memory(servers: Any, server_tls: Any, client: Any, client_tls: Any, clock: Clock,
                  greet: bool = True) -> tuple[Any, Any, IOPump]:
    """``client`` connected over TLS to a protocol of the factory ``servers``
    (a peer at 127.0.0.1; TLS with ``server_tls``, else plain), on iosim's fake
    sockets: the two ends, and the pump that moves bytes between them."""
    server_side = TLSMemoryBIOFactory(server_tls, False, servers, clock) if server_tls else servers
    client_side = TLSMemoryBIOFactory(client_tls, True, _One(client), clock)
    return connectedServerAndClient(
        lambda: server_side.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000)),
        lambda: client_side.buildProtocol(None), clock=clock, greet=greet)


def subject_of(pem: bytes) -> str:
    """The common name of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)

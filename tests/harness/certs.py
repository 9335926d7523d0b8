"""Real X.509 hierarchies made with `cryptography`, for tests.

A `Hierarchy` is a root, an intermediate and a way to issue leaves, so a test
can make a renewal (same intermediate, new key) or a DANE-TA rollover (new
intermediate) in one line.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["rsa", "rsa1024", "ec256", "ec384", "ec521", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)

_KEY_CACHE: dict[tuple[KeyKind, int], PrivateKey] = {}


def make_key(kind: KeyKind = "ec256", slot: int | None = None) -> PrivateKey:
    """A new private key; with `slot`, the same key every time (RSA is slow)."""
    if slot is not None and (kind, slot) in _KEY_CACHE:
        return _KEY_CACHE[(kind, slot)]
    key: PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "rsa1024":
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    elif kind == "ec256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ec384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "ec521":
        key = ec.generate_private_key(ec.SECP521R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    if slot is not None:
        _KEY_CACHE[(kind, slot)] = key
    return key


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def key_pem(key: PrivateKey, password: bytes | None = None, traditional: bool = False) -> bytes:
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Leaf:
    key: PrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate]  # intermediates, leaf's issuer first

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def chain_pem(self) -> bytes:
        return b"".join(cert_pem(c) for c in self.chain)

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


@dataclass
class Hierarchy:
    """A root CA and one intermediate that issues leaves."""

    name: str = "Test"
    key_kind: KeyKind = "ec256"
    root_key: PrivateKey = field(init=False)
    root: x509.Certificate = field(init=False)
    intermediate_key: PrivateKey = field(init=False)
    intermediate: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.root_key = make_key("ec256")
        self.root = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{self.name} Root"))
            .issuer_name(_name(f"{self.name} Root"))
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=3650))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.root_key, _hash_for(self.root_key))
        )
        self.intermediate_key = make_key("ec256")
        self.intermediate = self.make_ca(f"{self.name} Intermediate", self.intermediate_key)

    def make_ca(self, cn: str, key: PrivateKey, ca: bool = True) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=365))
            .not_valid_after(NOW + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
            .sign(self.root_key, _hash_for(self.root_key))
        )

    def issue(
        self,
        hostnames: list[str] | None = None,
        key: PrivateKey | None = None,
        key_kind: KeyKind | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        eku: list[x509.ObjectIdentifier] | None = None,
        signer: PrivateKey | None = None,
        serial: int | None = None,
        authority_key_id: bool = False,
    ) -> Leaf:
        hostnames = hostnames or ["mx.example.test"]
        key = key or make_key(key_kind or self.key_kind)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(days=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=89))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), False)
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if eku is None else eku
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), False)
        if authority_key_id:  # as real CAs issue them; ARI (RFC 9773) names leaves by it
            issuer_key = self.intermediate_key.public_key()
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
            builder = builder.add_extension(aki, False)
        cert = builder.sign(signer or self.intermediate_key, _hash_for(self.intermediate_key))
        return Leaf(key=key, cert=cert, chain=[self.intermediate])

"""Validation of a certbot lineage's chain and key. Pure: bytes and `now` in.

`validate_chain` answers one question: may this chain be served by Postfix
for these host names? It returns a `Chain` (everything later steps need,
including the bytes Postfix will read) or raises `ChainError` with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from danesync.errors import ChainError
from danesync.keycache import CertificateKey, certificate_key, certified_key
from danesync.pem import (
    PemError,
    PrivateKey,
    certificate_ders,
    key_type_name,
    parse_certificate_blocks,
    parse_certificates,
    parse_private_key,
    split_pem,
)
from danesync.tlsa import TlsaRecord, Usage, build_tlsa_records, spki_sha256

Fail = Callable[[str], ChainError]

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}


@dataclass(frozen=True)
class LineageFiles:
    """The bytes of one consistent version of a certbot lineage."""

    lineage: str
    version: int
    privkey: bytes = field(repr=False)
    cert: bytes
    chain: bytes
    fullchain: bytes


@dataclass(frozen=True)
class Chain:
    """A validated chain, ready to deploy."""

    lineage: str
    version: int
    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    key_algorithm: str  # "rsa", "ecdsa", "ed25519": Postfix takes one of each
    deploy_pem: bytes = field(repr=False)  # key, leaf, intermediates: contains the key
    tlsa: tuple[TlsaRecord, ...]

    @property
    def serial(self) -> str:
        """Hex, as `openssl x509 -serial` prints it."""
        text = f"{self.leaf.serial_number:X}"
        return text if len(text) % 2 == 0 else "0" + text

    @property
    def not_after(self) -> dt.datetime:
        return _not_after(self.leaf)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf's DER: the identity of what Postfix serves."""
        return hashlib.sha256(self.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def issuer_spki(self) -> str | None:
        return spki_sha256(self.intermediates[0]) if self.intermediates else None

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        return self.leaf.issuer.rfc4514_string()


def _not_after(cert: x509.Certificate) -> dt.datetime:
    # cryptography 38 has no not_valid_after_utc; newer ones deprecate the naive one.
    value: dt.datetime | None = getattr(cert, "not_valid_after_utc", None)
    if value is None:
        value = cert.not_valid_after.replace(tzinfo=dt.UTC)
    return value


def _not_before(cert: x509.Certificate) -> dt.datetime:
    value: dt.datetime | None = getattr(cert, "not_valid_before_utc", None)
    if value is None:
        value = cert.not_valid_before.replace(tzinfo=dt.UTC)
    return value


def validate_chain(
    files: LineageFiles,
    hostnames: tuple[str, ...],
    tlsa_names: tuple[str, ...],
    usages: tuple[Usage, ...],
    now: dt.datetime,
) -> Chain:
    """Check everything Postfix and DANE clients will rely on."""
    lineage = files.lineage

    def fail(reason: str) -> ChainError:
        return ChainError(lineage, reason)

    try:
        key = parse_private_key(files.privkey, "privkey.pem")
        blocks = parse_certificate_blocks(files.fullchain, "fullchain.pem")
        certificates = [certificate for certificate, _ in blocks]
        ders = [der for _, der in blocks]
        # cert.pem and chain.pem hold fullchain.pem's certificates: the same DER
        # bytes are the same certificates, so they need no parsing of their own
        # (a third of the X.509 parsing of a cold start). Any difference is
        # parsed and compared as before, for the same reason in the same order.
        same = (
            certificate_ders(files.cert, "cert.pem") == ders[:1]
            and (certificate_ders(files.chain, "chain.pem") if files.chain.strip() else [])
            == ders[1:]
        )
        if not same:
            cert_only = parse_certificates(files.cert, "cert.pem")
            chain_only = parse_certificates(files.chain, "chain.pem") if files.chain.strip() else []
    except PemError as error:
        raise fail(str(error)) from None

    leaf, intermediates = certificates[0], tuple(certificates[1:])
    if not same:
        if len(cert_only) != 1 or cert_only[0] != leaf:
            raise fail("cert.pem is not the first certificate of fullchain.pem")
        if tuple(chain_only) != intermediates:
            raise fail("chain.pem is not the rest of fullchain.pem")

    try:
        for name in (leaf.subject, leaf.issuer):  # parsed lazily too; `check` prints both
            name.rfc4514_string()
        leaf_key = _check_key_matches(key, certificates, fail)
        algorithm = _check_key_strength(leaf_key, fail)
        _check_leaf_extensions(leaf, fail)
        _check_hostnames(leaf, hostnames, fail)
        _check_order_and_signatures(certificates, fail)
        _check_validity(certificates, now, fail)
    except (
        ValueError,
        KeyError,
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as error:
        # cryptography parses keys, names and extensions lazily: a malformed
        # one surfaces here, not when the PEM was read. (cryptography 38
        # raises KeyError for a name in an unknown ASN.1 string type.)
        detail = f"unknown ASN.1 type {error}" if isinstance(error, KeyError) else str(error)
        raise fail(f"fullchain.pem holds a malformed certificate: {detail}") from error
    if Usage.DANE_TA in usages and not intermediates:
        raise fail('"2 1 1" needs the issuing certificate, but fullchain.pem holds only the leaf')

    deploy_pem = key_pem(key) + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in certificates
    )
    return Chain(
        lineage=lineage,
        version=files.version,
        leaf=leaf,
        intermediates=intermediates,
        key_algorithm=algorithm,
        deploy_pem=deploy_pem,
        tlsa=build_tlsa_records(
            tlsa_names, usages, leaf, intermediates[0] if intermediates else None
        ),
    )


def _check_key_matches(
    key: PrivateKey, certificates: list[x509.Certificate], fail: Fail
) -> CertificateKey:
    """The leaf's key, which must be the private key's public half."""
    leaf = certificates[0]
    # Usually the leaf's subjectPublicKeyInfo is, byte for byte, the private key's
    # public half: then the leaf's key needs no parsing (~1 ms on cryptography 38).
    public_key = key.public_key()
    leaf_key = certified_key(leaf, public_key)
    if leaf_key is not None:
        return leaf_key
    # Otherwise compare as before, both sides encoded by the same DER encoder.
    leaf_key = certificate_key(leaf)
    public = _public_der(public_key)
    if public == leaf_key.spki_der:
        return leaf_key
    for number, cert in enumerate(certificates[1:], start=2):
        if certificate_key(cert).spki_der == public:
            raise fail(
                f"fullchain.pem is out of order: privkey.pem matches certificate {number} "
                f"({_describe(cert)}), but the leaf must come first"
            )
    raise fail("privkey.pem does not match the leaf certificate's public key")


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_pem(key: PrivateKey) -> bytes:
    """The key as a chain file holds it: an RSA or EC key in its own format
    ("RSA PRIVATE KEY", "EC PRIVATE KEY"), Ed25519 in PKCS#8 (it has no other).

    Postfix decodes an SNI name's key at every handshake for that name (the
    table holds the file's contents). Given "PRIVATE KEY" (PKCS#8), OpenSSL 3.0
    (Debian 12) finds the key's type through its generic decoders: 0.7-1.6 ms
    a key; given the type by the label, 0.22-0.47 ms (docs/benchmarks.md, "SNI
    keys in their own format"). Either is the same key to Postfix.
    """
    layout = (
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, layout, serialization.NoEncryption())


def rewrite_earlier_chain_file(data: bytes, lineage: str) -> bytes | None:
    """A chain file as danesync wrote it before `key_pem` (its key first, in
    PKCS#8), in today's form: the same key as `key_pem` writes it, then the rest
    byte for byte. None for anything else.

    A file an earlier version wrote holds the same chain as today's bytes: it
    is kept as it is (no write, no reload), and a restart need not read it back.
    """
    try:
        blocks = split_pem(data, lineage)
        if not blocks or blocks[0].label != "PRIVATE KEY" or not data.startswith(blocks[0].text):
            return None
        key = parse_private_key(blocks[0].text, lineage)
    except PemError:
        return None
    return key_pem(key) + data[len(blocks[0].text) :]


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "an empty subject"


def _check_key_strength(leaf_key: CertificateKey, fail: Fail) -> str:
    key = leaf_key.public_key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise fail(f"the leaf's RSA key has {key.key_size} bits; at least 2048 are needed")
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise fail(
                f"the leaf's EC key is on {key.curve.name}; only P-256 and P-384 are supported"
            )
        return "ecdsa"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    raise fail(f"the leaf's {key_type_name(key)} key is not supported")


def _check_leaf_extensions(leaf: x509.Certificate, fail: Fail) -> None:
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise fail("the leaf certificate is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if (
        ExtendedKeyUsageOID.SERVER_AUTH not in eku
        and x509.ObjectIdentifier("2.5.29.37.0") not in eku
    ):
        raise fail("the leaf's extendedKeyUsage does not allow serverAuth")


def _check_hostnames(leaf: x509.Certificate, hostnames: tuple[str, ...], fail: Fail) -> None:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise fail("the leaf has no subjectAltName extension") from None
    names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    missing = [h for h in hostnames if not any(name_matches(n, h) for n in names)]
    if missing:
        named = ", ".join(names) or "no DNS name"
        raise fail(f"the leaf does not cover {', '.join(missing)} (it names {named})")


def name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 6.4.3: a wildcard is the whole left-most label and matches one label."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if hostname.startswith("*."):
        return pattern == hostname  # a configured wildcard needs a wildcard certificate
    if not pattern.startswith("*."):
        return pattern == hostname
    suffix = pattern[2:]
    head, _, rest = hostname.partition(".")
    return bool(head) and rest == suffix and suffix.count(".") >= 1


def _check_order_and_signatures(certificates: list[x509.Certificate], fail: Fail) -> None:
    for index in range(len(certificates) - 1):
        child, parent = certificates[index], certificates[index + 1]
        # Names are printed only for a message (each printed cost a cold start).
        if child.issuer != parent.subject:
            raise fail(
                f"fullchain.pem is out of order: {_position(index + 2, parent)} "
                f"did not issue certificate "
                f"{index + 1} ({_describe(child)}), whose issuer is {child.issuer.rfc4514_string()}"
            )
        try:
            constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = constraints.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise fail(
                f"{_position(index + 2, parent)} is not a CA (basicConstraints CA:TRUE missing)"
            )
        if not verify_signature(child, parent):
            raise fail(
                f"the signature on certificate {index + 1} ({_describe(child)}) "
                f"does not verify with the key of {_position(index + 2, parent)}"
            )


def _position(number: int, cert: x509.Certificate) -> str:
    return f"certificate {number} of fullchain.pem ({_describe(cert)})"


def _what(index: int, cert: x509.Certificate) -> str:
    return "the leaf" if index == 0 else _position(index + 1, cert)


def verify_signature(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key signed `child` (cryptography 38 lacks verify_directly_issued_by)."""
    try:
        key = certificate_key(issuer).public_key
        if isinstance(key, rsa.RSAPublicKey):
            algorithm = child.signature_hash_algorithm
            if child.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
                algorithm, hashes.HashAlgorithm
            ):
                return False
            key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = child.signature_hash_algorithm
            if not isinstance(algorithm, hashes.HashAlgorithm):
                return False
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def _check_validity(certificates: list[x509.Certificate], now: dt.datetime, fail: Fail) -> None:
    for index, cert in enumerate(certificates):
        not_before, not_after = _not_before(cert), _not_after(cert)
        if now < not_before:
            raise fail(f"{_what(index, cert)} is not valid before {format_time(not_before)}")
        if now >= not_after:
            raise fail(f"{_what(index, cert)} expired at {format_time(not_after)}")


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

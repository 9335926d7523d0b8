"""Would a DANE sender accept this chain with this TLSA RRset? (RFC 7672 section 3) Pure.

The self-check judges what Postfix really serves against what DNS really
publishes, with the rules of an SMTP client doing DANE:

- Only DANE-TA(2) and DANE-EE(3) are usable; PKIX usages (0, 1), unknown
  selectors or matching types and digests of the wrong length are ignored
  (RFC 7672 3.1.3). An RRset with no usable record asks for encryption only.
- DANE-EE(3) matches the leaf; names and dates are not checked (3.1.1).
- DANE-TA(2) matches a certificate above the leaf in a path the client
  builds from the served chain (the server must send the trust anchor,
  3.1.2), or, for a record carrying a whole certificate or public key
  (matching type 0), that certificate or key itself. The path from the leaf
  up to the trust anchor must verify (issuer names, signatures, CA flags,
  validity dates) and the leaf must name the TLSA base domain (3.2.2).
  As in OpenSSL, a DANE-TA record never matches the leaf itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from danesync.chain import format_time, name_matches
from danesync.tlsa import TlsaRecord

DANE_TA, DANE_EE = 2, 3
MAX_DEPTH = 8  # a served chain longer than this is not followed further
_DIGEST_LENGTHS = {0: None, 1: 32, 2: 64}


class Outcome(Enum):
    """What a DANE sender would do with this chain and RRset."""

    VALID = "valid"  # a usable record matched: mail flows, authenticated
    BROKEN = "broken"  # usable records exist and none matches: mail is deferred
    NO_RECORDS = "no_records"  # the RRset is empty: no DANE for this name
    UNUSABLE = "unusable"  # records, none usable: encryption without authentication


@dataclass(frozen=True)
class DaneVerdict:
    outcome: Outcome
    reason: str  # what matched, or why nothing did
    leaf_serial: str | None = None  # hex, as `openssl x509 -serial` prints it
    leaf_issuer: str | None = None
    matched: TlsaRecord | None = None

    @property
    def ok(self) -> bool:
        """Whether senders deliver: anything but a broken RRset."""
        return self.outcome is not Outcome.BROKEN


def usable(record: TlsaRecord) -> bool:
    """A record an SMTP DANE client may use (RFC 7672 3.1.3)."""
    if record.usage not in (DANE_TA, DANE_EE) or record.selector not in (0, 1):
        return False
    if record.matching_type not in _DIGEST_LENGTHS:
        return False
    try:
        data = bytes.fromhex(record.data)
    except ValueError:
        return False
    length = _DIGEST_LENGTHS[record.matching_type]
    return bool(data) and (length is None or len(data) == length)


def base_domain(tlsa_name: str) -> str:
    """`_25._tcp.mx.example.com.` -> `mx.example.com`: the name the leaf must carry."""
    labels = tlsa_name.rstrip(".").split(".")
    if len(labels) > 2 and labels[0].startswith("_") and labels[1].startswith("_"):
        labels = labels[2:]
    return ".".join(labels).lower()


def association(cert: x509.Certificate, selector: int, matching_type: int) -> bytes:
    """The certificate association data a record with these parameters holds for `cert`."""
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if matching_type == 1:
        return hashlib.sha256(data).digest()
    if matching_type == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record: TlsaRecord, cert: x509.Certificate) -> bool:
    return association(cert, record.selector, record.matching_type) == bytes.fromhex(record.data)


def judge_dane(
    chain_ders: Sequence[bytes],
    rrset: Iterable[TlsaRecord],
    names: Sequence[str],
    now: dt.datetime,
) -> DaneVerdict:
    """Judge the served chain (DER, leaf first, as the server sent it) against an RRset.

    `names` are the reference identifiers the leaf must carry for DANE-TA
    (the TLSA base domain, e.g. the MX host name).
    """
    records = sorted(set(rrset))
    if not chain_ders:
        return DaneVerdict(Outcome.BROKEN, "no certificate was served")
    try:
        served = [x509.load_der_x509_certificate(der) for der in chain_ders]
    except ValueError as error:
        return DaneVerdict(
            Outcome.BROKEN, f"the server sent a certificate that cannot be read: {error}"
        )
    leaf = served[0]
    serial, issuer = _serial(leaf), leaf.issuer.rfc4514_string()

    def verdict(outcome: Outcome, reason: str, matched: TlsaRecord | None = None) -> DaneVerdict:
        return DaneVerdict(outcome, reason, serial, issuer, matched)

    if not records:
        return verdict(Outcome.NO_RECORDS, "no TLSA records are published")
    candidates = [r for r in records if usable(r)]
    if not candidates:
        return verdict(
            Outcome.UNUSABLE, "no TLSA record is usable by SMTP senders (RFC 7672 3.1.3)"
        )
    for record in candidates:
        if record.usage == DANE_EE and _matches(record, leaf):
            return verdict(Outcome.VALID, f"DANE-EE {record.rdata} matches the leaf", record)
    ta_records = [r for r in candidates if r.usage == DANE_TA]
    if not ta_records:
        return verdict(Outcome.BROKEN, "no DANE-EE record matches the leaf, and none is DANE-TA")
    found = _find_trust_anchor(served, ta_records)
    if found is None:
        return verdict(
            Outcome.BROKEN,
            "no DANE-EE record matches the leaf and no DANE-TA record matches a certificate "
            "that issued it in the served chain",
        )
    path, record = found
    bare_key = len(path) == 1 or not _matches(record, path[-1])
    problem = _path_problem(path, names, now, anchor_in_path=not bare_key)
    if problem is not None:
        return verdict(Outcome.BROKEN, f"DANE-TA {record.rdata} matches, but {problem}")
    anchor = "the public key it carries" if bare_key else _describe(path[-1])
    return verdict(Outcome.VALID, f"DANE-TA {record.rdata} matches {anchor}", record)


def _find_trust_anchor(
    served: list[x509.Certificate], ta_records: list[TlsaRecord]
) -> tuple[list[x509.Certificate], TlsaRecord] | None:
    """A path leaf -> ... -> trust anchor, and the record that matched it.

    The path ends at a certificate a record matches (served, or carried whole
    by a `2 0 0` record); for a `2 1 0` record the path's last certificate is
    the one the record's key signed, and the path holds no anchor certificate.
    """
    pool = list(served[1:])
    for record in ta_records:
        if record.selector == 0 and record.matching_type == 0:
            try:
                pool.append(x509.load_der_x509_certificate(bytes.fromhex(record.data)))
            except ValueError:
                continue
    bare_keys: list[tuple[object, TlsaRecord]] = []
    for record in ta_records:
        if record.selector == 1 and record.matching_type == 0:
            try:
                bare_keys.append(
                    (serialization.load_der_public_key(bytes.fromhex(record.data)), record)
                )
            except (ValueError, UnsupportedAlgorithm):
                continue

    def walk(path: list[x509.Certificate]) -> tuple[list[x509.Certificate], TlsaRecord] | None:
        child = path[-1]
        for key, record in bare_keys:
            if _signed_by(child, key):
                return path, record
        if len(path) > MAX_DEPTH:
            return None
        for parent in pool:
            if any(parent is seen for seen in path) or parent.subject != child.issuer:
                continue
            if not _signed_by(child, parent.public_key()):
                continue
            for record in ta_records:
                if _matches(record, parent):
                    return [*path, parent], record
            deeper = walk([*path, parent])
            if deeper is not None:
                return deeper
        return None

    return walk([served[0]])


def _path_problem(
    path: list[x509.Certificate], names: Sequence[str], now: dt.datetime, *, anchor_in_path: bool
) -> str | None:
    """Why a DANE-TA sender would still refuse this path below its anchor, or None.

    The trust anchor's own dates are not checked (as OpenSSL does not): the
    TLSA record is what vouches for it.
    """
    leaf = path[0]
    carried = _dns_names(leaf)
    wanted = [name.lower().rstrip(".") for name in names]
    if wanted and not any(name_matches(n, w) for n in carried for w in wanted):
        return f"the leaf names {', '.join(carried) or 'no DNS name'}, not {' or '.join(wanted)}"
    for index, cert in enumerate(path):
        what = "the leaf" if index == 0 else _describe(cert)
        if index > 0 and not _is_ca(cert):
            return f"{what} is not a CA"
        if anchor_in_path and index == len(path) - 1:
            continue
        not_before, not_after = _validity(cert)
        if now < not_before:
            return f"{what} is not valid before {format_time(not_before)}"
        if now >= not_after:
            return f"{what} expired at {format_time(not_after)}"
    return None


def _dns_names(cert: x509.Certificate) -> list[str]:
    """subjectAltName DNS names, or the subject CN when there are none (RFC 7672 3.2.3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if names:
        return names
    return [
        str(attribute.value).lower().rstrip(".")
        for attribute in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    ]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(child: x509.Certificate, key: object) -> bool:
    """Whether `key` made the signature on `child` (cryptography 38 has no helper for it)."""
    algorithm = child.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if child.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
                algorithm, hashes.HashAlgorithm
            ):
                return False
            key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(algorithm, hashes.HashAlgorithm):
                return False
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def _validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    # cryptography 38 has only the naive properties; newer ones deprecate them.
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(
        tzinfo=dt.UTC
    )
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(
        tzinfo=dt.UTC
    )
    return before, after


def _serial(cert: x509.Certificate) -> str:
    text = f"{cert.serial_number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "a certificate with an empty subject"

"""Pure judgement of the TLSA RRsets `check` reads (issue 13, finding 7).

What breaks DANE although the records look fine:
- more than about 12 records at a name: Microsoft's senders give up;
- selector 0 (the whole certificate): ``3 0 x`` stops matching at every
  renewal (certbot makes a new certificate, and by default a new key, each
  time); ``2 0 x`` stops matching when the CA certificate is reissued;
- a ``2 x x`` record pinning a root that the chain does not send: DANE-TA
  needs the trust anchor in the chain the server presents (RFC 7671,
  section 5.2.2), and certbot's chains end below the root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.chain import Chain
from danesync.tlsa import TlsaRecord

Level = Literal["ok", "warning", "error", "unknown"]
MAX_RECORDS = 12  # Microsoft's senders handle about 12 TLSA records per name
TRUST_STORE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Finding:
    """One line of `check`'s DNS report."""

    level: Level
    text: str


def association(cert: x509.Certificate, selector: int, matching_type: int) -> str | None:
    """The TLSA certificate-association data of `cert` (hex), or None if unknown."""
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    elif selector == 1:
        data = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        return None
    if matching_type == 0:
        return data.hex()
    if matching_type == 1:
        return hashlib.sha256(data).hexdigest()
    if matching_type == 2:
        return hashlib.sha512(data).hexdigest()
    return None


def _matches(record: TlsaRecord, cert: x509.Certificate) -> bool:
    return association(cert, record.selector, record.matching_type) == record.data


def build_root_index(roots: Iterable[x509.Certificate]) -> dict[tuple[int, int, str], str]:
    """(selector, matching type, data) -> subject, for the usual TLSA forms of each root."""
    index: dict[tuple[int, int, str], str] = {}
    for root in roots:
        for selector in (0, 1):
            for matching_type in (1, 2):
                data = association(root, selector, matching_type)
                if data is not None:
                    index[(selector, matching_type, data)] = root.subject.rfc4514_string()
    return index


def read_trust_roots(path: Path = TRUST_STORE) -> dict[tuple[int, int, str], str]:
    """The system's trust store, indexed for `judge_tlsa_rrset`; {} if absent."""
    try:
        text = path.read_bytes()
    except OSError:
        return {}
    marker = b"-----BEGIN CERTIFICATE-----"
    roots = []
    for block in text.split(marker)[1:]:
        try:
            roots.append(x509.load_pem_x509_certificate(marker + block))
        except ValueError:
            continue
    return build_root_index(roots)


def judge_tlsa_rrset(
    name: str,
    records: frozenset[TlsaRecord],
    chains: Iterable[Chain],
    roots: Mapping[tuple[int, int, str], str],
) -> list[Finding]:
    """The records at one TLSA name, against the chains that use the name."""
    chains = list(chains)
    count = len(records)
    findings: list[Finding] = []
    if count > MAX_RECORDS:
        findings.append(
            Finding(
                "warning",
                f"{name} carries {count} TLSA records: Microsoft's senders handle about "
                f"{MAX_RECORDS} per name at most; retire the ones no chain needs",
            )
        )
    else:
        findings.append(Finding("ok", f"{name} carries {count} TLSA record(s)"))
    for record in sorted(records):
        findings += _judge_record(record, chains, roots)
    return findings


def _judge_record(
    record: TlsaRecord, chains: list[Chain], roots: Mapping[tuple[int, int, str], str]
) -> list[Finding]:
    shown = f"{record.name} TLSA {record.rdata[:24]}..."
    findings: list[Finding] = []
    if record.usage == 3 and record.selector == 0:
        findings.append(
            Finding(
                "warning",
                f"{shown} pins the whole leaf certificate: it stops matching at the next "
                "renewal (a new certificate, usually a new key); use 3 1 1, which danesync "
                "rolls over",
            )
        )
    elif record.usage == 2 and record.selector == 0:
        findings.append(
            Finding(
                "warning",
                f"{shown} pins the whole CA certificate: it stops matching when the CA "
                "certificate is reissued, even with the same key; use 2 1 1",
            )
        )
    if record.usage == 2:
        in_chain = any(_matches(record, c) for chain in chains for c in chain.intermediates)
        root = roots.get((record.selector, record.matching_type, record.data))
        if root is not None and not in_chain:
            findings.append(
                Finding(
                    "warning",
                    f"{shown} pins the root {root}, which the served chain does not send: "
                    "a DANE-TA record matches only a certificate the server presents "
                    "(RFC 7671, 5.2.2), so senders fail on it; pin the issuing "
                    "intermediate (2 1 1) instead",
                )
            )
    return findings

"""Which TLSA RRsets a chain satisfies, as a DANE client (RFC 7671, RFC 7672) decides. Pure.

A chain is summarised by the rdata of every usable record that would match
it (`build_match_set`): DANE-EE (3) over the leaf, DANE-TA (2) over each
certificate after it, selectors 0 (certificate) and 1 (SPKI), matching types
1 (SHA-256) and 2 (SHA-512). An RRset accepts a chain when it has no usable
record (SMTP senders then do no DANE authentication) or one of its usable
records matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.keycache import certificate_key
from danesync.tlsa import TlsaRecord

_USABLE_USAGES = (2, 3)
_USABLE_SELECTORS = (0, 1)
_USABLE_MATCHING = (0, 1, 2)


def _digests(usage: int, cert: x509.Certificate) -> list[str]:
    der = cert.public_bytes(serialization.Encoding.DER)
    spki = certificate_key(cert).spki_der  # parsed once per certificate (issue 15)
    found = []
    for selector, data in ((0, der), (1, spki)):
        found.append(f"{usage} {selector} 1 {hashlib.sha256(data).hexdigest()}")
        found.append(f"{usage} {selector} 2 {hashlib.sha512(data).hexdigest()}")
    return found


def build_match_set(
    leaf: x509.Certificate, intermediates: Iterable[x509.Certificate]
) -> frozenset[str]:
    """The rdata ("u s m hex") of every usable TLSA record this chain satisfies."""
    found = _digests(3, leaf)
    for cert in intermediates:
        found += _digests(2, cert)
    return frozenset(found)


def is_usable(record: TlsaRecord) -> bool:
    """RFC 7672 section 3.1.3: only DANE-TA and DANE-EE count for SMTP."""
    return (
        record.usage in _USABLE_USAGES
        and record.selector in _USABLE_SELECTORS
        and record.matching_type in _USABLE_MATCHING
    )


def rrset_accepts(records: Iterable[TlsaRecord], matches: AbstractSet[str]) -> bool:
    """Would a DANE client that holds `records` accept a chain with `matches`?"""
    usable = [record for record in records if is_usable(record)]
    return not usable or any(record.rdata in matches for record in usable)

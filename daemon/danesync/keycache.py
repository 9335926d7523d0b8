"""Certificates' public keys, parsed once per process (issue 15). Pure but for
a bounded in-memory memo of a pure function.

With cryptography < 42 on OpenSSL 3.0 (Debian 12), each
`Certificate.public_key()` goes through OpenSSL's decoder framework (about
1 ms, and as much again to encode the key back to DER); a lineage's
intermediate is shared by thousands of leaves. `certificate_key` parses a
certificate's key once and keeps it, keyed by the certificate's whole DER.
The value is a function of those bytes alone: a certificate that differs in
any byte (another key under the same subject, another signature) is never
given another certificate's key.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# Parsed keys kept: every intermediate in use and the last leaves (about 3 kB each).
KEY_CACHE_SIZE = 128


@dataclass(frozen=True)
class CertificateKey:
    """A certificate's public key, parsed, and its SubjectPublicKeyInfo in DER."""

    public_key: object = field(repr=False)  # what x509.Certificate.public_key() returns
    spki_der: bytes  # as `public_key.public_bytes(DER, SubjectPublicKeyInfo)` encodes it

    @property
    def spki_sha256(self) -> str:
        """The data of a TLSA record with selector 1 (SPKI) and matching type 1 (SHA-256)."""
        return hashlib.sha256(self.spki_der).hexdigest()


K = TypeVar("K")
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """A mapping that forgets its least recently used entries beyond `size`; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_KEYS: BoundedLru[bytes, CertificateKey] = BoundedLru(KEY_CACHE_SIZE)


def certificate_key(cert: x509.Certificate) -> CertificateKey:
    """The public key of `cert` (raises as `cert.public_key()` does for a bad one)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    known = _KEYS.get(der)
    if known is not None:
        return known
    key = cert.public_key()
    entry = CertificateKey(key, _spki(key))
    _KEYS.put(der, entry)
    return entry


def certified_key(cert: x509.Certificate, public_key: object) -> CertificateKey | None:
    """`cert`'s key if its subjectPublicKeyInfo field holds exactly `public_key`, else None.

    For a leaf and its private key's public half: the bytes of the field are
    compared with the DER encoding of `public_key`, so the leaf's key needs no
    parsing when they are equal (a DER decoding of the canonical encoding of a
    key is that key). None means "not shown equal": another key, or an
    encoding that differs; the caller then parses the certificate's key.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    known = _KEYS.get(der)
    public_der = _spki(public_key)
    if known is not None:
        return known if known.spki_der == public_der else None
    field_der = spki_field(der)
    if field_der is None or field_der != public_der:
        return None
    entry = CertificateKey(public_key, public_der)
    _KEYS.put(der, entry)
    return entry


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_field(certificate_der: bytes) -> bytes | None:
    """The subjectPublicKeyInfo element of a DER certificate as it is written (RFC 5280
    4.1: version [0], serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo),
    or None when the bytes are not laid out so."""
    try:
        tag, start, _ = _element(certificate_der, 0)
        if tag != 0x30:
            return None
        tag, position, tbs_end = _element(certificate_der, start)
        if tag != 0x30:
            return None
        tag, _, after = _element(certificate_der, position)
        if tag == 0xA0:  # version, EXPLICIT [0]
            position = after
        span = (position, position)
        for expected in (0x02, 0x30, 0x30, 0x30, 0x30, 0x30):
            tag, _, after = _element(certificate_der, position)
            if tag != expected or after > tbs_end:
                return None
            span, position = (position, after), after
    except ValueError:
        return None
    return certificate_der[span[0] : span[1]]


def _element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")
    if first < 0x80:
        start, length = offset + 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad length")
        start = offset + 2 + count
        if start > len(data):
            raise ValueError("truncated")
        length = int.from_bytes(data[offset + 2 : start], "big")
    end = start + length
    if end > len(data):
        raise ValueError("truncated")
    return tag, start, end

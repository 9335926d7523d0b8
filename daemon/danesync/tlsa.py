"""TLSA records for DANE (RFC 6698, RFC 7671, RFC 7672). Pure.

danesync publishes two kinds:

- ``2 1 1`` (DANE-TA, SPKI, SHA-256) over the leaf's issuer: survives every
  renewal that keeps the same intermediate key;
- ``3 1 1`` (DANE-EE, SPKI, SHA-256) over the leaf itself: changes with
  every new key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum

from cryptography import x509

from danesync.keycache import certificate_key


class Usage(Enum):
    """The TLSA parameter sets danesync knows, as written in the config."""

    DANE_TA = "2 1 1"
    DANE_EE = "3 1 1"


@dataclass(frozen=True, order=True, slots=True)
class TlsaRecord:
    """One TLSA record: owner name (absolute, lower case) and rdata."""

    name: str
    usage: int
    selector: int
    matching_type: int
    data: str  # lower-case hex

    @property
    def rdata(self) -> str:
        return f"{self.usage} {self.selector} {self.matching_type} {self.data}"

    def zone_line(self, ttl: int) -> str:
        """The record in zone-file syntax, as `danesync tlsa` prints it."""
        return f"{self.name} {ttl} IN TLSA {self.rdata}"

    @property
    def key(self) -> str:
        """A stable text form, for the state file: ``name rdata``."""
        return f"{self.name} {self.rdata}"

    @classmethod
    def from_key(cls, key: str) -> TlsaRecord:
        name, usage, selector, matching_type, data = key.split()
        data = data.lower()
        if usage == "2":  # an issuer's key: the same in thousands of lineages' records
            data = sys.intern(data)
        return cls(
            sys.intern(absolute_name(name)), int(usage), int(selector), int(matching_type), data
        )


def absolute_name(name: str) -> str:
    """`_25._tcp.MX.example.com` -> `_25._tcp.mx.example.com.`"""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def spki_sha256(cert: x509.Certificate) -> str:
    """SHA-256 over the DER SubjectPublicKeyInfo, in lower-case hex."""
    return certificate_key(cert).spki_sha256


def build_tlsa_records(
    names: tuple[str, ...] | list[str],
    usages: tuple[Usage, ...] | list[Usage],
    leaf: x509.Certificate,
    issuer: x509.Certificate | None,
) -> tuple[TlsaRecord, ...]:
    """The records a chain needs under every owner name, sorted.

    ``2 1 1`` needs the issuer; the caller validated that it is present.
    """
    records: set[TlsaRecord] = set()
    for usage in usages:
        if usage is Usage.DANE_TA:
            if issuer is None:
                raise ValueError("2 1 1 needs the issuing certificate")
            data, number = spki_sha256(issuer), 2
        else:
            data, number = spki_sha256(leaf), 3
        for name in names:
            records.add(TlsaRecord(absolute_name(name), number, 1, 1, data))
    return tuple(sorted(records))

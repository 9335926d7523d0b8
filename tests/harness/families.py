"""Issuer families made by the test's own CA: several intermediates per key type.

`CaFamily` is a set of `Hierarchy` objects, one per intermediate, each named
like a member ("E1", "R1", ...); `family_toml` writes them in the format of
danesync's families file, so a test can hand danesync a family of its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from cryptography import x509

from danesync.tlsa import spki_sha256
from tests.harness.certs import Hierarchy, KeyKind, Leaf, make_key


@dataclass(frozen=True)
class CaMember:
    name: str
    hierarchy: Hierarchy
    key_type: str  # of the leaves it issues: "ecdsa" | "rsa"
    role: str = "active"
    not_before: dt.datetime | None = None  # default: the intermediate's own
    not_after: dt.datetime | None = None

    @property
    def spki(self) -> str:
        return spki_sha256(self.hierarchy.intermediate)

    @property
    def ta(self) -> str:
        """Its record's rdata, as dig prints it after normalisation."""
        return f"2 1 1 {self.spki}"

    def issue(self, hostnames: list[str], slot: int | None = None) -> Leaf:
        """A leaf of this member's key type (RSA keys from a cache slot: they are slow)."""
        kind: KeyKind = "rsa" if self.key_type == "rsa" else "ec256"
        key = make_key(kind, slot) if kind == "rsa" and slot is not None else None
        return self.hierarchy.issue(hostnames, key=key, key_kind=kind)


@dataclass
class CaFamily:
    name: str
    members: list[CaMember] = field(default_factory=list)

    def member(self, name: str) -> CaMember:
        return next(m for m in self.members if m.name == name)

    def of_type(self, key_type: str) -> list[CaMember]:
        return [m for m in self.members if m.key_type == key_type]


def make_test_family(
    name: str = "testca",
    ecdsa: tuple[str, ...] = ("E1", "E2", "E3"),
    rsa: tuple[str, ...] = ("R1", "R2"),
    backups: tuple[str, ...] = ("E3",),
) -> CaFamily:
    """Three ECDSA-issuing intermediates and two RSA-issuing ones by default."""
    tag = uuid.uuid4().hex[:6]  # unique subjects: a shared Postfix may serve older ones
    family = CaFamily(name)
    for key_type, names in (("ecdsa", ecdsa), ("rsa", rsa)):
        for member_name in names:
            role = "backup" if member_name in backups else "active"
            hierarchy = Hierarchy(f"{name} {member_name} {tag}")
            family.members.append(CaMember(member_name, hierarchy, key_type, role))
    return family


def _utc(cert: x509.Certificate, attribute: str) -> dt.datetime:
    # cryptography 38 has no *_utc attributes; newer ones deprecate the naive ones.
    value: dt.datetime | None = getattr(cert, f"{attribute}_utc", None)
    return value or getattr(cert, attribute).replace(tzinfo=dt.UTC)


def _toml_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def family_toml(*families: CaFamily) -> str:
    """A families file (danesync's format) describing `families`."""
    lines: list[str] = []
    for family in families:
        lines += ["[[family]]", f'name = "{family.name}"', ""]
        for member in family.members:
            cert = member.hierarchy.intermediate
            not_before = member.not_before or _utc(cert, "not_valid_before")
            not_after = member.not_after or _utc(cert, "not_valid_after")
            lines += [
                "[[family.member]]",
                f'name = "{member.name}"',
                f'key = "{member.key_type}"',
                f'spki_sha256 = "{member.spki}"',
                f"not_before = {_toml_time(not_before)}",
                f"not_after = {_toml_time(not_after)}",
                f'role = "{member.role}"',
                "",
            ]
    return "\n".join(lines)

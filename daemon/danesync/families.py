"""Issuer families: every intermediate a CA may issue a renewal from, as data.

Let's Encrypt picks the issuing intermediate at random among the active ones
of the key type, and may switch to a backup without warning. With `2 1 1`
over the issuer, a renewal from another intermediate needs a new record and
must wait until it has aged in every cache. A certificate with
`issuers = "letsencrypt"` (or "auto") instead keeps the `2 1 1` of every
member of its key type published, so such a renewal deploys at once.

The families are data: `data/families.toml` in the package, extended or
overridden by the operator's file (`[families] file`). Everything here is
pure except `read_families` and `read_shipped_families`.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from danesync.errors import ConfigError
from danesync.tlsa import TlsaRecord, Usage
from danesync.tomlfile import read_toml_file

if TYPE_CHECKING:
    from danesync.config import CertificateConfig, Config
    from danesync.needs import Holding

AUTO = "auto"  # `issuers = "auto"`: the family is recognised from the chain's issuer
MAX_RECORDS_PER_NAME = 12  # Microsoft's senders handle about that many TLSA records
KEY_TYPES = ("ecdsa", "rsa")  # as Chain.key_algorithm names them
SHIPPED_NAME = "families.toml"

_FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Role(Enum):
    ACTIVE = "active"  # issues now
    BACKUP = "backup"  # may start issuing at any time, without warning


@dataclass(frozen=True, order=True)
class Member:
    """One intermediate of a family."""

    name: str
    key_type: str  # "ecdsa" | "rsa"
    spki_sha256: str  # lower-case hex: the data of its `2 1 1` record
    not_before: dt.datetime
    not_after: dt.datetime
    role: Role

    def expired(self, now: dt.datetime) -> bool:
        return self.not_after <= now

    def describe(self) -> str:
        return f"{self.name} ({self.key_type}, {self.role.value})"


@dataclass(frozen=True)
class Family:
    name: str
    members: tuple[Member, ...]
    description: str = ""
    source: str = ""  # where the data came from: a file path

    def member_with(self, spki_sha256: str, key_type: str | None = None) -> Member | None:
        for member in self.members:
            if member.spki_sha256 == spki_sha256 and key_type in (None, member.key_type):
                return member
        return None


Families = Mapping[str, Family]


# --- reading the data ------------------------------------------------------------


def build_families(document: Mapping[str, Any], source: str) -> dict[str, Family]:
    """Validate a parsed families file; ConfigError names the file and every problem."""
    problems: list[str] = []
    for key in document:
        if key != "family":
            problems.append(f"{key}: unknown key (families are [[family]] tables)")
    raw = document.get("family", [])
    if not isinstance(raw, list):
        problems.append("family: must be an array of tables ([[family]])")
        raw = []
    families: dict[str, Family] = {}
    for index, table in enumerate(raw):
        family = _build_family(table, f"family[{index + 1}]", source, problems)
        if family is None:
            continue
        if family.name in families:
            problems.append(f"family[{index + 1}].name: {family.name!r} is defined twice")
            continue
        families[family.name] = family
    if problems:
        raise ConfigError(source, problems)
    return families


def _build_family(table: Any, prefix: str, source: str, problems: list[str]) -> Family | None:
    if not isinstance(table, dict):
        problems.append(f"{prefix}: must be a table")
        return None
    before = len(problems)
    for key in table:
        if key not in ("name", "description", "source", "member"):
            problems.append(f"{prefix}.{key}: unknown key")
    name = table.get("name")
    if not isinstance(name, str) or not _FAMILY_NAME.fullmatch(name) or name == AUTO:
        problems.append(
            f'{prefix}.name: must be a lower-case name like "letsencrypt" '
            f'(not "{AUTO}"), not {name!r}'
        )
    for key in ("description", "source"):
        if key in table and not isinstance(table[key], str):
            problems.append(f"{prefix}.{key}: must be a string")
    raw_members = table.get("member", [])
    if not isinstance(raw_members, list) or not raw_members:
        problems.append(f"{prefix}.member: must be a non-empty array of tables ([[family.member]])")
        raw_members = []
    members: list[Member] = []
    for index, raw in enumerate(raw_members):
        member = _build_member(raw, f"{prefix}.member[{index + 1}]", problems)
        if member is None:
            continue
        if any(m.name == member.name for m in members):
            problems.append(f"{prefix}.member[{index + 1}].name: {member.name!r} is listed twice")
        elif any(m.spki_sha256 == member.spki_sha256 for m in members):
            problems.append(
                f"{prefix}.member[{index + 1}].spki_sha256: the same key as another member"
            )
        else:
            members.append(member)
    if len(problems) > before:
        return None
    assert isinstance(name, str)
    return Family(
        name,
        tuple(members),
        str(table.get("description", "")),
        str(table.get("source", "")) or source,
    )


def _build_member(raw: Any, prefix: str, problems: list[str]) -> Member | None:
    if not isinstance(raw, dict):
        problems.append(f"{prefix}: must be a table")
        return None
    before = len(problems)
    known = ("name", "key", "spki_sha256", "not_before", "not_after", "role")
    for key in raw:
        if key not in known:
            problems.append(f"{prefix}.{key}: unknown key")
    for key in known:
        if key not in raw:
            problems.append(f"{prefix}.{key}: required")
    if len(problems) > before:
        return None
    name, key_type, spki, role = raw["name"], raw["key"], raw["spki_sha256"], raw["role"]
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{prefix}.name: must be a non-empty string")
    if key_type not in KEY_TYPES:
        problems.append(f'{prefix}.key: must be "ecdsa" or "rsa", not {key_type!r}')
    if not isinstance(spki, str) or not _HEX64.fullmatch(spki.lower()):
        problems.append(f"{prefix}.spki_sha256: must be 64 hexadecimal digits (a SHA-256)")
    if role not in [r.value for r in Role]:
        problems.append(f'{prefix}.role: must be "active" or "backup", not {role!r}')
    times: list[dt.datetime] = []
    for key in ("not_before", "not_after"):
        value = raw[key]
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            problems.append(
                f"{prefix}.{key}: must be a date and time with Z, like 2028-09-02T23:59:59Z"
            )
        else:
            times.append(value.astimezone(dt.UTC))
    if len(times) == 2 and times[0] >= times[1]:
        problems.append(f"{prefix}.not_after: must be later than not_before")
    if len(problems) > before:
        return None
    return Member(name.strip(), key_type, spki.lower(), times[0], times[1], Role(role))


def read_families(path: Path) -> dict[str, Family]:
    """Read and validate one families file."""
    document = read_toml_file(path)
    return build_families(document, str(path))


@functools.cache
def read_shipped_families() -> Families:
    """The families in the package (data/families.toml); read once."""
    resource = resources.files("danesync").joinpath("data", SHIPPED_NAME)
    document = tomllib.loads(resource.read_text(encoding="utf-8"))
    return MappingProxyType(build_families(document, f"danesync/data/{SHIPPED_NAME}"))


def merge_families(shipped: Families, operator: Families) -> dict[str, Family]:
    """The operator's families extend the shipped ones; one of the same name replaces it."""
    return {**shipped, **operator}


# --- which records a lineage publishes for its family --------------------------


@dataclass(frozen=True)
class FamilyRecords:
    """What a lineage's family adds to the records its chains need."""

    family: Family | None
    records: tuple[TlsaRecord, ...]  # 2 1 1 of every included member, under every name
    members: tuple[Member, ...] = ()  # included
    left_out: tuple[Member, ...] = ()  # left out for the per-name cap
    warnings: tuple[str, ...] = ()


def resolve_family(
    issuers: str | None, families: Families, issuer_spkis: Iterable[str]
) -> Family | None:
    """The family a certificate's `issuers` names; for "auto", the one that has its issuer."""
    if issuers is None:
        return None
    if issuers != AUTO:
        return families.get(issuers)
    spkis = set(issuer_spkis)
    for name in sorted(families):
        if any(member.spki_sha256 in spkis for member in families[name].members):
            return families[name]
    return None


def plan_family_records(
    certificate: CertificateConfig,
    key_algorithm: str,
    families: Families,
    now: dt.datetime,
    needed: Iterable[TlsaRecord] = (),
) -> FamilyRecords:
    """The `2 1 1` records of the certificate's family for its key type.

    `needed` are the records the lineage's own chains need (served, pending,
    candidate): they count against the cap of `MAX_RECORDS_PER_NAME` per
    owner name, and for "auto" their `2 1 1` data names the family. Expired
    members are dropped; members not yet valid are published early. Over the
    cap, backups are left out first, then active members the chains do not
    use, with a warning.
    """
    issuers: str | None = getattr(certificate, "issuers", None)
    if issuers is None or Usage.DANE_TA not in certificate.usages:
        return FamilyRecords(None, ())
    needed = tuple(needed)
    family = resolve_family(issuers, families, (r.data for r in needed if r.usage == 2))
    if family is None:
        return FamilyRecords(None, ())
    candidates = sorted(
        (m for m in family.members if m.key_type == key_algorithm and not m.expired(now)),
        key=_keep_order,
    )
    records: set[TlsaRecord] = set()
    left_out: set[Member] = set()
    kept: set[Member] = set()
    for name in certificate.tlsa:
        at_name = {r for r in needed if r.name == name}
        in_use = {r.data for r in at_name if r.usage == 2}
        room = MAX_RECORDS_PER_NAME - len(at_name)
        for member in candidates:
            if member.spki_sha256 in in_use:
                kept.add(member)  # already needed: costs nothing
            elif room > 0:
                room -= 1
                kept.add(member)
            else:
                left_out.add(member)
                continue
            records.add(_record(name, member))
    warnings: tuple[str, ...] = ()
    if left_out:
        dropped = ", ".join(m.describe() for m in sorted(left_out, key=_keep_order))
        warnings = (
            f"family {family.name}: at most {MAX_RECORDS_PER_NAME} TLSA records per name; "
            f"left out {dropped}: a renewal from it will wait for its record",
        )
    return FamilyRecords(
        family,
        tuple(sorted(records)),
        tuple(sorted(kept - left_out, key=_keep_order)),
        tuple(sorted(left_out, key=_keep_order)),
        warnings,
    )


def build_family_records(
    certificate: CertificateConfig,
    key_algorithm: str,
    families: Families,
    now: dt.datetime,
    needed: Iterable[TlsaRecord] = (),
) -> tuple[TlsaRecord, ...]:
    """The family records alone (see `plan_family_records`)."""
    return plan_family_records(certificate, key_algorithm, families, now, needed).records


def build_holding_family_records(
    config: Config, holdings: Iterable[Holding], now: dt.datetime
) -> dict[str, tuple[TlsaRecord, ...]]:
    """Lineage -> its family records: the `extra_records` of needs.build_needed_records.

    A holding's chains (deployed, in flight, candidate) give the key types
    and the records that count against the cap; every lineage of the
    config is a holding, not only those of this pass, so a partial pass
    never retires another lineage's family records.
    """
    from danesync.needs import build_chain_records

    extra: dict[str, tuple[TlsaRecord, ...]] = {}
    for holding in holdings:
        certificate = holding.certificate
        if certificate is None or certificate.issuers is None or not holding.chains:
            continue
        own = {r for chain in holding.chains for r in build_chain_records(certificate, chain)}
        records: set[TlsaRecord] = set()
        for key_algorithm in sorted({chain.key_algorithm for chain in holding.chains}):
            records.update(
                build_family_records(certificate, key_algorithm, config.families, now, own)
            )
        extra[holding.lineage] = tuple(sorted(records))
    return extra


def _keep_order(member: Member) -> tuple[int, dt.datetime, str]:
    """Which members stay first under the cap: active before backup, then by start, name."""
    return (0 if member.role is Role.ACTIVE else 1, member.not_before, member.name)


def _record(name: str, member: Member) -> TlsaRecord:
    return TlsaRecord(name, 2, 1, 1, member.spki_sha256)

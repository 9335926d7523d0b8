"""What `check` and `status` say about issuer families: per owner name, which
TLSA records are current, pending, pre-published for a family, or waiting to
be retired; whether a chain's intermediate is a known member; why `3 1 1`
renewals wait.

Pure except `read_reuse_key` (certbot's renewal file) and `log_family_warnings`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danesync.families import (
    AUTO,
    Families,
    Family,
    Member,
    build_holding_family_records,
    plan_family_records,
    resolve_family,
)
from danesync.needs import build_chain_records, build_holdings, build_needed_records
from danesync.tlsa import TlsaRecord

if TYPE_CHECKING:
    from danesync.config import Config
    from danesync.state import ChainInfo, State


@dataclass(frozen=True)
class NameReport:
    name: str
    current: tuple[TlsaRecord, ...]  # needed by a served chain (or, in check, live/'s)
    pending: tuple[TlsaRecord, ...]  # needed by a held renewal
    family: tuple[tuple[TlsaRecord, str], ...]  # pre-published for a family: record, member
    retiring: tuple[TlsaRecord, ...]  # published by danesync, needed by nothing

    def to_json(self) -> dict[str, Any]:
        return {
            "current": [r.rdata for r in self.current],
            "pending": [r.rdata for r in self.pending],
            "family": [{"tlsa": r.rdata, "member": member} for r, member in self.family],
            "retiring": [r.rdata for r in self.retiring],
        }

    def lines(self) -> list[str]:
        rows = [("current", r.rdata, "") for r in self.current]
        rows += [("pending", r.rdata, "") for r in self.pending]
        rows += [("family", r.rdata, f"  ({member})") for r, member in self.family]
        rows += [("retiring", r.rdata, "") for r in self.retiring]
        return [f"{kind:<9} {rdata}{note}" for kind, rdata, note in rows]


def build_name_report(
    config: Config, state: State, candidates: Mapping[str, ChainInfo], now: dt.datetime
) -> tuple[NameReport, ...]:
    """One report per owner name of the configured certificates and the state.

    `candidates` are chains to count as current besides those Postfix serves
    (`check` passes the chains in live/); `status` passes none, and the
    state's pending chains are then "pending".
    """
    holdings = build_holdings(config, state, dict(candidates))
    family_extra = build_holding_family_records(config, holdings, now)
    own = _flatten(build_needed_records(holdings))
    with_family = _flatten(build_needed_records(holdings, family_extra))
    current: set[TlsaRecord] = set()
    for holding in holdings:
        lineage_state = state.lineages.get(holding.lineage)
        chains = [candidates.get(holding.lineage)]
        if lineage_state is not None:
            chains += [lineage_state.deployed, lineage_state.inflight]
        for chain in chains:
            if chain is None:
                continue
            if holding.certificate is None:
                current.update(chain.tlsa)
            else:
                current.update(build_chain_records(holding.certificate, chain))
    pending = own - current
    family = with_family - own
    owned = {r for history in state.names.values() for r in history.owned}
    retiring = owned - with_family
    members = _member_names(config)
    names = {n for c in config.certificates for n in c.tlsa}
    names |= {r.name for r in with_family | retiring}

    def at(records: Set[TlsaRecord], name: str) -> tuple[TlsaRecord, ...]:
        return tuple(sorted(r for r in records if r.name == name))

    return tuple(
        NameReport(
            name,
            at(current, name),
            at(pending, name),
            tuple((r, members.get(r.data, "?")) for r in at(family, name)),
            at(retiring, name),
        )
        for name in sorted(names)
    )


def _flatten(needed: Mapping[str, frozenset[TlsaRecord]]) -> set[TlsaRecord]:
    return {record for records in needed.values() for record in records}


def build_family_warnings(config: Config, state: State, now: dt.datetime) -> tuple[str, ...]:
    """Per lineage with a family: members left out for the per-name cap."""
    warnings: list[str] = []
    for holding in build_holdings(config, state, {}):
        certificate = holding.certificate
        if certificate is None or certificate.issuers is None or not holding.chains:
            continue
        own = {r for chain in holding.chains for r in build_chain_records(certificate, chain)}
        for key_algorithm in sorted({chain.key_algorithm for chain in holding.chains}):
            plan = plan_family_records(certificate, key_algorithm, config.families, now, own)
            warnings += [f"{certificate.lineage}: {warning}" for warning in plan.warnings]
    return tuple(warnings)


def log_family_warnings(config: Config, state: State, now: dt.datetime) -> None:
    """`family.capped` per lineage whose family exceeds the per-name cap (start, reload)."""
    import structlog

    log = structlog.get_logger("danesync")
    for warning in build_family_warnings(config, state, now):
        lineage, _, reason = warning.partition(": ")
        log.warning("family.capped", lineage=lineage, reason=reason)


def _member_names(config: Config) -> dict[str, str]:
    """SPKI hash -> "YE2 of letsencrypt, active", over the families in use."""
    found: dict[str, str] = {}
    for family in config.families.values():
        for member in family.members:
            found.setdefault(member.spki_sha256, _label(member, family.name))
    return found


def _label(member: Member, family: str) -> str:
    return f"{member.name} of {family}, {member.role.value}"


def explain_dane_ee(reuse_key: bool | None, lineage: str, rollover_wait: int) -> list[str]:
    """Why a `3 1 1` renewal waits, and what to do about it (for `check`)."""
    if reuse_key:
        return [
            f"certbot reuses the key of {lineage} (reuse_key = True): renewals keep the",
            "3 1 1 record and deploy without waiting; a deliberate new key",
            f"(certbot renew --new-key) waits rollover_wait ({rollover_wait} s).",
        ]
    return [
        "certbot makes a new key at every renewal unless --reuse-key, so every renewal",
        f"needs a new 3 1 1 record and waits rollover_wait ({rollover_wait} s) before it is",
        "deployed. To renew without waiting: keep the key with",
        f"`certbot reconfigure --cert-name {lineage} --reuse-key` (certbot >= 2.3; older:",
        f"`certbot renew --cert-name {lineage} --reuse-key --force-renewal`), and change it",
        'deliberately now and then; or rely on "2 1 1" alone with issuers = "letsencrypt".',
    ]


def read_reuse_key(config_dir: Path, lineage: str) -> bool | None:
    """certbot's `reuse_key` for the lineage (renewal/<lineage>.conf); None if unknown."""
    try:
        text = (config_dir / "renewal" / f"{lineage}.conf").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "reuse_key":
            return value.strip().lower() == "true"
    return False


# --- the judgement `check` prints ----------------------------------------------------


class IssuerVerdict(Enum):
    NO_FAMILY = "none"  # `issuers` is not set
    MEMBER = "member"  # the chain's issuer is a known member
    OUTSIDE = "outside"  # the issuer is not in the family: the data is out of date
    UNRECOGNISED = "unrecognised"  # "auto", and no family has the issuer
    UNKNOWN_FAMILY = "unknown_family"  # names a family that is not defined


@dataclass(frozen=True)
class IssuerJudgement:
    verdict: IssuerVerdict
    message: str
    family: Family | None = None
    member: Member | None = None


def judge_issuer(
    issuers: str | None,
    issuer_spki: str | None,
    key_algorithm: str,
    families: Families,
    now: dt.datetime,
) -> IssuerJudgement:
    """Is the chain's intermediate a known member of the certificate's family?"""
    if issuers is None:
        return IssuerJudgement(IssuerVerdict.NO_FAMILY, "no issuer family configured")
    spkis = [issuer_spki] if issuer_spki else []
    family = resolve_family(issuers, families, spkis)
    if family is None and issuers != AUTO:
        return IssuerJudgement(IssuerVerdict.UNKNOWN_FAMILY, f"family {issuers!r} is not defined")
    if family is None:
        return IssuerJudgement(
            IssuerVerdict.UNRECOGNISED,
            "no known family has this chain's issuer: the family data is out of date "
            "(upgrade danesync or describe the CA in [families] file); "
            "a renewal from another intermediate takes the normal hold path",
        )
    member = family.member_with(issuer_spki or "", key_algorithm)
    if member is None:
        return IssuerJudgement(
            IssuerVerdict.OUTSIDE,
            f"the chain's issuer is not a member of family {family.name}: the family data "
            "is out of date (upgrade danesync or add it in [families] file); "
            "this renewal takes the normal hold path",
            family,
        )
    when = ""
    if member.expired(now):
        when = ", expired in the family data"
    elif member.not_before > now:
        when = ", not yet valid in the family data"
    return IssuerJudgement(
        IssuerVerdict.MEMBER,
        f"{member.describe()} of family {family.name}{when}",
        family,
        member,
    )

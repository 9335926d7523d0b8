"""The planner: what to do about each lineage, and which TLSA records to
publish, report or retire. Pure: no I/O, no clock (it is given `now`).

The rule it enforces (DESIGN.md, "the one invariant"): a chain goes into
service only when every TLSA record it needs has been visible on every
authoritative server for `rollover_wait`, unless DNS is off, Postfix already
serves it, or the deployed chain is expired or would expire before the wait
ends (an emergency, `rollover.forced`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from danesync.chain import Chain
from danesync.config import Config, DnsMode
from danesync.families import build_pass_family_records
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord


class Verb(Enum):
    UNCHANGED = "unchanged"  # the candidate is what Postfix serves
    DEPLOY = "deploy"  # its records are visible and aged (or DNS is off)
    FORCE = "force"  # emergency: the deployed chain is expired or about to be
    PUBLISH = "publish"  # held: danesync publishes its records now
    MISSING = "missing"  # held: records the operator must add (check mode)
    WAIT_VISIBLE = "wait_visible"  # held: published, not yet on every server
    WAIT_AGE = "wait_age"  # held: visible, aging until proceed_at
    DNS_UNKNOWN = "dns_unknown"  # held: the DNS servers could not be asked
    DOWNGRADE = "downgrade"  # not deployed: expires before the deployed chain
    FAILED = "failed"  # its deploy failed before; not retried until it changes
    INVALID = "invalid"
    PENDING = "pending"  # certbot is mid-update

    @property
    def deploys(self) -> bool:
        return self in (Verb.DEPLOY, Verb.FORCE)

    @property
    def holds(self) -> bool:
        return self in (
            Verb.PUBLISH,
            Verb.MISSING,
            Verb.WAIT_VISIBLE,
            Verb.WAIT_AGE,
            Verb.DNS_UNKNOWN,
        )


@dataclass(frozen=True)
class Problem:
    """Why a lineage has no usable candidate now."""

    reason: str
    pending: bool = False


Candidate = Chain | Problem


@dataclass(frozen=True)
class DnsView:
    """What the DNS servers returned for the TLSA names asked about."""

    names: frozenset[str]  # the owner names that were asked for
    visible: frozenset[TlsaRecord]  # returned by every verify server
    on_primary: frozenset[TlsaRecord]  # returned by the primary (rfc2136)


@dataclass(frozen=True)
class Decision:
    lineage: str
    verb: Verb
    chain: Chain | None = None
    reason: str = ""
    proceed_at: dt.datetime | None = None
    missing: tuple[TlsaRecord, ...] = ()  # needed records not yet visible everywhere


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    mark_visible: tuple[TlsaRecord, ...]  # became visible everywhere now
    mark_invisible: tuple[TlsaRecord, ...]  # were visible, are not any more
    publish: tuple[TlsaRecord, ...]  # rfc2136: add these (needed, absent on the primary)
    missing: tuple[TlsaRecord, ...]  # needed and not visible everywhere
    retire: tuple[TlsaRecord, ...]  # published by danesync, needed by nothing

    @property
    def deploys(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.verb.deploys)


def build_query_names(
    config: Config, state: State, candidates: Mapping[str, Candidate]
) -> frozenset[str]:
    """The TLSA owner names a pass must look up."""
    names: set[str] = {record.name for record in state.records}
    for lineage, candidate in candidates.items():
        certificate = config.certificate(lineage)
        if certificate is not None:
            names.update(certificate.tlsa)
        if isinstance(candidate, Chain):
            names.update(record.name for record in candidate.tlsa)
        lineage_state = state.lineages.get(lineage)
        if lineage_state is not None and lineage_state.deployed is not None:
            names.update(record.name for record in lineage_state.deployed.tlsa)
    return frozenset(names)


def plan_pass(
    config: Config,
    state: State,
    candidates: Mapping[str, Candidate],
    dns: DnsView | None,
    served: Mapping[str, str],
    now: dt.datetime,
) -> Plan:
    """Decide one pass over the lineages in `candidates` (others are left as they are).

    `dns` is None when mode is off or the servers could not be asked;
    `served` maps a lineage to the leaf fingerprint Postfix was seen serving.
    """
    mode = config.dns.mode
    wait = dt.timedelta(seconds=config.dns.rollover_wait)
    dns_known = mode is not DnsMode.OFF and dns is not None

    visible_since: dict[TlsaRecord, dt.datetime] = {
        record: s.visible_since for record, s in state.records.items() if s.visible_since
    }
    mark_visible: list[TlsaRecord] = []
    mark_invisible: list[TlsaRecord] = []
    if dns_known:
        assert dns is not None
        for record in sorted(dns.visible):
            if record not in visible_since:
                visible_since[record] = now
                mark_visible.append(record)
        for record in sorted(visible_since):
            if record.name in dns.names and record not in dns.visible:
                del visible_since[record]
                mark_invisible.append(record)

    def aged(records: Iterable[TlsaRecord]) -> dt.datetime | None:
        """When all of `records` will have been visible for `wait`; None if one is not."""
        moments = [visible_since.get(r) for r in records]
        if any(m is None for m in moments):
            return None
        return max((m for m in moments if m is not None), default=now) + wait

    decisions = [
        _decide(config, state, lineage, candidate, dns_known, aged, served, now, wait)
        for lineage, candidate in sorted(candidates.items())
    ]
    decisions = _refuse_duplicate_algorithms(config, state, decisions)

    needed: set[TlsaRecord] = set()
    for lineage, lineage_state in state.lineages.items():
        if lineage in candidates:
            continue  # decided below
        for info in (lineage_state.deployed, lineage_state.pending):
            if info is not None:
                needed.update(info.tlsa)
    for decision in decisions:
        deployed = state.lineages.get(decision.lineage)
        if decision.verb is Verb.UNCHANGED and decision.chain is not None:
            needed.update(decision.chain.tlsa)  # today's config for the served chain
        elif deployed is not None and deployed.deployed is not None:
            needed.update(deployed.deployed.tlsa)
        if (decision.verb.holds or decision.verb.deploys) and decision.chain is not None:
            needed.update(decision.chain.tlsa)
        if decision.verb is Verb.PENDING and deployed is not None and deployed.pending:
            needed.update(deployed.pending.tlsa)
    # Issuer families (danesync.families): the 2 1 1 of every member stays published.
    needed.update(
        build_pass_family_records(
            config,
            state,
            {d.lineage: d.chain for d in decisions if d.chain is not None and _keeps(d.verb)},
            now,
        )
    )

    if mode is DnsMode.OFF:
        return Plan(tuple(decisions), (), (), (), (), ())
    if not dns_known:
        return Plan(tuple(decisions), (), (), (), (), ())
    assert dns is not None
    asked = [r for r in sorted(needed) if r.name in dns.names]
    missing = tuple(r for r in asked if r not in dns.visible)
    publish: tuple[TlsaRecord, ...] = ()
    retire: tuple[TlsaRecord, ...] = ()
    if mode is DnsMode.RFC2136:
        publish = tuple(r for r in asked if r not in dns.on_primary)
        retire = tuple(
            r
            for r, s in sorted(state.records.items())
            if s.published and r not in needed and r.name in dns.names
        )
    return Plan(
        tuple(decisions),
        tuple(mark_visible),
        tuple(mark_invisible),
        publish,
        missing,
        retire,
    )


def _keeps(verb: Verb) -> bool:
    """A candidate whose records the pass keeps (served, deploying or held)."""
    return verb is Verb.UNCHANGED or verb.holds or verb.deploys


def _decide(
    config: Config,
    state: State,
    lineage: str,
    candidate: Candidate,
    dns_known: bool,
    aged: Callable[[Iterable[TlsaRecord]], dt.datetime | None],
    served: Mapping[str, str],
    now: dt.datetime,
    wait: dt.timedelta,
) -> Decision:
    if isinstance(candidate, Problem):
        verb = Verb.PENDING if candidate.pending else Verb.INVALID
        return Decision(lineage, verb, reason=candidate.reason)
    chain = candidate
    lineage_state = state.lineages.get(lineage)
    deployed: ChainInfo | None = lineage_state.deployed if lineage_state else None
    if deployed is not None and deployed.fingerprint == chain.fingerprint:
        return Decision(lineage, Verb.UNCHANGED, chain)
    if lineage_state is not None and lineage_state.failed_fingerprint == chain.fingerprint:
        return Decision(lineage, Verb.FAILED, chain, lineage_state.failed_reason or "")
    deployed_valid = deployed is not None and deployed.not_after > now
    if deployed is not None and deployed_valid and chain.not_after < deployed.not_after:
        return Decision(
            lineage,
            Verb.DOWNGRADE,
            chain,
            f"it expires at {chain.not_after:%Y-%m-%d %H:%M}Z, before the deployed chain "
            f"(serial {deployed.serial}, {deployed.not_after:%Y-%m-%d %H:%M}Z)",
        )
    if config.dns.mode is DnsMode.OFF:
        return Decision(lineage, Verb.DEPLOY, chain, "dns.mode is off")
    if deployed is None and served.get(lineage) == chain.fingerprint:
        return Decision(lineage, Verb.DEPLOY, chain, "Postfix already serves this chain")

    ready_at = aged(chain.tlsa) if dns_known else None
    if ready_at is not None and ready_at <= now:
        return Decision(lineage, Verb.DEPLOY, chain, "its TLSA records are visible and aged")

    # Held. When would it proceed at the earliest?
    proceed_at: dt.datetime = ready_at if ready_at is not None else now + wait
    if deployed is not None and deployed.not_after <= now:
        return Decision(
            lineage,
            Verb.FORCE,
            chain,
            f"the deployed chain (serial {deployed.serial}) expired at "
            f"{deployed.not_after:%Y-%m-%d %H:%M}Z",
        )
    if deployed is not None and deployed.not_after <= proceed_at:
        return Decision(
            lineage,
            Verb.FORCE,
            chain,
            f"the deployed chain (serial {deployed.serial}) expires at "
            f"{deployed.not_after:%Y-%m-%d %H:%M}Z, before the rollover could finish",
        )
    if not dns_known:
        return Decision(
            lineage, Verb.DNS_UNKNOWN, chain, "the DNS servers could not be asked", proceed_at
        )
    missing = tuple(r for r in chain.tlsa if aged([r]) is None)
    if ready_at is not None:
        return Decision(
            lineage, Verb.WAIT_AGE, chain, "waiting for DNS caches to expire", proceed_at
        )
    if config.dns.mode is DnsMode.CHECK:
        return Decision(
            lineage, Verb.MISSING, chain, "its TLSA records are not visible", proceed_at, missing
        )
    published = all(state.records.get(r) and state.records[r].published for r in missing)
    verb = Verb.WAIT_VISIBLE if published else Verb.PUBLISH
    return Decision(
        lineage, verb, chain, "its TLSA records are not yet visible everywhere", proceed_at, missing
    )


def _refuse_duplicate_algorithms(
    config: Config, state: State, decisions: list[Decision]
) -> list[Decision]:
    """Postfix takes one default chain per key algorithm: two are an error."""
    owners: dict[str, str] = {}
    for configured in config.certificates:
        lineage_state = state.lineages.get(configured.lineage)
        if configured.sni or lineage_state is None or lineage_state.deployed is None:
            continue
        owners.setdefault(lineage_state.deployed.key_algorithm, configured.lineage)
    result = []
    for decision in decisions:
        certificate = config.certificate(decision.lineage)
        chain = decision.chain
        if chain is None or certificate is None or certificate.sni or decision.verb is Verb.INVALID:
            result.append(decision)
            continue
        owner = owners.setdefault(chain.key_algorithm, decision.lineage)
        if owner != decision.lineage:
            reason = (
                f"lineages {owner} and {decision.lineage} both have an {chain.key_algorithm} key "
                "for the default chain; Postfix takes one per algorithm "
                "(set sni = true on one of them)"
            )
            result.append(Decision(decision.lineage, Verb.INVALID, chain, reason))
            continue
        result.append(decision)
    return result

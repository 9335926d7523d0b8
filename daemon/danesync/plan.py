"""The planner: every decision of danesync, as explicit steps. Pure: no I/O,
no clock (it is given `now` and what was observed).

The one rule (DESIGN.md, "the one invariant"): every chain Postfix presents
matches every TLSA RRset version a cache may still hold for its names
(history.py says which versions those are). Each step is allowed only if the
rule holds after it:

- deploy a chain only if every possible version at its names accepts it;
- add records only if every served chain accepts the resulting RRset;
- remove a record only if danesync's own update added it and every served
  chain accepts the RRset without it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from danesync.config import Config, DnsMode
from danesync.decisions import (
    Candidate,
    ClearInflight,
    Decision,
    Deploy,
    DeployItem,
    DeployKind,
    Observations,
    Plan,
    Problem,
    Publish,
    Retire,
    Step,
    Verb,
)
from danesync.families import build_holding_family_records
from danesync.history import RRset, is_never, possible_versions
from danesync.matching import rrset_accepts
from danesync.needs import Holding, build_holdings, build_needed_records
from danesync.records import plan_publish, plan_retire
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord

__all__ = [
    "FORCE_MARGIN",
    "Candidate",
    "ClearInflight",
    "Decision",
    "Deploy",
    "DeployItem",
    "DeployKind",
    "Observations",
    "Plan",
    "Problem",
    "Publish",
    "Retire",
    "Step",
    "Verb",
    "build_query_names",
    "plan_pass",
    "plan_recovery",
]

# A chain that expires before its successor is safe is replaced this long
# before its notAfter: the last safe moment, with room for a reload and probe.
FORCE_MARGIN = dt.timedelta(minutes=5)
_GATE = "to be gated"  # a first-round DEPLOY that still has to pass the DNS gate


def primary_key(config: Config) -> str | None:
    server = config.dns.server
    return None if server is None else str(server)


def plan_recovery(
    config: Config, state: State, on_disk: Mapping[str, str | None]
) -> tuple[Step, ...]:
    """After a restart: finish the deploys in flight whose file is in place,
    forget the others (their file was never written, or was rolled back)."""
    items: list[DeployItem] = []
    steps: list[Step] = []
    for lineage, lineage_state in sorted(state.lineages.items()):
        inflight = lineage_state.inflight
        if inflight is None:
            continue
        if on_disk.get(lineage) == inflight.fingerprint and config.certificate(lineage):
            reason = "finished a deploy interrupted by a restart"
            items.append(DeployItem(lineage, inflight, DeployKind.RESUMED, reason))
        else:
            steps.append(ClearInflight(lineage))
    if items:
        steps.append(Deploy(tuple(items)))
    return tuple(steps)


def build_query_names(config: Config, state: State, lineages: set[str] | None) -> frozenset[str]:
    """The owner names a pass looks up: those of its lineages (all, for a full
    pass) and, on a full pass, every name where danesync owns records."""
    names: set[str] = set()
    for certificate in config.certificates:
        if lineages is None or certificate.lineage in lineages:
            names.update(certificate.tlsa)
    if lineages is None:
        names.update(n for n, h in state.names.items() if h.owned or h.intent)
    return frozenset(names)


@dataclass
class _Context:
    config: Config
    state: State
    obs: Observations
    now: dt.datetime
    floor: int
    primary: str | None

    def current(self, name: str) -> RRset:
        history = self.state.names.get(name)
        found = history.current(self.primary) if history and self.primary else None
        return found or RRset.of((), 0)

    def everywhere(self, name: str) -> frozenset[TlsaRecord]:
        history = self.state.names.get(name)
        if history is None or not history.servers:
            return frozenset()
        sets = [v.records for v in history.servers.values()]
        return frozenset.intersection(*sets)


def plan_pass(config: Config, state: State, obs: Observations, now: dt.datetime) -> Plan:
    """Decide one pass over the lineages in `obs.candidates` (the others keep their state)."""
    ctx = _Context(config, state, obs, now, config.dns.rollover_wait, primary_key(config))
    mode = config.dns.mode
    first = [_decide_candidate(ctx, lineage, c) for lineage, c in sorted(obs.candidates.items())]
    first = _refuse_duplicate_algorithms(config, state, first)
    held = {d.lineage: d.chain if (d.verb.holds or d.verb.deploys) else None for d in first}
    holdings = build_holdings(config, state, held)
    by_name: dict[str, list[Holding]] = {}
    for holding in holdings:
        for owner in holding.names:
            if owner in obs.fresh:  # only names just observed are looked up
                by_name.setdefault(owner, []).append(holding)
    # Records a lineage pre-publishes: the observations' and its issuer
    # family's (danesync.families: every member's 2 1 1 stays published).
    extra: dict[str, tuple[TlsaRecord, ...]] = dict(obs.extra_records or {})
    for lineage, records in build_holding_family_records(config, holdings, now).items():
        extra[lineage] = (*extra.get(lineage, ()), *records)
    needed = build_needed_records(holdings, extra)

    steps: list[Step] = []
    publishes: dict[str, RRset] = {}
    if mode is DnsMode.RFC2136:
        # Only names just observed (a renewal's: a few among 10,000).
        for name in sorted(needed.keys() & obs.fresh):
            known, unknown = _served_at(ctx, by_name.get(name, []))
            step = plan_publish(
                name, ctx.current(name), needed[name], known, unknown, config.dns.ttl
            )
            if step is not None:
                steps.append(step)
                publishes[name] = RRset.of(ctx.current(name).records | set(step.add), step.ttl)

    # The gate again, now knowing what this pass publishes.
    decisions = [
        _gate_decision(ctx, d, publishes, needed) if d.reason is _GATE else d for d in first
    ]
    decisions = [_hold_verb(ctx, d, publishes) if d.verb is Verb.PUBLISH else d for d in decisions]
    items = [
        DeployItem(
            d.lineage,
            d.chain,
            DeployKind.FORCED if d.verb is Verb.FORCE else DeployKind.NEW,
            d.reason,
        )
        for d in decisions
        if d.verb.deploys and d.chain is not None
    ]
    items += _plan_repairs(decisions, obs)
    if items:
        steps.append(Deploy(tuple(items)))
    elif mode is DnsMode.RFC2136:
        # Retire only in a round that deploys nothing: what is served is settled.
        for name in sorted(n for n in obs.fresh if n in state.names and state.names[n].owned):
            known, unknown = _served_at(ctx, by_name.get(name, []))
            retire = plan_retire(
                name,
                ctx.current(name),
                state.names[name].owned,
                needed.get(name, frozenset()),
                known,
                unknown,
            )
            if retire is not None:
                steps.append(retire)
    missing: tuple[TlsaRecord, ...] = ()
    if mode is DnsMode.CHECK:
        missing = tuple(
            sorted(
                r
                for name in needed.keys() & obs.fresh
                for r in needed[name]
                if r not in ctx.everywhere(name)
            )
        )
    return Plan(tuple(decisions), tuple(steps), missing)


def _plan_repairs(decisions: list[Decision], obs: Observations) -> list[DeployItem]:
    """A deployed chain whose file is missing or altered is written again:
    Postfix reads it whenever it starts an smtpd, and fails every handshake without it."""
    if obs.on_disk is None:
        return []
    return [
        DeployItem(
            d.lineage,
            d.chain,
            DeployKind.REPAIR,
            "the chain file is missing or was changed; writing the deployed chain again",
        )
        for d in decisions
        if d.verb is Verb.UNCHANGED
        and d.chain is not None
        and d.lineage in obs.on_disk
        and obs.on_disk[d.lineage] != d.chain.fingerprint
    ]


def _served_at(ctx: _Context, holdings: Sequence[Holding]) -> tuple[list[ChainInfo], bool]:
    """The chains Postfix may present to clients of one owner name (`holdings`:
    the lineages with that name), and whether an unknown one (not deployed by
    danesync, not identified by the probe) is among them."""
    known: list[ChainInfo] = []
    unknown = False
    for holding in holdings:
        lineage_state = ctx.state.lineages.get(holding.lineage)
        deployed = lineage_state.deployed if lineage_state else None
        inflight = lineage_state.inflight if lineage_state else None
        if deployed is not None:
            known.append(deployed)
        if inflight is not None:
            known.append(inflight)
        if deployed is None and inflight is None:
            served = (ctx.obs.served or {}).get(holding.lineage)
            candidate = ctx.obs.candidates.get(holding.lineage)
            if isinstance(candidate, ChainInfo) and served == candidate.fingerprint:
                known.append(candidate)
            else:
                unknown = True
    return known, unknown


def _decide_candidate(ctx: _Context, lineage: str, candidate: Candidate) -> Decision:
    """What to do with one lineage's candidate, before the DNS gate."""
    if isinstance(candidate, Problem):
        verb = Verb.PENDING if candidate.pending else Verb.INVALID
        return Decision(lineage, verb, reason=candidate.reason)
    chain = candidate
    lineage_state = ctx.state.lineages.get(lineage)
    deployed = lineage_state.deployed if lineage_state else None
    if deployed is not None and deployed.fingerprint == chain.fingerprint:
        return Decision(lineage, Verb.UNCHANGED, chain)
    if lineage_state is not None and lineage_state.failed_fingerprint == chain.fingerprint:
        return Decision(lineage, Verb.FAILED, chain, lineage_state.failed_reason or "")
    if (
        deployed is not None
        and deployed.not_after > ctx.now
        and chain.not_after < deployed.not_after
    ):
        return Decision(
            lineage,
            Verb.DOWNGRADE,
            chain,
            f"it expires at {chain.not_after:%Y-%m-%d %H:%M}Z, before the deployed chain "
            f"(serial {deployed.serial}, {deployed.not_after:%Y-%m-%d %H:%M}Z)",
        )
    if ctx.config.dns.mode is DnsMode.OFF:
        return Decision(lineage, Verb.DEPLOY, chain, "dns.mode is off")
    if deployed is None and (ctx.obs.served or {}).get(lineage) == chain.fingerprint:
        return Decision(lineage, Verb.DEPLOY, chain, "Postfix already serves this chain")
    if deployed is not None and deployed.not_after <= ctx.now:
        return Decision(
            lineage,
            Verb.FORCE,
            chain,
            f"the deployed chain (serial {deployed.serial}) expired at "
            f"{deployed.not_after:%Y-%m-%d %H:%M}Z",
        )
    return Decision(lineage, Verb.DEPLOY, chain, _GATE)


def _gate_decision(
    ctx: _Context,
    decision: Decision,
    publishes: Mapping[str, RRset],
    needed: Mapping[str, frozenset[TlsaRecord]],
) -> Decision:
    """Deploy only if every RRset version a cache may hold at its names accepts it."""
    chain = decision.chain
    certificate = ctx.config.certificate(decision.lineage)
    assert chain is not None and certificate is not None
    lineage = decision.lineage
    proceed: dt.datetime | None = ctx.now
    served_now = True  # no blocking version is still served by some server
    unknown = False
    for name in certificate.tlsa:
        if name not in ctx.obs.fresh:
            unknown = True
            continue
        history = ctx.state.name(name)
        versions = list(possible_versions(history, ctx.now, ctx.floor))
        if name in publishes:
            versions.append((publishes[name], dt.datetime.max.replace(tzinfo=dt.UTC)))
        for rrset, until in versions:
            if rrset_accepts(rrset.records, chain.matches):
                continue
            if is_never(until):
                served_now = False
                proceed = None
            elif proceed is not None:
                proceed = max(proceed, until)
    if not unknown and served_now and proceed is not None and proceed <= ctx.now:
        return Decision(lineage, Verb.DEPLOY, chain, "every RRset a cache may hold accepts it")
    missing = tuple(
        sorted(
            r
            for name in certificate.tlsa
            for r in needed.get(name, frozenset())
            if r.data in (chain.leaf_spki, chain.issuer_spki) and r not in ctx.everywhere(name)
        )
    )
    if unknown:
        verb, reason = Verb.DNS_UNKNOWN, "the DNS servers could not be asked"
        proceed = None
    elif not served_now:
        verb = Verb.MISSING if ctx.config.dns.mode is DnsMode.CHECK else Verb.PUBLISH
        reason = "a server still serves a TLSA RRset that does not match it"
    else:
        verb, reason = Verb.WAIT_AGE, "waiting for DNS caches to drop RRsets that do not match it"
    return _emergency(ctx, Decision(lineage, verb, chain, reason, proceed, missing))


def _hold_verb(ctx: _Context, decision: Decision, publishes: Mapping[str, RRset]) -> Decision:
    """PUBLISH when this pass publishes a record it needs, else it waits to be seen."""
    certificate = ctx.config.certificate(decision.lineage)
    publishing = certificate is not None and any(
        r in publishes[name].records
        for name in certificate.tlsa
        if name in publishes
        for r in decision.missing
    )
    if publishing:
        return decision
    return Decision(
        decision.lineage,
        Verb.WAIT_VISIBLE,
        decision.chain,
        decision.reason,
        decision.proceed_at,
        decision.missing,
        decision.forced_at,
    )


def _emergency(ctx: _Context, decision: Decision) -> Decision:
    """The deployed chain expires before the candidate is safe: deploy at the last
    safe moment before it expires, not at once."""
    lineage_state = ctx.state.lineages.get(decision.lineage)
    deployed = lineage_state.deployed if lineage_state else None
    if deployed is None:
        return decision
    forced_at = deployed.not_after - FORCE_MARGIN
    if decision.proceed_at is not None and decision.proceed_at <= forced_at:
        return decision
    if ctx.now >= forced_at:
        return Decision(
            decision.lineage,
            Verb.FORCE,
            decision.chain,
            f"the deployed chain (serial {deployed.serial}) expires at "
            f"{deployed.not_after:%Y-%m-%d %H:%M:%S}Z, before the rollover could finish",
        )
    if decision.proceed_at is None and ctx.now + _least_wait(ctx, decision) <= forced_at:
        # When it will be safe is not known yet (its record is not out, or not
        # seen everywhere): nothing says it cannot be before the chain expires.
        return decision
    return Decision(
        decision.lineage,
        decision.verb,
        decision.chain,
        decision.reason,
        forced_at,
        decision.missing,
        forced_at,
    )


def _least_wait(ctx: _Context, decision: Decision) -> dt.timedelta:
    """The shortest a hold whose end is not known yet can still take: every
    RRset a cache may hold at the chain's names must age out (the floor, the
    configured TTL of what it publishes, and the TTL each version was served with)."""
    certificate = ctx.config.certificate(decision.lineage)
    ttls = [ctx.floor, ctx.config.dns.ttl]
    for name in certificate.tlsa if certificate is not None else ():
        history = ctx.state.names.get(name)
        if history is not None:
            ttls += [rrset.ttl for rrset, _ in possible_versions(history, ctx.now, ctx.floor)]
    return dt.timedelta(seconds=max(ttls))


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

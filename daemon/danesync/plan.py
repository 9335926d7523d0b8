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
from danesync.gate import FORCE_MARGIN, GATE, Context, gate_decision, hold_verb
from danesync.history import RRset
from danesync.needs import Holding, build_config_index, build_holdings, build_needed_records
from danesync.records import plan_publish, plan_retire
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, absolute_name

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
    if lineages is None:
        for configured in config.certificates:
            names.update(configured.tlsa)
        names.update(n for n, h in state.names.items() if h.owned or h.intent)
    else:  # a renewal: its own names, not a walk over 10,000 certificates
        for lineage in lineages:
            certificate = config.certificate(lineage)
            names.update(certificate.tlsa if certificate is not None else ())
    return frozenset(names)


def build_relevant_lineages(config: Config, obs: Observations) -> set[str] | None:
    """The configured lineages whose holdings a pass over `obs.candidates` reads
    (None: all of them, a full pass).

    The planner reads the needed records only at the names just observed and
    at the candidates' own names; a lineage matters only if it has a TLSA name
    among those (shared names included), or records of its own to add.
    """
    index = build_config_index(config)
    if len(obs.candidates) >= len(index.certificates):
        return None
    names = set(obs.fresh)
    for lineage in obs.candidates:
        certificate = config.certificate(lineage)
        names.update(certificate.tlsa if certificate is not None else ())
    relevant = set(obs.candidates) | set(obs.extra_records or {})
    for name in names | {absolute_name(n) for n in names}:
        relevant.update(index.by_name.get(name, ()))
    return relevant


def plan_pass(config: Config, state: State, obs: Observations, now: dt.datetime) -> Plan:
    """Decide one pass over the lineages in `obs.candidates` (the others keep their state).

    Its cost follows the candidates, not the configuration: only the lineages
    `build_relevant_lineages` names are looked at (all of them on a full pass).
    """
    return plan_pass_over(config, state, obs, now, build_relevant_lineages(config, obs))


def plan_pass_over(
    config: Config,
    state: State,
    obs: Observations,
    now: dt.datetime,
    relevant: set[str] | None,
) -> Plan:
    """`plan_pass`, looking at the holdings of `relevant` lineages only (None: all)."""
    ctx = Context(config, state, obs, now, config.dns.rollover_wait, primary_key(config))
    mode = config.dns.mode
    first = [_decide_candidate(ctx, lineage, c) for lineage, c in sorted(obs.candidates.items())]
    first = _refuse_duplicate_algorithms(config, state, first)
    held = {d.lineage: d.chain if (d.verb.holds or d.verb.deploys) else None for d in first}
    holdings = build_holdings(config, state, held, relevant)
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
    decisions = [gate_decision(ctx, d, publishes, needed) if d.reason is GATE else d for d in first]
    decisions = [hold_verb(ctx, d, publishes) if d.verb is Verb.PUBLISH else d for d in decisions]
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


def _served_at(ctx: Context, holdings: Sequence[Holding]) -> tuple[list[ChainInfo], bool]:
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


def _decide_candidate(ctx: Context, lineage: str, candidate: Candidate) -> Decision:
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
    return Decision(lineage, Verb.DEPLOY, chain, GATE)


def _refuse_duplicate_algorithms(
    config: Config, state: State, decisions: list[Decision]
) -> list[Decision]:
    """Postfix takes one default chain per key algorithm: two are an error."""
    owners: dict[str, str] = {}
    for configured in build_config_index(config).defaults:  # sni = false, in order
        lineage_state = state.lineages.get(configured.lineage)
        if lineage_state is None or lineage_state.deployed is None:
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

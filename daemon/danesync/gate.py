"""The DNS gate of the planner: whether a candidate may be deployed now, or
what it waits for (plan.py decides the rest). Pure: no I/O, no clock.

Deploy only if every RRset version a cache may still hold at its names
accepts it; otherwise hold it (publish, wait for caches, wait to be seen),
and if the deployed chain expires first, deploy at the last safe moment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from danesync.config import Config, DnsMode
from danesync.decisions import Decision, Observations, Verb
from danesync.history import RRset, is_never, possible_versions
from danesync.matching import rrset_accepts
from danesync.state import State
from danesync.tlsa import TlsaRecord

# A chain that expires before its successor is safe is replaced this long
# before its notAfter: the last safe moment, with room for a reload and probe.
FORCE_MARGIN = dt.timedelta(minutes=5)
GATE = "to be gated"  # a first-round DEPLOY that still has to pass the DNS gate


@dataclass
class Context:
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


def gate_decision(
    ctx: Context,
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
    return emergency(ctx, Decision(lineage, verb, chain, reason, proceed, missing))


def hold_verb(ctx: Context, decision: Decision, publishes: Mapping[str, RRset]) -> Decision:
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


def emergency(ctx: Context, decision: Decision) -> Decision:
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
    if decision.proceed_at is None and ctx.now + least_wait(ctx, decision) <= forced_at:
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


def least_wait(ctx: Context, decision: Decision) -> dt.timedelta:
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

"""The step executor: runs a plan's steps one at a time, saving the state
after each, and records the planner's decisions (pending rollovers, logs).

A step that fails is logged (`pass.failed`) and kept for `status`; the
steps after it still run, except retirements: nothing is removed in a round
where something failed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import structlog

from danesync.chain import format_time
from danesync.config import DnsMode
from danesync.deploy import run_deploy
from danesync.errors import DanesyncError
from danesync.history import RRset, record_owned, record_served
from danesync.plan import ClearInflight, Decision, Deploy, Plan, Publish, Retire, Verb
from danesync.runtime import PassResult, Runtime
from danesync.state import ChainInfo

log = structlog.get_logger("danesync")


def execute_plan(
    rt: Runtime, plan: Plan, pems: Mapping[str, bytes], result: PassResult
) -> set[str]:
    """Run every step; returns the lineages deployed."""
    deployed: set[str] = set()
    round_failed = False
    for done, step in enumerate(plan.steps, 1):
        rt.progress("running steps", done, len(plan.steps))
        if isinstance(step, ClearInflight):
            rt.state.lineage(step.lineage).inflight = None
            rt.save()
        elif isinstance(step, Publish):
            round_failed |= not _publish(rt, step, result)
        elif isinstance(step, Retire):
            if round_failed:
                continue  # never remove records in a round where a step failed
            round_failed |= not _retire(rt, step, result)
        elif isinstance(step, Deploy):
            deployed |= run_deploy(rt, step.items, pems, result)
    return deployed


def _update_failed(
    rt: Runtime, result: PassResult, step: str, error: Exception, records: Any
) -> None:
    ttl = rt.config.dns.ttl
    log.error("dns.failed", reason=str(error), tlsa=[r.zone_line(ttl) for r in records])
    rt.fail(result, step, rt.dns.primary or "dns", str(error))


def _publish(rt: Runtime, step: Publish, result: PassResult) -> bool:
    primary = rt.dns.primary
    assert primary is not None
    history = rt.state.name(step.name)
    current = history.current(primary) or RRset.of((), 0)
    # The intent survives a crash between the update and the save below: the
    # records found on the primary at the next look are then danesync's.
    rt.state.names[step.name] = replace(history, intent=history.intent | frozenset(step.add))
    rt.save()
    try:
        update = rt.dns.update(step.add, (), step.ttl, {step.name: current.records})
    except DanesyncError as error:
        _update_failed(rt, result, "publish", error, step.add)
        return False
    now = rt.clock.wall()
    history = record_owned(rt.state.name(step.name), update.added, ())
    history = record_served(
        history, primary, RRset.of(current.records | set(step.add), step.ttl), now
    )
    rt.state.names[step.name] = history
    rt.succeeded("publish", primary)
    rt.save()
    for record in sorted(update.added):
        log.info("tlsa.published", tlsa=record.zone_line(step.ttl))
    if step.previous_ttl is not None:
        log.warning(
            "tlsa.ttl_changed",
            tlsa=step.name,
            ttl=step.ttl,
            previous_ttl=step.previous_ttl,
            reason=f"the update set the TTL of every record at {step.name} "
            f"from {step.previous_ttl} to {step.ttl} (one TTL per RRset)",
        )
    return True


def _retire(rt: Runtime, step: Retire, result: PassResult) -> bool:
    primary = rt.dns.primary
    assert primary is not None
    history = rt.state.name(step.name)
    current = history.current(primary) or RRset.of((), 0)
    try:
        update = rt.dns.update((), step.delete, rt.config.dns.ttl, {step.name: current.records})
    except DanesyncError as error:
        _update_failed(rt, result, "retire", error, step.delete)
        return False
    now = rt.clock.wall()
    history = record_owned(history, (), update.deleted)
    remaining = current.records - set(step.delete)
    history = record_served(history, primary, RRset.of(remaining, current.ttl), now)
    rt.state.names[step.name] = history
    rt.succeeded("retire", primary)
    rt.save()
    for record in sorted(update.deleted):
        log.info("tlsa.retired", tlsa=record.zone_line(current.ttl))
    return True


class DecisionLog:
    """Logs what changed; a decision repeated at every poll is logged once."""

    def __init__(self) -> None:
        # The chain itself, not its fingerprint: that string is derived on each
        # read (ChainInfo), one kept per lineage would be a copy (10,000: 1 MiB).
        self._last: dict[str, tuple[Verb, ChainInfo | str | None]] = {}

    def once(self, key: str, event: str, **fields: Any) -> None:
        marker = (Verb.MISSING, key)
        if self._last.get(key) == marker:
            return
        self._last[key] = marker
        log.warning(event, **fields)

    def decision(self, rt: Runtime, decision: Decision) -> None:
        chain = decision.chain
        last = self._last.get(decision.lineage)
        if (
            last is not None
            and last[0] is decision.verb
            and _same(last[1], chain or decision.reason)
        ):
            return
        self._last[decision.lineage] = (decision.verb, chain or decision.reason)
        fields: dict[str, Any] = {"lineage": decision.lineage}
        if chain is not None:
            fields.update(serial=chain.serial, not_after=format_time(chain.not_after))
        ttl = rt.config.dns.ttl
        verb = decision.verb
        if decision.forced_at is not None:
            log.warning(
                "rollover.forced",
                reason="the deployed chain expires before this one is safe; it will be "
                f"deployed at {format_time(decision.forced_at)}, the last safe moment",
                forced_at=format_time(decision.forced_at),
                **fields,
            )
        if verb is Verb.INVALID:
            log.error("lineage.invalid", reason=decision.reason, **fields)
        elif verb is Verb.PENDING:
            log.info("lineage.changed", reason=decision.reason, **fields)
        elif verb in (Verb.DOWNGRADE, Verb.FAILED):
            log.warning("chain.held", reason=decision.reason, **fields)
        elif verb is Verb.WAIT_AGE:
            log.info(
                "rollover.waiting",
                reason=decision.reason,
                proceed_at=format_time(decision.proceed_at) if decision.proceed_at else None,
                **fields,
            )
        elif verb.holds:
            log.warning(
                "chain.held",
                reason=decision.reason,
                tlsa=[r.zone_line(ttl) for r in decision.missing],
                **fields,
            )
            if verb is Verb.MISSING:
                for record in decision.missing:
                    self.once(
                        f"missing {record.key}",
                        "tlsa.missing",
                        lineage=decision.lineage,
                        tlsa=record.zone_line(ttl),
                        reason="add this record to the zone",
                    )
        elif verb is Verb.FORCE:
            log.error("rollover.forced", reason=decision.reason, **fields)
        elif verb is Verb.DEPLOY:
            log.info("lineage.changed", reason=decision.reason, **fields)


def record_decisions(
    rt: Runtime, plan: Plan, now: dt.datetime, result: PassResult, logs: DecisionLog
) -> None:
    """Pending rollovers into the state (for status and restarts), and the logs."""
    changed = False
    for decision in plan.decisions:
        lineage_state = rt.state.lineage(decision.lineage)
        chain = decision.chain
        if decision.verb.holds and chain is not None:
            if (
                lineage_state.pending is None
                or lineage_state.pending.fingerprint != chain.fingerprint
            ):
                lineage_state.pending = chain
                lineage_state.pending_since = now
            lineage_state.proceed_at = decision.proceed_at
            result.waiting.add(decision.lineage)
            if decision.proceed_at is not None:
                result.wake_at = min(filter(None, [result.wake_at, decision.proceed_at]))
            changed = True
        elif decision.verb in (Verb.UNCHANGED, Verb.DOWNGRADE, Verb.INVALID, Verb.FAILED) and (
            lineage_state.pending is not None
        ):
            lineage_state.pending = lineage_state.pending_since = lineage_state.proceed_at = None
            changed = True
        if decision.verb is Verb.INVALID:
            result.failed = True
        logs.decision(rt, decision)
    if plan.missing and rt.config.dns.mode is DnsMode.CHECK:
        for record in plan.missing:
            logs.once(
                f"missing {record.key}",
                "tlsa.missing",
                tlsa=record.zone_line(rt.config.dns.ttl),
                reason="add this record to the zone",
            )
    if changed:
        rt.save()


def _same(last: ChainInfo | str | None, now: ChainInfo | str | None) -> bool:
    """One decision line per chain (by fingerprint, as the marker always was) or reason."""
    if isinstance(last, ChainInfo) and isinstance(now, ChainInfo):
        return last.fingerprint == now.fingerprint
    return not isinstance(last, ChainInfo) and not isinstance(now, ChainInfo) and last == now

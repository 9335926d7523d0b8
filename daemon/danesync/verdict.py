"""Is danesync doing its job? The monitoring verdict, by the plugin convention. Pure.

0 OK: every lineage deployed and its records published; 1 WARNING: a
rollover waiting longer than expected, an expiry or ARI warning, DNS failing
while nothing is at stake; 2 CRITICAL: a lineage failing to deploy, a served
chain that does not validate or whose record is missing, the deployed chain
expired or expiring before a renewal could be rolled in, the daemon not
running or its heartbeat stale.

`build_verdict` judges plain facts (`LineageFacts`, `Health`), so it does not
depend on how the state file is laid out; `facts_from_state` is the one
place that reads the state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from danesync.chain import format_time
from danesync.config import Config, DnsMode
from danesync.health import Health
from danesync.history import SENDER_SLACK

# A heartbeat older than this many expected intervals, plus one more (at least
# GRACE_MIN, at most GRACE_MAX, for a slow pass), is stale.
STALE_INTERVALS = 2
GRACE_MIN = dt.timedelta(seconds=10)
GRACE_MAX = dt.timedelta(seconds=120)
EXPIRY_WARNING = dt.timedelta(days=7)


class Level(IntEnum):
    """Exit status of `danesync status`, as Nagios/Icinga plugins use it."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class Problem:
    level: Level
    text: str
    lineage: str | None = None

    def __str__(self) -> str:
        return f"{self.lineage}: {self.text}" if self.lineage else self.text


@dataclass(frozen=True)
class LineageFacts:
    """What the state knows of one configured lineage."""

    lineage: str
    deployed_serial: str | None = None
    deployed_not_after: dt.datetime | None = None
    pending_serial: str | None = None
    pending_since: dt.datetime | None = None
    proceed_at: dt.datetime | None = None
    failed_reason: str | None = None
    missing_records: tuple[str, ...] = ()  # records the deployed chain needs, not visible


@dataclass(frozen=True)
class StepFailure:
    """A step the daemon keeps failing (the state's failures)."""

    step: str  # "deploy", "observe", "publish", "pass", ...
    target: str  # the path or server
    reason: str
    lineage: str | None = None
    since: dt.datetime | None = None


@dataclass(frozen=True)
class Verdict:
    level: Level
    problems: tuple[Problem, ...]
    deployed: int
    configured: int

    @property
    def code(self) -> int:
        return int(self.level)

    @property
    def summary(self) -> str:
        """The plugin's first line: `DANESYNC OK - ...`."""
        return f"DANESYNC {self.level.name} - {self.text}"

    @property
    def text(self) -> str:
        """The summary without the prefix; also the unit's STATUS= text."""
        counts = f"{self.deployed}/{self.configured} deployed"
        worst = [p for p in self.problems if p.level is self.level]
        if not worst:
            return f"{counts}, records published" if self.configured else "nothing configured"
        more = len(self.problems) - 1
        return f"{worst[0]}" + (f" (+{more} more)" if more else "") + f"; {counts}"


def expected_beat(config: Config) -> dt.timedelta:
    """How often a running daemon refreshes its heartbeat (a pass or a self-check)."""
    seconds = min(config.daemon.reconcile_interval, config.monitor.check_interval)
    return dt.timedelta(seconds=seconds)


def stale_after(config: Config) -> dt.timedelta:
    """A heartbeat older than this means the daemon is hung or gone."""
    beat = expected_beat(config)
    return STALE_INTERVALS * beat + min(max(beat, GRACE_MIN), GRACE_MAX)


def build_verdict(
    config: Config,
    lineages: Sequence[LineageFacts],
    health: Health | None,
    running: bool | None,
    now: dt.datetime,
    failures: Sequence[StepFailure] = (),
) -> Verdict:
    """Judge the facts. `running`: whether the daemon holds its lock (None: cannot tell)."""
    problems: list[Problem] = []
    problems += _daemon_problems(config, health, running, now)
    problems += _failure_problems(failures, at_stake=any(f.pending_serial for f in lineages))
    for facts in lineages:
        problems += _lineage_problems(config, facts, health, now)
    problems += _selfcheck_problems(health)
    if health is not None and health.dns_failure:
        at_stake = any(f.pending_serial for f in lineages)
        what = "DNS is failing while a rollover waits on it" if at_stake else "DNS is failing"
        problems.append(Problem(Level.WARNING, f"{what}: {health.dns_failure}"))
    problems.sort(key=lambda p: -p.level)
    level = max((p.level for p in problems), default=Level.OK)
    deployed = sum(1 for f in lineages if f.deployed_serial is not None)
    return Verdict(level, tuple(problems), deployed, len(lineages))


def _failure_problems(failures: Sequence[StepFailure], at_stake: bool) -> list[Problem]:
    """A deploy failing, or a whole pass, is critical; DNS and other steps a warning."""
    found = []
    for failure in failures:
        text = f"{failure.step} failing ({failure.target}): {failure.reason}"
        if failure.since is not None:
            text += f", since {format_time(failure.since)}"
        if failure.step in ("deploy", "pass"):
            found.append(Problem(Level.CRITICAL, text, failure.lineage))
        else:
            what = "while a rollover waits on it" if at_stake else "while nothing is at stake"
            found.append(Problem(Level.WARNING, f"{text} ({what})", failure.lineage))
    return found


def _daemon_problems(
    config: Config, health: Health | None, running: bool | None, now: dt.datetime
) -> list[Problem]:
    if running is False:
        return [Problem(Level.CRITICAL, "the daemon is not running (its lock is free)")]
    if health is None:
        if running:
            return [Problem(Level.WARNING, "the daemon is starting (no heartbeat yet)")]
        return [Problem(Level.CRITICAL, "the daemon has never reported (no health.json)")]
    beats = [t for t in (health.last_pass, health.last_check) if t is not None]
    if not beats:
        return [Problem(Level.WARNING, "the daemon has not finished a pass yet")]
    last = max(beats)
    limit = stale_after(config)
    if now - last > limit:
        age = int((now - last).total_seconds())
        return [
            Problem(
                Level.CRITICAL,
                f"the state is stale: last heartbeat {format_time(last)}, {age} s ago",
            )
        ]
    return []


def _lineage_problems(
    config: Config, facts: LineageFacts, health: Health | None, now: dt.datetime
) -> list[Problem]:
    name = facts.lineage
    found: list[Problem] = []

    def add(level: Level, text: str) -> None:
        found.append(Problem(level, text, name))

    failure = facts.failed_reason or (health.lineage_failures.get(name) if health else None)
    if failure:
        add(Level.CRITICAL, f"failing to deploy: {failure}")
    if facts.deployed_not_after is None:
        add(Level.CRITICAL, "nothing deployed")
        return found
    left = facts.deployed_not_after - now
    roll_in = dt.timedelta(seconds=config.dns.rollover_wait + config.dns.ttl) + SENDER_SLACK
    if config.dns.mode is DnsMode.OFF:
        roll_in = dt.timedelta(0)
    if left <= dt.timedelta(0):
        add(
            Level.CRITICAL, f"the deployed chain expired at {format_time(facts.deployed_not_after)}"
        )
    elif facts.proceed_at is not None and facts.proceed_at >= facts.deployed_not_after:
        add(
            Level.CRITICAL,
            f"the deployed chain expires at {format_time(facts.deployed_not_after)}, "
            f"before its renewal can be deployed ({format_time(facts.proceed_at)})",
        )
    elif facts.pending_serial is None and left <= roll_in:
        add(
            Level.CRITICAL,
            f"the deployed chain expires at {format_time(facts.deployed_not_after)}, "
            "sooner than a renewal could be rolled in",
        )
    elif left <= EXPIRY_WARNING:
        add(Level.WARNING, f"the deployed chain expires at {format_time(facts.deployed_not_after)}")
    if facts.missing_records and config.dns.mode is not DnsMode.OFF:
        add(
            Level.CRITICAL,
            f"records missing for the served chain: {'; '.join(facts.missing_records)}",
        )
    if facts.pending_since is not None:
        expected = 2 * roll_in + stale_after(config)
        waited = now - facts.pending_since
        if waited > expected:
            add(
                Level.WARNING,
                f"rollover to serial {facts.pending_serial} waiting since "
                f"{format_time(facts.pending_since)} ({int(waited.total_seconds())} s, "
                f"expected at most {int(expected.total_seconds())} s)",
            )
    warning = health.lineage_warnings.get(name) if health else None
    if warning:
        add(Level.WARNING, warning)
    return found


def _selfcheck_problems(health: Health | None) -> list[Problem]:
    if health is None:
        return []
    found: list[Problem] = []
    for check in health.dane:
        where = f"{check.name} ({check.key_algorithm or 'any key'}, {check.source})"
        if check.outcome == "broken":
            found.append(
                Problem(
                    Level.CRITICAL,
                    f"dane.broken: {where}: serves serial {check.serial} from {check.issuer}; "
                    f"published {'; '.join(check.published)}: {check.reason}",
                    check.lineage,
                )
            )
        elif check.outcome == "no_records":
            found.append(
                Problem(Level.CRITICAL, f"no TLSA record published at {where}", check.lineage)
            )
        elif check.outcome == "error" and check.source == "probe":
            found.append(
                Problem(
                    Level.CRITICAL,
                    f"Postfix serves no chain to senders for {check.name}: {check.reason}",
                    check.lineage,
                )
            )
        elif check.outcome == "error":
            found.append(Problem(Level.WARNING, f"self-check: {where}: {check.reason}"))
        elif check.outcome == "unusable":
            found.append(Problem(Level.WARNING, f"{where}: {check.reason}", check.lineage))
    return found


def build_unit_status(verdict: Verdict, summary: str | None = None) -> str:
    """The systemd unit's STATUS= text: what failed first, then the loop's `summary`.

    All well, it is the summary alone (or the verdict's own text without one).
    """
    if verdict.level is Level.OK:
        return summary if summary is not None else verdict.text
    worst = verdict.problems[0]
    more = len(verdict.problems) - 1
    text = f"{verdict.level.name}: {worst}" + (f" (+{more} more)" if more else "")
    return f"{text}; {summary}" if summary else text


def published_from_state(state: object) -> dict[str, int]:
    """TLSA owner name -> records the verify servers last served there (the most any had)."""
    published: dict[str, int] = {}
    for name, history in (getattr(state, "names", {}) or {}).items():
        servers = getattr(history, "servers", {}) or {}
        if servers:
            published[name] = max(len(rrset.records) for rrset in servers.values())
    return published


def failures_from_state(state: object) -> list[StepFailure]:
    """The state's kept step failures, as the verdict takes them."""
    failures = getattr(state, "failures", {}) or {}
    return [
        StepFailure(
            str(getattr(f, "step", "step")),
            str(getattr(f, "target", "")),
            str(getattr(f, "reason", "")),
            getattr(f, "lineage", None),
            getattr(f, "since", None),
        )
        for _, f in sorted(failures.items())
    ]


def _missing_records(
    config: Config, certificate: object, deployed: object, state: object
) -> list[str]:
    """Owner names where some verify server's RRset has records and none matches the
    deployed chain, or has no records at all: the chain's records there, as zone lines."""
    names = getattr(state, "names", {}) or {}
    matches = getattr(deployed, "matches", None)
    if matches is None:
        return []
    missing: list[str] = []
    for name in getattr(certificate, "tlsa", ()):
        history = names.get(name)
        servers = getattr(history, "servers", {}) or {}
        if not servers:
            continue  # never observed: the self-check speaks for it
        if any(not any(r.rdata in matches for r in rrset.records) for rrset in servers.values()):
            needed = [r for r in getattr(deployed, "tlsa", ()) if r.name == name]
            missing += [r.zone_line(config.dns.ttl) for r in needed] or [f"{name} (any matching)"]
    return missing


def facts_from_state(config: Config, state: object) -> list[LineageFacts]:
    """The facts `build_verdict` needs, from the state (the one place that reads it)."""
    lineages = getattr(state, "lineages", {}) or {}
    facts = []
    for certificate in config.certificates:
        s = lineages.get(certificate.lineage)
        deployed = getattr(s, "deployed", None)
        pending = getattr(s, "pending", None)
        missing: list[str] = []
        if deployed is not None:
            missing = _missing_records(config, certificate, deployed, state)
        facts.append(
            LineageFacts(
                lineage=certificate.lineage,
                deployed_serial=getattr(deployed, "serial", None),
                deployed_not_after=getattr(deployed, "not_after", None),
                pending_serial=getattr(pending, "serial", None),
                pending_since=getattr(s, "pending_since", None),
                proceed_at=getattr(s, "proceed_at", None),
                failed_reason=getattr(s, "failed_reason", None),
                missing_records=tuple(missing),
            )
        )
    return facts

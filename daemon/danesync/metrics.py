"""Metrics as a Prometheus textfile, for node_exporter's textfile collector.

`build_metrics` is pure (facts in, exposition text out); `write_metrics`
replaces the file atomically, so the collector never reads half a file (the
temporary file's name does not end in `.prom`, so it is never collected).
Names follow Prometheus' conventions: the `danesync_` prefix, base units
(seconds, timestamps in seconds since the epoch), `_total` for counters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from danesync.health import Health
from danesync.verdict import LineageFacts, Verdict

ROLLOVER_STATES = ("none", "deployed", "waiting", "failed")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def _timestamp(moment: dt.datetime) -> str:
    return _number(moment.timestamp())


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help_text = name, kind, help_text
        self.samples: list[str] = []

    def add(self, value: str, **labels: str) -> None:
        self.samples.append(f"{self.name}{_labels(labels)} {value}")

    def render(self) -> Iterable[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {self.help_text}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.samples


def _rollover_state(facts: LineageFacts, health: Health | None) -> str:
    if facts.failed_reason or (health and facts.lineage in health.lineage_failures):
        return "failed"
    if facts.pending_serial is not None:
        return "waiting"
    if facts.deployed_serial is not None:
        return "deployed"
    return "none"


def build_metrics(
    lineages: Sequence[LineageFacts],
    health: Health | None,
    verdict: Verdict,
    published: Mapping[str, int] | None = None,
) -> str:
    """The textfile's content, in the Prometheus text exposition format 0.0.4.

    `published`: records per owner name as the daemon's own passes last saw
    them; the self-check's fresher count wins where it judged the name.
    """
    status = _Family(
        "danesync_status",
        "gauge",
        "The danesync status verdict: 0 OK, 1 warning, 2 critical (as danesync status exits).",
    )
    status.add(str(verdict.code))
    not_after = _Family(
        "danesync_certificate_not_after_timestamp_seconds",
        "gauge",
        "notAfter of the chain deployed for the lineage, in seconds since the epoch.",
    )
    rollover = _Family(
        "danesync_rollover_state",
        "gauge",
        "1 for the lineage's rollover state (none, deployed, waiting, failed), 0 otherwise.",
    )
    waiting_since = _Family(
        "danesync_rollover_waiting_since_timestamp_seconds",
        "gauge",
        "When the lineage's pending rollover started waiting, in seconds since the epoch.",
    )
    proceed_at = _Family(
        "danesync_rollover_proceed_timestamp_seconds",
        "gauge",
        "The earliest time the lineage's pending chain can be deployed, seconds since the epoch.",
    )
    for facts in lineages:
        if facts.deployed_not_after is not None:
            not_after.add(_timestamp(facts.deployed_not_after), lineage=facts.lineage)
        current = _rollover_state(facts, health)
        for state in ROLLOVER_STATES:
            rollover.add("1" if state == current else "0", lineage=facts.lineage, state=state)
        if facts.pending_since is not None:
            waiting_since.add(_timestamp(facts.pending_since), lineage=facts.lineage)
        if facts.proceed_at is not None:
            proceed_at.add(_timestamp(facts.proceed_at), lineage=facts.lineage)

    families = [status, not_after, rollover, waiting_since, proceed_at]
    families += _health_families(health or Health(), published or {})
    lines = [line for family in families for line in family.render()]
    return "\n".join(lines) + "\n"


def _health_families(health: Health, published: Mapping[str, int]) -> list[_Family]:
    last_pass = _Family(
        "danesync_last_pass_timestamp_seconds",
        "gauge",
        "When the daemon last finished a reconcile pass, in seconds since the epoch.",
    )
    last_success = _Family(
        "danesync_last_success_timestamp_seconds",
        "gauge",
        "When the daemon last finished a pass without failures, in seconds since the epoch.",
    )
    last_check = _Family(
        "danesync_last_selfcheck_timestamp_seconds",
        "gauge",
        "When the DANE self-check last ran, in seconds since the epoch.",
    )
    for family, moment in (
        (last_pass, health.last_pass),
        (last_success, health.last_success),
        (last_check, health.last_check),
    ):
        if moment is not None:
            family.add(_timestamp(moment))
    failures = _Family(
        "danesync_failures_total",
        "counter",
        "Failures by kind (the log event at error level) since the daemon started.",
    )
    for event, count in sorted(health.failures.items()):
        failures.add(str(count), event=event)
    records = _Family(
        "danesync_tlsa_records",
        "gauge",
        "TLSA records published at the owner name, as the verify servers answered.",
    )
    checked: dict[str, int] = {}
    for check in health.dane:
        if check.outcome != "error" and check.source.startswith("verify server"):
            checked[check.name] = max(checked.get(check.name, 0), len(check.published))
    counts = {**published, **checked}
    for name, count in sorted(counts.items()):
        records.add(str(count), name=name)
    dane = _Family(
        "danesync_selfcheck_valid",
        "gauge",
        "1 if the chain served for the name validates against the published TLSA records; "
        "0 if a DANE sender would refuse it, none are published, or it could not be checked.",
    )
    seen: dict[tuple[str, str, str], bool] = {}
    for check in health.dane:
        key = (check.lineage, check.name, check.key_algorithm or "unknown")
        ok = check.outcome in ("valid", "unusable")
        seen[key] = seen.get(key, True) and ok
    for (lineage, name, algorithm), ok in sorted(seen.items()):
        dane.add("1" if ok else "0", lineage=lineage, name=name, key_algorithm=algorithm)
    return [last_pass, last_success, last_check, failures, records, dane]


def write_metrics(path: Path, text: str) -> None:
    """Replace the textfile atomically (mode 0644: node_exporter runs as its own user)."""
    from danesync.actions.files import write_atomic

    write_atomic(path, text.encode(), mode=0o644)

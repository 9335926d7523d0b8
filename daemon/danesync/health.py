"""What the running daemon tells `danesync status` and the metrics: `health.json`.

The state file says what danesync decided; this file says how the daemon is
doing: when it last finished a pass (the heartbeat), which failures it met
(counted from its own log events, so every kind the service logs is counted
without the service knowing), and what the last DANE self-check saw. It is
written atomically by the daemon after each pass and each self-check, and
only read by everything else. It holds no key material.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from danesync.chaininfo import optional_time_from_json, time_from_json, time_to_json
from danesync.errors import StateError

FILENAME = "health.json"
VERSION = 1
# Warning-level events that stand for their lineage until its next chain.deployed.
STANDING_WARNINGS = frozenset({"renewal.suggested", "cert.expiring"})
# Events that end a lineage's failure: the chain is deployed and served.
CLEARING_EVENTS = frozenset({"chain.deployed", "probe.ok"})


@dataclass(frozen=True)
class DaneCheck:
    """One served chain judged against one published RRset, by the self-check."""

    lineage: str  # the configured lineage(s) this name belongs to, comma-separated
    name: str  # the TLSA owner name
    source: str  # where the RRset came from: a verify server, or the validating resolver
    outcome: str  # a danesync.dane.Outcome value, or "error" (probe or DNS failed)
    reason: str
    checked_at: dt.datetime
    key_algorithm: str | None = None  # of the served leaf
    serial: str | None = None  # the served leaf's
    issuer: str | None = None
    published: tuple[str, ...] = ()  # the RRset's rdata, "2 1 1 <hex>"

    @property
    def broken(self) -> bool:
        return self.outcome == "broken"

    def to_json(self) -> dict[str, Any]:
        return {
            "lineage": self.lineage,
            "name": self.name,
            "source": self.source,
            "outcome": self.outcome,
            "reason": self.reason,
            "checked_at": time_to_json(self.checked_at),
            "key_algorithm": self.key_algorithm,
            "serial": self.serial,
            "issuer": self.issuer,
            "published": list(self.published),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DaneCheck:
        return cls(
            lineage=str(data["lineage"]),
            name=str(data["name"]),
            source=str(data["source"]),
            outcome=str(data["outcome"]),
            reason=str(data["reason"]),
            checked_at=time_from_json(data["checked_at"]),
            key_algorithm=data.get("key_algorithm"),
            serial=data.get("serial"),
            issuer=data.get("issuer"),
            published=tuple(str(r) for r in data.get("published", ())),
        )


@dataclass(frozen=True)
class Health:
    pid: int | None = None
    started_at: dt.datetime | None = None
    last_pass: dt.datetime | None = None  # the heartbeat: the end of the last pass
    last_success: dt.datetime | None = None  # the end of the last pass without failures
    last_check: dt.datetime | None = None  # the last DANE self-check
    failures: Mapping[str, int] = field(default_factory=dict)  # error events, since start
    lineage_failures: Mapping[str, str] = field(default_factory=dict)  # "event: reason"
    lineage_warnings: Mapping[str, str] = field(default_factory=dict)  # ARI, expiry
    dns_failure: str | None = None  # the last pass's DNS failure, if it had one
    dane: tuple[DaneCheck, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "pid": self.pid,
            "started_at": time_to_json(self.started_at),
            "last_pass": time_to_json(self.last_pass),
            "last_success": time_to_json(self.last_success),
            "last_check": time_to_json(self.last_check),
            "failures": dict(sorted(self.failures.items())),
            "lineage_failures": dict(sorted(self.lineage_failures.items())),
            "lineage_warnings": dict(sorted(self.lineage_warnings.items())),
            "dns_failure": self.dns_failure,
            "dane": [check.to_json() for check in self.dane],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        return cls(
            pid=data.get("pid"),
            started_at=optional_time_from_json(data.get("started_at")),
            last_pass=optional_time_from_json(data.get("last_pass")),
            last_success=optional_time_from_json(data.get("last_success")),
            last_check=optional_time_from_json(data.get("last_check")),
            failures={str(k): int(v) for k, v in data.get("failures", {}).items()},
            lineage_failures={str(k): str(v) for k, v in data.get("lineage_failures", {}).items()},
            lineage_warnings={str(k): str(v) for k, v in data.get("lineage_warnings", {}).items()},
            dns_failure=data.get("dns_failure"),
            dane=tuple(DaneCheck.from_json(c) for c in data.get("dane", ())),
        )


def read_health(directory: Path) -> Health | None:
    """The daemon's last word, or None if no daemon ever wrote one (or it is unreadable)."""
    path = directory / FILENAME
    try:
        return Health.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a half-understood file is no heartbeat: status says so


def write_health(directory: Path, health: Health) -> None:
    from danesync.actions.files import write_atomic

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(health.to_json(), indent=1).encode() + b"\n"
    try:
        write_atomic(directory / FILENAME, data, mode=0o644)
    except OSError as error:
        raise StateError(f"{directory / FILENAME}: cannot write: {error}") from error


class HealthRecorder:
    """Keeps the daemon's Health up to date; its `processor` sees every log record.

    Installed as the first structlog processor (`install`), it counts
    error-level events by name and remembers per lineage the last failure and
    the standing warnings. Thread-safe: probes log from worker threads.
    """

    def __init__(self, pid: int, now: dt.datetime) -> None:
        self._lock = threading.Lock()
        self._health = Health(pid=pid, started_at=now)
        self._pass_failed = False

    @property
    def health(self) -> Health:
        with self._lock:
            return self._health

    def processor(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        del logger
        event = str(event_dict.get("event", ""))
        lineage = event_dict.get("lineage")
        reason = str(event_dict.get("reason", ""))
        with self._lock:
            health = self._health
            if method_name in ("error", "critical", "exception"):
                failures = dict(health.failures)
                failures[event] = failures.get(event, 0) + 1
                health = replace(health, failures=failures)
                self._pass_failed = True
                # The self-check and DNS have their own places in the verdict.
                if isinstance(lineage, str) and event not in ("dane.broken", "dns.failed"):
                    lineage_failures = dict(health.lineage_failures)
                    lineage_failures[lineage] = f"{event}: {reason}" if reason else event
                    health = replace(health, lineage_failures=lineage_failures)
                if event == "dns.failed":
                    health = replace(health, dns_failure=reason or event)
            elif (
                method_name == "warning" and event in STANDING_WARNINGS and isinstance(lineage, str)
            ):
                warnings = dict(health.lineage_warnings)
                warnings[lineage] = f"{event}: {reason}" if reason else event
                health = replace(health, lineage_warnings=warnings)
            if event in CLEARING_EVENTS and isinstance(lineage, str):
                health = replace(
                    health,
                    lineage_failures={
                        k: v for k, v in health.lineage_failures.items() if k != lineage
                    },
                    lineage_warnings=(
                        {k: v for k, v in health.lineage_warnings.items() if k != lineage}
                        if event == "chain.deployed"
                        else health.lineage_warnings
                    ),
                )
            self._health = health
        return event_dict

    def pass_started(self) -> None:
        with self._lock:
            self._pass_failed = False

    def pass_finished(self, failed: bool, now: dt.datetime) -> Health:
        """The heartbeat: a pass ended (`failed` as the service judged it)."""
        with self._lock:
            failed = failed or self._pass_failed
            health = replace(self._health, last_pass=now)
            if not failed:
                health = replace(health, last_success=now, dns_failure=None)
            self._health = health
            return health

    def checked(self, checks: tuple[DaneCheck, ...], now: dt.datetime) -> Health:
        """A self-check ended; it also counts as a heartbeat of the running daemon."""
        with self._lock:
            self._health = replace(self._health, dane=checks, last_check=now)
            return self._health

    def install(self) -> None:
        """Put `processor` first in structlog's chain (after configure_logging)."""
        import structlog

        processors = list(structlog.get_config()["processors"])
        if self.processor not in processors:
            structlog.configure(processors=[self.processor, *processors])

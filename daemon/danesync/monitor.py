"""The daemon's side of monitoring, in one object the loop calls at three moments.

- `pass_started()` / `pass_finished(state, failed, summary)` around every
  reconcile pass: the heartbeat, health.json, the textfile, STATUS= text;
- `light_check(state, summary)` every `monitor.check_interval`: the DANE
  self-check from outside, then the same writes.

It reads the state only through `verdict.facts_from_state` and
`selfcheck.deployed_fingerprints`, so the state's layout is not its concern.
A failure to write health.json or the textfile is logged, never raised: the
daemon's job is the certificates.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable

import structlog

from danesync.config import Config
from danesync.errors import DanesyncError
from danesync.health import Health, HealthRecorder, write_health
from danesync.metrics import build_metrics, write_metrics
from danesync.selfcheck import SelfChecker, deployed_fingerprints
from danesync.verdict import (
    Verdict,
    build_unit_status,
    build_verdict,
    facts_from_state,
    failures_from_state,
    published_from_state,
)

log = structlog.get_logger("danesync")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Monitor:
    def __init__(self, config: Config, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.recorder = HealthRecorder(os.getpid(), clock())
        self.checker = SelfChecker(config, clock)
        self._write_failed = False

    def install(self) -> None:
        """Count log events from now on (call after configure_logging)."""
        self.recorder.install()

    def reconfigure(self, config: Config) -> None:
        """A SIGHUP brought a new configuration; counters and heartbeat carry on."""
        self.config = config
        self.checker = SelfChecker(config, self.clock)

    @property
    def check_interval(self) -> float:
        return self.config.monitor.check_interval

    def pass_started(self) -> None:
        self.recorder.pass_started()

    def pass_finished(self, state: object, failed: bool, summary: str | None = None) -> str:
        """After a pass: write health.json and the textfile; the unit's STATUS= text."""
        health = self.recorder.pass_finished(failed, self.clock())
        return self._publish(state, health, summary)

    def light_check(self, state: object, summary: str | None = None) -> str:
        """The periodic self-check; the unit's STATUS= text after it."""
        checks = self.checker.run(deployed_fingerprints(state))
        health = self.recorder.checked(checks, self.clock())
        return self._publish(state, health, summary)

    def verdict(self, state: object, health: Health | None = None) -> Verdict:
        health = health or self.recorder.health
        facts = facts_from_state(self.config, state)
        failures = failures_from_state(state)
        return build_verdict(self.config, facts, health, True, self.clock(), failures)

    def _publish(self, state: object, health: Health, summary: str | None) -> str:
        verdict = self.verdict(state, health)
        try:
            write_health(self.config.state.dir, health)
            textfile = self.config.monitor.textfile
            if textfile is not None:
                facts = facts_from_state(self.config, state)
                published = published_from_state(state)
                write_metrics(textfile, build_metrics(facts, health, verdict, published))
            self._write_failed = False
        except (OSError, DanesyncError) as error:
            if not self._write_failed:  # once per streak, not at every pass
                log.warning("monitor.failed", reason=f"cannot write health or metrics: {error}")
            self._write_failed = True
        return build_unit_status(verdict, summary)

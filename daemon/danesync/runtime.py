"""What the step executor works with: the config, the state, the ports, and
the two things every step does (save the state, report a failure)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from danesync.config import Config
from danesync.errors import StateError
from danesync.ports import Clock, DnsPort, LineagePort, PostfixPort, StatePort
from danesync.state import Failure, State
from danesync.tlsa import TlsaRecord

log = structlog.get_logger("danesync")


# A pass reports how far it is (phase, done, total) after each lineage of its
# long loops. The daemon turns that into systemd's watchdog pings and start-up
# timeout extensions (notify.Keepalive); the core itself reads no clock.
Progress = Callable[[str, int, int], None]


# Phases in which a pass has changed nothing since the last save (it reads):
# a stop asked for meanwhile may end the pass there (`PassStopped`).
READING = "reading lineages"
CHECKING = "checking chain files"
PROBING = "probing what Postfix serves"
STOPPABLE = frozenset({READING, CHECKING, PROBING})


class PassStopped(BaseException):
    """Raised by a progress hook in a `STOPPABLE` phase: the daemon is stopping.

    A BaseException, so that no step's error handling takes it for a failure.
    """


def no_progress(phase: str, done: int, total: int) -> None:
    """The default: `danesync sync` and the tests have nobody to tell."""
    del phase, done, total


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at a named step."""
    if os.environ.get("DANESYNC_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class PassResult:
    """What a pass leaves for the loop."""

    failed: bool = False  # a lineage is invalid, or a step failed
    wake_at: dt.datetime | None = None  # a held rollover wants another look then
    waiting: set[str] = field(default_factory=set)  # lineages with a pending rollover


@dataclass
class Runtime:
    config: Config
    state: State
    postfix: PostfixPort
    dns: DnsPort
    lineages: LineagePort
    store: StatePort
    clock: Clock
    crash: Callable[[str], None] = crash_point
    # Records each name had on every server at the last look, for `tlsa.visible`.
    visible: dict[str, frozenset[TlsaRecord]] = field(default_factory=dict)
    progress: Progress = no_progress

    def save(self) -> None:
        self.crash("save")
        self.state.last_wall = self.clock.wall()
        self.state.last_monotonic = self.clock.monotonic()
        self.state.boot = self.clock.boot()
        self.store.save(self.state)

    def fail(
        self,
        result: PassResult,
        step: str,
        target: str,
        reason: str,
        lineage: str | None = None,
    ) -> None:
        """A step failed: log `pass.failed`, keep it for `status`; the loop retries."""
        result.failed = True
        key = f"{step} {target} {lineage or ''}"
        previous = self.state.failures.get(key)
        attempts = previous.attempts + 1 if previous else 1
        since = previous.since if previous else self.clock.wall()
        self.state.failures[key] = Failure(step, target, reason, since, attempts, lineage)
        # `status` must show it even if nothing else is saved in this pass; a
        # state that cannot be written is itself the failure being reported.
        with contextlib.suppress(StateError):
            self.save()
        log.error(
            "pass.failed",
            step=step,
            path=target,
            reason=reason,
            attempts=attempts,
            **({"lineage": lineage} if lineage else {}),
        )

    def succeeded(self, step: str, target: str, lineage: str | None = None) -> None:
        self.state.failures.pop(f"{step} {target} {lineage or ''}", None)

"""`danesync run`: the one loop.

Three sources wake it: the watcher (a lineage under live/ changed), the
clock (a full reconcile every `reconcile_interval`, a held rollover's
`proceed_at`, DNS polls, watchdog pings) and signals (HUP reloads the
configuration, USR1 asks for a full pass now, TERM and INT stop). All of them
only write a byte to a socket pair; the loop itself runs passes one at a time
on the main thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import socket
import threading
import time
from types import FrameType

import structlog

from danesync.config import Config, DnsMode, load_config
from danesync.errors import ConfigError, DanesyncError
from danesync.heap import release_free_memory
from danesync.log import configure_logging
from danesync.monitor import Monitor
from danesync.notify import Keepalive, Notifier, watchdog_interval
from danesync.runtime import STOPPABLE, PassStopped
from danesync.service import PassResult, Service
from danesync.watcher import Debouncer, LineageWatcher, read_certbot_done

log = structlog.get_logger("danesync")

FAILURE_RETRY = (5.0, 600.0)  # first and longest delay before retrying a failed pass


class _Wakeup:
    """A socket pair the watcher thread and signal handlers poke."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self.lock = threading.Lock()
        self.changed: set[str] = set()
        self.overflow = False
        self.signals: list[int] = []

    def poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full of wakeups already: one is enough
            self.writer.send(b"\0")

    def on_change(self, lineage: str) -> None:
        with self.lock:
            self.changed.add(lineage)
        self.poke()

    def on_overflow(self) -> None:
        with self.lock:
            self.overflow = True
        self.poke()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signals.append(signum)  # list.append is atomic; no lock in a handler
        self.poke()

    def wait(self, timeout: float) -> None:
        import select

        readable, _, _ = select.select([self.reader], [], [], max(timeout, 0.0))
        if readable:
            try:
                while self.reader.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def stop_requested(self) -> bool:
        """SIGTERM or SIGINT arrived and the loop has not taken it yet."""
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in list(self.signals))

    def take(self) -> tuple[set[str], bool, list[int]]:
        with self.lock:
            changed, self.changed = self.changed, set()
            overflow, self.overflow = self.overflow, False
        # pop() one at a time: a handler can run between any two bytecodes, and
        # copying then clearing the list would drop a signal that lands between.
        taken: list[int] = []
        while self.signals:
            taken.append(self.signals.pop(0))
        return changed, overflow, taken


class Daemon:
    def __init__(self, config: Config, notifier: Notifier) -> None:
        self.config = config
        self.notifier = notifier
        self.wakeup = _Wakeup()
        # Pings and start-up extensions from inside long passes (10,000 lineages).
        self.keepalive = Keepalive(notifier, watchdog_interval())
        self.service = Service(config, progress=self._progress)
        self.debouncer = Debouncer(config.daemon.settle)
        self.watcher: LineageWatcher | None = None
        self.failures = 0
        self.monitor = Monitor(config)  # heartbeat, health.json, textfile, DANE self-check
        self.last_result = PassResult()
        self.last_status = ""

    def _start_watcher(self) -> None:
        self.watcher = LineageWatcher(
            self.config.certbot.live_dir, self.wakeup.on_change, on_overflow=self.wakeup.on_overflow
        )
        self.watcher.start()

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _progress(self, phase: str, done: int, total: int) -> None:
        """A pass's progress: keep systemd informed; end a reading pass on a stop.

        At 10,000 lineages a pass reads for minutes; `systemctl stop` would
        otherwise wait for it until TimeoutStopSec and then SIGKILL.
        """
        self.keepalive(phase, done, total)
        if phase in STOPPABLE and self.wakeup.stop_requested():
            raise PassStopped(phase)

    def _pass(self, lineages: set[str] | None, monitor: bool = True) -> PassResult:
        self.monitor.pass_started()
        try:
            result = self.service.reconcile(lineages, monitor=monitor)
        except PassStopped:
            return self.last_result  # it changed nothing since its last save; the loop stops
        except DanesyncError as error:
            log.error("pass.failed", reason=str(error))
            result = PassResult(failed=True)
        self.failures = self.failures + 1 if result.failed else 0
        self.last_result = result
        release_free_memory()  # what the pass freed, not the peak it reached
        summary = self._summary(result)
        self.last_status = self.monitor.pass_finished(self.service.state, result.failed, summary)
        self.notifier.status(self.last_status)
        return result

    def _self_check(self) -> None:
        """The DANE self-check from outside, and a heartbeat for `danesync status`."""
        summary = self._summary(self.last_result)
        text = self.monitor.light_check(self.service.state, summary)
        if text != self.last_status:  # STATUS= at every check would only repeat itself
            self.last_status = text
            self.notifier.status(text)

    def _summary(self, result: PassResult) -> str:
        deployed = sum(1 for s in self.service.state.lineages.values() if s.deployed)
        text = f"{deployed}/{len(self.config.certificates)} deployed"
        if result.waiting:
            text += f", {len(result.waiting)} rollover(s) waiting"
        if result.failed:
            text += ", last pass had failures"
        return text

    def _reload_config(self) -> None:
        self.notifier.reloading()
        try:
            config = load_config(self.config.path)
        except ConfigError as error:
            log.error("config.invalid", reason="; ".join(error.problems), path=str(error.path))
            self.notifier.ready(self._summary(PassResult()))
            return
        # The same live/ keeps its watcher: restarting it loses events meanwhile
        # (and watchdog 7 logs an error when an event meets the stopping thread).
        restart_watcher = config.certbot.live_dir != self.config.certbot.live_dir
        if restart_watcher:
            self._stop_watcher()
        self.config = config
        self.service = Service(config, progress=self._progress)
        self.monitor.reconfigure(config)
        self.debouncer = Debouncer(config.daemon.settle)
        if restart_watcher or self.watcher is None:
            self._start_watcher()
        log.info("config.reloaded", path=str(config.path), certificates=len(config.certificates))
        self._warn_families()
        # systemd 252 stays in "reloading" until READY=1 follows RELOADING=1.
        self.notifier.ready(self._summary(PassResult()))

    def _warn_families(self) -> None:
        """Issuer families that exceed the cap of records per name (danesync.families)."""
        from danesync.family_report import log_family_warnings

        log_family_warnings(self.config, self.service.state, dt.datetime.now(dt.UTC))

    def _poll_interval(self) -> float:
        """How often a held rollover looks at DNS again."""
        if self.config.dns.mode is DnsMode.OFF:
            return self.config.daemon.reconcile_interval
        return min(max(self.config.dns.ttl / 4, 0.5), 30.0)

    def run(self) -> int:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, self.wakeup.on_signal)
        log.info(
            "daemon.started",
            path=str(self.config.path),
            certificates=len(self.config.certificates),
            dns_mode=self.config.dns.mode.value,
        )
        if not self.config.certificates:
            log.warning(
                "daemon.started",
                reason=f"no [[certificate]] is configured in {self.config.path}; waiting",
            )
        self.monitor.install()
        self._start_watcher()
        result = self._pass(None, monitor=False)  # ARI can take seconds: after READY=1
        if self.wakeup.stop_requested():  # stopped while starting: no READY=1
            return self._stop()
        self.notifier.ready(self._summary(result))
        self.keepalive.started()
        log.info("daemon.ready", certificates=len(self.config.certificates))
        self._warn_families()
        self.service.run_monitoring()
        self._self_check()
        release_free_memory()

        ping_every = watchdog_interval()
        next_full = time.monotonic() + self.config.daemon.reconcile_interval
        next_ping = time.monotonic()
        next_poll = self._next_poll(result)
        light_every = min(self.monitor.check_interval, self.config.daemon.reconcile_interval)
        next_light = time.monotonic() + light_every
        while True:
            now = time.monotonic()
            deadlines = [next_full, next_poll, next_light]
            if ping_every:
                deadlines.append(next_ping)
            due_debounce = self.debouncer.next_deadline()
            if due_debounce is not None:
                deadlines.append(due_debounce)
            self.wakeup.wait(min(deadlines) - now)
            now = time.monotonic()
            changed, overflow, signals = self.wakeup.take()
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                break
            if ping_every and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + ping_every
            if signal.SIGHUP in signals:
                self._reload_config()
                next_full = now  # a new config gets a full pass
                light_every = min(
                    self.monitor.check_interval, self.config.daemon.reconcile_interval
                )
                next_light = min(next_light, now + light_every)
            live_dir = self.config.certbot.live_dir
            for lineage in changed:  # certbot done: read at once; otherwise after settle
                self.debouncer.touch(lineage, now, done=read_certbot_done(live_dir, lineage))
            if overflow or signal.SIGUSR1 in signals:
                next_full = now
            if now >= next_light:
                next_light = now + light_every
                if self.config.dns.mode is not DnsMode.OFF and self.service.light_check():
                    next_full = now
                self._self_check()
            if now >= next_full:
                if self.watcher is not None and not self.watcher.alive():
                    log.warning("watcher.restarted", reason="the watcher thread had died")
                    self._stop_watcher()
                    self._start_watcher()
                self.service.clear_failures()
                result = self._pass(None)
                next_full = now + self.config.daemon.reconcile_interval
                next_poll = self._next_poll(result)
                continue
            # The configured ones among the lineages due: a lookup each, not a
            # set of all 10,000 at every wake-up.
            due = {n for n in self.debouncer.due(now) if self.config.certificate(n) is not None}
            if due:
                result = self._pass(due)
                if result.failed:  # read before settle: once more after it
                    self.debouncer.retry(due, time.monotonic())
                next_poll = min(next_poll, self._next_poll(result))
            elif now >= next_poll:
                result = self._pass(None)
                next_poll = self._next_poll(result)
        return self._stop()

    def _stop(self) -> int:
        self.notifier.stopping()
        log.info("daemon.stopping")
        self._stop_watcher()
        return 0

    def _next_poll(self, result: PassResult) -> float:
        now = time.monotonic()
        if result.failed:
            delay = min(FAILURE_RETRY[0] * 2.0 ** max(self.failures - 1, 0), FAILURE_RETRY[1])
            return now + delay
        if not result.waiting:
            return now + self.config.daemon.reconcile_interval
        delay = self._poll_interval()
        if result.wake_at is not None:
            until = (result.wake_at - dt.datetime.now(dt.UTC)).total_seconds()
            delay = min(delay, max(until, 0.05))
        return now + delay


class _WatchdogStopRace(logging.Filter):
    """Drops watchdog 7's error for an inotify event that meets a stopping watch.

    Stopping or replacing a watch while certbot writes makes watchdog >= 7
    log "InotifyEmitter.queue_events() called when the thread is inactive" at
    error level; the event is only one that nobody waits for any more.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in str(record.msg)


def run_daemon(config: Config, log_format: str) -> int:
    from danesync.lock import acquire_lock

    configure_logging(log_format)  # type: ignore[arg-type]
    logging.getLogger("watchdog.observers.inotify").addFilter(_WatchdogStopRace())
    lock = acquire_lock(config.state.dir)  # one danesync per state directory
    try:
        return Daemon(config, Notifier()).run()
    finally:
        lock.release()

"""The service: one reconcile pass, a light check, and what a restart finds.

A pass observes (lineages, DNS into the RRset history, what Postfix serves,
the chain files on disk), lets the pure planner decide, and executes its
steps one at a time, saving the state after each (steps.py, deploy.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import structlog

from danesync.config import CertificateConfig, Config, DnsMode
from danesync.errors import DanesyncError
from danesync.history import restart_waits
from danesync.monitoring import RenewalNotices
from danesync.needs import build_config_index
from danesync.observe import observe_dns, observe_on_disk, observe_served, read_on_disk
from danesync.plan import (
    Candidate,
    Observations,
    Plan,
    Problem,
    build_query_names,
    plan_pass,
    plan_recovery,
)
from danesync.ports import (
    AriTarget,
    Clock,
    DnsPort,
    LineagePort,
    Offer,
    OfferPems,
    PostfixPort,
    StatePort,
)
from danesync.runtime import READING, PassResult, Progress, Runtime, crash_point, no_progress
from danesync.state import ChainInfo, State, StateStore
from danesync.steps import DecisionLog, execute_plan, record_decisions
from danesync.tlsa import TlsaRecord

log = structlog.get_logger("danesync")

ROUNDS = 4  # a deploy is followed by a round that publishes or retires (DNS on)
CLOCK_TOLERANCE = dt.timedelta(seconds=30)  # wall-clock drift from monotonic taken as a jump

__all__ = ["PassResult", "Service", "run_sync"]


class Service:
    """Owns the configuration and the state; runs passes through the ports."""

    def __init__(
        self,
        config: Config,
        *,
        postfix: PostfixPort | None = None,
        dns: DnsPort | None = None,
        lineages: LineagePort | None = None,
        store: StatePort | None = None,
        clock: Clock | None = None,
        crash: Callable[[str], None] = crash_point,
        progress: Progress = no_progress,
    ) -> None:
        from danesync import adapters

        self.config = config
        store = store or StateStore(config.state.dir)
        loaded = store.load()
        # One for both: they share its files. Its chains are the state's equal ones.
        cache = adapters.open_read_cache(config, self._chains_of)
        self.rt = Runtime(
            config,
            loaded.state,
            postfix or adapters.RealPostfix(config, cache),
            dns or adapters.open_dns(config),
            lineages or adapters.CertbotLineages(config, cache),
            store,
            clock or adapters.SystemClock(),
            crash,
            progress=progress,
        )
        self.logs = DecisionLog()
        self.notices = RenewalNotices(config)
        self._ari_targets: dict[str, AriTarget] = {}  # of the last full pass
        if loaded.note is not None:
            event = "state.migrated" if loaded.legacy is not None else "state.rebuilt"
            log.warning(event, reason=loaded.note)
        if loaded.legacy is not None:
            self._migrate_v1(loaded.legacy)

    @property
    def state(self) -> State:
        return self.rt.state

    def _chains_of(self, lineage: str) -> tuple[ChainInfo, ...]:
        return self.rt.state.chains_of(lineage)  # the state of now: it may be replaced

    # --- one pass -----------------------------------------------------------

    def reconcile(self, lineages: Iterable[str] | None = None, monitor: bool = True) -> PassResult:
        """One pass over `lineages` (default: every configured certificate).

        No environment error escapes: a failed step is logged (`pass.failed`),
        kept for `status`, and the loop retries with backoff.
        """
        result = PassResult()
        selected = None if lineages is None else set(lineages)
        try:
            self._reconcile(selected, result)
        except (DanesyncError, OSError) as error:
            self.rt.fail(result, "pass", str(self.config.state.dir), str(error))
        if selected is None and monitor:
            self.run_monitoring()
        return result

    def _reconcile(self, selected: set[str] | None, result: PassResult) -> None:
        # The read cache is written once, at the end of the pass (also a failed
        # or stopped one): after the reading and again after the deploy, a cold
        # start wrote every shard twice, the second time replacing each file
        # (rename over an existing file: ~2 ms a file here). It is a cache: a
        # crash before the end costs one validation of what it would have held.
        try:
            self._reconcile_steps(selected, result)
        finally:
            # The validated chains and the chain files found intact
            # (RealPostfix.chain_file_holds), for a restart that reads nothing unchanged.
            self.rt.lineages.flush()

    def _reconcile_steps(self, selected: set[str] | None, result: PassResult) -> None:
        rt = self.rt
        self._check_clock()
        if rt.state.reload_pending:
            self._recover(result)
        now = rt.clock.wall()
        certificates = self._select(selected)
        offers: dict[str, Offer | Problem] = {}
        for done, certificate in enumerate(certificates, 1):
            offers[certificate.lineage] = rt.lineages.read_candidate(certificate, now)
            rt.progress(READING, done, len(certificates))
        # Read (and validated again) only for what a deploy takes.
        pems = OfferPems(o for o in offers.values() if isinstance(o, Offer))
        candidates: dict[str, Candidate] = {
            name: o.info if isinstance(o, Offer) else o for name, o in offers.items()
        }
        if selected is None:
            self._ari_targets = {
                name: o.ari for name, o in offers.items() if isinstance(o, Offer) and o.ari
            }
        for _ in range(ROUNDS):
            names = build_query_names(self.config, rt.state, selected)
            fresh = observe_dns(rt, names, result)
            observations = Observations(
                candidates,
                fresh,
                observe_served(rt, certificates, offers),
                observe_on_disk(rt, certificates, offers),
            )
            now = rt.clock.wall()
            plan = plan_pass(self.config, rt.state, observations, now)
            record_decisions(rt, plan, now, result, self.logs)
            execute_plan(rt, plan, pems, result)
            # The round after a deploy publishes and retires what it changed
            # (design.md: deploy first, publish after); with DNS off there is
            # neither, and it only walked every lineage again before READY=1.
            if not plan.deploys or self.config.dns.mode is DnsMode.OFF:
                break

    def _select(self, lineages: set[str] | None) -> list[CertificateConfig]:
        if lineages is None:
            return list(self.config.certificates)
        # A renewal's few, looked up (not a walk of 10,000), in configuration order.
        position = build_config_index(self.config).position
        found = sorted((n for n in lineages if n in position), key=position.__getitem__)
        return [certificate for n in found if (certificate := self.config.certificate(n))]

    def _recover(self, result: PassResult) -> None:
        """A restart found deploys in flight: finish those whose file is in place."""
        rt = self.rt
        on_disk: dict[str, str | None] = {}
        pems: dict[str, bytes] = {}
        for name, lineage_state in rt.state.lineages.items():
            certificate = self.config.certificate(name)
            if lineage_state.inflight is None or certificate is None:
                continue
            fingerprint, data = read_on_disk(rt, certificate, None)
            on_disk[name] = fingerprint
            if fingerprint is not None and data is not None:
                pems[fingerprint] = data
        steps = plan_recovery(self.config, rt.state, on_disk)
        resumed = sorted(name for name, fp in on_disk.items() if fp is not None)
        if resumed:
            log.info(
                "deploy.resumed",
                reason="a deploy was interrupted by a restart; reloading Postfix",
                lineages=resumed,
            )
        execute_plan(rt, Plan((), steps), pems, result)

    def _check_clock(self) -> None:
        """Waits survive clock steps: on a wall-clock jump the waits restart.

        The monotonic clock at the last save (same boot) says how much wall
        time should have passed; after a reboot only a step back shows.
        """
        rt = self.rt
        wall, mono, boot = rt.clock.wall(), rt.clock.monotonic(), rt.clock.boot()
        state = rt.state
        if state.last_wall is None:
            return
        if state.last_monotonic is not None and state.boot == boot and boot:
            before = state.last_wall + dt.timedelta(seconds=mono - state.last_monotonic)
            if abs(wall - before) <= CLOCK_TOLERANCE:
                return
        else:
            before = state.last_wall
            if wall >= before - CLOCK_TOLERANCE:
                return
        log.warning(
            "clock.jumped",
            reason=f"the wall clock moved from {before.isoformat()} to {wall.isoformat()}; "
            "TLSA waits restart",
        )
        floor = self.config.dns.rollover_wait
        for name, history in list(rt.state.names.items()):
            rt.state.names[name] = restart_waits(history, before, wall, floor)
        rt.save()

    # --- the light check ------------------------------------------------------

    def light_check(self) -> bool:
        """Between full passes: look at the TLSA RRsets of the served chains again.

        Returns True when a full pass should follow (a record danesync owns or
        a served chain needs has gone). Other checks (a DANE self-check) plug in here.
        """
        rt = self.rt
        names = {
            name
            for c in self.config.certificates
            if (s := rt.state.lineages.get(c.lineage)) is not None and s.deployed is not None
            for name in c.tlsa
        }
        if not names:
            return False
        result = PassResult()
        before = {n: rt.state.name(n).owned for n in names}
        try:
            # First: observing saves the state, and with it this wall clock, so
            # a step seen first here would pass as elapsed time (waits cut short).
            self._check_clock()
            fresh = observe_dns(rt, names, result)
        except (DanesyncError, OSError) as error:
            rt.fail(result, "light check", "dns", str(error))
            return False
        primary = rt.dns.primary
        gone: set[TlsaRecord] = set()
        unmatched = False  # a served chain that no record at one of its names matches
        for name in fresh:
            history = rt.state.name(name)
            current = history.current(primary) if primary else None
            if current is not None:
                gone |= before[name] - current.records
                served = {r.rdata for r in current.records}
                unmatched |= any(
                    not (deployed.matches & served)
                    for c in self.config.certificates
                    if name in c.tlsa
                    and (s := rt.state.lineages.get(c.lineage)) is not None
                    and (deployed := s.deployed) is not None
                )
        return bool(gone) or unmatched

    # --- monitoring -------------------------------------------------------------

    def run_monitoring(self) -> None:
        """Expiry warnings and ARI for the lineages the last full pass read."""
        now = self.rt.clock.wall()
        self.notices.warn_service_certificates()
        self.notices.warn_expiring(self.rt.state, now)
        self.notices.check_renewal_info(self.rt.state, self._ari_targets, now)

    def clear_failures(self) -> None:
        for lineage_state in self.rt.state.lineages.values():
            lineage_state.failed_fingerprint = lineage_state.failed_reason = None

    # --- migration ------------------------------------------------------------------

    def _migrate_v1(self, legacy: dict[str, Any]) -> None:
        """Schema 1 kept fingerprints only: the deployed chains are read back from
        their files (what Postfix serves), the records it published become owned."""
        rt = self.rt
        for name, data in (legacy.get("lineages") or {}).items():
            certificate = self.config.certificate(name)
            deployed = (data or {}).get("deployed") or {}
            if certificate is None or not deployed:
                continue
            raw = rt.postfix.read_chain_file(name)
            offer = rt.lineages.read_deployed(certificate, raw) if raw is not None else None
            if offer is None:
                continue
            lineage_state = rt.state.lineage(name)
            if offer.info.fingerprint == deployed.get("fingerprint"):
                lineage_state.deployed = offer.info
            elif legacy.get("reload_pending"):
                lineage_state.inflight = offer.info  # the next pass finishes that deploy
        for key, data in (legacy.get("records") or {}).items():
            if not (data or {}).get("published"):
                continue
            record = TlsaRecord.from_key(key)
            history = rt.state.name(record.name)
            rt.state.names[record.name] = replace(history, owned=history.owned | {record})
        try:
            rt.save()
        except DanesyncError as error:  # the next pass saves it, or says why it cannot
            rt.fail(PassResult(), "migrate", str(self.config.state.dir), str(error))


def run_sync(config: Config) -> int:
    """`danesync sync`: one pass, then exit; exit 75 if the daemon holds the lock."""
    from danesync.lock import acquire_lock
    from danesync.log import configure_logging

    lock = acquire_lock(config.state.dir)  # before anything else: exit 75 says it all
    configure_logging("auto")
    try:
        result = Service(config).reconcile()
    finally:
        lock.release()
    return 1 if result.failed else 0

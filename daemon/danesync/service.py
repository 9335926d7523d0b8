"""The service: one reconcile pass, and the loop that runs passes.

A pass reads the lineages, asks DNS (and, on adoption, Postfix) what clients
see, lets the pure planner decide, then executes one step at a time,
persisting the state after each: record visibility, holds, publishing,
deploying (files, Postfix parameters, reload, probe, or rollback), retiring.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from danesync import ari
from danesync.actions import dns as dns_actions
from danesync.actions import files, postfix, probe, snitables
from danesync.certbot import read_acme_server, read_chain
from danesync.chain import Chain, LineageFiles, format_time, validate_chain
from danesync.config import CertificateConfig, Config, DnsMode
from danesync.errors import (
    AriError,
    ChainError,
    DnsError,
    LineagePending,
    PostfixError,
    ProbeError,
    TsigKeyError,
)
from danesync.pem import PemError, split_pem
from danesync.plan import (
    Candidate,
    Decision,
    DnsView,
    Plan,
    Problem,
    Verb,
    build_query_names,
    plan_pass,
)
from danesync.state import ChainInfo, State, load_state, save_state
from danesync.tlsa import TlsaRecord
from danesync.tsigkey import TsigKey, read_tsig_key

log = structlog.get_logger("danesync")

SNI_TABLE = "sni"
PROBE_WORKERS = 16  # concurrent STARTTLS probes after a deploy
ARI_BUDGET = 10.0  # seconds of ARI requests per pass; the rest wait for the next


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PassResult:
    """What a pass leaves for the loop."""

    failed: bool = False  # a lineage is invalid, a deploy or a DNS step failed
    wake_at: dt.datetime | None = None  # a held rollover wants another look then
    waiting: set[str] = field(default_factory=set)  # lineages with a pending rollover


def _crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at a named step."""
    if os.environ.get("DANESYNC_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Service:
    """Owns the configuration and the state; runs reconcile passes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = load_state(config.state.dir)
        self._last_logged: dict[str, tuple[Verb, str | None]] = {}
        self._verify_servers: list[dns_actions.Server] | None = None
        self._tsig_key: TsigKey | None = None
        self._ari_notice_logged = False
        self._full_pass_candidates: dict[str, Candidate] = {}
        self._ari_next_check: dict[str, dt.datetime] = {}
        # Chains `recover` found on disk but not in the state: the next pass reloads
        # Postfix, confirms them and logs them as deployed.
        self._recovered: dict[str, Chain] = {}
        # What the last deploy's postconf replaced, for a rollback.
        self._previous_parameters: dict[str, str] = {}
        self._intact: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self.recover()

    # --- persistence -------------------------------------------------------

    def save(self) -> None:
        save_state(self.config.state.dir, self.state)

    def recover(self) -> None:
        """Make the state agree with the chain files on disk after a crash.

        Only validated, cleared chains are ever written, so a file whose leaf
        differs from what the state says is deployed was written by a step
        whose state update a crash cut off: it is what Postfix serves.
        """
        changed = False
        for certificate in self.config.certificates:
            known = self.state.lineages.get(certificate.lineage)
            if known is not None and known.deployed is not None:
                # The file's leaf is the one the state names: nothing to recover,
                # and no need to validate it (10,000 validations at start).
                leaf = _leaf_fingerprint(self.deploy_path(certificate.lineage))
                if leaf == known.deployed.fingerprint:
                    continue
            chain = self._read_deployed_file(certificate)
            if chain is None:
                continue
            lineage_state = self.state.lineage(certificate.lineage)
            if (
                lineage_state.deployed is None
                or lineage_state.deployed.fingerprint != chain.fingerprint
            ):
                lineage_state.deployed = ChainInfo.from_chain(chain)
                self.state.reload_pending = True
                self._recovered[certificate.lineage] = chain
                changed = True
        if changed:
            self.save()

    def _read_deployed_file(self, certificate: CertificateConfig) -> Chain | None:
        path = self.deploy_path(certificate.lineage)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            blocks = split_pem(data, str(path))
            keys = b"".join(b.text for b in blocks if b.label.endswith("PRIVATE KEY"))
            certificates = [b.text for b in blocks if b.label == "CERTIFICATE"]
            files_ = LineageFiles(
                certificate.lineage,
                0,
                privkey=keys,
                cert=certificates[0],
                chain=b"".join(certificates[1:]),
                fullchain=b"".join(certificates),
            )
            # Expiry does not matter here: we want to know what is served.
            chain = validate_chain(
                files_,
                certificate.hostnames,
                certificate.tlsa,
                certificate.usages,
                _any_time_within(certificates[0]),
            )
        except (PemError, ChainError, IndexError) as error:
            log.warning(
                "lineage.invalid",
                lineage=certificate.lineage,
                reason=f"the deployed file {path} cannot be read back: {error}",
            )
            return None
        return chain

    def deploy_path(self, lineage: str) -> Path:
        return self.config.postfix.deploy_dir / f"{lineage}.pem"

    # --- one pass -----------------------------------------------------------

    def reconcile(self, lineages: Iterable[str] | None = None, monitor: bool = True) -> PassResult:
        """One pass over `lineages` (default: every configured certificate).

        A full pass ends with the monitoring (expiry, ARI) unless `monitor` is
        false; the daemon runs that after READY=1 with `run_monitoring`.
        """
        result = PassResult()
        now = utc_now()
        certificates = self._select(lineages)
        if self.state.reload_pending:
            self._finish_interrupted_deploy(result)
        candidates: dict[str, Candidate] = {
            c.lineage: self._read_candidate(c, now) for c in certificates
        }
        # A deploy is followed by a round that retires the records the old chains
        # needed; the lineages just read are still what certbot holds.
        for _ in range(3):
            if not self._reconcile_once(lineages, candidates, result):
                break
        if lineages is None:
            self._full_pass_candidates = candidates
            if monitor:
                self.run_monitoring()
        return result

    def run_monitoring(self) -> None:
        """Expiry warnings and ARI for the lineages the last full pass read."""
        now = utc_now()
        self._warn_expiring(now)
        self._check_renewal_info(self._full_pass_candidates, now)

    def _reconcile_once(
        self, lineages: Iterable[str] | None, candidates: dict[str, Candidate], result: PassResult
    ) -> bool:
        now = utc_now()
        certificates = self._select(lineages)
        served = self._probe_adoptions(certificates, candidates)
        view = self._observe_dns(build_query_names(self.config, self.state, candidates), result)
        plan = plan_pass(self.config, self.state, candidates, view, served, now)

        self._apply_visibility(plan, now)
        self._record_decisions(plan, now, result)
        if plan.publish and self._send_update(add=plan.publish, delete=(), result=result):
            for record in plan.publish:
                self.state.record(record).published = True
                log.info("tlsa.published", tlsa=record.zone_line(self.config.dns.ttl))
            self.save()
        deploys = plan.deploys + self._plan_repairs(plan)
        if deploys:
            self._deploy(deploys, result, now)
            return True
        if plan.retire and self._send_update(add=(), delete=plan.retire, result=result):
            for record in plan.retire:
                self.state.records.pop(record, None)
                log.info("tlsa.retired", tlsa=record.zone_line(self.config.dns.ttl))
            self.save()
        return False

    def _plan_repairs(self, plan: Plan) -> tuple[Decision, ...]:
        """Deployed chains whose file is gone or altered: write them again.

        Postfix reads the file whenever it starts an smtpd; without it every
        handshake fails. The candidate is the deployed chain, already cleared.
        """
        repairs = []
        for decision in plan.decisions:
            chain = decision.chain
            certificate = self.config.certificate(decision.lineage)
            if decision.verb is not Verb.UNCHANGED or chain is None or certificate is None:
                continue
            path = self.deploy_path(decision.lineage)
            # A file found intact is not read again while its inode, size, mtime
            # and ctime stay as they were (any write changes the ctime).
            seen = _stat_key(path)
            if seen is not None and self._intact.get(decision.lineage) == (seen, chain.fingerprint):
                continue
            try:
                intact = path.read_bytes() == chain.deploy_pem
            except OSError:
                intact = False
            if not intact:
                # Same leaf and key in other bytes (another chain order, another
                # danesync version) is still what was cleared: leave it.
                on_disk = self._read_deployed_file(certificate)
                intact = on_disk is not None and on_disk.fingerprint == chain.fingerprint
            if intact:
                if seen is not None:
                    self._intact[decision.lineage] = (seen, chain.fingerprint)
                continue
            reason = f"{path} is missing or was changed; writing the deployed chain again"
            log.warning("chain.damaged", lineage=chain.lineage, serial=chain.serial, reason=reason)
            repairs.append(Decision(decision.lineage, Verb.DEPLOY, chain, reason=reason))
        return tuple(repairs)

    def _select(self, lineages: Iterable[str] | None) -> list[CertificateConfig]:
        if lineages is None:
            return list(self.config.certificates)
        wanted = set(lineages)
        return [c for c in self.config.certificates if c.lineage in wanted]

    def _read_candidate(self, certificate: CertificateConfig, now: dt.datetime) -> Candidate:
        try:
            return read_chain(self.config.certbot.config_dir, certificate, now)
        except LineagePending as pending:
            return Problem(pending.reason, pending=True)
        except ChainError as error:
            return Problem(error.reason)

    def _probe_adoptions(
        self, certificates: list[CertificateConfig], candidates: Mapping[str, Candidate]
    ) -> dict[str, str]:
        """On adoption, what Postfix serves now (a chain it already serves needs no wait)."""
        endpoint = self.config.postfix.probe
        served: dict[str, str] = {}
        if endpoint is None or self.config.dns.mode is DnsMode.OFF:
            return served  # with DNS off nothing waits, so what is served does not matter
        for certificate in certificates:
            lineage_state = self.state.lineages.get(certificate.lineage)
            if lineage_state is not None and lineage_state.deployed is not None:
                continue
            if not isinstance(candidates.get(certificate.lineage), Chain):
                continue
            servername = certificate.hostnames[0] if certificate.sni else None
            try:
                der = probe.probe_starttls(endpoint.host, endpoint.port, servername=servername)
            except ProbeError:
                continue
            served[certificate.lineage] = hashlib.sha256(der).hexdigest()
        return served

    # --- DNS ------------------------------------------------------------------

    def _primary(self) -> dns_actions.Server | None:
        server = self.config.dns.server
        return None if server is None else dns_actions.Server(server.host, server.port)

    def _servers(self) -> list[dns_actions.Server]:
        if self._verify_servers is None:
            configured = self.config.dns.verify_servers
            if configured:
                self._verify_servers = [dns_actions.Server(e.host, e.port) for e in configured]
            else:
                primary = self._primary()
                assert primary is not None and self.config.dns.zone is not None
                self._verify_servers = dns_actions.find_verify_servers(
                    self.config.dns.zone, primary
                )
        return self._verify_servers

    def _observe_dns(self, names: frozenset[str], result: PassResult) -> DnsView | None:
        """Ask every verify server for every name; None when any could not answer."""
        if self.config.dns.mode is DnsMode.OFF:
            return None
        if not names:
            return DnsView(names, frozenset(), frozenset())
        try:
            servers = self._servers()
        except DnsError as error:
            log.error("dns.failed", reason=str(error))
            result.failed = True
            return None
        visibility = dns_actions.query_visibility(servers, sorted(names))
        if not visibility.complete:
            log.error("dns.failed", reason="; ".join(visibility.problems()))
            result.failed = True
            return None
        visible = frozenset(visibility.visible_records())
        primary = self._primary()
        on_primary = visible
        if primary is not None:
            try:
                on_primary = frozenset(
                    record
                    for name in sorted(names)
                    for record in (
                        visibility.on_server(primary, name)
                        if primary in servers
                        else dns_actions.query_tlsa(primary, name)
                    )
                )
            except DnsError as error:
                log.error("dns.failed", reason=str(error))
                result.failed = True
                return None
        return DnsView(names, visible, on_primary)

    def _send_update(
        self, add: tuple[TlsaRecord, ...], delete: tuple[TlsaRecord, ...], result: PassResult
    ) -> bool:
        primary = self._primary()
        zone = self.config.dns.zone
        assert primary is not None and zone is not None
        try:
            if self._tsig_key is None and self.config.dns.tsig_key_file is not None:
                self._tsig_key = read_tsig_key(self.config.dns.tsig_key_file)
            dns_actions.send_tlsa_update(
                primary, zone, self._tsig_key, add=add, delete=delete, ttl=self.config.dns.ttl
            )
        except (DnsError, TsigKeyError) as error:
            log.error(
                "dns.failed",
                reason=str(error),
                tlsa=[r.zone_line(self.config.dns.ttl) for r in (*add, *delete)],
            )
            result.failed = True
            return False
        return True

    def _apply_visibility(self, plan: Plan, now: dt.datetime) -> None:
        if not plan.mark_visible and not plan.mark_invisible:
            return
        for record in plan.mark_visible:
            self.state.record(record).visible_since = now
            log.info("tlsa.visible", tlsa=record.zone_line(self.config.dns.ttl))
        for record in plan.mark_invisible:
            self.state.record(record).visible_since = None
            log.warning(
                "tlsa.missing",
                tlsa=record.zone_line(self.config.dns.ttl),
                reason="no longer visible on every server",
            )
        self.save()

    # --- decisions --------------------------------------------------------------

    def _record_decisions(self, plan: Plan, now: dt.datetime, result: PassResult) -> None:
        changed = False
        for decision in plan.decisions:
            lineage_state = self.state.lineage(decision.lineage)
            chain = decision.chain
            if decision.verb.holds and chain is not None:
                if (
                    lineage_state.pending is None
                    or lineage_state.pending.fingerprint != chain.fingerprint
                ):
                    lineage_state.pending = ChainInfo.from_chain(chain)
                    lineage_state.pending_since = now
                lineage_state.proceed_at = decision.proceed_at
                result.waiting.add(decision.lineage)
                if decision.proceed_at is not None:
                    result.wake_at = min(filter(None, [result.wake_at, decision.proceed_at]))
                changed = True
            elif decision.verb in (Verb.UNCHANGED, Verb.DOWNGRADE, Verb.INVALID) and (
                lineage_state.pending is not None
            ):
                lineage_state.pending = lineage_state.pending_since = lineage_state.proceed_at = (
                    None
                )
                changed = True
            if decision.verb is Verb.INVALID:
                result.failed = True
            self._log_decision(decision)
        if plan.missing and self.config.dns.mode is DnsMode.CHECK:
            for record in plan.missing:
                self._log_once(
                    f"missing {record.key}",
                    "tlsa.missing",
                    tlsa=record.zone_line(self.config.dns.ttl),
                    reason="add this record to the zone",
                )
        if changed:
            self.save()

    def _log_once(self, key: str, event: str, **fields: Any) -> None:
        marker = (Verb.MISSING, key)
        if self._last_logged.get(key) == marker:
            return
        self._last_logged[key] = marker
        log.warning(event, **fields)

    def _log_decision(self, decision: Decision) -> None:
        """Log what changed; a decision repeated at every poll is logged once."""
        chain = decision.chain
        marker = (decision.verb, chain.fingerprint if chain else decision.reason)
        if self._last_logged.get(decision.lineage) == marker:
            return
        self._last_logged[decision.lineage] = marker
        fields: dict[str, Any] = {"lineage": decision.lineage}
        if chain is not None:
            fields.update(serial=chain.serial, not_after=format_time(chain.not_after))
        ttl = self.config.dns.ttl
        verb = decision.verb
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
                    self._log_once(
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

    # --- Postfix ----------------------------------------------------------------

    def _deploy(
        self, decisions: tuple[Decision, ...], result: PassResult, now: dt.datetime
    ) -> None:
        """Write every cleared chain, then one postconf and one reload for all."""
        chains = [d.chain for d in decisions if d.chain is not None]
        self.state.reload_pending = True
        self.save()
        _crash_point("before-files")
        for chain in chains:
            files.install_chain_file(
                self.config.postfix.deploy_dir, chain.lineage, chain.deploy_pem
            )
            _crash_point("after-file")
        try:
            self._apply_postfix(chains, [chain.lineage for chain in chains])
        except (PostfixError, ProbeError, OSError) as error:
            self._roll_back(chains, str(error), result)
            return
        for chain in chains:
            lineage_state = self.state.lineage(chain.lineage)
            lineage_state.deployed = ChainInfo.from_chain(chain)
            lineage_state.pending = lineage_state.pending_since = lineage_state.proceed_at = None
            lineage_state.failed_fingerprint = lineage_state.failed_reason = None
            self._log_deployed(chain)
        self.state.reload_pending = False
        self.save()

    def _log_deployed(self, chain: Chain, reason: str | None = None) -> None:
        log.info(
            "chain.deployed",
            lineage=chain.lineage,
            serial=chain.serial,
            not_after=format_time(chain.not_after),
            issuer=chain.issuer,
            tlsa=[r.zone_line(self.config.dns.ttl) for r in chain.tlsa],
            **({"reason": reason} if reason else {}),
        )

    def _finish_interrupted_deploy(self, result: PassResult) -> None:
        """A crash cut a deploy short: the files are in place; reload and confirm."""
        recovered = list(self._recovered.values())
        log.info(
            "deploy.resumed",
            reason="a deploy was interrupted by a restart; reloading Postfix",
            lineages=sorted(self._recovered),
        )
        try:
            self._apply_postfix(recovered, [c.lineage for c in self.config.certificates])
        except (PostfixError, ProbeError, OSError) as error:
            log.error("postfix.failed", reason=str(error))
            result.failed = True
            return
        for chain in recovered:
            self._log_deployed(chain, "finished a deploy interrupted by a restart")
        self._recovered.clear()
        self.state.reload_pending = False
        self.save()

    def _deployed_lineages(self) -> set[str]:
        return {
            name
            for name, s in self.state.lineages.items()
            if s.deployed is not None and self.deploy_path(name).exists()
        }

    def _sni_entries(self, deployed: set[str]) -> dict[str, Path]:
        return {
            hostname: self.deploy_path(c.lineage)
            for c in self.config.certificates
            if c.sni and c.lineage in deployed
            for hostname in c.hostnames
        }

    def _sni_shards(self) -> int:
        return snitables.plan_sni_shard_count(
            sum(len(c.hostnames) for c in self.config.certificates if c.sni)
        )

    def _write_sni_table(self, changed: list[str] | None = None) -> None:
        """Rebuild the SNI tables holding `changed` lineages (None: all), and missing ones:
        `postmap -F` stores the chain files' contents."""
        entries = self._sni_entries(self._deployed_lineages())
        if entries:
            paths = None if changed is None else {self.deploy_path(name) for name in changed}
            snitables.write_sni_tables(
                self.config.postfix.deploy_dir, entries, self._sni_shards(), paths
            )

    def _wanted_parameters(self) -> dict[str, str]:
        """The Postfix parameters for every deployed chain: defaults, then SNI."""
        deployed = self._deployed_lineages()
        wanted: dict[str, str] = {}
        defaults = [
            self.deploy_path(c.lineage)
            for c in self.config.certificates
            if not c.sni and c.lineage in deployed
        ]
        if defaults:
            wanted["smtpd_tls_chain_files"] = postfix.build_chain_files_value(defaults)
        if self._sni_entries(deployed):
            wanted["tls_server_sni_maps"] = snitables.build_sni_maps_values(
                self.config.postfix.deploy_dir, self._sni_shards()
            )
        return wanted

    def _apply_postfix(self, chains: list[Chain], lineages: list[str]) -> None:
        """SNI table, parameters, reload and probe; raise on failure so the caller rolls back."""
        config_dir = self.config.postfix.config_dir
        sni_lineages = {c.lineage for c in self.config.certificates if c.sni}
        with _provisional(self.state, chains):
            # The table first: main.cf must never name a table that is not there.
            deploy_dir, shards = self.config.postfix.deploy_dir, self._sni_shards()
            if sni_lineages & set(lineages) or not snitables.sni_tables_exist(deploy_dir, shards):
                changed = [c.lineage for c in chains] if not self._recovered else None
                self._write_sni_table(changed)
            wanted = self._wanted_parameters()
        self._previous_parameters = postfix.write_parameter_changes(config_dir, wanted)
        _crash_point("after-postconf")
        # Only SNI chains changed and main.cf did not: smtpd restarts by itself
        # once the SNI table it opened was replaced ("table has changed"), with
        # none of the reload's tlsmgr stall (docs/benchmarks.md); the probe
        # below still confirms the new leaf.
        sni_only = bool(chains) and not self._recovered and not self._previous_parameters
        sni_only = sni_only and all(
            (c := self.config.certificate(chain.lineage)) is not None and c.sni for chain in chains
        )
        if self.config.postfix.reload and not sni_only:
            postfix.reload_postfix(config_dir)
            log.info("postfix.reloaded", reason=", ".join(lineages) or "resume")
        _crash_point("after-reload")
        self._confirm_served(chains)

    def _confirm_served(self, chains: list[Chain]) -> None:
        """The STARTTLS probe must see each new leaf (asking by name or key type).

        A pass that deploys many SNI chains probes them side by side.
        """
        endpoint = self.config.postfix.probe
        if endpoint is None or not self.config.postfix.reload or not chains:
            return

        def confirm(chain: Chain) -> bool:
            certificate = self.config.certificate(chain.lineage)
            assert certificate is not None
            return probe.wait_for_leaf(
                endpoint.host,
                endpoint.port,
                _leaf_der(chain),
                servername=certificate.hostnames[0] if certificate.sni else None,
                key_algorithm=None if certificate.sni else chain.key_algorithm,
            )

        with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(chains))) as pool:
            outcomes = list(pool.map(confirm, chains))
        failed = [chain for chain, ok in zip(chains, outcomes, strict=True) if not ok]
        for chain in chains:
            if chain in failed:
                reason = f"{endpoint} does not serve the new leaf"
                log.error("probe.failed", lineage=chain.lineage, serial=chain.serial, reason=reason)
            else:
                log.info("probe.ok", lineage=chain.lineage, serial=chain.serial)
        if failed:
            names = ", ".join(chain.lineage for chain in failed)
            raise ProbeError(f"{names}: {endpoint} does not serve the new leaf")

    def _roll_back(self, chains: list[Chain], reason: str, result: PassResult) -> None:
        log.error("postfix.failed", reason=reason)
        for chain in chains:
            deployed = self.state.lineage(chain.lineage).deployed
            if deployed is not None and deployed.fingerprint == chain.fingerprint:
                continue  # a repair: the .prev file is older than what it rewrote
            # Without a .prev (a first deploy) the new file stays; the restored
            # parameters below no longer name it, so Postfix does not read it.
            files.restore_chain_file(self.config.postfix.deploy_dir, chain.lineage)
        try:
            postfix.write_parameters(self.config.postfix.config_dir, self._previous_parameters)
            if any((c := self.config.certificate(chain.lineage)) and c.sni for chain in chains):
                self._write_sni_table()  # from the restored files
            if self.config.postfix.reload:
                postfix.reload_postfix(self.config.postfix.config_dir)
        except (PostfixError, OSError) as error:
            log.error("postfix.failed", reason=f"rollback: {error}")
        for chain in chains:
            lineage_state = self.state.lineage(chain.lineage)
            lineage_state.failed_fingerprint = chain.fingerprint
            lineage_state.failed_reason = reason
            log.error(
                "chain.rolled_back", lineage=chain.lineage, serial=chain.serial, reason=reason
            )
        self.state.reload_pending = False
        result.failed = True
        self.save()

    # --- monitoring ---------------------------------------------------------------

    def _warn_expiring(self, now: dt.datetime) -> None:
        """`cert.expiring` at 21 and 7 days before notAfter, at every full pass."""
        for name, lineage_state in sorted(self.state.lineages.items()):
            deployed = lineage_state.deployed
            warning = deployed and ari.plan_expiry_warnings(deployed.not_after, now)
            if deployed is None or not warning:
                continue
            level, reason = warning
            getattr(log, level)(
                "cert.expiring",
                lineage=name,
                serial=deployed.serial,
                not_after=format_time(deployed.not_after),
                reason=reason,
            )

    def _check_renewal_info(self, candidates: Mapping[str, Candidate], now: dt.datetime) -> None:
        """ARI (RFC 9773): tell the operator when the CA wants a renewal certbot has not done."""
        unsupported = ari.ari_support()
        if unsupported is not None:
            if not self._ari_notice_logged:
                log.info("renewal.unsupported", reason=unsupported)
                self._ari_notice_logged = True
            return
        give_up = time.monotonic() + ARI_BUDGET  # one slow CA must not stall the loop
        for lineage, candidate in sorted(candidates.items()):
            lineage_state = self.state.lineages.get(lineage)
            deployed = lineage_state.deployed if lineage_state else None
            if deployed is None or not isinstance(candidate, Chain) or not candidate.intermediates:
                continue
            if self._ari_next_check.get(lineage, now) > now:
                continue
            if time.monotonic() > give_up:
                break
            directory = read_acme_server(self.config.certbot.config_dir, lineage)
            if directory is None:
                continue
            try:
                window = ari.fetch_renewal_window(
                    directory, candidate.leaf, candidate.intermediates[0]
                )
            except AriError as error:
                log.warning("renewal.unknown", lineage=lineage, reason=str(error))
                self._ari_next_check[lineage] = now + dt.timedelta(hours=1)
                continue
            if window is None:
                self._ari_next_check[lineage] = now + dt.timedelta(days=1)
                continue
            self._ari_next_check[lineage] = window.next_check
            reason = ari.plan_renewal_notice(
                window, deployed.not_after, candidate.fingerprint == deployed.fingerprint, now
            )
            if reason is not None:
                log.warning(
                    "renewal.suggested",
                    lineage=lineage,
                    serial=deployed.serial,
                    not_after=format_time(deployed.not_after),
                    reason=reason,
                )

    def clear_failures(self) -> None:
        for lineage_state in self.state.lineages.values():
            lineage_state.failed_fingerprint = lineage_state.failed_reason = None


def _stat_key(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _leaf_fingerprint(path: Path) -> str | None:
    """SHA-256 of the first certificate in a chain file (no validation), or None."""
    try:
        blocks = split_pem(path.read_bytes(), str(path))
    except (OSError, PemError):
        return None
    leaf = next((b.der for b in blocks if b.label == "CERTIFICATE"), None)
    return None if leaf is None else hashlib.sha256(leaf).hexdigest()


def _leaf_der(chain: Chain) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return chain.leaf.public_bytes(serialization.Encoding.DER)


def _any_time_within(leaf_pem: bytes) -> dt.datetime:
    from cryptography import x509

    from danesync.chain import _not_after, _not_before

    leaf = x509.load_pem_x509_certificate(leaf_pem)
    return _not_before(leaf) + (_not_after(leaf) - _not_before(leaf)) / 2


class _provisional:
    """Treat `chains` as deployed while the Postfix parameters are built."""

    def __init__(self, state: State, chains: list[Chain]) -> None:
        self.state = state
        self.chains = chains
        self.saved: dict[str, ChainInfo | None] = {}

    def __enter__(self) -> None:
        for chain in self.chains:
            lineage_state = self.state.lineage(chain.lineage)
            self.saved[chain.lineage] = lineage_state.deployed
            lineage_state.deployed = ChainInfo.from_chain(chain)

    def __exit__(self, *exc: object) -> None:
        for lineage, info in self.saved.items():
            self.state.lineage(lineage).deployed = info


def run_sync(config: Config) -> int:
    """`danesync sync`: one pass, then exit."""
    from danesync.log import configure_logging

    configure_logging("auto")
    service = Service(config)
    result = service.reconcile()
    return 1 if result.failed else 0

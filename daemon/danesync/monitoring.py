"""Monitoring after a full pass: expiry warnings and ACME Renewal Information."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping

import structlog

from danesync import ari, expiry
from danesync.certbot import read_acme_server
from danesync.chain import format_time
from danesync.config import Config
from danesync.errors import AriError
from danesync.ports import AriTarget
from danesync.state import ChainInfo, State

log = structlog.get_logger("danesync")

ARI_BUDGET = 10.0  # seconds of ARI requests per pass; the rest wait for the next


class RenewalNotices:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._ari_notice_logged = False
        self._ari_next_check: dict[str, dt.datetime] = {}
        # Leaves are kept as their ChainInfo, compared by fingerprint: that string
        # is derived on each read, one kept per lineage would be a copy (memplan).
        # lineage -> (leaf, end of the CA's renewal window for that leaf)
        self._ari_window_end: dict[str, tuple[ChainInfo, dt.datetime]] = {}
        # lineage -> a leaf ARI cannot ask about (no Authority Key Identifier):
        # said once for that leaf, not at every pass for every lineage.
        self._ari_unaskable: dict[str, ChainInfo] = {}
        self._service_certificates_logged = False

    def warn_service_certificates(self) -> None:
        """Once: master.cf services whose certificate settings danesync does not manage."""
        if self._service_certificates_logged:
            return
        self._service_certificates_logged = True
        from danesync.actions.postfix_audit import read_service_tls_notices
        from danesync.errors import DanesyncError

        try:
            notices = read_service_tls_notices(
                self.config.postfix.config_dir, self.config.postfix.deploy_dir
            )
        except DanesyncError as error:
            log.warning("postfix.service_tls", reason=f"master.cf not read: {error}")
            return
        for notice in notices:
            log.warning("postfix.service_tls", reason=notice)

    def warn_expiring(self, state: State, now: dt.datetime) -> None:
        """`cert.expiring` once certbot's renewal is late or little is left (expiry.py)."""
        rollover_wait = dt.timedelta(seconds=self.config.dns.rollover_wait)
        for name, lineage_state in sorted(state.lineages.items()):
            deployed = lineage_state.deployed
            if deployed is None:
                continue
            pending = lineage_state.pending
            window = self._ari_window_end.get(name)
            warning = expiry.plan_expiry_warnings(
                deployed.not_after,
                now,
                not_before=deployed.not_before,
                held=pending is not None and pending.fingerprint != deployed.fingerprint,
                rollover_wait=rollover_wait,
                window_end=window[1]
                if window and window[0].fingerprint == deployed.fingerprint
                else None,
            )
            if not warning:
                continue
            level, reason = warning
            getattr(log, level)(
                "cert.expiring",
                lineage=name,
                serial=deployed.serial,
                not_after=format_time(deployed.not_after),
                reason=reason,
            )

    def check_renewal_info(
        self, state: State, candidates: Mapping[str, AriTarget], now: dt.datetime
    ) -> None:
        """ARI (RFC 9773): tell the operator when the CA wants a renewal certbot has not done.

        `candidates` maps a lineage to what ARI needs of its chain as last read
        (its identifier, computed when the chain was validated: no parsed
        certificate is kept between passes).
        """
        unsupported = ari.ari_support()
        if unsupported is not None:
            if not self._ari_notice_logged:
                log.info("renewal.unsupported", reason=unsupported)
                self._ari_notice_logged = True
            return
        give_up = time.monotonic() + ARI_BUDGET  # one slow CA must not stall the loop
        for lineage, candidate in sorted(candidates.items()):
            lineage_state = state.lineages.get(lineage)
            deployed = lineage_state.deployed if lineage_state else None
            if deployed is None:
                continue
            if self._ari_next_check.get(lineage, now) > now:
                continue
            unaskable = self._ari_unaskable.get(lineage)
            if unaskable is not None and unaskable.fingerprint == candidate.fingerprint:
                continue
            if time.monotonic() > give_up:
                break
            directory = read_acme_server(self.config.certbot.config_dir, lineage)
            if directory is None:
                continue
            try:
                if candidate.identifier is None:
                    raise AriError(directory, candidate.problem or "no certificate identifier")
                window = ari.fetch_renewal_window_by_id(
                    directory, candidate.identifier, candidate.not_after
                )
            except AriError as error:
                log.warning("renewal.unknown", lineage=lineage, reason=str(error))
                if candidate.identifier is None:  # a property of the leaf: no retry helps
                    self._ari_unaskable[lineage] = candidate.chain
                    continue
                # RFC 9773 4.3.3: a Retry-After on an error is honoured too.
                self._ari_next_check[lineage] = (
                    ari.build_next_check(error.retry_after, now)
                    if error.retry_after
                    else now + dt.timedelta(hours=1)
                )
                continue
            if window is None:
                self._ari_next_check[lineage] = now + dt.timedelta(days=1)
                continue
            self._ari_next_check[lineage] = window.next_check
            self._ari_window_end[lineage] = (candidate.chain, window.end)
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

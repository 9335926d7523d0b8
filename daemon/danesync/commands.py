"""The one-shot commands: check, tlsa (and the entry points of sync, status).

Each takes a loaded Config, prints for a person, and returns the exit status
of its verdict; errors that end the program are raised to `__main__`.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from danesync.certbot import read_chain
from danesync.chain import Chain, format_time
from danesync.config import CertificateConfig, Config
from danesync.errors import ChainError, DanesyncError, LineagePending


@dataclass(frozen=True)
class Verdict:
    certificate: CertificateConfig
    chain: Chain | None
    problem: str | None  # why the lineage cannot be deployed now
    pending: bool = False


def select_certificates(config: Config, lineages: Sequence[str]) -> list[CertificateConfig]:
    """The configured certificates, or those named; an unconfigured name gets defaults."""
    if not lineages:
        return list(config.certificates)
    return [config.certificate(name) or CertificateConfig.default_for(name) for name in lineages]


def judge(config: Config, certificate: CertificateConfig, now: dt.datetime) -> Verdict:
    try:
        chain = read_chain(config.certbot.config_dir, certificate, now)
    except LineagePending as pending:
        return Verdict(certificate, None, pending.reason, pending=True)
    except ChainError as error:
        return Verdict(certificate, None, error.reason)
    return Verdict(certificate, chain, None)


def run_check(
    config: Config, lineages: Sequence[str], now: dt.datetime, out: TextIO | None = None
) -> int:
    # None, not sys.stdout, as the default: print(file=None) finds the stream
    # at call time, so a replaced sys.stdout (capture, redirection) is honoured.
    certificates = select_certificates(config, lineages)
    print(f"config {config.path}: ok, {len(config.certificates)} certificate(s)", file=out)
    if not certificates:
        print("no certificate is configured: add a [[certificate]] table", file=out)
    status = 0
    for certificate in certificates:
        verdict = judge(config, certificate, now)
        if verdict.chain is None:
            label = "PENDING" if verdict.pending else "INVALID"
            print(f"{certificate.lineage}: {label}: {verdict.problem}", file=out)
            status = 1
            continue
        chain = verdict.chain
        print(f"{certificate.lineage}: valid", file=out)
        rows = [
            ("subject", chain.subject),
            ("serial", chain.serial),
            ("notAfter", format_time(chain.not_after)),
            ("issuer", chain.issuer),
            ("key", chain.key_algorithm),
        ]
        rows += [("tlsa", record.zone_line(config.dns.ttl)) for record in chain.tlsa]
        for name, value in rows:
            print(f"  {name:<9} {value}", file=out)
    status = max(status, _print_selfcheck(config, lineages, now, out))
    _print_postfix_audit(config, out)  # warnings only, and last
    return status


def _print_selfcheck(
    config: Config, lineages: Sequence[str], now: dt.datetime, out: TextIO | None
) -> int:
    """The DANE self-check, once: 1 if a DANE sender would refuse what is served."""
    from danesync.selfcheck import SelfChecker

    checker = SelfChecker(config, clock=lambda: now)
    if config.postfix.probe is None:
        return 0  # nothing to connect to
    checks = checker.run(lineages=lineages or None, log_changes=False)
    status = 0
    for check in checks:
        label = {"valid": "ok", "broken": "BROKEN", "error": "not checked"}.get(
            check.outcome, check.outcome.replace("_", " ")
        )
        served = f"serial {check.serial} ({check.key_algorithm})" if check.serial else "probe"
        print(f"dane {check.name} {served} vs {check.source}: {label}: {check.reason}", file=out)
        if check.broken:
            status = 1
            print(f"  published {'; '.join(check.published) or 'nothing'}", file=out)
            print(f"  served    issuer {check.issuer}", file=out)
    return status


def _print_postfix_audit(config: Config, out: TextIO | None) -> None:
    """Warnings only: a questionable TLS setting does not make a lineage invalid."""
    from danesync.actions.postfix import read_tls_audit

    try:
        warnings = read_tls_audit(config.postfix.config_dir)
    except DanesyncError as error:
        print(f"postfix {config.postfix.config_dir}: not audited: {error}", file=out)
        return
    if not warnings:
        print(f"postfix {config.postfix.config_dir}: TLS settings ok", file=out)
    for warning in warnings:
        print(f"postfix {config.postfix.config_dir}: warning: {warning}", file=out)


def run_tlsa(
    config: Config,
    lineages: Sequence[str],
    now: dt.datetime,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    err = err or sys.stderr
    status = 0
    lines: list[str] = []
    for certificate in select_certificates(config, lineages):
        verdict = judge(config, certificate, now)
        if verdict.chain is None:
            print(f"danesync: {certificate.lineage}: {verdict.problem}", file=err)
            status = 1
            continue
        for record in verdict.chain.tlsa:
            line = record.zone_line(config.dns.ttl)
            if line not in lines:
                lines.append(line)
    for line in lines:
        print(line, file=out)
    return status

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
from danesync.tlsa import TlsaRecord, Usage


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
    checked: dict[str, Chain] = {}
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
        rows += _family_rows(config, certificate, chain, now)
        for name, value in rows:
            print(f"  {name:<9} {value}", file=out)
        checked[certificate.lineage] = chain
    if any(c.issuers is not None for c in certificates):
        _print_name_report(config, checked, now, out)
    _print_postfix_audit(config, out)
    return status


def _family_rows(
    config: Config, certificate: CertificateConfig, chain: Chain, now: dt.datetime
) -> list[tuple[str, str]]:
    """Issuer family and 3 1 1 notes (danesync.families)."""
    from danesync.families import judge_issuer, plan_family_records
    from danesync.family_report import explain_dane_ee, read_reuse_key

    rows: list[tuple[str, str]] = []
    if certificate.issuers is not None:
        judgement = judge_issuer(
            certificate.issuers, chain.issuer_spki, chain.key_algorithm, config.families, now
        )
        rows.append(("issuers", judgement.message))
        family = plan_family_records(
            certificate, chain.key_algorithm, config.families, now, chain.tlsa
        )
        rows += [("warning", warning) for warning in family.warnings]
    if Usage.DANE_EE in certificate.usages:
        reuse_key = read_reuse_key(config.certbot.config_dir, certificate.lineage)
        explanation = explain_dane_ee(reuse_key, certificate.lineage, config.dns.rollover_wait)
        rows += [("3 1 1", explanation[0])] + [("", line) for line in explanation[1:]]
    return rows


def _family_records(
    config: Config, certificate: CertificateConfig, chain: Chain, now: dt.datetime
) -> tuple[TlsaRecord, ...]:
    """The issuer family's records beyond the chain's own (danesync.families)."""
    from danesync.families import build_family_records

    records = build_family_records(
        certificate, chain.key_algorithm, config.families, now, chain.tlsa
    )
    return tuple(r for r in records if r not in chain.tlsa)


def _print_name_report(
    config: Config, chains: dict[str, Chain], now: dt.datetime, out: TextIO | None
) -> None:
    """Per owner name: current, pending, family and retiring records (state read only)."""
    from danesync.family_report import build_name_report
    from danesync.state import State, load_state

    try:
        state = load_state(config.state.dir)
    except DanesyncError as error:
        print(f"state {config.state.dir}: not read: {error}", file=out)
        state = State()
    for report in build_name_report(config, state, chains, now):
        print(report.name, file=out)
        for line in report.lines():
            print(f"  {line}", file=out)


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
        for record in verdict.chain.tlsa + _family_records(config, certificate, verdict.chain, now):
            line = record.zone_line(config.dns.ttl)
            if line not in lines:
                lines.append(line)
    for line in lines:
        print(line, file=out)
    return status

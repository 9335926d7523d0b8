"""The one-shot commands: check, tlsa (and the entry points of sync, status).

Each takes a loaded Config, prints for a person, and returns the exit status
of its verdict; errors that end the program are raised to `__main__`.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from danesync.certbot import read_chain
from danesync.chain import Chain, format_time
from danesync.config import CertificateConfig, Config
from danesync.errors import ChainError, DanesyncError, LineagePending
from danesync.sni import SniCertificate, build_served_names, build_sni_table, leaf_dns_names
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
    sni_certificates: list[SniCertificate] = []
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
        rows += _mailhost_rows(config, certificate, chain, sni_certificates)
        rows += _family_rows(config, certificate, chain, now)
        for name, value in rows:
            print(f"  {name:<9} {value}", file=out)
        checked[certificate.lineage] = chain
    if sni_certificates:
        _print_sni_table(sni_certificates, out)
    status = max(status, _print_dns_check(config, certificates, now, out))
    if any(c.issuers is not None for c in certificates):
        _print_name_report(config, checked, now, out)
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
    # Once, on request: every name, however long it takes.
    checks = checker.run(lineages=lineages or None, log_changes=False, budget=float("inf"))
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


def _print_dns_check(
    config: Config, certificates: Sequence[CertificateConfig], now: dt.datetime, out: TextIO | None
) -> int:
    """DNS as the servers answer it (dns.mode rfc2136 or check): 1 on any error."""
    from danesync.dnscheck import run_dns_check

    return run_dns_check(config, certificates, now, out)


def _mailhost_rows(
    config: Config,
    certificate: CertificateConfig,
    chain: Chain,
    sni_certificates: list[SniCertificate],
) -> list[tuple[str, str]]:
    """The names an SNI certificate serves, and a rollover_wait too long for its lifetime."""
    from danesync.ari import build_validity
    from danesync.expiry import build_rollover_wait_warning

    rows: list[tuple[str, str]] = []
    if certificate.sni:
        leaf_names = leaf_dns_names(chain.leaf)
        names = build_served_names(certificate.hostnames, certificate.hostnames_set, leaf_names)
        path = os.fspath(config.postfix.deploy_dir / f"{certificate.lineage}.pem")
        sni_certificates.append(
            SniCertificate(certificate.lineage, chain.key_algorithm, names, path)
        )
        how = "hostnames" if certificate.hostnames_set else "every DNS name of the leaf"
        rows.append(("sni", f"{len(names)} name(s), {how}: {', '.join(names)}"))
        left_out = [name for name in leaf_names if name not in names]
        if left_out:
            rows.append(
                (
                    "sni",
                    f"not served by SNI (not in hostnames; those clients get the default"
                    f" chain): {', '.join(left_out)}",
                )
            )
    not_before, not_after = build_validity(chain.leaf)
    wait = dt.timedelta(seconds=config.dns.rollover_wait)
    warning = build_rollover_wait_warning(wait, not_before, not_after)
    if warning:
        rows.append(("warning", warning))
    return rows


def _print_sni_table(certificates: list[SniCertificate], out: TextIO | None) -> None:
    """Which SNI name gets which chain, as tls_server_sni_maps will hold it."""
    table = build_sni_table(certificates)
    algorithms = {c.lineage: c.key_algorithm for c in certificates}
    print(f"sni table: {len(table.entries)} name(s)", file=out)
    for entry in table.entries:
        served = ", ".join(f"{lineage} ({algorithms[lineage]})" for lineage in entry.lineages)
        under = f" (any name under {entry.key[1:]})" if entry.key.startswith(".") else ""
        shared = " (one entry: a chain per key algorithm)" if len(entry.lineages) > 1 else ""
        print(f"  {entry.key}{under}: {served}{shared}", file=out)
    for problem in table.problems:
        print(f"sni table: warning: {problem}", file=out)


def _family_rows(
    config: Config, certificate: CertificateConfig, chain: Chain, now: dt.datetime
) -> list[tuple[str, str]]:
    """Issuer family and 3 1 1 notes (danesync.families)."""
    from danesync.families import plan_family_records
    from danesync.family_report import explain_dane_ee, judge_issuer, read_reuse_key

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
    from danesync.state import ChainInfo, State, load_state

    try:
        state = load_state(config.state.dir)
    except DanesyncError as error:
        print(f"state {config.state.dir}: not read: {error}", file=out)
        state = State()
    candidates = {lineage: ChainInfo.from_chain(chain) for lineage, chain in chains.items()}
    for report in build_name_report(config, state, candidates, now):
        print(report.name, file=out)
        for line in report.lines():
            print(f"  {line}", file=out)


def _print_postfix_audit(config: Config, out: TextIO | None) -> None:
    """Warnings only: a questionable TLS setting does not make a lineage invalid."""
    from danesync.actions.postfix_audit import read_tls_audit

    try:
        # danesync sets smtpd_tls_chain_files when it has a default (non-SNI) chain.
        warnings = read_tls_audit(
            config.postfix.config_dir,
            config.postfix.deploy_dir,
            chain_files_in_main=any(not c.sni for c in config.certificates) or None,
        )
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

"""What `danesync check` asks DNS, and how it judges the answers.

Without these questions a wrong TSIG key or zone stays silent until the next
renewal (up to 90 days) and then holds a rollover. `check` therefore asks,
changing nothing:

- the zone's SOA at `dns.server`, signed with the TSIG key: the key is
  proven (a wrong secret or name gets no verified answer) and `dns.zone` is
  a zone of that server (its own SOA, not NODATA inside a parent zone);
- the SOA at every verify server, which must answer authoritatively;
- the update policy, with an update that cannot apply (see
  `danesync.actions.dnsupdate.probe_update_policy`): BIND and Knot check
  the policy first, so it is proven there; PowerDNS checks prerequisites
  first, so there only the key's right to update the zone is proven;
- DNSSEC: RRSIGs on the TLSA RRsets and the hosts' A/AAAA from every
  authoritative server, and the AD bit from a validating resolver;
- the TLSA RRsets themselves (danesync.dnsjudge judges them).

The judging functions are pure (`judge_*`, in danesync.serverjudge and
danesync.dnsjudge); the queries here are thin.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from danesync.actions import dns as dns_actions
from danesync.actions import dnswire
from danesync.actions.dns import Server, SoaAnswer
from danesync.certbot import read_chain
from danesync.chain import Chain
from danesync.config import CertificateConfig, Config, DnsMode
from danesync.dnsjudge import Finding, judge_tlsa_rrset, read_trust_roots
from danesync.errors import DanesyncError, DnsError
from danesync.serverjudge import (
    judge_policy,
    judge_primary_soa,
    judge_signed,
    judge_validation,
    judge_verify_server,
)
from danesync.tlsa import TlsaRecord, absolute_name
from danesync.tsigkey import TsigKey, read_tsig_key

TIMEOUT = 3.0


# -- thin queries --------------------------------------------------------------


def query_signed_rrset(server: Server, name: str, rdtype: str) -> tuple[bool, bool]:
    """(the RRset has records, it came with an RRSIG) at one authoritative server."""
    owner = dns.name.from_text(absolute_name(name))
    kind = dns.rdatatype.from_text(rdtype)
    query = dns.message.make_query(owner, kind, want_dnssec=True)
    query.flags &= ~dns.flags.RD
    response = dnswire.exchange(server, query, TIMEOUT, tcp=False)
    present = signed = False
    for rrset in response.answer:
        if rrset.name != owner:
            continue
        if rrset.rdtype == kind:
            present = True
        if rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers == kind:
            signed = True
    return present, signed


def query_software(server: Server) -> str | None:
    """What the server says it is (``version.bind`` CH TXT), if it says."""
    query = dns.message.make_query("version.bind.", dns.rdatatype.TXT, "CH")
    query.flags &= ~dns.flags.RD
    try:
        response = dnswire.exchange(server, query, TIMEOUT, tcp=False)
    except DnsError:
        return None
    for rrset in response.answer:
        for rdata in rrset:
            return b"".join(rdata.strings).decode(errors="replace")
    return None


def query_validated(resolver: Server, zone: str) -> tuple[bool | None, str]:
    """(AD bit on the zone's SOA from a recursive resolver, or None; why not)."""
    query = dns.message.make_query(absolute_name(zone), dns.rdatatype.SOA, want_dnssec=True)
    query.flags |= dns.flags.AD | dns.flags.RD
    try:
        response = dnswire.exchange(resolver, query, TIMEOUT, tcp=False)
    except DnsError as error:
        return None, str(error).removeprefix(f"{resolver}: ")
    if response.rcode() != dns.rcode.NOERROR:
        return None, f"answered {dns.rcode.to_text(response.rcode())}"
    return bool(response.flags & dns.flags.AD), ""


def find_resolver(setting: str) -> Server | None:
    """The validating resolver `monitor.resolver` names: "off" (none),
    "system" (the first nameserver of /etc/resolv.conf), or "host:port"."""
    if setting == "off":
        return None
    if setting != "system":
        return Server.parse(setting)
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            return Server(words[1].split("%")[0])
    return None


# -- the check -------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    config: Config
    zone: str
    primary: Server | None
    key: TsigKey | None


def run_dns_check(
    config: Config,
    certificates: Sequence[CertificateConfig],
    now: dt.datetime,
    out: TextIO | None = None,
) -> int:
    """Ask DNS what `check` must know; print one line per finding; 1 on any error."""
    findings = build_dns_findings(config, certificates, now)
    for finding in findings:
        print(f"dns: {finding.level}: {finding.text}", file=out)
    return 1 if any(f.level == "error" for f in findings) else 0


def build_dns_findings(
    config: Config, certificates: Sequence[CertificateConfig], now: dt.datetime
) -> list[Finding]:
    dns_config = config.dns
    if dns_config.mode is DnsMode.OFF:
        return []
    primary = (
        None
        if dns_config.server is None
        else Server(dns_config.server.host, dns_config.server.port)
    )
    if primary is None and not dns_config.verify_servers:
        return []  # nothing to ask (the sample configuration)
    findings: list[Finding] = []
    key: TsigKey | None = None
    if dns_config.mode is DnsMode.RFC2136 and dns_config.tsig_key_file is not None:
        try:
            key = read_tsig_key(dns_config.tsig_key_file)
        except DanesyncError as error:
            return [Finding("error", f"TSIG key file {error}")]
    zone = dns_config.zone
    if zone is None:
        zone = _guess_zone(certificates)
    context = _Context(config, zone, primary, key)
    if primary is not None:
        try:
            soa = dns_actions.query_soa(primary, zone, key, TIMEOUT)
        except DnsError as error:
            return [Finding("error", f"cannot ask dns.server: {error}")]
        findings += judge_primary_soa(zone, soa, key)
        if any(f.level == "error" for f in findings):
            return findings
    servers = []  # those that answer for the zone: the only ones worth more questions
    for server in _verify_servers(context, findings):
        try:
            answer: SoaAnswer | str = dns_actions.query_soa(server, zone, None, TIMEOUT)
        except DnsError as error:
            answer = str(error).removeprefix(f"{server}: ")
        finding = judge_verify_server(zone, server, answer)
        findings.append(finding)
        if finding.level == "ok":
            servers.append(server)
    names = sorted({absolute_name(n) for c in certificates for n in c.tlsa})
    if primary is not None and key is not None:
        findings += _policy_findings(context, primary, key, names)
    findings += _dnssec_findings(context, servers, certificates, names)
    findings += _rrset_findings(context, servers, certificates, names, now)
    return findings


def _guess_zone(certificates: Sequence[CertificateConfig]) -> str:
    """Check mode without dns.zone: the parent of the first host name."""
    for certificate in certificates:
        for host in certificate.hostnames:
            return host.partition(".")[2] or host
    return "."


def _verify_servers(context: _Context, findings: list[Finding]) -> list[Server]:
    configured = context.config.dns.verify_servers
    if configured:
        return [Server(e.host, e.port) for e in configured]
    assert context.primary is not None
    try:
        return dns_actions.find_verify_servers(context.zone, context.primary, TIMEOUT)
    except DnsError as error:
        findings.append(Finding("error", f"cannot find the zone's name servers: {error}"))
        return [context.primary]


def _policy_findings(
    context: _Context, primary: Server, key: TsigKey, names: Iterable[str]
) -> list[Finding]:
    software = query_software(primary)
    findings = []
    for name in names:
        try:
            answer = dns_actions.probe_update_policy(primary, context.zone, key, name, TIMEOUT)
        except DnsError as error:
            findings.append(Finding("error", f"cannot test the update policy: {error}"))
            break
        findings.append(judge_policy(primary, key, name, answer, True, software))
    return findings


def _dnssec_findings(
    context: _Context,
    servers: Sequence[Server],
    certificates: Sequence[CertificateConfig],
    names: Sequence[str],
) -> list[Finding]:
    findings: list[Finding] = []
    zone = dns.name.from_text(absolute_name(context.zone))
    hosts = sorted({absolute_name(h) for c in certificates for h in c.hostnames if "*" not in h})
    checks = [(n, "TLSA") for n in names] + [(h, t) for h in hosts for t in ("A", "AAAA")]
    for name, rdtype in checks:
        if not dns.name.from_text(name).is_subdomain(zone):
            continue
        unsigned: list[Server] = []
        asked = present = 0
        for server in servers:
            try:
                has, signed = query_signed_rrset(server, name, rdtype)
            except DnsError:
                continue
            asked += 1
            present += has
            if has and not signed:
                unsigned.append(server)
        if present:
            findings.append(judge_signed(f"{name} {rdtype}", unsigned, asked))
    resolver = find_resolver(context.config.monitor.resolver)
    ad, error = (None, "") if resolver is None else query_validated(resolver, context.zone)
    findings.append(judge_validation(context.zone, resolver, ad, error))
    return findings


def _rrset_findings(
    context: _Context,
    servers: Sequence[Server],
    certificates: Sequence[CertificateConfig],
    names: Sequence[str],
    now: dt.datetime,
) -> list[Finding]:
    source = context.primary or (servers[0] if servers else None)
    if source is None:
        return []
    chains: dict[str, list[Chain]] = {}
    for certificate in certificates:
        try:
            chain = read_chain(context.config.certbot.config_dir, certificate, now)
        except DanesyncError:
            continue  # the lineage's own verdict says why
        for name in certificate.tlsa:
            chains.setdefault(absolute_name(name), []).append(chain)
    roots = read_trust_roots()
    findings: list[Finding] = []
    for name in names:
        try:
            records: frozenset[TlsaRecord] = dns_actions.query_tlsa(source, name, TIMEOUT)
        except DnsError as error:
            findings.append(Finding("error", f"cannot read {name} TLSA: {error}"))
            continue
        findings += judge_tlsa_rrset(name, records, chains.get(name, []), roots)
    return findings

"""What DNS publishes for a TLSA name, as the self-check reads it: each verify
server's RRset, and the system resolver's if it validated the answer.

Imported by the self-check when it runs, not at start: dnspython comes with it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from danesync.actions import dns as dns_actions
from danesync.actions import dnswire
from danesync.config import Config, parse_endpoint
from danesync.errors import DnsError
from danesync.tlsa import TlsaRecord

RESOLV_CONF = "/etc/resolv.conf"


@dataclass(frozen=True)
class Published:
    """An RRset as one source answered it, or why it could not."""

    source: str
    records: frozenset[TlsaRecord] = frozenset()
    error: str | None = None


def read_published(
    servers: Sequence[dns_actions.Server], name: str, resolver: str = "system"
) -> list[Published]:
    """The RRset from each verify server, and from the system resolver if it validates."""
    answers = []
    for server in servers:
        try:
            records = dns_actions.query_tlsa(server, name)
        except DnsError as error:
            answers.append(Published(f"verify server {server}", error=str(error)))
            continue
        answers.append(Published(f"verify server {server}", records))
    if resolver != "off":
        validated = read_validated(name, None if resolver == "system" else resolver)
        if validated is not None:
            answers.append(validated)
    return answers


def read_validated(
    name: str, resolver: str | None = None, timeout: float = 3.0, resolv_conf: str = RESOLV_CONF
) -> Published | None:
    """The RRset from a resolver (`host:port`, else the system's on loopback) if it
    validated the answer (AD bit), else None.

    A resolver that does not validate, or none at all, is no source: senders
    behind a validating cache are the ones DANE protects.
    """
    if resolver is not None:
        endpoint = parse_endpoint(resolver, 53)
        nameservers = [dns_actions.Server(endpoint.host, endpoint.port)]
    else:
        # Only a resolver on this host: an AD bit that crossed the network
        # unauthenticated proves nothing (what Postfix's DANE support assumes too).
        nameservers = [
            dns_actions.Server(a) for a in read_nameservers(resolv_conf) if _is_loopback(a)
        ]
    query = dns.message.make_query(name, dns.rdatatype.TLSA, want_dnssec=True)
    query.flags |= dns.flags.AD
    for nameserver in nameservers:
        try:
            response = dnswire.exchange(nameserver, query, timeout, tcp=False)
        except DnsError:
            continue
        if not response.flags & dns.flags.AD:
            return None
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        records = frozenset(
            TlsaRecord.from_key(f"{name} {rdata.to_text()}")
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TLSA
            for rdata in rrset
        )
        return Published(f"validating resolver {nameserver.host}", records)
    return None


def read_nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The `nameserver` addresses of resolv.conf(5), in order; none if it cannot be read.

    Read here rather than by dns.resolver, which imports dns.query and with
    it (dnspython 2.3) requests: about 7 MiB of the daemon's memory.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    return found


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def verify_servers(config: Config) -> list[dns_actions.Server]:
    """Where the self-check asks: the configured verify servers, else the zone's NS set."""

    if config.dns.verify_servers:
        return [dns_actions.Server(e.host, e.port) for e in config.dns.verify_servers]
    if config.dns.server is None:
        return []
    primary = dns_actions.Server(config.dns.server.host, config.dns.server.port)
    if config.dns.zone is None:
        return [primary]
    return dns_actions.find_verify_servers(config.dns.zone, primary)

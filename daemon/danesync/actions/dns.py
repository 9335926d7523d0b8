"""DNS side effects: ask authoritative servers for TLSA records, and change
them with RFC 2136 dynamic updates signed with TSIG.

Queries go straight to one server, without recursion, so they show what that
server publishes now, not what some cache remembers. Updates add and delete
single records, never whole RRsets, so records danesync did not publish stay
untouched; each update carries, per owner name, the RRset as danesync just
read it as a prerequisite, so a concurrent change makes the server refuse the
update (NXRRSET/YXRRSET) instead of being clobbered; danesync then reads again
and retries.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from danesync.actions.dnswire import DEFAULT_PORT as DEFAULT_PORT  # noqa: PLC0414
from danesync.actions.dnswire import Server as Server  # noqa: PLC0414
from danesync.actions.dnswire import Unreachable, exchange, tsig_failure
from danesync.errors import DnsError
from danesync.tlsa import TlsaRecord, absolute_name
from danesync.tsigkey import TsigKey


@dataclass(frozen=True)
class SoaAnswer:
    """What one server said to a (possibly TSIG-signed) SOA query for a zone."""

    server: Server
    zone: str
    rcode: str  # "NOERROR", "REFUSED", ... or the TSIG error ("BADSIG", "BADKEY")
    authoritative: bool  # the AA flag
    has_soa: bool  # the answer holds the zone's own SOA (so the name is a zone apex)
    signed: bool  # the answer carried a TSIG that verified with the key
    enclosing: str | None = None  # the SOA owner in the authority section (NODATA)


def query_soa(
    server: Server, zone: str, key: TsigKey | None = None, timeout: float = 3.0
) -> SoaAnswer:
    """Ask `server` for the SOA of `zone`, without recursion, signed with
    `key` if given (over TCP, so any answer or TSIG error comes back whole).
    TSIG errors are returned as the rcode, not raised; a server that does not
    answer raises DnsError."""
    apex = dns.name.from_text(absolute_name(zone))
    query = dns.message.make_query(apex, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    try:
        if key is None:
            response = exchange(server, query, timeout, tcp=True)
        else:
            query.use_tsig(key.to_dnspython())
            response = exchange(server, query, timeout, tcp=True, signed=True)
    except Unreachable as error:
        raise DnsError(f"{server}: {error.detail}") from error
    except dns.exception.DNSException as error:
        tsig = tsig_failure(error) or "BADRESPONSE"
        return SoaAnswer(server, apex.to_text(), tsig, False, False, False)
    soa = response.get_rrset(response.answer, apex, dns.rdataclass.IN, dns.rdatatype.SOA)
    enclosing = None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            enclosing = rrset.name.to_text()
    return SoaAnswer(
        server,
        apex.to_text(),
        dns.rcode.to_text(response.rcode()),
        bool(response.flags & dns.flags.AA),
        soa is not None,
        key is not None and response.had_tsig,
        enclosing,
    )


def _record(name: str, rdata: dns.rdata.Rdata) -> TlsaRecord:
    return TlsaRecord(
        absolute_name(name),
        int(rdata.usage),  # type: ignore[attr-defined]
        int(rdata.selector),  # type: ignore[attr-defined]
        int(rdata.mtype),  # type: ignore[attr-defined]
        bytes(rdata.cert).hex(),  # type: ignore[attr-defined]
    )


def _rdata(record: TlsaRecord) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, record.rdata)


def _query_tlsa(server: Server, name: str, timeout: float, *, tcp: bool) -> frozenset[TlsaRecord]:
    return _query_tlsa_rrset(server, name, timeout, tcp=tcp)[0]


def _query_tlsa_rrset(
    server: Server, name: str, timeout: float, *, tcp: bool
) -> tuple[frozenset[TlsaRecord], int]:
    """The records at `name` and the TTL the server serves them with (0 if none)."""
    owner = dns.name.from_text(absolute_name(name))
    query = dns.message.make_query(owner, dns.rdatatype.TLSA)
    query.flags &= ~dns.flags.RD  # ask the server itself, never a cache behind it
    response = exchange(server, query, timeout, tcp=tcp)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return frozenset(), 0
    if rcode != dns.rcode.NOERROR:
        text = dns.rcode.to_text(rcode)
        raise DnsError(f"{server}: answered {text} to the TLSA query for {owner}")
    if not response.flags & dns.flags.AA:
        raise DnsError(
            f"{server}: is not authoritative for {owner} (answer without the AA flag); "
            "list only the zone's own name servers"
        )
    records: set[TlsaRecord] = set()
    ttl = 0
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == dns.rdatatype.TLSA:
            records.update(_record(owner.to_text(), rdata) for rdata in rrset)
            ttl = max(ttl, int(rrset.ttl))
    return frozenset(records), ttl


def query_tlsa(server: Server, name: str, timeout: float = 3.0) -> frozenset[TlsaRecord]:
    """The TLSA records one authoritative server has at `name` (UDP, TCP if
    truncated, no recursion). No records (NXDOMAIN, or NOERROR without an
    answer) is the empty set; anything else raises DnsError naming the server."""
    return _query_tlsa(server, name, timeout, tcp=False)


@dataclass(frozen=True)
class Visibility:
    """What each server returned for each owner name.

    `answers[name][server]` is the set of records that server has at that
    name; a server that could not be asked is in `errors[name][server]`
    instead, and then nothing at that name counts as visible.
    """

    servers: tuple[Server, ...]
    names: frozenset[str]
    answers: Mapping[str, Mapping[Server, frozenset[TlsaRecord]]] = field(default_factory=dict)
    errors: Mapping[str, Mapping[Server, str]] = field(default_factory=dict)
    # The TTL each server answered each RRset with (0 for no records).
    ttls: Mapping[str, Mapping[Server, int]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every server answered for every name."""
        return not any(self.errors.values())

    def on_server(self, server: Server, name: str) -> frozenset[TlsaRecord]:
        """What `server` returned at `name` (empty if it could not be asked)."""
        return self.answers.get(absolute_name(name), {}).get(server, frozenset())

    def visible_everywhere(self, record: TlsaRecord) -> bool:
        """Every server returned `record`. With no servers, nothing is visible."""
        return not self.missing_from(record) and bool(self.servers)

    def missing_from(self, record: TlsaRecord) -> tuple[Server, ...]:
        """The servers that did not return `record` (or could not be asked)."""
        per_server = self.answers.get(record.name, {})
        return tuple(s for s in self.servers if record not in per_server.get(s, frozenset()))

    def visible_records(self, name: str | None = None) -> frozenset[TlsaRecord]:
        """The records (at `name`, or at every name) that every server returned."""
        names = self.answers if name is None else [absolute_name(name)]
        found: set[TlsaRecord] = set()
        for owner in names:
            for records in self.answers.get(owner, {}).values():
                found.update(r for r in records if self.visible_everywhere(r))
        return frozenset(found)

    def problems(self) -> tuple[str, ...]:
        """One line per server that could not be asked, for logs."""
        lines: dict[str, None] = {}
        for name in sorted(self.errors):
            for server, reason in sorted(self.errors[name].items()):
                lines[f"{server}: {name}: {reason}"] = None
        return tuple(lines)


def query_visibility(
    servers: Sequence[Server], names: Iterable[str], timeout: float = 3.0
) -> Visibility:
    """Ask every server for the TLSA records at every name, servers in
    parallel. Failures do not raise: they are recorded in `errors`, and after
    a server fails to answer at all, its remaining names are not asked (so a
    dead server costs one timeout, not one per name)."""
    unique_servers = tuple(dict.fromkeys(servers))
    wanted = sorted({absolute_name(n) for n in names})

    def ask(
        server: Server,
    ) -> tuple[dict[str, tuple[frozenset[TlsaRecord], int]], dict[str, str]]:
        found: dict[str, tuple[frozenset[TlsaRecord], int]] = {}
        failed: dict[str, str] = {}
        down: str | None = None
        for name in wanted:
            if down is not None:
                failed[name] = down
                continue
            try:
                found[name] = _query_tlsa_rrset(server, name, timeout, tcp=False)
            except Unreachable as error:
                down = failed[name] = error.detail
            except DnsError as error:
                failed[name] = str(error)
        return found, failed

    answers: dict[str, dict[Server, frozenset[TlsaRecord]]] = {n: {} for n in wanted}
    ttls: dict[str, dict[Server, int]] = {n: {} for n in wanted}
    errors: dict[str, dict[Server, str]] = {n: {} for n in wanted}
    if unique_servers and wanted:
        with ThreadPoolExecutor(max_workers=min(8, len(unique_servers))) as pool:
            results = list(pool.map(ask, unique_servers))
        for server, (found, failed) in zip(unique_servers, results, strict=True):
            for name, (records, ttl) in found.items():
                answers[name][server] = records
                ttls[name][server] = ttl
            for name, reason in failed.items():
                errors[name][server] = reason
    return Visibility(
        unique_servers,
        frozenset(wanted),
        {n: a for n, a in answers.items()},
        {n: e for n, e in errors.items() if e},
        ttls,
    )


# -- the zone's name servers ---------------------------------------------


def _authoritative_addresses(primary: Server, host: str, timeout: float) -> list[str]:
    """A, else AAAA, addresses of `host` as the primary has them; [] if it has none."""
    owner = dns.name.from_text(host)
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        query = dns.message.make_query(owner, rdtype)
        query.flags &= ~dns.flags.RD
        response = exchange(primary, query, timeout, tcp=False)
        if response.rcode() != dns.rcode.NOERROR or not response.flags & dns.flags.AA:
            return []  # not the primary's name: ask the system resolver
        rrset = response.get_rrset(response.answer, owner, dns.rdataclass.IN, rdtype)
        if rrset:
            return sorted(str(rdata) for rdata in rrset)
    return []


def _system_addresses(host: str) -> list[str]:
    """A, else AAAA, addresses of `host` from the system resolver."""
    try:
        infos = socket.getaddrinfo(host.rstrip("."), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    v4 = sorted({str(i[4][0]) for i in infos if i[0] == socket.AF_INET})
    v6 = sorted({str(i[4][0]) for i in infos if i[0] == socket.AF_INET6})
    return v4 or v6


def find_verify_servers(zone: str, primary: Server, timeout: float = 3.0) -> list[Server]:
    """The default `verify_servers`: the primary, then every address of the
    zone's NS set (as the primary publishes it), on the primary's port.

    NS host names are resolved by the primary first, then by the system
    resolver; one address family per name (IPv4 if it has any), since each
    address of a name is the same server. A name that resolves nowhere
    raises DnsError: skipping it could declare records visible too early.
    """
    apex = dns.name.from_text(absolute_name(zone))
    query = dns.message.make_query(apex, dns.rdatatype.NS)
    query.flags &= ~dns.flags.RD
    try:
        response = exchange(primary, query, timeout, tcp=False)
    except Unreachable as error:
        raise DnsError(f"cannot ask {primary} for the NS set of {apex}: {error.detail}") from error
    if response.rcode() != dns.rcode.NOERROR or not response.flags & dns.flags.AA:
        raise DnsError(
            f"{primary} is not authoritative for zone {apex} "
            f"(answered {dns.rcode.to_text(response.rcode())} to its NS query)"
        )
    rrset = response.get_rrset(response.answer, apex, dns.rdataclass.IN, dns.rdatatype.NS)
    if not rrset:
        raise DnsError(f"{primary} has no NS records for zone {apex}")
    servers: dict[Server, None] = {primary: None}
    for target in sorted(str(rdata.target) for rdata in rrset):
        try:
            addresses = _authoritative_addresses(primary, target, timeout)
        except Unreachable as error:
            raise DnsError(
                f"cannot ask {primary} for the address of {target}: {error.detail}"
            ) from error
        addresses = addresses or _system_addresses(target)
        if not addresses:
            raise DnsError(
                f"name server {target} of zone {apex} has no address; "
                "fix the NS set, or list the servers in dns.verify_servers"
            )
        for address in addresses:
            servers.setdefault(Server(address, primary.port), None)
    return list(servers)


def find_zone(primary: Server, name: str, timeout: float = 3.0) -> str:
    """The zone `primary` holds `name` in: the owner of the SOA record in its
    answer or authority section (an SOA query, no recursion). Raises DnsError."""
    owner = dns.name.from_text(absolute_name(name))
    query = dns.message.make_query(owner, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    try:
        response = exchange(primary, query, timeout, tcp=False)
    except Unreachable as error:
        raise DnsError(f"cannot ask {primary} for the zone of {owner}: {error.detail}") from error
    if response.flags & dns.flags.AA:
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA and owner.is_subdomain(rrset.name):
                    return str(rrset.name.to_text())
    raise DnsError(
        f"{primary} is not authoritative for {owner} (no SOA in its answer): "
        "set dns.zone or dns.verify_servers"
    )


# The RFC 2136 half lives in dnsupdate.py; its names stay importable from here.
# (Import them from this module: dnsupdate imports this one first.)
from danesync.actions.dnsupdate import TRANSIENT_FAILURES as TRANSIENT_FAILURES  # noqa: E402, PLC0414
from danesync.actions.dnsupdate import RetryPolicy as RetryPolicy  # noqa: E402, PLC0414
from danesync.actions.dnsupdate import UpdateResult as UpdateResult  # noqa: E402, PLC0414
from danesync.actions.dnsupdate import build_tlsa_update as build_tlsa_update  # noqa: E402, PLC0414
from danesync.actions.dnsupdate import probe_update_policy as probe_update_policy  # noqa: E402, PLC0414
from danesync.actions.dnsupdate import send_tlsa_update as send_tlsa_update  # noqa: E402, PLC0414

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

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from danesync.config import parse_endpoint
from danesync.errors import DnsError, DnsUpdateError
from danesync.tlsa import TlsaRecord, absolute_name
from danesync.tsigkey import TsigKey

DEFAULT_PORT = 53


@dataclass(frozen=True, order=True)
class Server:
    """A DNS server to talk to directly: an address (or host name) and a port."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_PORT) -> Server:
        """``192.0.2.1``, ``192.0.2.1:53``, ``[2001:db8::1]:53``, ``2001:db8::1``,
        ``ns.example.com:5353``. Raises ValueError with the reason."""
        endpoint = parse_endpoint(text.strip(), default_port)  # the config's own parser
        return cls(endpoint.host, endpoint.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# -- queries -------------------------------------------------------------


class _Unreachable(DnsError):
    """The server did not answer (timeout, refused connection): worth retrying."""

    def __init__(self, server: Server, rcode: str, detail: str) -> None:
        self.server = server
        self.rcode = rcode
        self.detail = detail
        super().__init__(f"{server}: {detail}")


def _addresses(server: Server) -> list[str]:
    """The IP addresses to send to, in the resolver's order; a host name is
    resolved by the system (Debian's /etc/hosts makes ``localhost`` ::1 first,
    then 127.0.0.1: a server listening on one of them only is still reached)."""
    try:
        return [str(ipaddress.ip_address(server.host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(server.host, server.port, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise _Unreachable(
            server, "UNRESOLVED", f"cannot resolve host name {server.host}: {error}"
        ) from error
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _exchange(
    server: Server,
    message: dns.message.Message,
    timeout: float,
    *,
    tcp: bool,
    maybe_delivered: Callable[[], None] = lambda: None,
) -> dns.message.Message:
    """Send one message to the first of the server's addresses that answers
    (each gets `timeout`). `maybe_delivered` is called when an address that
    is then given up on may have received the message (a timeout, a
    connection closed without an answer): an update may have been applied
    there. Every address failing -> _Unreachable naming each."""
    addresses = _addresses(server)
    failures: list[_Unreachable] = []
    for address in addresses:
        try:
            return _exchange_at(server, address, message, timeout, tcp=tcp)
        except _Unreachable as error:
            failures.append(error)
            if address != addresses[-1] and not isinstance(error.__cause__, ConnectionRefusedError):
                maybe_delivered()
    if len(failures) == 1:
        raise failures[0]
    detail = "; ".join(f"{a}: {f.detail}" for a, f in zip(addresses, failures, strict=True))
    raise _Unreachable(server, failures[-1].rcode, detail) from failures[-1]


def _exchange_at(
    server: Server, where: str, message: dns.message.Message, timeout: float, *, tcp: bool
) -> dns.message.Message:
    """Send one message to one address and return the answer; network failures -> _Unreachable."""
    try:
        if tcp:
            return dns.query.tcp(message, where, timeout=timeout, port=server.port)
        response, _ = dns.query.udp_with_fallback(message, where, timeout=timeout, port=server.port)
        return response
    except dns.exception.Timeout as error:
        raise _Unreachable(server, "TIMEOUT", f"no answer within {timeout:g} s") from error
    except ConnectionRefusedError as error:
        raise _Unreachable(
            server, "UNREACHABLE", "connection refused (is the name server running?)"
        ) from error
    except EOFError as error:
        raise _Unreachable(
            server, "UNREACHABLE", "the server closed the connection without answering"
        ) from error
    except OSError as error:
        raise _Unreachable(server, "UNREACHABLE", error.strerror or str(error)) from error
    except dns.exception.DNSException as error:
        if _tsig_failure(error) is not None:
            raise  # the update maps these to BADSIG, BADKEY, ...
        raise DnsError(f"{server}: unusable answer: {error}") from error


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
    owner = dns.name.from_text(absolute_name(name))
    query = dns.message.make_query(owner, dns.rdatatype.TLSA)
    query.flags &= ~dns.flags.RD  # ask the server itself, never a cache behind it
    response = _exchange(server, query, timeout, tcp=tcp)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return frozenset()
    if rcode != dns.rcode.NOERROR:
        text = dns.rcode.to_text(rcode)
        raise DnsError(f"{server}: answered {text} to the TLSA query for {owner}")
    if not response.flags & dns.flags.AA:
        raise DnsError(
            f"{server}: is not authoritative for {owner} (answer without the AA flag); "
            "list only the zone's own name servers"
        )
    records: set[TlsaRecord] = set()
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == dns.rdatatype.TLSA:
            records.update(_record(owner.to_text(), rdata) for rdata in rrset)
    return frozenset(records)


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

    def ask(server: Server) -> tuple[dict[str, frozenset[TlsaRecord]], dict[str, str]]:
        found: dict[str, frozenset[TlsaRecord]] = {}
        failed: dict[str, str] = {}
        down: str | None = None
        for name in wanted:
            if down is not None:
                failed[name] = down
                continue
            try:
                found[name] = query_tlsa(server, name, timeout)
            except _Unreachable as error:
                down = failed[name] = error.detail
            except DnsError as error:
                failed[name] = str(error)
        return found, failed

    answers: dict[str, dict[Server, frozenset[TlsaRecord]]] = {n: {} for n in wanted}
    errors: dict[str, dict[Server, str]] = {n: {} for n in wanted}
    if unique_servers and wanted:
        with ThreadPoolExecutor(max_workers=min(8, len(unique_servers))) as pool:
            results = list(pool.map(ask, unique_servers))
        for server, (found, failed) in zip(unique_servers, results, strict=True):
            for name, records in found.items():
                answers[name][server] = records
            for name, reason in failed.items():
                errors[name][server] = reason
    return Visibility(
        unique_servers,
        frozenset(wanted),
        {n: a for n, a in answers.items()},
        {n: e for n, e in errors.items() if e},
    )


# -- the zone's name servers ---------------------------------------------


def _authoritative_addresses(primary: Server, host: str, timeout: float) -> list[str]:
    """A, else AAAA, addresses of `host` as the primary has them; [] if it has none."""
    owner = dns.name.from_text(host)
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        query = dns.message.make_query(owner, rdtype)
        query.flags &= ~dns.flags.RD
        response = _exchange(primary, query, timeout, tcp=False)
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
        response = _exchange(primary, query, timeout, tcp=False)
    except _Unreachable as error:
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
        except _Unreachable as error:
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


# -- RFC 2136 updates ------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard `send_tlsa_update` tries before it gives up.

    `attempts` counts sends for transient failures (timeout, refused
    connection, SERVFAIL), with exponential backoff between them;
    `conflicts` counts re-reads after a concurrent change.
    """

    attempts: int = 4
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    conflicts: int = 5

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure (1, 2, ...)."""
        return float(min(self.max_delay, self.first_delay * self.factor ** (failures - 1)))


@dataclass(frozen=True)
class UpdateResult:
    """What one `send_tlsa_update` changed (records already right are skipped)."""

    added: frozenset[TlsaRecord]
    deleted: frozenset[TlsaRecord]
    sends: int  # update messages sent, retries included
    conflicts: int  # concurrent changes detected (failed prerequisites)
    retries: int = 0  # transient failures (timeout, refused connection, SERVFAIL) retried


_TRANSIENT_RCODES = {dns.rcode.SERVFAIL}
# DnsUpdateError.rcode values that say "try again later" rather than "fix something".
TRANSIENT_FAILURES = frozenset({"TIMEOUT", "UNREACHABLE", "UNRESOLVED", "SERVFAIL"})
_CONFLICT_RCODES = {dns.rcode.NXRRSET, dns.rcode.YXRRSET}


def _update_failure(
    zone: str,
    rcode: str,
    primary: Server,
    key: TsigKey | None,
    names: Sequence[str],
) -> DnsUpdateError:
    """The operator-facing explanation of a refused update."""
    who = f'TSIG key "{key.name}"' if key else "unsigned updates from this host"
    key_name = key.name if key else ""
    algorithm = key.algorithm if key else ""
    at = ", ".join(names)
    details = {
        "REFUSED": (
            f"{primary} refused the update: its update-policy (or allow-update) does not "
            f"allow {who} to change {at} TLSA"
        ),
        "NOTAUTH": (
            f"{primary} is not authoritative for zone {zone}, or does not accept updates "
            "for it: check dns.server and dns.zone"
        ),
        "NOTZONE": f"{primary} says {at} is not in zone {zone}: check dns.zone and tlsa",
        "NOTIMP": f"{primary} does not implement dynamic updates (RFC 2136) for zone {zone}",
        "FORMERR": f"{primary} could not parse the update message",
        "SERVFAIL": (
            f"{primary} failed to apply the update (see its log: the zone may not have "
            "loaded, or its journal may not be writable)"
        ),
        "BADSIG": (
            f'{primary} could not verify the signature (bad signature) of TSIG key "{key_name}": '
            "the secret or algorithm in the key file differs from the server's copy of the key"
        ),
        "BADKEY": (
            f'{primary} does not know TSIG key "{key_name}" with algorithm {algorithm}: '
            "the key name or algorithm differs from the server's"
        ),
        "BADTIME": (
            f"{primary} rejected the TSIG signature because the clocks of this host and the "
            "server differ by more than 5 minutes: check time synchronisation on both"
        ),
        "BADTRUNC": f"{primary} rejected the truncated TSIG signature",
        "BADRESPONSE": (
            f"the answer from {primary} carries a TSIG signature that does not verify "
            "with the key: is something between this host and the server rewriting it?"
        ),
        "NOSIGNATURE": f"the answer from {primary} is not signed although the update was",
    }
    detail = details.get(rcode, f"{primary} answered {rcode} to the update of {at} TLSA")
    return DnsUpdateError(zone, rcode, detail)


def _tsig_failure(error: Exception) -> str | None:
    """The TSIG error name for dnspython's TSIG exceptions, else None."""
    kinds: tuple[tuple[type[Exception], str], ...] = (
        (dns.tsig.PeerBadSignature, "BADSIG"),
        (dns.tsig.PeerBadKey, "BADKEY"),
        (dns.tsig.PeerBadTime, "BADTIME"),
        (dns.tsig.PeerBadTruncation, "BADTRUNC"),
        (dns.tsig.BadSignature, "BADRESPONSE"),
        (dns.tsig.BadTime, "BADTIME"),
        (dns.tsig.BadKey, "BADRESPONSE"),
        (dns.message.UnknownTSIGKey, "BADRESPONSE"),
    )
    for kind, name in kinds:
        if isinstance(error, kind):
            return name
    return None


def _check_zone(zone: str, names: Iterable[str]) -> None:
    origin = dns.name.from_text(absolute_name(zone))
    outside = sorted(n for n in names if not dns.name.from_text(n).is_subdomain(origin))
    if outside:
        raise DnsUpdateError(
            zone,
            "NOTZONE",
            f"{', '.join(outside)} is not in zone {origin}: check dns.zone and the tlsa names",
        )


def build_tlsa_update(
    zone: str,
    current: Mapping[str, frozenset[TlsaRecord]],
    add: Iterable[TlsaRecord],
    delete: Iterable[TlsaRecord],
    ttl: int,
    key: TsigKey | None,
) -> dns.update.UpdateMessage:
    """The RFC 2136 message: per owner name it changes, the prerequisite
    "the RRset is exactly `current[name]`" (or "does not exist"), then the
    single-record deletions and additions."""
    origin = dns.name.from_text(absolute_name(zone))
    if key is None:
        message = dns.update.UpdateMessage(origin)
    else:
        message = dns.update.UpdateMessage(origin, keyring=key.to_dnspython())
    adds, deletes = sorted(set(add)), sorted(set(delete))
    for name in sorted({r.name for r in adds} | {r.name for r in deletes}):
        owner = dns.name.from_text(name)
        existing = sorted(current.get(name, frozenset()))
        if existing:
            message.present(owner, *(_rdata(r) for r in existing))
        else:
            message.absent(owner, dns.rdatatype.TLSA)
    for record in deletes:
        message.delete(dns.name.from_text(record.name), _rdata(record))
    for record in adds:
        message.add(dns.name.from_text(record.name), ttl, _rdata(record))
    return message


def send_tlsa_update(
    primary: Server,
    zone: str,
    key: TsigKey | None,
    add: Iterable[TlsaRecord],
    delete: Iterable[TlsaRecord],
    ttl: int,
    timeout: float = 5.0,
    *,
    expected: Mapping[str, frozenset[TlsaRecord]] | None = None,
    retry: RetryPolicy = RetryPolicy(),  # frozen, so sharing one is safe
    sleep: Callable[[float], None] = time.sleep,
) -> UpdateResult:
    """Add and delete single TLSA records at the primary, over TCP.

    Records already present are not added again, absent ones not deleted;
    other records at the same names are never touched (though an RRset has
    one TTL: adding a record sets it to `ttl`). `expected` is the
    caller's view of the RRsets (as just queried): it spares one read, and if
    it is stale the prerequisite fails and the RRsets are read again.
    Transient failures are retried `retry.attempts` times with exponential
    backoff through `sleep`. Everything else raises DnsUpdateError, whose
    message tells the operator what to fix.
    """
    adds, deletes = frozenset(add), frozenset(delete)
    if adds & deletes:
        raise ValueError(f"records both added and deleted: {sorted(adds & deletes)}")
    if not 0 <= ttl <= 2**31 - 1:
        raise ValueError(f"TTL {ttl} is out of range")
    names = sorted({r.name for r in adds | deletes})
    if not names:
        return UpdateResult(frozenset(), frozenset(), 0, 0)
    _check_zone(zone, names)

    current: dict[str, frozenset[TlsaRecord]] | None = None
    if expected is not None:
        current = {n: frozenset(expected.get(n, frozenset())) for n in names}
    sends = failures = conflicts = 0
    # Changes sent without an answer: if the re-read shows them made, they are
    # ours (the caller must know, to retire exactly what danesync published).
    unsure_adds: set[TlsaRecord] = set()
    unsure_deletes: set[TlsaRecord] = set()
    while True:
        to_add = to_delete = frozenset[TlsaRecord]()
        try:
            if current is None:
                current = {n: _query_tlsa(primary, n, timeout, tcp=True) for n in names}
            now = current
            done_adds = frozenset(r for r in unsure_adds if r in now[r.name])
            done_deletes = frozenset(r for r in unsure_deletes if r not in now[r.name])
            to_add = frozenset(r for r in adds if r not in now[r.name])
            to_delete = frozenset(r for r in deletes if r in now[r.name])
            if not to_add and not to_delete:
                return UpdateResult(done_adds, done_deletes, sends, conflicts, failures)
            message = build_tlsa_update(zone, now, to_add, to_delete, ttl, key)
            sends += 1

            def unsure(
                adds: frozenset[TlsaRecord] = to_add, deletes: frozenset[TlsaRecord] = to_delete
            ) -> None:
                unsure_adds.update(adds)
                unsure_deletes.update(deletes)

            response = _exchange(primary, message, timeout, tcp=True, maybe_delivered=unsure)
        except _Unreachable as error:
            unsure_adds.update(to_add)
            unsure_deletes.update(to_delete)
            failures += 1
            if failures >= retry.attempts:
                raise DnsUpdateError(
                    zone, error.rcode, f"{primary}: {error.detail} ({failures} attempts)"
                ) from error
            sleep(retry.delay(failures))
            current = None  # the update may have been applied: read again
            continue
        except dns.exception.DNSException as error:
            tsig = _tsig_failure(error) or "BADRESPONSE"
            raise _update_failure(zone, tsig, primary, key, names) from error
        except DnsError as error:
            # Reading the current RRsets failed, or the answer made no sense.
            raise DnsUpdateError(zone, "FAILED", str(error)) from error

        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            if key is not None and not response.had_tsig:
                raise _update_failure(zone, "NOSIGNATURE", primary, key, names)
            return UpdateResult(
                to_add | done_adds, to_delete | done_deletes, sends, conflicts, failures
            )
        if rcode in _CONFLICT_RCODES:
            conflicts += 1
            if conflicts >= retry.conflicts:
                raise DnsUpdateError(
                    zone,
                    dns.rcode.to_text(rcode),
                    f"the TLSA records at {', '.join(names)} kept changing while danesync "
                    f"was updating them ({conflicts} attempts); it will try again on the "
                    "next pass",
                )
            current = None
            continue
        failure = _update_failure(zone, dns.rcode.to_text(rcode), primary, key, names)
        if rcode not in _TRANSIENT_RCODES:
            raise failure
        failures += 1
        if failures >= retry.attempts:
            raise DnsUpdateError(zone, failure.rcode, f"{failure.detail} ({failures} attempts)")
        sleep(retry.delay(failures))
        current = None

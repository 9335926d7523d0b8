"""RFC 2136 updates of TLSA records, signed with TSIG (the second half of
danesync.actions.dns, which re-exports these names: import them from there).

Each update carries, per owner name, the RRset as danesync just read it as a
prerequisite, so a concurrent change makes the server refuse the update
(NXRRSET/YXRRSET) instead of being clobbered; danesync then reads again and
retries. Refusals are mapped to their real cause on BIND, Knot and PowerDNS,
which answer the same fault differently (see `_update_failure`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
import dns.update

from danesync.actions.dns import (
    Server,
    SoaAnswer,
    _query_tlsa,
    _rdata,
    query_soa,
)
from danesync.actions.dnswire import Unreachable, exchange, tsig_failure
from danesync.errors import DnsError, DnsUpdateError
from danesync.tlsa import TlsaRecord, absolute_name
from danesync.tsigkey import TsigKey

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
        "IGNORED": (
            f"{primary} answered NOERROR but did not change {at} TLSA: its update policy "
            f"dropped the records (a PowerDNS lua-dnsupdate-policy-script does so silently); "
            f"allow {who} to change {at} TLSA"
        ),
    }
    if rcode.startswith("ACL-"):
        answered = {
            "BADKEY": "NOTAUTH with TSIG error BADKEY",
            "NOTAUTH": "NOTAUTH without a TSIG signature",
        }.get(rcode.removeprefix("ACL-"), rcode.removeprefix("ACL-") + " without a TSIG signature")
        detail = (
            f"{primary} knows {who} (a query signed with it verifies) but answered the update "
            f"{answered}: its update ACL or policy does not allow this key to change {at} TLSA "
            "(that is how Knot refuses an update its ACL denies; its acl needs action: update, "
            "update-type: [TLSA], update-owner: name, update-owner-name: the names)"
        )
        return DnsUpdateError(zone, "REFUSED", detail)
    if rcode.startswith("UNSIGNED-"):
        answered = rcode.removeprefix("UNSIGNED-")
        detail = (
            f"{primary} serves zone {zone} but answered the update {answered} without a TSIG "
            f'signature: it did not accept TSIG key "{key_name}" ({algorithm}): the secret, '
            "name or algorithm in the key file differs from the server's copy (PowerDNS answers "
            "a wrong secret and an unknown key so, Knot 3.4 an unknown key; the log says which)"
        )
        return DnsUpdateError(zone, "BADSIG", detail)
    detail = details.get(rcode, f"{primary} answered {rcode} to the update of {at} TLSA")
    if rcode == "IGNORED":
        return DnsUpdateError(zone, "REFUSED", detail)
    return DnsUpdateError(zone, rcode, detail)


def _diagnose_refusal(
    zone: str,
    answered: str,
    primary: Server,
    key: TsigKey,
    names: Sequence[str],
    timeout: float,
) -> DnsUpdateError:
    """A signed update refused with TSIG error BADKEY, or answered without a
    signature. The servers mean different things by it: an unknown key (BIND,
    Knot), a wrong secret or unknown key (PowerDNS, unsigned), an ACL denial
    (Knot 3.2: NOTAUTH + BADKEY; Knot 3.4: NOTAUTH unsigned), a zone it does not
    serve (Knot, unsigned NOTAUTH). Two SOA queries tell which: unsigned (does
    it serve the zone?), then signed (does it know the key?)."""
    try:
        plain = query_soa(primary, zone, None, timeout)
        if not (plain.rcode == "NOERROR" and plain.authoritative and plain.has_soa):
            return _update_failure(zone, "NOTAUTH", primary, key, names)
        signed: SoaAnswer | None = query_soa(primary, zone, key, timeout)
    except DnsError:
        signed = None  # cannot tell: report what the update said
    if signed is not None and signed.signed:
        return _update_failure(zone, "ACL-" + answered, primary, key, names)
    if signed is not None and signed.rcode in ("BADKEY", "BADSIG", "BADTIME"):
        return _update_failure(zone, signed.rcode, primary, key, names)
    if answered == "BADKEY":
        return _update_failure(zone, "BADKEY", primary, key, names)
    return _update_failure(zone, "UNSIGNED-" + answered, primary, key, names)


def _applied(
    primary: Server,
    added: frozenset[TlsaRecord],
    deleted: frozenset[TlsaRecord],
    names: Sequence[str],
    timeout: float,
) -> bool:
    """After a NOERROR: is any of the change visible on the primary? (A
    concurrent change may undo part of it, so any effect counts.)"""
    if not added and not deleted:
        return True
    try:
        now = {n: _query_tlsa(primary, n, timeout, tcp=True) for n in names}
    except DnsError:
        return True  # cannot tell; the next pass reads again
    return any(r in now[r.name] for r in added) or any(r not in now[r.name] for r in deleted)


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

            response = exchange(
                primary, message, timeout, tcp=True, signed=key is not None, maybe_delivered=unsure
            )
        except Unreachable as error:
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
            tsig = tsig_failure(error) or "BADRESPONSE"
            if tsig == "BADKEY" and key is not None:
                # An unknown key, or Knot 3.2's answer to an update its ACL denies.
                raise _diagnose_refusal(zone, tsig, primary, key, names, timeout) from error
            raise _update_failure(zone, tsig, primary, key, names) from error
        except DnsError as error:
            # Reading the current RRsets failed, or the answer made no sense.
            raise DnsUpdateError(zone, "FAILED", str(error)) from error

        rcode = response.rcode()
        if key is not None and not response.had_tsig:
            answered = dns.rcode.to_text(rcode)
            raise _diagnose_refusal(zone, answered, primary, key, names, timeout)
        if rcode == dns.rcode.NOERROR:
            if not _applied(primary, to_add, to_delete, names, timeout):
                # PowerDNS's Lua update policy drops refused records and says NOERROR.
                raise _update_failure(zone, "IGNORED", primary, key, names)
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


def probe_update_policy(
    primary: Server, zone: str, key: TsigKey, name: str, timeout: float = 5.0
) -> str:
    """Ask whether `key` may change `name` TLSA, without changing anything.

    The update deletes a TLSA record that does not exist (random data), under
    the prerequisite "a random name under the zone is in use", which cannot
    hold: every server refuses it, and none could change anything even if it
    did not. What it answers tells whether its policy allowed the change:
    BIND and Knot check the policy (update-policy, ACL) before prerequisites,
    so NXDOMAIN means allowed and REFUSED (BIND) or NOTAUTH + BADKEY (Knot)
    denied; PowerDNS checks prerequisites first, so there NXDOMAIN proves only
    that the key may update the zone. Returns the rcode ("NXDOMAIN",
    "REFUSED", ...), the TSIG error ("BADKEY", "BADSIG"), or "UNSIGNED-<rcode>"
    for an answer without a signature; raises DnsError if there is no answer.
    """
    origin = dns.name.from_text(absolute_name(zone))
    message = dns.update.UpdateMessage(origin, keyring=key.to_dnspython())
    nowhere = dns.name.from_text(f"danesync-check-{secrets.token_hex(8)}", origin)
    message.present(nowhere)  # "name is in use": it is not
    nothing = TlsaRecord(absolute_name(name), 3, 1, 1, secrets.token_hex(32))
    message.delete(dns.name.from_text(nothing.name), _rdata(nothing))
    try:
        response = exchange(primary, message, timeout, tcp=True, signed=True)
    except Unreachable as error:
        raise DnsError(f"{primary}: {error.detail}") from error
    except dns.exception.DNSException as error:
        return tsig_failure(error) or "BADRESPONSE"
    rcode = dns.rcode.to_text(response.rcode())
    return rcode if response.had_tsig else f"UNSIGNED-{rcode}"

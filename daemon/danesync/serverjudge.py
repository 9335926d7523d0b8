"""Pure judgement of the DNS servers' answers to `danesync check` (issue 13).

The SOA at `dns.server` (TSIG key and zone proven), the verify servers, the
update policy, RRSIGs and a validating resolver's AD bit: each answer, as
danesync.dnscheck's thin queries got it, becomes one `Finding`. The TLSA
RRsets themselves are judged in danesync.dnsjudge.
"""

from __future__ import annotations

from collections.abc import Sequence

from danesync.actions.dns import Server, SoaAnswer
from danesync.dnsjudge import Finding
from danesync.tlsa import absolute_name
from danesync.tsigkey import TsigKey


def judge_primary_soa(zone: str, answer: SoaAnswer, key: TsigKey | None) -> list[Finding]:
    """The signed SOA query at `dns.server`: key proven, zone is a zone there."""
    server, apex = answer.server, absolute_name(zone)
    who = f'TSIG key "{key.name}"' if key else "an unsigned query"
    if key is not None and answer.rcode in ("BADSIG", "BADKEY", "BADTIME"):
        reasons = {
            "BADSIG": "the secret or algorithm in the key file differs from the server's copy",
            "BADKEY": "the server does not know this key name and algorithm",
            "BADTIME": "the clocks of this host and the server differ by more than 5 minutes",
        }
        return [
            Finding("error", f"{server} rejects {who} ({answer.rcode}): {reasons[answer.rcode]}")
        ]
    if key is not None and not answer.signed:
        if answer.rcode == "NOERROR" or answer.has_soa:
            detail = "its answer is not signed"
        else:
            detail = f"it answered {answer.rcode} without a TSIG signature"
        return [
            Finding(
                "error",
                f"{server} did not accept {who} for zone {apex}: {detail} (a wrong secret, "
                "key name or algorithm, or a zone the server does not serve)",
            )
        ]
    if answer.rcode != "NOERROR" or not answer.authoritative:
        return [
            Finding(
                "error",
                f"{server} is not authoritative for zone {apex} (answered {answer.rcode}"
                f"{'' if answer.authoritative else ', no AA flag'}): check dns.server and dns.zone",
            )
        ]
    if not answer.has_soa:
        parent = f": it lies inside zone {answer.enclosing}" if answer.enclosing else ""
        hint = f' (dns.zone = "{answer.enclosing.rstrip(".")}")' if answer.enclosing else ""
        return [
            Finding(
                "error",
                f"dns.zone {apex} is not a zone on {server}{parent}; set dns.zone to the zone "
                f"that holds the TLSA names{hint}",
            )
        ]
    proven = f"{who} verified" if key else "unsigned"
    return [Finding("ok", f"{server} serves zone {apex} ({proven})")]


def judge_verify_server(zone: str, server: Server, answer: SoaAnswer | str) -> Finding:
    """One verify server: it must answer for the zone with its SOA and the AA flag."""
    apex = absolute_name(zone)
    if isinstance(answer, str):
        return Finding("error", f"verify server {server} did not answer for {apex}: {answer}")
    if answer.rcode == "NOERROR" and answer.authoritative and answer.has_soa:
        return Finding("ok", f"verify server {server} answers authoritatively for {apex}")
    return Finding(
        "error",
        f"verify server {server} does not answer authoritatively for zone {apex} (answered "
        f"{answer.rcode}{'' if answer.authoritative else ', no AA flag'}): danesync would "
        "never see records as visible there; list only the zone's own servers",
    )


def judge_policy(
    server: Server, key: TsigKey, name: str, answer: str, key_verified: bool, software: str | None
) -> Finding:
    """The answer to `probe_update_policy` for `name`."""
    who = f'TSIG key "{key.name}"'
    at = f"{absolute_name(name)} TLSA"
    if answer in ("NXDOMAIN", "NXRRSET", "YXDOMAIN", "YXRRSET"):
        if software is not None and "powerdns" in software.lower():
            return Finding(
                "ok",
                f"{server} ({software}) lets {who} update the zone; whether its policy allows "
                f"{at} cannot be tested without a change (PowerDNS checks prerequisites before "
                "its update policy, and drops refused records while answering NOERROR)",
            )
        return Finding(
            "ok",
            f"{server} allows {who} to change {at} (an update whose prerequisite cannot hold "
            "got past the update policy; nothing was changed)",
        )
    if answer == "REFUSED":
        return Finding(
            "error",
            f"{server} refuses {who} to change {at}: its update-policy "
            "(or allow-update) does not grant it",
        )
    if key_verified and (answer == "BADKEY" or answer.startswith("UNSIGNED-")):
        how = (
            "NOTAUTH with TSIG error BADKEY"
            if answer == "BADKEY"
            else f"{answer.removeprefix('UNSIGNED-')} without a TSIG signature"
        )
        return Finding(
            "error",
            f"{server} refuses {who} to change {at}: {how} for a key it knows, which is how "
            "Knot answers an ACL denial (acl: action: update, update-type: [TLSA], "
            "update-owner-name)",
        )
    if answer.startswith("UNSIGNED-") or answer in ("BADKEY", "BADSIG", "BADTIME"):
        return Finding("error", f"{server} did not accept {who} for updates ({answer})")
    if answer == "NOTAUTH":
        return Finding("error", f"{server} does not accept updates for the zone (NOTAUTH)")
    if answer == "NOTIMP":
        return Finding("error", f"{server} does not implement dynamic updates (NOTIMP)")
    return Finding("error", f"{server} answered {answer} to an update of {at}")


def judge_signed(what: str, unsigned_at: Sequence[Server], asked: int) -> Finding:
    """RRSIGs on one RRset from every authoritative server asked."""
    if not asked:
        return Finding("unknown", f"{what}: no authoritative server answered")
    if unsigned_at:
        servers = ", ".join(str(s) for s in unsigned_at)
        return Finding(
            "warning",
            f"{what} comes without RRSIG from {servers}: DANE needs a signed zone (senders "
            "ignore TLSA records, and the host's addresses, that do not validate)",
        )
    return Finding("ok", f"{what} is signed (RRSIG) on every authoritative server")


def judge_validation(zone: str, resolver: Server | None, ad: bool | None, error: str) -> Finding:
    """The AD bit on the zone's SOA from a validating resolver."""
    apex = absolute_name(zone)
    if resolver is None:
        return Finding("unknown", f"DNSSEC validation of {apex}: unknown (no resolver configured)")
    if ad is None:
        return Finding("unknown", f"DNSSEC validation of {apex}: unknown ({resolver}: {error})")
    if ad:
        return Finding("ok", f"{apex} validates through resolver {resolver} (AD bit)")
    return Finding(
        "warning",
        f"{apex} does not validate through resolver {resolver} (no AD bit): the zone has no DS "
        "at its parent, or the resolver does not validate; senders will not use DANE",
    )

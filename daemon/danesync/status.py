"""`danesync status`: what is deployed, published and pending, from the state file."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, TextIO

from danesync.chain import format_time
from danesync.config import Config
from danesync.state import ChainInfo, State, load_state


def _chain_json(info: ChainInfo, now: dt.datetime) -> dict[str, Any]:
    return {
        "serial": info.serial,
        "not_after": format_time(info.not_after),
        "days_left": (info.not_after - now).days,
        "issuer": info.issuer,
        "key_algorithm": info.key_algorithm,
        "fingerprint": info.fingerprint,
        "tlsa": [record.rdata for record in info.tlsa],
    }


def build_status(config: Config, state: State, now: dt.datetime) -> dict[str, Any]:
    """The status document (`--json`); the text form is printed from it."""
    lineages: dict[str, Any] = {}
    for certificate in config.certificates:
        lineage_state = state.lineages.get(certificate.lineage)
        entry: dict[str, Any] = {"deployed": None, "pending": None, "failed": None}
        if lineage_state is not None:
            if lineage_state.deployed is not None:
                entry["deployed"] = _chain_json(lineage_state.deployed, now)
            if lineage_state.pending is not None:
                entry["pending"] = _chain_json(lineage_state.pending, now)
                entry["pending"]["since"] = (
                    format_time(lineage_state.pending_since)
                    if lineage_state.pending_since
                    else None
                )
                entry["pending"]["proceed_at"] = (
                    format_time(lineage_state.proceed_at) if lineage_state.proceed_at else None
                )
            if lineage_state.failed_reason:
                entry["failed"] = lineage_state.failed_reason
        lineages[certificate.lineage] = entry
    records = []
    for _name, history in sorted(state.names.items()):
        served = [rrset for rrset in history.servers.values()]
        everywhere = frozenset.intersection(*[r.records for r in served]) if served else frozenset()
        ttl = max((r.ttl for r in served), default=config.dns.ttl)
        for record in sorted(frozenset().union(*[r.records for r in served]) | history.owned):
            since = min(
                (v.first_seen for v in history.seen if record in v.rrset.records), default=None
            )
            records.append(
                {
                    "tlsa": record.zone_line(ttl),
                    "published_by_danesync": record in history.owned,
                    "visible_since": format_time(since)
                    if since is not None and record in everywhere
                    else None,
                }
            )
    return {
        "config": str(config.path),
        "dns_mode": config.dns.mode.value,
        "lineages": lineages,
        "records": records,
        "failures": [
            {**f.to_json(), "since": format_time(f.since)}
            for _, f in sorted(state.failures.items())
        ],
        "names": _names_json(config, state, now),
        "family_warnings": _family_warnings(config, state, now),
    }


def _names_json(config: Config, state: State, now: dt.datetime) -> dict[str, Any]:
    """Per owner name: current, pending, family and retiring records (issue 12)."""
    from danesync.family_report import build_name_report

    return {r.name: r.to_json() for r in build_name_report(config, state, {}, now)}


def _family_warnings(config: Config, state: State, now: dt.datetime) -> list[str]:
    from danesync.family_report import build_family_warnings

    return list(build_family_warnings(config, state, now))


def print_status(document: dict[str, Any], out: TextIO) -> None:
    if not document["lineages"]:
        print("no certificate is configured", file=out)
    for lineage, entry in document["lineages"].items():
        print(lineage, file=out)
        deployed = entry["deployed"]
        if deployed is None:
            print("  deployed  nothing yet", file=out)
        else:
            print(
                f"  deployed  serial {deployed['serial']}, notAfter {deployed['not_after']} "
                f"({deployed['days_left']} days), issuer {deployed['issuer']}",
                file=out,
            )
        pending = entry["pending"]
        if pending is not None:
            when = pending["proceed_at"] or "when its TLSA records are visible"
            print(
                f"  pending   serial {pending['serial']} since {pending['since']}, "
                f"proceeds at {when}",
                file=out,
            )
        if entry["failed"]:
            print(f"  failed    {entry['failed']}", file=out)
    for failure in document.get("failures", []):
        where = f"{failure['lineage']}: " if failure.get("lineage") else ""
        print(
            f"failed    {where}{failure['step']} {failure['target']}: {failure['reason']} "
            f"(since {failure['since']}, {failure['attempts']} attempt(s))",
            file=out,
        )
    if document["records"]:
        print("TLSA records:", file=out)
        for record in document["records"]:
            origin = "published by danesync" if record["published_by_danesync"] else "found"
            seen = record["visible_since"] or "not visible everywhere"
            print(f"  {record['tlsa']}  ({origin}; visible since {seen})", file=out)
    _print_names(document.get("names", {}), out)
    for warning in document.get("family_warnings", []):
        print(f"warning: {warning}", file=out)


def _print_names(names: dict[str, Any], out: TextIO) -> None:
    if not any(entry["family"] or entry["retiring"] for entry in names.values()):
        return  # nothing beyond what the lines above say
    print("TLSA records per name:", file=out)
    for name, entry in names.items():
        print(f"  {name}", file=out)
        rows = [(kind, rdata) for kind in ("current", "pending") for rdata in entry[kind]]
        rows += [("family", f"{f['tlsa']}  ({f['member']})") for f in entry["family"]]
        rows += [("retiring", rdata) for rdata in entry["retiring"]]
        for kind, text in rows:
            print(f"    {kind:<9} {text}", file=out)


def run_status(config: Config, as_json: bool, out: TextIO = sys.stdout) -> int:
    state = load_state(config.state.dir)
    document = build_status(config, state, dt.datetime.now(dt.UTC))
    if as_json:
        json.dump(document, out, indent=2)
        out.write("\n")
    else:
        print_status(document, out)
    return 0

"""`danesync status`: what is deployed, published and pending, and the verdict.

The first line is the monitoring verdict as check_* plugins print it
(`DANESYNC OK - ...`), the exit status its level (0, 1, 2). The state file
says what is deployed and pending; `health.json` what the running daemon
last saw (heartbeat, failures, the DANE self-check); the daemon's lock
whether it runs at all.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from danesync.chain import format_time
from danesync.config import Config
from danesync.health import Health, read_health
from danesync.lock import LOCK_FILE
from danesync.state import ChainInfo, State, load_state
from danesync.verdict import Verdict, build_verdict, facts_from_state, failures_from_state

# The daemon holds an exclusive flock on this file in the state directory.
LOCK_FILENAMES = (LOCK_FILE,)


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


def add_verdict(
    document: dict[str, Any], verdict: Verdict, health: Health | None, running: bool | None
) -> dict[str, Any]:
    """The verdict, the daemon and the self-check, added to the status document."""
    document["status"] = verdict.level.name
    document["exit_code"] = verdict.code
    document["summary"] = verdict.summary
    document["problems"] = [
        {"level": p.level.name, "lineage": p.lineage, "text": p.text} for p in verdict.problems
    ]
    document["daemon"] = {
        "running": running,
        "pid": health.pid if health else None,
        "last_pass": _optional_time(health.last_pass if health else None),
        "last_success": _optional_time(health.last_success if health else None),
        "last_check": _optional_time(health.last_check if health else None),
        "failures": dict(health.failures) if health else {},
    }
    document["selfcheck"] = [check.to_json() for check in health.dane] if health else []
    return document


def _optional_time(moment: dt.datetime | None) -> str | None:
    return format_time(moment) if moment else None


def read_daemon_running(state_dir: Path, pid: int | None = None) -> bool | None:
    """Whether the daemon runs: a process holds its lock, or else `pid` (from
    health.json) is a live danesync process; None when neither can tell.

    Looked up in /proc/locks first, so that status does not take the lock
    while the daemon holds it; otherwise a non-blocking shared flock, released
    at once (a daemon starting in that instant finds it taken and systemd
    restarts it).
    """
    for name in LOCK_FILENAMES:
        path = state_dir / name
        try:
            info = os.stat(path)
        except OSError:
            continue
        # /proc/locks names a file as MAJOR:MINOR:INODE, the device numbers in hex.
        device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        if _held_in_proc_locks(device):
            return True
        # Not listed (or /proc unreadable, or a file system that names devices
        # differently): the lock itself decides.
        return _held_by_flock(path)
    return None if pid is None else _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a running danesync (not a reused number)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return b"danesync" in cmdline and state != "Z"


def _held_in_proc_locks(device: str) -> bool | None:
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters add "->")
        fields = [f for f in fields if f != "->"]
        if len(fields) >= 6 and fields[1] in ("FLOCK", "POSIX", "OFDLCK") and fields[5] == device:
            return True
    return False


def _held_by_flock(path: Path) -> bool | None:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def print_verdict(verdict: Verdict, out: TextIO) -> None:
    print(verdict.summary, file=out)
    for problem in verdict.problems:
        print(f"  {problem.level.name:<8} {problem}", file=out)


def run_status(config: Config, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    now = dt.datetime.now(dt.UTC)
    state = load_state(config.state.dir)
    health = read_health(config.state.dir)
    running = read_daemon_running(config.state.dir, health.pid if health else None)
    facts = facts_from_state(config, state)
    verdict = build_verdict(config, facts, health, running, now, failures_from_state(state))
    document = add_verdict(build_status(config, state, now), verdict, health, running)
    if as_json:
        json.dump(document, out, indent=2)
        out.write("\n")
    else:
        print_verdict(verdict, out)
        print_status(document, out)
    return verdict.code

"""Cold start deploying all, this code against a baseline revision, side by side.

One host (bench.common.make_host: the default chain + SNI lineages, DNS off,
the bench's private Postfix); each round starts `danesync run` with no state
and nothing deployed and times exec to READY=1 (CPU seconds beside it),
alternating this worktree's daemon/ with the baseline's (`git archive REV
daemon`), so both meet the same load. `--profile` writes one cProfile file of
each code's cold `danesync sync` (same reset). A probe microbenchmark times
STARTTLS handshakes against the same Postfix, serial and in parallel, with
each code's probe function.

`python -m bench.cold --size 1000 --rounds 2 --baseline 94f6b06 [--profile DIR]`
(root; under `flock /tmp/danesync-bench.lock`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.harness.certs import Hierarchy
from tests.harness.danesync import danesync_env
from tests.harness.postfix import PostfixInstance

from bench.common import (
    REPO,
    Daemon,
    Host,
    byte_compile,
    load_average,
    make_host,
    progress,
    root_workdir,
    seconds,
    sni_hostname,
)

COOL_DOWN = 2.5  # main.cf settles (postfix.py: programs wait for a fresh main.cf)
HANDSHAKES = 300


def _reset(host: Host) -> None:
    shutil.rmtree(host.root / "state", ignore_errors=True)
    shutil.rmtree(host.deploy_dir, ignore_errors=True)
    host.postfix.postconf("-X", "smtpd_tls_chain_files", "tls_server_sni_maps")
    time.sleep(COOL_DOWN)
    host.postfix.reload()
    time.sleep(1.5)  # tlsmgr back


def _export(revision: str, workdir: Path) -> Path:
    """The baseline's daemon/ in a directory of its own."""
    target = workdir / f"baseline-{revision}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "daemon"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "daemon"


# Phases of a cold start from the daemon's JSON log: (label, event, first or last).
PHASES = (
    ("started", "daemon.started", "first"),
    ("read", "lineage.changed", "last"),
    ("reloaded", "postfix.reloaded", "first"),
    ("first probe", "probe.ok", "first"),
    ("last deployed", "chain.deployed", "last"),
)


def _phases(events: list[dict[str, Any]], wall_start: float) -> dict[str, float]:
    """Seconds from exec to each phase's event (the log's wall-clock timestamps)."""
    found: dict[str, float] = {}
    for label, event, which in PHASES:
        times = [
            datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            for e in events
            if e.get("event") == event and "timestamp" in e
        ]
        if times:
            found[label] = (times[0] if which == "first" else times[-1]) - wall_start
    return found


def _cold(
    host: Host, workdir: Path, code: Path, name: str
) -> tuple[float, float, dict[str, float]]:
    daemon = Daemon(host.config, workdir, name=name, env={"PYTHONPATH": str(code)})
    wall_start = time.time()
    daemon.start()
    try:
        ready = daemon.wait_ready(timeout=900)
        cpu = daemon.ready_cpu
        events = daemon.events()
        deployed = sum(1 for e in events if e.get("event") == "chain.deployed")
        if deployed != len(host.lineages):
            raise RuntimeError(f"{name}: {deployed} of {len(host.lineages)} deployed")
    finally:
        daemon.stop()
    return ready, cpu, _phases(events, wall_start) | {"READY=1": ready}


def _profile(host: Host, code: Path, output: Path) -> None:
    byte_compile(code)
    argv = [sys.executable, "-m", "cProfile", "-o", str(output)]
    argv += ["-m", "danesync", "sync", "-c", str(host.config)]
    subprocess.run(
        argv, capture_output=True, env=danesync_env({"PYTHONPATH": str(code)}), check=True
    )


_HANDSHAKE_SCRIPT = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from danesync.actions import probe
host, port, count, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def one(_):
    return probe.probe_starttls(host, port, sys.argv[5], 5, key_algorithm="ecdsa")
started = time.monotonic()
with ThreadPoolExecutor(max_workers=workers) as pool:
    list(pool.map(one, range(count)))
print(count / (time.monotonic() - started))
"""


def _handshakes(host: Host, code: Path, workers: int) -> float:
    """STARTTLS handshakes a second with `code`'s probe (SNI, ECDSA)."""
    byte_compile(code)
    argv = [sys.executable, "-c", _HANDSHAKE_SCRIPT, host.postfix.host, str(host.postfix.port)]
    argv += [str(HANDSHAKES), str(workers), sni_hostname(0)]
    env = danesync_env({"PYTHONPATH": str(code)})
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip())


def run(
    workdir: Path, size: int, rounds: int, revision: str, profile_dir: Path | None
) -> dict[str, Any]:
    ca = Hierarchy("Bench Cold")
    codes = {"this": REPO / "daemon", "baseline": _export(revision, workdir)}
    figures: dict[str, Any] = {name: {"ready": [], "cpu": [], "phases": []} for name in codes}
    with PostfixInstance() as postfix:
        host = make_host(workdir / "host", postfix, ca, size - 1)
        for round_ in range(rounds):
            order = list(codes) if round_ % 2 == 0 else list(reversed(codes))
            for name in order:
                _reset(host)
                ready, cpu, phases = _cold(host, workdir, codes[name], f"cold-{name}-{round_}")
                figures[name]["ready"].append(ready)
                figures[name]["cpu"].append(cpu)
                load = " ".join(Path("/proc/loadavg").read_text().split()[:1])
                figures[name]["phases"].append((round_, load, phases))
                progress(f"{size}: {name}: READY=1 after {seconds(ready)} (CPU {seconds(cpu)})")
        if size <= 1000:  # everything deployed: time handshakes with SNI
            for name, code in codes.items():
                for workers in (1, 4, 8, 16, 32):
                    rate = _handshakes(host, code, workers)
                    figures[name][f"handshakes_{workers}"] = rate
                    progress(f"{name}: {rate:.0f} handshakes/s with {workers} at a time")
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            for name, code in codes.items():
                _reset(host)
                _profile(host, code, profile_dir / f"cold-{name}-{size}.prof")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold", description=__doc__)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default="94f6b06", help="git revision to compare with")
    parser.add_argument("--profile", type=Path, help="directory for cProfile files")
    args = parser.parse_args(argv)
    with root_workdir("danesync-bench-cold-") as workdir:
        load = load_average()
        figures = run(workdir, args.size, args.rounds, args.baseline, args.profile)
    end = load_average()
    print(f"load average at the start: {load}; at the end: {end}")
    print(f"| {args.size:,} lineages, cold start | this code | baseline ({args.baseline}) |")
    print("|---|---|---|")
    this, base = figures["this"], figures["baseline"]
    for key, label in (("ready", "READY=1, median"), ("cpu", "CPU at READY=1, median")):
        print(
            f"| {label} | {seconds(statistics.median(this[key]))} |"
            f" {seconds(statistics.median(base[key]))} |"
        )
    print(f"| READY=1, each round | {', '.join(seconds(t) for t in this['ready'])} |", end="")
    print(f" {', '.join(seconds(t) for t in base['ready'])} |")
    for workers in (1, 4, 8, 16, 32):
        key = f"handshakes_{workers}"
        if key in this:
            label = f"STARTTLS handshakes/s, {workers} at a time"
            print(f"| {label} | {this[key]:.0f} | {base[key]:.0f} |")
    _print_phases(figures)
    return 0


def _print_phases(figures: dict[str, Any]) -> None:
    labels = [label for label, _, _ in PHASES] + ["READY=1"]
    print()
    print("| round (load) | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for name, figure in figures.items():
        for round_, load, phases in figure["phases"]:
            cells = " | ".join(f"{phases[k]:.2f}" if k in phases else "-" for k in labels)
            print(f"| {name}, {round_ + 1} ({load}) | {cells} |")


if __name__ == "__main__":
    sys.exit(main())

"""Postfix's CPU per SNI handshake: chain files with the key in its own format
(this code) against the same chains with the key in PKCS#8 (as danesync wrote
them before chain.key_pem), side by side.

One host of the bench (bench.common.make_host: SNI lineages, EC P-256, DNS
off, its private Postfix) deployed by this code's `danesync sync`; a second
SNI table holds the same chain files with their keys in PKCS#8, built with
`postmap -F` as danesync builds its own. Each round points
`tls_server_sni_maps` at one table, reloads, waits for tlsmgr, and asks every
name once (16 at a time, with this code's probe), alternating the two tables
so that the load of the shared machine weighs on both. Printed: handshakes a
second, the CPU of everything but the client per handshake (/proc/stat, less
the client's own), and the client's.

`python -m bench.sni_keys --size 500 --rounds 4` (root; under
`flock /tmp/danesync-bench.lock`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness.certs import Hierarchy
from tests.harness.certs import key_pem as pkcs8_pem
from tests.harness.danesync import danesync_env
from tests.harness.postfix import PostfixInstance

from bench.common import load_average, make_host, progress, root_workdir, sni_hostname
from danesync.actions import probe
from danesync.pem import parse_private_key

WORKERS = 16


def _busy_seconds() -> float:
    """CPU seconds of the whole machine so far (user, nice, system, irq, softirq)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def _ask_all(postfix: PostfixInstance, names: list[str]) -> tuple[float, float, float]:
    """Handshakes a second; milliseconds of CPU a handshake, server side and client."""
    endpoint = probe.Endpoint(postfix.host, postfix.port)

    def one(name: str) -> bytes:
        return probe.probe_starttls(endpoint, postfix.port, name, 5, key_algorithm="ecdsa")

    busy, mine, started = _busy_seconds(), os.times(), time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, names))
    elapsed = time.monotonic() - started
    after = os.times()
    client = (after.user - mine.user) + (after.system - mine.system)
    server = _busy_seconds() - busy - client
    return len(names) / elapsed, 1000 * server / len(names), 1000 * client / len(names)


def _pkcs8_table(deploy: Path, target: Path, postfix: PostfixInstance) -> str:
    """The deployed SNI chain files with their keys in PKCS#8, as one table."""
    target.mkdir()
    lines = []
    for path in sorted(deploy.glob("mx*.pem")):
        data = path.read_bytes()
        end = data.index(b"-----BEGIN CERTIFICATE-----")
        copy = target / path.name
        copy.write_bytes(pkcs8_pem(parse_private_key(data[:end], path.name)) + data[end:])
        copy.chmod(0o600)
        lines.append(f"{path.name.removesuffix('.pem')} {copy}\n")
    (target / "sni").write_text("".join(lines))
    table = f"hash:{target / 'sni'}"
    subprocess.run(["postmap", "-c", str(postfix.config_dir), "-F", table], check=True)
    return table


def _use(postfix: PostfixInstance, table: str) -> None:
    postfix.postconf("-e", f"tls_server_sni_maps = {table}")
    past = time.time() - 10  # main.cf settled (actions/postfix.settle_main_cf)
    os.utime(postfix.config_dir / "main.cf", (past, past))
    postfix.reload()
    time.sleep(2.5)  # tlsmgr back


def run(workdir: Path, size: int, rounds: int) -> dict[str, list[tuple[float, float, float]]]:
    with PostfixInstance() as postfix:
        host = make_host(workdir / "host", postfix, Hierarchy("Bench SNI keys"), size)
        argv = [sys.executable, "-m", "danesync", "sync", "-c", str(host.config)]
        subprocess.run(argv, capture_output=True, env=danesync_env(), check=True)
        tables = {
            "own format (this code)": postfix.postconf("-h", "tls_server_sni_maps").strip(),
            "PKCS#8 (before)": _pkcs8_table(host.deploy_dir, workdir / "pkcs8", postfix),
        }
        names = [sni_hostname(i) for i in range(size)]
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tables}
        for round_ in range(rounds):
            order = list(tables) if round_ % 2 == 0 else list(reversed(tables))
            for name in order:
                _use(postfix, tables[name])
                _ask_all(postfix, names[: WORKERS * 4])  # every smtpd process started
                figure = _ask_all(postfix, names)
                figures[name].append(figure)
                rate, server, client = figure
                progress(f"{name}: {rate:.0f}/s, server {server:.2f} ms, client {client:.2f} ms")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sni_keys", description=__doc__)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    with root_workdir("danesync-bench-sni-keys-") as workdir:
        load = load_average()
        figures = run(workdir, args.size, args.rounds)
    end = load_average()
    print(f"load average at the start: {load}; at the end: {end}")
    print(f"| {args.size} SNI names, {WORKERS} at a time, median of {args.rounds} | ", end="")
    print(" | ".join(figures) + " |")
    print("|---" * (len(figures) + 1) + "|")
    for index, label in enumerate(
        ("handshakes a second", "CPU a handshake, all but the client (ms)", "client CPU (ms)")
    ):
        cells = [f"{statistics.median(f[index] for f in rows):.2f}" for rows in figures.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

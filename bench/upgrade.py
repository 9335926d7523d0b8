"""The first start after an upgrade from a revision whose chain files hold
their keys in PKCS#8, against that revision's own warm start.

One host of the bench (bench.common.make_host: the default chain + SNI
lineages, DNS off, its private Postfix). The earlier revision (`git archive
REV daemon`) starts cold and deploys everything, then starts again (warm);
then this code starts on the same state directory and chain files (its read
cache is of a newer schema, so it reads every lineage once), then again.
Each start is timed from exec to READY=1 (CPU seconds beside), and its
deploys and reloads are counted: an upgrade must deploy nothing.

`python -m bench.upgrade --size 10000 --baseline d7dd304` (root; under
`flock /tmp/danesync-bench.lock`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.harness.certs import Hierarchy
from tests.harness.postfix import PostfixInstance

from bench.cold import _export
from bench.common import REPO, Daemon, load_average, make_host, progress, root_workdir, seconds


def run(workdir: Path, size: int, revision: str) -> list[tuple[str, float, float, int, int]]:
    earlier, this = _export(revision, workdir), REPO / "daemon"
    starts = (
        (f"{revision}, cold", earlier),
        (f"{revision}, warm", earlier),
        ("this code, the first start after the upgrade", this),
        ("this code, warm", this),
    )
    figures = []
    with PostfixInstance() as postfix:
        host = make_host(workdir / "host", postfix, Hierarchy("Bench Upgrade"), size - 1)
        for number, (label, code) in enumerate(starts):
            daemon = Daemon(
                host.config, workdir, name=f"upgrade-{number}", env={"PYTHONPATH": str(code)}
            )
            daemon.start()
            try:
                ready = daemon.wait_ready(timeout=900)
                deployed = daemon.count("chain.deployed")
                reloaded = daemon.count("postfix.reloaded")
            finally:
                daemon.stop()
            figures.append((label, ready, daemon.ready_cpu, deployed, reloaded))
            progress(f"{label}: READY=1 after {seconds(ready)}, {deployed} deployed")
        keys = sum(
            path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
            for path in host.deploy_dir.glob("*.pem")
        )
        progress(f"chain files still with their key in PKCS#8: {keys} of {size}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--baseline", default="d7dd304", help="the revision upgraded from")
    args = parser.parse_args(argv)
    with root_workdir("danesync-bench-upgrade-") as workdir:
        load = load_average()
        figures = run(workdir, args.size, args.baseline)
    end = load_average()
    print(f"load average at the start: {load}; at the end: {end}")
    print(f"| {args.size:,} lineages | READY=1 | CPU | chains deployed | reloads |")
    print("|---|---|---|---|---|")
    for label, ready, cpu, deployed, reloaded in figures:
        print(f"| {label} | {seconds(ready)} | {seconds(cpu)} | {deployed} | {reloaded} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One SNI renewal pass, in this process, at 100, 1,000 and 10,000 lineages.

What the daemon runs when the watcher reports one renewed lineage:
`Service.reconcile({lineage})`, after a settled full pass (everything
deployed). Timed around that call, probe included (the pass ends when the
STARTTLS probe sees the new leaf), DNS off, the bench's private Postfix
(bench.common.make_host: one default chain, the rest SNI). Then one more
renewal under cProfile, for the functions that make the cost: their
cumulative seconds, so that what grows with the number of lineages shows.

`python -m bench.renewal_pass [--sizes 100 1000 10000] [--renewals 3]`
(root; run 1,000 and above under `flock /tmp/danesync-bench.lock`).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import itertools
import logging
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from tests.harness.certs import Hierarchy, make_key
from tests.harness.lineage import renew
from tests.harness.postfix import PostfixInstance

from bench.common import Result, Row, issue, make_host, progress, seconds

SIZES = (100, 1000, 10_000)
TARGET = 0.5
COOL_DOWN = 2.5  # main.cf settles (postfix.py: programs wait for a fresh main.cf)
# Where one renewal pass spends its time (cumulative seconds under cProfile).
PARTS = (
    ("plan_pass", "plan.py"),
    ("build_holdings", "needs.py"),
    ("build_needed_records", "needs.py"),
    ("build_sni_certificates", "deploy.py"),
    ("build_sni_entries", "deploy.py"),
    ("build_wanted_parameters", "deploy.py"),
    ("write_sni_table", "adapters.py"),
    ("build_shard_split", "snitables.py"),
    ("save", "runtime.py"),
    ("documents", "state.py"),
    ("confirm_served", "adapters.py"),
)
RATIO = 2.0  # issue 15: one renewal's cost independent of the total: at most this per x10


def measure(
    workdir: Path, ca: Hierarchy, count: int, renewals: int, profile_dir: Path | None = None
) -> dict[str, Any]:
    """Figures for one host of `count` lineages (the default chain + count - 1 SNI)."""
    from danesync.config import load_config
    from danesync.service import Service

    figures: dict[str, Any] = {"lineages": count}
    with PostfixInstance() as postfix:
        started = time.monotonic()
        host = make_host(workdir / f"host{count}", postfix, ca, count - 1)
        progress(f"renewal_pass: {count} lineages written in {time.monotonic() - started:.1f} s")
        service = Service(load_config(host.config))
        started = time.perf_counter()
        service.reconcile(monitor=False)
        figures["cold_pass"] = time.perf_counter() - started
        time.sleep(COOL_DOWN)
        started = time.perf_counter()
        service.reconcile(monitor=False)
        figures["full_pass"] = time.perf_counter() - started
        lineage = host.lineages[-1]
        times: list[float] = []
        cpu: list[float] = []
        for _ in range(renewals):
            times.append(_renew_once(service, host.letsencrypt, ca, lineage, cpu))
        figures["renewal"] = times
        figures["renewal_cpu"] = cpu
        figures["renewal_median"] = statistics.median(times)
        figures["renewal_min"] = min(times)
        figures["renewal_cpu_median"] = statistics.median(cpu)
        # The same, each renewal's leaf with one more name: the SNI table changes.
        renamed: list[float] = []
        renamed_cpu: list[float] = []
        for number in range(renewals):
            names = [lineage, *(f"n{i}.{lineage}" for i in range(number + 1))]
            renamed.append(
                _renew_once(service, host.letsencrypt, ca, lineage, renamed_cpu, names=names)
            )
        figures["renamed_median"] = statistics.median(renamed)
        figures["renamed_cpu_median"] = statistics.median(renamed_cpu)
        profiler = cProfile.Profile()
        figures["renewal_profiled"] = _renew_once(
            service, host.letsencrypt, ca, lineage, [], profiler
        )
        figures["parts"] = build_parts(pstats.Stats(profiler))
        if profile_dir is not None:
            profiler.dump_stats(profile_dir / f"renewal-pass-{count}.prof")
        deployed = sum(1 for s in service.state.lineages.values() if s.deployed is not None)
        if deployed != count:
            raise RuntimeError(f"{deployed} of {count} lineages deployed")
    shutil.rmtree(workdir / f"host{count}", ignore_errors=True)
    return figures


def _renew_once(
    service: Any,
    letsencrypt: Path,
    ca: Hierarchy,
    lineage: str,
    cpu_times: list[float],
    profiler: Any = None,
    names: list[str] | None = None,
) -> float:
    """Seconds of one renewal pass (wall); its CPU seconds (this process) go to `cpu_times`.

    `names`: the new leaf's names (default: the lineage's one name, as before).
    """
    leaf = issue(ca, lineage) if names is None else _issue_names(ca, names)
    renew(letsencrypt, lineage, leaf)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is None:
        result = service.reconcile({lineage})
    else:
        result = profiler.runcall(service.reconcile, {lineage})
    elapsed = time.perf_counter() - started
    cpu_times.append(time.process_time() - cpu)
    deployed = service.state.lineages[lineage].deployed
    wanted = hashlib.sha256(leaf.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if deployed is None or deployed.fingerprint != wanted:
        raise RuntimeError(f"{lineage}: the renewal was not deployed ({result})")
    return elapsed


def _issue_names(ca: Hierarchy, names: list[str]) -> Any:
    """A leaf valid now for `names`, with a new EC key (as bench.common.issue)."""

    now = dt.datetime.now(dt.UTC)
    return ca.issue(
        names,
        key=make_key("ec256"),
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=89),
    )


def build_parts(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each of PARTS in one profile."""
    found = dict.fromkeys((name for name, _ in PARTS), 0.0)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, _, cumulative, _) in table.items():
        for name, module in PARTS:
            if function == name and filename.endswith(module):
                found[name] += cumulative
    return found


def run(
    workdir: Path,
    sizes: tuple[int, ...] = SIZES,
    renewals: int = 3,
    profile_dir: Path | None = None,
) -> Result:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    ca = Hierarchy("Bench Renewal Pass")
    figures = {size: measure(workdir, ca, size, renewals, profile_dir) for size in sizes}
    base = figures[sizes[0]]
    result = Result(
        name="renewal",
        title="One SNI renewal pass, in process",
        setup=(
            "`Service.reconcile({lineage})` after a settled full pass, DNS off, the bench's"
            f" private Postfix, the default chain + SNI lineages (EC P-256); median of {renewals}"
            " renewals, probe included; then one renewal under cProfile"
        ),
        baseline=f"the same at {sizes[0]:,} lineages, same run",
        data={str(size): f for size, f in figures.items()},
    )
    for smaller, size in itertools.pairwise(sizes):
        ours = figures[size]
        ratio = ours["renewal_median"] / figures[smaller]["renewal_median"]
        result.rows.append(
            Row(
                f"{size:,}: one SNI renewal pass, median, over the {smaller:,} one",
                f"{ratio:.2f} x",
                "1 x",
                f"< {RATIO:g} x",
                ratio < RATIO,
            )
        )
        result.rows += [
            Row(
                f"{size:,}: one SNI renewal pass, median",
                seconds(ours["renewal_median"]),
                seconds(base["renewal_median"]),
                f"< {seconds(TARGET)}",
                ours["renewal_median"] < TARGET,
            ),
            Row(
                f"{size:,}: one SNI renewal pass, fastest; CPU of this process, median",
                f"{seconds(ours['renewal_min'])}; {seconds(ours['renewal_cpu_median'])}",
                f"{seconds(base['renewal_min'])}; {seconds(base['renewal_cpu_median'])}",
            ),
            Row(
                f"{size:,}: one SNI renewal pass, the leaf with one more name, median; CPU",
                f"{seconds(ours['renamed_median'])}; {seconds(ours['renamed_cpu_median'])}",
                f"{seconds(base['renamed_median'])}; {seconds(base['renamed_cpu_median'])}",
            ),
            Row(
                f"{size:,}: the renewal pass under cProfile",
                seconds(ours["renewal_profiled"]),
                seconds(base["renewal_profiled"]),
            ),
            Row(
                f"{size:,}: a settled full pass",
                seconds(ours["full_pass"]),
                seconds(base["full_pass"]),
            ),
        ]
        for name, _ in PARTS:
            result.rows.append(
                Row(
                    f"{size:,}: profiled renewal, `{name}` cumulative",
                    seconds(ours["parts"][name]),
                    seconds(base["parts"][name]),
                )
            )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.renewal_pass", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--renewals", type=int, default=3)
    parser.add_argument("--profile-dir", type=Path, help="write each size's cProfile output here")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="danesync-bench-renewal-"))
    workdir.chmod(0o755)
    load = Path("/proc/loadavg").read_text().split()[:3]
    try:
        result = run(workdir, tuple(args.sizes), args.renewals, args.profile_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average at the start: {' '.join(load)}; at the end:", end=" ")
    print(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
    print("| measure | danesync | baseline | target | met |")
    for row in result.rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        print(f"| {row.measure} | {row.danesync} | {row.baseline} | {row.target} | {met} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

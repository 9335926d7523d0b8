"""Scale: hosts with 1,000 and 10,000 lineages against one with a single SNI lineage.

Both hosts have one default chain (`sni = false`; Postfix takes one per key
algorithm) and the rest as SNI certificates, DNS off. For each:

- cold start: no state, nothing deployed; seconds from exec to READY=1 on a
  NOTIFY_SOCKET bound here (the first pass deploys everything before READY);
- warm start: the same daemon restarted with everything deployed;
- one renewal: certbot's link sequence on one SNI lineage (and on the default
  chain), timed from the last link to the first STARTTLS handshake (with that
  name as SNI) that gets the new leaf;
- a full pass: `danesync sync` with nothing to do (what the daemon runs every
  `reconcile_interval` and, while a rollover is held, at every DNS poll);
- at 10,000: resident memory (VmRSS) and CPU of the idle daemon after the
  renewals, with this run's interpreter (the PyPI venv) and with
  /usr/bin/python3 and Debian 12's own libraries (the same host, state and
  deployed files reset in between).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.harness.certs import Hierarchy
from tests.harness.danesync import danesync_env
from tests.harness.lineage import renew
from tests.harness.postfix import PostfixInstance

from bench.ari_endpoint import AriEndpoint
from bench.common import (
    DEFAULT_HOSTNAME,
    Daemon,
    Host,
    Result,
    Row,
    der,
    issue,
    make_host,
    progress,
    sample_process,
    seconds,
    summarize,
    wait_served,
)
from danesync.ari import ari_support

LARGE = 1000
HUGE = 10_000
DEBIAN_PYTHON = "/usr/bin/python3"
TARGET_COLD = {LARGE: 5.0, HUGE: 60.0}
TARGET_RENEWAL = 0.5
TARGET_RSS_MIB = 80
IDLE_WINDOW = 20.0
ARI_DELAYED = 100  # lineages for the slow-CA measurement
ARI_DELAY = 0.05  # seconds the CA takes per answer, for a mail host far from its CA
TARGET_READY = 5.0
RENEWAL_TOLERANCE = 0.2
COOL_DOWN = 2.5


def _measure(
    workdir: Path,
    ca: Hierarchy,
    sni_count: int,
    renewals: int,
    profile_dir: Path | None,
    pythons: tuple[str, ...] = (sys.executable,),
) -> dict[str, Any]:
    """Figures for one host size; with several `pythons`, one set per interpreter."""
    lanes: dict[str, Any] = {}
    count = sni_count + 1
    with PostfixInstance() as postfix:
        started = time.monotonic()
        host = make_host(workdir / f"host{count}", postfix, ca, sni_count)
        progress(f"scale: {count} lineages written in {time.monotonic() - started:.1f} s")
        for python in pythons:
            if lanes:
                _reset(host)
            lanes[python] = _measure_lane(workdir, host, ca, renewals, python, idle=count >= HUGE)
        figures: dict[str, Any] = dict(lanes[pythons[0]])
        figures["lanes"] = lanes
        if profile_dir is not None:
            _profile(host, profile_dir)
            _profile_renewal(host, ca, profile_dir)
    return figures


def _reset(host: Host) -> None:
    """Back to nothing deployed: no state, no chain files, main.cf without them."""
    shutil.rmtree(host.root / "state", ignore_errors=True)
    shutil.rmtree(host.deploy_dir, ignore_errors=True)
    host.postfix.postconf("-X", "smtpd_tls_chain_files", "tls_server_sni_maps")
    time.sleep(COOL_DOWN)
    host.postfix.reload()


def _measure_lane(
    workdir: Path, host: Host, ca: Hierarchy, renewals: int, python: str, idle: bool
) -> dict[str, Any]:
    count = len(host.lineages)
    tag = f"{count}-{'debian' if python == DEBIAN_PYTHON else 'venv'}"
    figures: dict[str, Any] = {"lineages": count, "python": python}
    progress(f"  {python}")
    daemon = Daemon(host.config, workdir, python=python, name=f"danesync-cold-{tag}")
    daemon.start()
    try:
        figures["ready_cold"] = daemon.wait_ready(timeout=600)
        figures["ready_cold_cpu"] = daemon.ready_cpu
        deployed = daemon.count("chain.deployed")
        if deployed != count:
            raise RuntimeError(f"{deployed} of {count} deployed")
    finally:
        if daemon.stop() != 0:
            raise RuntimeError(f"danesync did not stop cleanly:\n{daemon.log_tail()}")
    progress(f"  cold start: READY=1 after {seconds(figures['ready_cold'])}")
    time.sleep(COOL_DOWN)

    daemon = Daemon(host.config, workdir, python=python, name=f"danesync-warm-{tag}")
    daemon.start()
    try:
        figures["ready_warm"] = daemon.wait_ready(timeout=600)
        figures["ready_warm_cpu"] = daemon.ready_cpu
        progress(f"  warm start: READY=1 after {seconds(figures['ready_warm'])}")
        figures["renew_sni"] = _renewals(daemon, host, ca, host.lineages[-1], renewals)
        figures["renew_default"] = _renewals(daemon, host, ca, DEFAULT_HOSTNAME, renewals)
        if idle:
            time.sleep(3.0)
            before = sample_process(daemon.pid)
            time.sleep(IDLE_WINDOW)
            after = sample_process(daemon.pid)
            figures["idle_cpu_per_minute"] = (after.cpu - before.cpu) * 60 / IDLE_WINDOW
            figures["rss_mib"] = after.rss_kib / 1024
            figures["hwm_mib"] = after.hwm_kib / 1024
            progress(
                f"  idle: {figures['idle_cpu_per_minute']:.3f} s CPU a minute,"
                f" VmRSS {figures['rss_mib']:.1f} MiB (peak {figures['hwm_mib']:.1f} MiB)"
            )
        if daemon.errors():
            raise RuntimeError(f"danesync logged errors: {daemon.errors()}")
    finally:
        daemon.stop()

    figures["full_pass"] = _full_pass(host, python=python)
    progress(f"  full pass (`danesync sync`): {seconds(figures['full_pass'])}")
    return figures


def _renewals(
    daemon: Daemon, host: Host, ca: Hierarchy, lineage: str, count: int
) -> dict[str, Any]:
    times = []
    for _ in range(count):
        deployed = daemon.count("chain.deployed")
        leaf = issue(ca, lineage)
        renew(host.letsencrypt, lineage, leaf)
        started = time.monotonic()
        times.append(wait_served(host.postfix, der(leaf), host.servername(lineage)) - started)
        daemon.wait_count("chain.deployed", deployed + 1)
        time.sleep(0.3)
    kind = "default" if lineage == DEFAULT_HOSTNAME else "SNI"
    progress(f"  {kind} renewal: {', '.join(seconds(t) for t in times)}")
    return {"summary": summarize(times), "samples": times}


def _full_pass(
    host: Host, env: dict[str, str] | None = None, python: str = sys.executable
) -> float:
    """Seconds `danesync sync` takes when nothing changed (interpreter start included)."""
    argv = [python, "-m", "danesync", "sync", "-c", str(host.config)]
    started = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, env=danesync_env(env))
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"danesync sync failed: {completed.stdout}{completed.stderr}")
    return elapsed


def _measure_ari(
    workdir: Path, ca: Hierarchy, sni_count: int, delay: float = 0.0, daemon: bool = True
) -> dict[str, Any]:
    """A full pass and a warm start when every lineage's CA offers ARI (loopback CA).

    `delay` holds back each of the CA's answers, standing in for the network.
    """
    figures: dict[str, Any] = {"lineages": sni_count + 1, "delay": delay}
    tag = f"{sni_count + 1}-{int(delay * 1000)}ms"
    with AriEndpoint(workdir / f"ari-{tag}") as endpoint, PostfixInstance() as postfix:
        host = make_host(
            workdir / f"ari-{tag}",
            postfix,
            ca,
            sni_count,
            acme_server=endpoint.directory_url,
        )
        env = {"REQUESTS_CA_BUNDLE": str(endpoint.ca_file), "NO_PROXY": "127.0.0.1"}
        endpoint.delay = 0.0
        _full_pass(host, env)  # deploys everything
        time.sleep(COOL_DOWN)
        endpoint.delay = delay
        before = endpoint.requests
        figures["full_pass"] = _full_pass(host, env)
        figures["requests"] = endpoint.requests - before
        text = f"full pass {seconds(figures['full_pass'])} ({figures['requests']} requests)"
        if daemon:
            process = Daemon(host.config, workdir, name=f"danesync-ari-{tag}", env=env)
            process.start()
            try:
                figures["ready_warm"] = process.wait_ready()
                if process.count("renewal.unknown") or process.errors():
                    raise RuntimeError(f"ARI requests failed:\n{process.log_tail()}")
            finally:
                process.stop()
            text += f", READY=1 after {seconds(figures['ready_warm'])}"
    where = f"{figures['lineages']} lineages, {delay * 1000:.0f} ms per answer"
    progress(f"  with ARI ({where}): {text}")
    return figures


def _profile(host: Host, profile_dir: Path) -> None:
    """cProfile `danesync sync` on a fresh state (the cold start's first pass), then again."""
    config = host.root / "profile.toml"
    text = host.config.read_text()
    text = text.replace(str(host.root / "state"), str(host.root / "profile-state"))
    text = text.replace(str(host.root / "deploy"), str(host.root / "profile-deploy"))
    config.write_text(text)
    for kind in ("cold", "warm"):
        time.sleep(COOL_DOWN)  # the cold pass changed main.cf
        output = profile_dir / f"sync-{kind}-{len(host.lineages)}.prof"
        argv = [sys.executable, "-m", "cProfile", "-o", str(output)]
        argv += ["-m", "danesync", "sync", "-c", str(config)]
        subprocess.run(argv, capture_output=True, env=danesync_env(), check=True)


def _profile_renewal(host: Host, ca: Hierarchy, profile_dir: Path) -> None:
    """cProfile one renewal pass in this process: `Service.reconcile({lineage})`,
    what the daemon runs when the watcher reports one lineage."""
    import logging

    import structlog

    from danesync.config import load_config
    from danesync.service import Service

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    time.sleep(COOL_DOWN)
    service = Service(load_config(host.root / "profile.toml"))
    for lineage in (host.lineages[-1], DEFAULT_HOSTNAME):
        renew(host.letsencrypt, lineage, issue(ca, lineage))
        profiler = cProfile.Profile()
        profiler.runcall(service.reconcile, {lineage})
        kind = "default" if lineage == DEFAULT_HOSTNAME else "sni"
        profiler.dump_stats(profile_dir / f"renewal-{kind}-{len(host.lineages)}.prof")
        time.sleep(0.3)


def _wall_cpu(figures: dict[str, Any], key: str) -> str:
    cpu = figures.get(f"{key}_cpu")
    return seconds(figures[key]) + (f" ({seconds(cpu)})" if cpu else "")


def _rows(label: str, size: int, ours: dict[str, Any], theirs: dict[str, Any]) -> list[Row]:
    """One host size and interpreter, each figure beside the 2-lineage baseline."""

    def renewal_row(kind: str, name: str) -> Row:
        mine = ours[kind]["summary"]["median"]
        base = theirs[kind]["summary"]["median"]
        return Row(
            f"{label}: one {name} renewal to served, median",
            f"{seconds(mine)} ({(mine - base) * 1000:+.0f} ms)",
            seconds(base),
            f"< {seconds(TARGET_RENEWAL)}, within 20 % of 2 lineages",
            mine < TARGET_RENEWAL and mine <= base * (1 + RENEWAL_TOLERANCE),
        )

    rows = [
        Row(
            f"{label}: ready, warm start (all deployed), wall (CPU)",
            _wall_cpu(ours, "ready_warm"),
            _wall_cpu(theirs, "ready_warm"),
            f"< {seconds(TARGET_READY)}",
            ours["ready_warm"] < TARGET_READY,
        ),
        Row(
            f"{label}: ready, cold start (deploys everything first), wall (CPU)",
            _wall_cpu(ours, "ready_cold"),
            _wall_cpu(theirs, "ready_cold"),
            f"< {seconds(TARGET_COLD[size])}",
            ours["ready_cold"] < TARGET_COLD[size],
        ),
        renewal_row("renew_sni", "SNI"),
        renewal_row("renew_default", "default-chain"),
        Row(
            f"{label}: a full pass (`danesync sync`, nothing to do)",
            seconds(ours["full_pass"]),
            seconds(theirs["full_pass"]),
        ),
    ]
    if "rss_mib" in ours:
        rows += [
            Row(
                f"{label}: idle after the renewals, VmRSS (peak)",
                f"{ours['rss_mib']:.1f} MiB ({ours['hwm_mib']:.1f} MiB)",
                "",
                f"< {TARGET_RSS_MIB} MB",
                ours["rss_mib"] * 1.048576 < TARGET_RSS_MIB,
            ),
            Row(
                f"{label}: idle CPU per minute ({IDLE_WINDOW:.0f} s window)",
                f"{ours['idle_cpu_per_minute']:.3f} s",
                "",
                "0 (< 0.05 s)",
                ours["idle_cpu_per_minute"] < 0.05,
            ),
        ]
    return rows


def profile_text(path: Path, limit: int = 25) -> str:
    """The top of a cProfile file, by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def run(
    workdir: Path,
    renewals: int,
    profile_dir: Path | None = None,
    ari_delayed: bool = True,
    huge: bool = True,
) -> Result:
    ca = Hierarchy("Bench Scale")
    pythons = (sys.executable, DEBIAN_PYTHON) if os.path.exists(DEBIAN_PYTHON) else ()
    pythons = tuple(dict.fromkeys((sys.executable, *pythons)))
    small = _measure(workdir, ca, 1, renewals, None, pythons if huge else pythons[:1])
    large = _measure(workdir, ca, LARGE - 1, renewals, None if huge else profile_dir)
    sizes: list[tuple[int, dict[str, Any]]] = [(LARGE, large)]
    if huge:  # the profiles that explain the figures: at the largest size
        sizes.append((HUGE, _measure(workdir, ca, HUGE - 1, renewals, profile_dir, pythons)))
    ari_small = ari_large = ari_delay = None
    if ari_support() is None:  # danesync asks the CA on full passes
        ari_small = _measure_ari(workdir, ca, 1)
        ari_large = _measure_ari(workdir, ca, LARGE - 1)
        if ari_delayed:
            ari_delay = _measure_ari(workdir, ca, ARI_DELAYED - 1, ARI_DELAY, daemon=False)
    counts = " and ".join(f"{n:,}" for n, _ in sizes)
    result = Result(
        name="scale",
        title=f"Scale, {counts} lineages",
        setup=(
            "`danesync run`, DNS off, the default chain + the rest SNI lineages (EC P-256);"
            f" {renewals} renewals of each kind; times to READY=1 on a NOTIFY_SOCKET;"
            f" at {HUGE:,} also with {DEBIAN_PYTHON} and Debian 12's libraries"
        ),
        baseline="the same with the default chain + 1 SNI lineage, same interpreter",
    )

    def lane_name(python: str) -> str:
        return "Debian 12 python3-*" if python == DEBIAN_PYTHON else "PyPI venv"

    for size, figures in sizes:
        for python, ours in figures["lanes"].items():
            theirs = small["lanes"].get(python, small)
            label = f"{size:,}" + (f", {lane_name(python)}" if size == HUGE else "")
            result.rows += _rows(label, size, ours, theirs)
    if ari_small is not None and ari_large is not None:
        result.rows += [
            Row(
                "with ARI: a full pass (loopback CA, no network delay)",
                f"{seconds(ari_large['full_pass'])}, {ari_large['requests']} HTTPS requests",
                f"{seconds(ari_small['full_pass'])}, {ari_small['requests']} HTTPS requests",
            ),
            Row(
                "with ARI: ready, warm start",
                seconds(ari_large["ready_warm"]),
                seconds(ari_small["ready_warm"]),
                f"< {seconds(TARGET_READY)}",
                ari_large["ready_warm"] < TARGET_READY,
            ),
        ]
        if ari_delay is not None:
            per_lineage = (ari_delay["full_pass"] - ari_small["full_pass"]) / ARI_DELAYED
            result.rows.append(
                Row(
                    f"with ARI, the CA answering in {ARI_DELAY * 1000:.0f} ms:"
                    f" a full pass, {ARI_DELAYED} lineages",
                    f"{seconds(ari_delay['full_pass'])} ({seconds(per_lineage)} a lineage;"
                    f" {LARGE:,} lineages: about {per_lineage * LARGE:.0f} s)",
                )
            )
        result.notes.append(
            "With ARI (the standard library, every lane), a full pass asks the CA about"
            " every lineage whose renewal configuration names a server (the directory"
            " and renewalInfo), on the main loop after READY=1: a renewal that arrives"
            " meanwhile waits for it."
        )
    result.data = {
        "sizes": {str(size): figures for size, figures in sizes},
        "small": small,
        "ari_large": ari_large,
        "ari_small": ari_small,
        "ari_delayed": ari_delay,
    }
    if profile_dir is not None:
        for path in sorted(profile_dir.glob("*.prof")):
            (path.with_suffix(".txt")).write_text(profile_text(path, 40))
        result.notes.append(f"cProfile output: {profile_dir}/*.txt")
    return result

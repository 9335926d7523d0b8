"""Memory and warm start at 10,000 lineages (issue 15, mem), step by step.

    python -m bench.mem serve WORKDIR [--count 10000]
        a private Postfix and a host of COUNT lineages (bench.common.make_host),
        everything deployed by one in-process pass; then waits, holding the
        Postfix, until WORKDIR/stop exists (so that the steps below can be
        repeated against the same host while the code changes);
    python -m bench.mem warm WORKDIR [--python P] [--daemon DIR] [--profile OUT]
        one warm start of `danesync run`: seconds to READY=1 and VmRSS after it;
    python -m bench.mem memory CONFIG   (run by `warm`, with P and DIR)
        in-process: load the state, read every lineage through CertbotLineages,
        drop the offers, gc, VmRSS (and tracemalloc's top with --trace).

`--daemon DIR` runs another checkout's daemon/ (the baseline of the same run).
The heavy steps take /tmp/danesync-bench.lock themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK = "/tmp/danesync-bench.lock"


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def serve(workdir: Path, count: int) -> None:
    import logging

    import structlog
    from tests.harness.certs import Hierarchy
    from tests.harness.postfix import PostfixInstance

    from bench.common import make_host, progress
    from danesync.config import load_config
    from danesync.service import Service

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    with PostfixInstance() as postfix:
        with bench_lock():
            started = time.monotonic()
            host = make_host(workdir / "host", postfix, Hierarchy("Bench Mem"), count - 1)
            progress(f"mem: {count} lineages written in {time.monotonic() - started:.1f} s")
            started = time.monotonic()
            Service(load_config(host.config)).reconcile(monitor=False)
            progress(f"mem: cold pass {time.monotonic() - started:.1f} s (load {load_average()})")
        (workdir / "config").write_text(str(host.config))
        while not (workdir / "stop").exists():
            time.sleep(1)


def _environment(daemon_dir: Path | None) -> dict[str, str]:
    from tests.harness.danesync import danesync_env

    repo = Path(__file__).resolve().parent.parent
    path = [str(daemon_dir or repo / "daemon"), str(repo)]
    return danesync_env({"PYTHONPATH": os.pathsep.join(path)})


def warm(
    workdir: Path, python: str, daemon_dir: Path | None, profile: Path | None
) -> dict[str, Any]:
    from bench.common import Daemon, sample_process

    config = Path((workdir / "config").read_text())
    env = _environment(daemon_dir)
    figures: dict[str, Any] = {"python": python, "daemon": str(daemon_dir or "this worktree")}
    with bench_lock():
        figures["load_before"] = load_average()
        daemon = Daemon(config, workdir, python=python, env=env, profile=profile, name="warm")
        daemon.start()
        try:
            figures["ready"] = daemon.wait_ready(timeout=600)
            figures["ready_cpu"] = daemon.ready_cpu
            time.sleep(5.0)
            sample = sample_process(daemon.pid)
            figures["rss_mib"] = sample.rss_kib / 1024
            figures["hwm_mib"] = sample.hwm_kib / 1024
            figures["errors"] = len(daemon.errors())
        finally:
            daemon.stop()
        argv = [python, "-m", "bench.mem", "memory", str(config)]
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=Path(__file__).parent.parent,
        )
        figures["memory"] = json.loads(completed.stdout)
        figures["load_after"] = load_average()
    return figures


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def service_memory(config_path: Path, trace: bool) -> dict[str, Any]:
    """The daemon's first pass in this process (Service.reconcile, then the
    monitoring), for what it keeps between passes: VmRSS and tracemalloc."""
    import logging

    import structlog

    import danesync.loop  # noqa: F401  (the daemon's imports)
    from danesync.config import load_config
    from danesync.service import Service

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    config = load_config(config_path)
    gc.collect()
    figures: dict[str, Any] = {"imports_mib": _rss_mib()}
    if trace:
        import tracemalloc

        tracemalloc.start(4)
    started = time.perf_counter()
    service = Service(config)
    service.reconcile(monitor=False)
    figures["pass_s"] = time.perf_counter() - started
    service.run_monitoring()
    gc.collect()
    figures["rss_mib"] = _rss_mib()
    if trace:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        figures["traced_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
        figures["top"] = [
            f"{stat.size / 2**20:.1f} MiB "
            + " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in stat.traceback)
            for stat in snapshot.statistics("traceback")[:25]
        ]
    del service
    return figures


def _read_cache(config: Any, state: Any) -> Any:
    """The read cache as the daemon opens it: sharing the state's chains where
    the code measured can (memplan); a baseline's daemon/ opens it alone."""
    from danesync import adapters

    if hasattr(state, "chains_of"):
        return adapters.open_read_cache(config, state.chains_of)
    return adapters.open_read_cache(config)


def memory(config_path: Path, trace: bool) -> dict[str, Any]:
    """What the daemon keeps between passes: the state and the reads, in this process."""
    import danesync.loop  # noqa: F401  (the daemon's imports)
    from danesync.adapters import CertbotLineages
    from danesync.config import load_config
    from danesync.state import StateStore

    config = load_config(config_path)
    now = __import__("datetime").datetime.now(__import__("datetime").UTC)
    gc.collect()
    figures: dict[str, Any] = {"imports_mib": _rss_mib()}
    if trace:
        import tracemalloc

        tracemalloc.start(3)
    started = time.perf_counter()
    store = StateStore(config.state.dir)
    state = store.load().state
    figures["load_state_s"] = time.perf_counter() - started
    gc.collect()
    figures["state_mib"] = _rss_mib()
    lineages = CertbotLineages(config, _read_cache(config, state))
    started = time.perf_counter()
    offers = [lineages.read_candidate(c, now) for c in config.certificates]
    figures["read_s"] = time.perf_counter() - started
    figures["offers"] = sum(1 for o in offers if hasattr(o, "info"))
    del offers
    gc.collect()
    figures["rss_mib"] = _rss_mib()
    figures["lineages"] = len(state.lineages)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the heap keeps of freed memory
        figures["rss_trimmed_mib"] = _rss_mib()
    if trace:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        figures["traced_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
        figures["top"] = [
            f"{stat.size / 2**20:.1f} MiB {stat.traceback.format()[-1].strip()}"
            for stat in snapshot.statistics("lineno")[:15]
        ]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("serve")
    one.add_argument("workdir", type=Path)
    one.add_argument("--count", type=int, default=10_000)
    two = commands.add_parser("warm")
    two.add_argument("workdir", type=Path)
    two.add_argument("--python", default=sys.executable)
    two.add_argument("--daemon", type=Path)
    two.add_argument("--profile", type=Path)
    three = commands.add_parser("memory")
    three.add_argument("config", type=Path)
    three.add_argument("--trace", action="store_true")
    three.add_argument("--service", action="store_true", help="the daemon's first pass")
    arguments = parser.parse_args()
    if arguments.command == "serve":
        serve(arguments.workdir, arguments.count)
    elif arguments.command == "warm":
        figures = warm(arguments.workdir, arguments.python, arguments.daemon, arguments.profile)
        print(json.dumps(figures, indent=1))
    else:
        measure = service_memory if arguments.service else memory
        print(json.dumps(measure(arguments.config, arguments.trace), indent=1))


if __name__ == "__main__":
    main()

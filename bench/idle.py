"""Idle cost: CPU and memory of `danesync run` with 50 lineages doing nothing.

Every process is sampled from /proc/<pid>/stat (utime + stime) and
/proc/<pid>/status (VmRSS, context switches of every thread) at the start and
the end of the same window, after the daemon has deployed everything and
gone quiet. Baselines in the same window: a bare `time.sleep`, and the same
interpreter with every module the daemon imports.

The daemon runs once with the interpreter of this run (the PyPI venv) and
once with /usr/bin/python3 and Debian 12's own libraries, as the .deb runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.harness.certs import Hierarchy
from tests.harness.danesync import danesync_env
from tests.harness.postfix import PostfixInstance

from bench.common import (
    Daemon,
    ProcessSample,
    Result,
    Row,
    library_versions,
    make_host,
    progress,
    sample_process,
)

LINEAGES = 50
TARGET_CPU_PER_MINUTE = 0.05
TARGET_RSS_MIB = 50
DEBIAN_PYTHON = "/usr/bin/python3"
QUIET = 3.0  # seconds after the daemon is done before the window opens

# Everything `danesync run` imports, including what a full pass loads lazily.
IMPORTS = (
    "import danesync.loop, danesync.service, danesync.watcher, danesync.actions.dns\n"
    "import danesync.actions.probe, danesync.ari, danesync.notify, danesync.log\n"
    "import watchdog.observers.inotify\n"
    "try:\n"
    "    import systemd.daemon\n"
    "except ImportError:\n"
    "    pass\n"
)


def _sleeper(python: str, seconds: float, imports: bool) -> subprocess.Popen[bytes]:
    code = (IMPORTS if imports else "") + f"import time\ntime.sleep({seconds})\n"
    return subprocess.Popen([python, "-c", code], env=danesync_env())


def run(workdir: Path, window: float) -> Result:
    lanes = [("PyPI venv" if sys.prefix != sys.base_prefix else "this python", sys.executable)]
    if sys.prefix != sys.base_prefix and os.path.exists(DEBIAN_PYTHON):
        lanes.append(("Debian 12 python3-*", DEBIAN_PYTHON))
    ca = Hierarchy("Bench Idle")
    samples: dict[str, tuple[ProcessSample, ProcessSample]] = {}
    versions = {label: library_versions(python) for label, python in lanes}
    with ExitStack() as stack:
        daemons: dict[str, Daemon] = {}
        for index, (label, python) in enumerate(lanes):
            postfix = stack.enter_context(PostfixInstance())
            host = make_host(workdir / f"lane{index}", postfix, ca, LINEAGES - 1)
            daemon = Daemon(host.config, workdir, python=python, name=f"danesync-idle-{index}")
            daemon.start()
            stack.callback(daemon.stop)
            daemons[label] = daemon
        for label, daemon in daemons.items():
            daemon.wait_ready()
            deployed = daemon.count("chain.deployed")
            if deployed != LINEAGES:
                raise RuntimeError(f"{label}: {deployed} of {LINEAGES} chains deployed")
        sleepers: dict[str, subprocess.Popen[bytes]] = {}
        for label, python in lanes:
            for with_imports in (False, True):
                key = f"{label}|{'imports' if with_imports else 'bare'}"
                sleepers[key] = _sleeper(python, window + QUIET + 30, with_imports)
                stack.callback(sleepers[key].kill)
        time.sleep(QUIET)
        pids = {f"{label}|danesync": d.pid for label, d in daemons.items()}
        pids.update({key: process.pid for key, process in sleepers.items()})
        progress(f"idle: {len(daemons)} daemon(s) with {LINEAGES} lineages, {window:.0f} s window")
        before = {key: sample_process(pid) for key, pid in pids.items()}
        time.sleep(window)
        after = {key: sample_process(pid) for key, pid in pids.items()}
        samples = {key: (before[key], after[key]) for key in pids}
        for label, daemon in daemons.items():
            if daemon.errors():
                raise RuntimeError(f"{label}: danesync logged errors: {daemon.errors()}")

    per_minute = 60.0 / window

    def cpu(key: str) -> float:
        start, end = samples[key]
        return (end.cpu - start.cpu) * per_minute

    def rss(key: str) -> float:
        return samples[key][1].rss_kib / 1024

    def mib(key: str, name: str) -> str:
        return f"{getattr(samples[key][1], name) / 1024:.1f} MiB"

    def wakeups(key: str) -> float:
        start, end = samples[key]
        return (end.switches - start.switches) * per_minute

    result = Result(
        name="idle",
        title=f"Idle cost, {LINEAGES} lineages",
        setup=(
            f"`danesync run`, DNS off, 1 default chain + {LINEAGES - 1} SNI lineages, all"
            f" deployed; {window:.0f} s window starting {QUIET:.0f} s after READY=1"
        ),
        baseline=(
            "the same interpreter running `time.sleep` (bare), and with every module the"
            " daemon imports (imports)"
        ),
    )
    data: dict[str, Any] = {"window": window, "lanes": {}}
    for label, _python in lanes:
        ours = f"{label}|danesync"
        bare, imports = f"{label}|bare", f"{label}|imports"
        result.rows += [
            Row(
                f"{label}: CPU per minute",
                f"{cpu(ours):.3f} s",
                f"{cpu(bare):.3f} s bare, {cpu(imports):.3f} s imports",
                f"< {TARGET_CPU_PER_MINUTE} s",
                cpu(ours) < TARGET_CPU_PER_MINUTE,
            ),
            Row(
                f"{label}: resident memory (VmRSS)",
                f"{rss(ours):.1f} MiB",
                f"{rss(bare):.1f} MiB bare, {rss(imports):.1f} MiB imports",
                f"< {TARGET_RSS_MIB} MB",
                rss(ours) < TARGET_RSS_MIB,
            ),
            Row(
                f"{label}: memory not shared with other processes (USS), PSS",
                f"{mib(ours, 'private_kib')}, {mib(ours, 'pss_kib')}",
                f"{mib(imports, 'private_kib')}, {mib(imports, 'pss_kib')} (imports)",
            ),
            Row(
                f"{label}: peak memory (VmHWM), threads",
                f"{samples[ours][1].hwm_kib / 1024:.1f} MiB, {samples[ours][1].threads}",
                f"{samples[imports][1].hwm_kib / 1024:.1f} MiB,"
                f" {samples[imports][1].threads} (imports)",
            ),
            Row(
                f"{label}: wake-ups per minute (context switches, all threads)",
                f"{wakeups(ours):.0f}",
                f"{wakeups(bare):.0f} bare, {wakeups(imports):.0f} imports",
            ),
        ]
        data["lanes"][label] = {
            "libraries": versions[label],
            **{
                key.split("|", 1)[1]: {"before": vars(start), "after": vars(end)}
                for key, (start, end) in samples.items()
                if key.startswith(label + "|")
            },
        }
    for label, _python in lanes:
        result.notes.append(f"{label}: {versions[label]}")
    result.data = data
    return result

"""What every benchmark needs: lineages, a daemon to start and watch, the clock
on what Postfix serves, process accounting from /proc, and the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from tests.harness.certs import Hierarchy, Leaf, make_key
from tests.harness.danesync import danesync_env, json_events, write_config
from tests.harness.postfix import PostfixInstance

from danesync.actions.probe import probe_starttls
from danesync.errors import ProbeError

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DOMAIN = "example.test"


# --- figures -------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 20 values is the 19th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


@dataclass
class Row:
    """One line of a result table: danesync's figure beside the baseline's."""

    measure: str
    danesync: str
    baseline: str = ""
    target: str = ""
    met: bool | None = None  # None: no target


@dataclass
class Result:
    name: str
    title: str
    setup: str
    baseline: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_targets(self) -> list[str]:
        return [row.measure for row in self.rows if row.met is False]


def seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


# --- lineages ---------------------------------------------------------------------


def issue(ca: Hierarchy, hostname: str, *, authority_key_id: bool = False) -> Leaf:
    """A leaf valid now (the harness's fixed NOW would age), with a new EC key.

    `authority_key_id`: as real CAs issue them; ARI needs it to name the leaf.
    """
    now = dt.datetime.now(dt.UTC)
    return ca.issue(
        [hostname],
        key=make_key("ec256"),
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=89),
        authority_key_id=authority_key_id,
    )


def der(leaf: Leaf) -> bytes:
    return leaf.cert.public_bytes(serialization.Encoding.DER)


def sni_hostname(index: int) -> str:
    return f"mx{index}.{DOMAIN}"


DEFAULT_HOSTNAME = f"mx.{DOMAIN}"


@dataclass
class Host:
    """A certbot directory with lineages and a danesync config for one Postfix."""

    root: Path
    postfix: PostfixInstance
    config: Path
    letsencrypt: Path
    lineages: list[str]

    @property
    def deploy_dir(self) -> Path:
        return self.root / "deploy"

    def servername(self, lineage: str) -> str | None:
        return None if lineage == DEFAULT_HOSTNAME else lineage


def make_host(
    root: Path,
    postfix: PostfixInstance,
    ca: Hierarchy,
    sni_count: int,
    *,
    settle: float | None = None,
    reconcile_interval: int | None = None,
    acme_server: str | None = None,
) -> Host:
    """A default chain and `sni_count` SNI lineages (Postfix takes one default per
    key algorithm, so a host with many certificates serves them by SNI); DNS off.

    With `acme_server`, certbot's renewal configurations name that CA and the
    leaves carry an Authority Key Identifier, so danesync asks the CA for ARI.
    Without, the harness's unreachable server and no AKI: no ARI requests.
    """
    from tests.harness.lineage import make_lineage

    root.mkdir(parents=True, exist_ok=True)
    letsencrypt = root / "letsencrypt"
    names = [DEFAULT_HOSTNAME, *(sni_hostname(i) for i in range(sni_count))]
    for name in names:
        leaf = issue(ca, name, authority_key_id=acme_server is not None)
        if acme_server is None:
            make_lineage(letsencrypt, name, leaf)
        else:
            make_lineage(letsencrypt, name, leaf, server=acme_server)
    daemon: dict[str, Any] = {}
    if settle is not None:
        daemon["settle"] = settle
    if reconcile_interval is not None:
        daemon["reconcile_interval"] = reconcile_interval
    sections: dict[str, dict[str, Any]] = {
        "certbot": {"config_dir": letsencrypt},
        "postfix": {
            "config_dir": postfix.config_dir,
            "deploy_dir": root / "deploy",
            "probe": f"{postfix.host}:{postfix.port}",
        },
        "dns": {"mode": "off"},
        "state": {"dir": root / "state"},
    }
    if daemon:
        sections["daemon"] = daemon
    certificates: list[Mapping[str, Any]] = [{"lineage": DEFAULT_HOSTNAME}]
    certificates += [{"lineage": name, "sni": True} for name in names[1:]]
    config = write_config(root / "danesync.toml", sections, certificates)
    return Host(root, postfix, config, letsencrypt, names)


# --- what Postfix serves ------------------------------------------------------------


def served_der(postfix: PostfixInstance, servername: str | None = None) -> bytes | None:
    try:
        leaf: bytes = probe_starttls(postfix.host, postfix.port, servername, timeout=2)
    except ProbeError:
        return None
    return leaf


def first_served(
    postfix: PostfixInstance,
    wanted: Callable[[bytes], bool],
    servername: str | None = None,
    timeout: float = 30,
    workers: int = 4,
    interval: float = 0.005,
) -> tuple[float, bytes]:
    """The first STARTTLS client that gets a `wanted` leaf (DER): (when it connected, leaf).

    Several clients poll side by side, each opening a new connection every
    `interval`, and the time is when the winning client connected: a session
    that starts just as Postfix reloads can stall for a second in STARTTLS
    (Postfix's behaviour, with or without danesync), which would otherwise be
    counted as time the new leaf was not served.
    """
    found: list[tuple[float, bytes]] = []
    done = threading.Event()
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def poll(offset: float) -> None:
        time.sleep(offset)
        while not done.is_set() and time.monotonic() < deadline:
            connected = time.monotonic()
            served = served_der(postfix, servername)
            if served is not None and wanted(served):
                with lock:
                    found.append((connected, served))
                done.set()
                return
            time.sleep(interval)

    threads = [
        threading.Thread(target=poll, args=(index * interval / workers,), daemon=True)
        for index in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not found:
        raise TimeoutError(f"{postfix.host}:{postfix.port} did not serve the new leaf")
    return min(found)


def wait_served(
    postfix: PostfixInstance, expected: bytes, servername: str | None = None, timeout: float = 30
) -> float:
    """Monotonic time the first client that got `expected` (DER) connected."""
    return first_served(postfix, lambda leaf: leaf == expected, servername, timeout)[0]


class Stopwatch:
    """`first_served` in a thread, started before the action it times."""

    def __init__(self, postfix: PostfixInstance, expected: bytes, servername: str | None = None):
        self._result: list[float] = []
        self._error: list[BaseException] = []

        def run() -> None:
            try:
                self._result.append(wait_served(postfix, expected, servername))
            except BaseException as error:
                self._error.append(error)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def seen(self) -> float:
        self._thread.join()
        if self._error:
            raise self._error[0]
        return self._result[0]


def wait_served_change(
    postfix: PostfixInstance, old: bytes | None, servername: str | None = None, timeout: float = 120
) -> tuple[float, bytes]:
    """The first client that got a leaf other than `old`: (wall-clock time, leaf)."""
    seen, leaf = first_served(postfix, lambda der: der != old, servername, timeout)
    return time.time() - (time.monotonic() - seen), leaf


# --- a danesync daemon -----------------------------------------------------------------

_COMPILED: set[tuple[str, Path]] = set()


def byte_compile(code: Path, python: str = sys.executable) -> None:
    """Write the .pyc files of `code` (a daemon/ directory) for `python`, as the
    Debian package's install does, so that no run pays for compiling the
    sources and each code of an A/B pair starts alike: PYTHONDONTWRITEBYTECODE
    in the environment, or a fresh `git archive`, would otherwise leave one of
    them compiling at every start."""
    if (python, code) in _COMPILED:
        return
    subprocess.run([python, "-m", "compileall", "-q", str(code)], check=True, capture_output=True)
    _COMPILED.add((python, code))


class Daemon:
    """`danesync run --log-format json` with a NOTIFY_SOCKET bound here, as systemd does."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        profile: Path | None = None,
        name: str = "danesync",
    ) -> None:
        self.config = config
        self.python = python
        self.log_path = workdir / f"{name}.log"
        self.socket_path = Path(tempfile.mkdtemp(prefix="danesync-bench-notify-")) / "notify"
        self.extra_env = dict(env or {})
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._socket: socket.socket | None = None
        self._log: Any = None
        self._ready = threading.Event()
        self.ready_at = 0.0
        self.ready_cpu = 0.0
        self.notifications: list[tuple[float, str]] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.socket_path))
        threading.Thread(target=self._listen, daemon=True).start()
        env = danesync_env({"NOTIFY_SOCKET": str(self.socket_path), **self.extra_env})
        for code in env["PYTHONPATH"].split(os.pathsep):
            if (Path(code) / "danesync").is_dir():
                byte_compile(Path(code), self.python)
        argv = [self.python]
        if self.profile is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile)]
        argv += ["-m", "danesync", "run", "-c", str(self.config), "--log-format", "json"]
        self._log = self.log_path.open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def _listen(self) -> None:
        """Read every notification, as systemd does: a full socket would block the daemon."""
        sock = self._socket
        assert sock is not None
        sock.settimeout(0.2)
        while self._socket is not None:
            try:
                message = sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            self.notifications.append((time.monotonic(), message))
            if "READY=1" in message.splitlines() and not self._ready.is_set():
                self.ready_at = time.monotonic()
                # CPU seconds (the daemon and the commands it waited for) tell what
                # the start cost on a shared machine better than the wall clock.
                with contextlib.suppress(OSError, ValueError):
                    sample = sample_process(self.pid)
                    self.ready_cpu = sample.cpu + sample.children_cpu
                self._ready.set()

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from start to READY=1 on the notify socket."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"danesync not ready:\n{self.log_tail()}")
        return self.ready_at - self.started

    def events(self) -> list[dict[str, Any]]:
        try:
            return json_events(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return []

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def wait_count(self, event: str, count: int, timeout: float = 60) -> None:
        """Wait until `event` has been logged `count` times in all."""
        deadline = time.monotonic() + timeout
        while self.count(event) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {event} #{count}:\n{self.log_tail()}")
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"danesync exited:\n{self.log_tail()}")
            time.sleep(0.02)

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("level") in ("error", "critical")]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> int | None:
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        if self._socket is not None:
            sock, self._socket = self._socket, None  # the reader stops within 0.2 s
            time.sleep(0.25)
            sock.close()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
                self.socket_path.parent.rmdir()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


# --- /proc accounting -------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    cpu: float  # utime + stime, seconds
    children_cpu: float  # cutime + cstime of waited-for children, seconds
    rss_kib: int
    hwm_kib: int
    pss_kib: int  # proportional share: shared library pages divided among their users
    private_kib: int  # pages no other process shares (USS)
    threads: int
    switches: int  # voluntary + involuntary context switches of every thread: wake-ups


def sample_process(pid: int) -> ProcessSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    status = _status(Path(f"/proc/{pid}/status"))
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            task_status = _status(task / "status")
            switches += int(task_status["voluntary_ctxt_switches"])
            switches += int(task_status["nonvoluntary_ctxt_switches"])
    rollup = _status(Path(f"/proc/{pid}/smaps_rollup"))
    return ProcessSample(
        pss_kib=int(rollup["Pss"].split()[0]),
        private_kib=sum(int(rollup[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")),
        cpu=(utime + stime) / CLOCK_TICKS,
        children_cpu=(cutime + cstime) / CLOCK_TICKS,
        rss_kib=int(status["VmRSS"].split()[0]),
        hwm_kib=int(status["VmHWM"].split()[0]),
        threads=int(status["Threads"]),
        switches=switches,
    )


def _status(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        values[key] = value.strip()
    return values


# --- the machine ------------------------------------------------------------------------------


@contextlib.contextmanager
def root_workdir(prefix: str) -> Iterator[Path]:
    """A work directory for a benchmark that runs a private Postfix (root only),
    removed afterwards unless DANESYNC_BENCH_KEEP=1."""
    if os.geteuid() != 0:
        raise SystemExit("the benchmarks run a private Postfix and need root")
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    try:
        yield workdir
    finally:
        if os.environ.get("DANESYNC_BENCH_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    debian = "unknown"
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    postfix = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        postfix = subprocess.run(
            ["postconf", "-h", "mail_version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    load = "unknown"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "load": load,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "ram": memory,
        "kernel": platform.release(),
        "debian": debian,
        "python": f"{platform.python_version()} ({sys.executable})",
        "postfix": postfix,
    }


def library_versions(python: str) -> str:
    """The versions of danesync's libraries that `python` imports."""
    code = (
        "import importlib.metadata as m\n"
        "names = ['cryptography', 'dnspython', 'watchdog', 'structlog']\n"
        "out = []\n"
        "for n in names:\n"
        "    try: out.append(f'{n} {m.version(n)}')\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(', '.join(out))\n"
    )
    completed = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return completed.stdout.strip()


def dump(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def timed(function: Callable[[], Any]) -> float:
    started = time.monotonic()
    function()
    return time.monotonic() - started

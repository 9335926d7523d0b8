"""A validating DNS cache and a real DANE client, for the rollover tests.

What a sending mail server sees is not what the authoritative server
serves now: it is what its validating cache still holds. This harness puts
the real pieces between danesync and the client:

- `UnboundResolver`: Unbound on 127.53.10.1:53 (the range this harness
  owns), validating with the DNSKEY of a DNSSEC-signed `BindServer`
  (``BindServer(dnssec=True)``) as trust anchor, a stub zone to that BIND,
  TTLs honoured as served (``cache-min-ttl: 0``, no prefetch, no
  serve-expired, no aggressive NSEC). No root priming: there is no internet.
- `DanePostfix`: a `PostfixInstance` whose smtpd listens on 127.53.10.2:25,
  so the TLSA name is the real ``_25._tcp.mx.example.test`` (the zone's
  ``mx`` points there: ``BindServer(mx_address=DanePostfix.ADDRESS)``).
- `dane_check`: Postfix's own DANE client, ``posttls-finger -c -l dane
  example.test`` (MX, A and TLSA looked up through the cache and validated),
  in a mount namespace (``unshare -m``) whose /etc/resolv.conf names the cache
  with ``options trust-ad``.
- `DaneSampler`: a thread running `dane_check` back to back for the whole
  rollover; zero failed handshakes is the only pass.

Needs root (unshare, port 53, a private Postfix) and the packages unbound,
postfix, util-linux; CI installs them with .ci/install-deps.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import require_program, require_root
from tests.harness.bind import BindServer, normalize_tlsa
from tests.harness.postfix import PostfixInstance

UNBOUND = "/usr/sbin/unbound"
POSTTLS_FINGER = "/usr/sbin/posttls-finger"
RESOLVER_ADDRESS = "127.53.10.1"  # 127.53.10.0/24 belongs to these tests
MX_ADDRESS = "127.53.10.2"
START_TIMEOUT = 20.0

_LIVE: set[UnboundResolver] = set()


def _stop_leftovers() -> None:
    for resolver in list(_LIVE):
        resolver.close()


atexit.register(_stop_leftovers)


class UnboundResolver:
    """A private, validating Unbound in front of one signed BIND zone."""

    def __init__(self, bind: BindServer, address: str = RESOLVER_ADDRESS) -> None:
        if not bind.dnssec:
            raise ValueError("UnboundResolver needs BindServer(dnssec=True)")
        self.bind = bind
        self.address = address
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> UnboundResolver:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("UnboundResolver was never started")
        return self.directory

    @property
    def log_path(self) -> Path:
        return self._dir / "unbound.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="danesync-unbound-"))
        self.directory.chmod(0o755)
        anchor = self._dir / "anchor.keys"
        anchor.write_text(self.bind.trust_anchor())
        config = self._dir / "unbound.conf"
        config.write_text(self._config(anchor))
        checked = subprocess.run(
            ["unbound-checkconf", str(config)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise RuntimeError(f"unbound-checkconf {config}: {checked.stdout}{checked.stderr}")
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [UNBOUND, "-d", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _LIVE.add(self)
        self._wait_ready()

    def _config(self, anchor: Path) -> str:
        d = self._dir
        zone = self.bind.zone
        return f"""\
server:
    interface: {self.address}
    port: 53
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    num-threads: 1
    so-reuseport: no
    do-not-query-localhost: no
    cache-min-ttl: 0
    prefetch: no
    prefetch-key: no
    serve-expired: no
    aggressive-nsec: no
    qname-minimisation: no
    module-config: "validator iterator"
    trust-anchor-file: "{anchor}"
    local-zone: "{zone.split(".")[-1]}." nodefault
    domain-insecure: "."
remote-control:
    control-enable: no
stub-zone:
    name: "{zone}."
    stub-addr: {self.bind.host}@{self.bind.port}
"""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"unbound exited at start:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(dns.exception.DNSException, OSError):
                if self.validated(f"{self.bind.zone}.", "SOA"):
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"unbound on {self.address} not validating after {START_TIMEOUT} s:\n"
            f"{self.log_text()[-3000:]}"
        )

    def validated(self, name: str, rrtype: str) -> bool:
        """The cache answers `name`/`rrtype` with NOERROR and the AD bit."""
        query = dns.message.make_query(name, rrtype, want_dnssec=True)
        query.flags |= dns.flags.AD
        response = dns.query.udp(query, self.address, timeout=1, port=53)
        return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AD)

    def tlsa(self, name: str) -> tuple[set[str], int | None]:
        """The TLSA RRset the cache answers now, and its remaining TTL."""
        query = dns.message.make_query(name, "TLSA", want_dnssec=True)
        response = dns.query.udp(query, self.address, timeout=2, port=53)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TLSA:
                return {normalize_tlsa(r.to_text()) for r in rrset}, rrset.ttl
        return set(), None

    def stop(self) -> None:
        process, self._process = self._process, None
        _LIVE.discard(self)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


class DanePostfix(PostfixInstance):
    """A private Postfix whose smtpd listens on `MX_ADDRESS`:25 (the MX's real port)."""

    ADDRESS = MX_ADDRESS

    def __init__(self, **options: Any) -> None:
        parameters: dict[str, str] = {}
        parameters.update(options.pop("parameters", {}))
        super().__init__(parameters=parameters, **options)
        self.host = MX_ADDRESS

    def _write_config(self) -> None:
        self.port = 25  # the real SMTP port: DANE clients look up _25._tcp.<mx>
        super()._write_config()
        master_cf = self.config_dir / "master.cf"
        text = master_cf.read_text().replace(f"127.0.0.1:{self.port}", f"{MX_ADDRESS}:25", 1)
        master_cf.write_text(text)
        past = time.time() - 10  # as the parent does: no "cool down" wait
        os.utime(master_cf, (past, past))


def held_until(looked: float, remaining: int | None) -> float | None:
    """The moment before which a cache that answered with `remaining` TTL at
    `looked` still holds that answer.

    Unbound counts in whole seconds (`time(NULL)`): it answers with
    `expiry - now` and serves the RRset while `now <= expiry`, so the answer
    stays until the end of second `floor(looked) + remaining`.
    """
    if remaining is None:
        return None
    return float(math.floor(looked) + remaining + 1)


@dataclass(frozen=True)
class DaneCheck:
    started: float  # time.time()
    finished: float
    verified: bool  # "Verified TLS connection established"
    tlsa: frozenset[str]  # what the cache answered for the TLSA name just before
    output: str
    held_until: float | None = None  # the cache keeps `tlsa` at least until then

    @property
    def failed(self) -> bool:
        """A DANE failure: TLSA records were in use and the handshake did not verify.

        With no TLSA record (NODATA, validated) a sender does no DANE and
        delivers over unauthenticated TLS: that is not a failure.
        """
        return not self.verified and (bool(self.tlsa) or "DANE TLSA" in self.output)


@contextlib.contextmanager
def resolv_conf(resolver: str) -> Iterator[Path]:
    """A resolv.conf naming `resolver` with `options trust-ad`, for a mount namespace."""
    directory = Path(tempfile.mkdtemp(prefix="danesync-resolv-"))
    try:
        path = directory / "resolv.conf"
        path.write_text(f"nameserver {resolver}\noptions trust-ad attempts:1 timeout:2\n")
        path.chmod(0o644)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def dane_check(resolver: UnboundResolver, resolv: Path, domain: str = "example.test") -> DaneCheck:
    """One ``posttls-finger -c -l dane DOMAIN`` through `resolver`."""
    tlsa_name = f"_25._tcp.mx.{resolver.bind.zone}."
    looked = time.time()
    try:
        records, ttl = resolver.tlsa(tlsa_name)
    except (dns.exception.DNSException, OSError):
        records, ttl = set(), None
    started = time.time()
    # The mount namespace sees our resolv.conf only; the host's stays untouched.
    script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    completed = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(resolv),
            POSTTLS_FINGER,
            "-c",
            "-l",
            "dane",
            domain,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = completed.stdout + completed.stderr
    return DaneCheck(
        started=started,
        finished=time.time(),
        verified="Verified TLS connection established" in output,
        tlsa=frozenset(records),
        output=output,
        held_until=held_until(looked, ttl),
    )


class DaneChecks:
    """Handshakes judged by a DANE client, for assertions."""

    checks: list[DaneCheck]

    @property
    def failures(self) -> list[DaneCheck]:
        return [check for check in self.checks if check.failed]

    def report(self) -> str:
        """Every failed check, for an assertion message."""
        lines = [f"{len(self.failures)} of {len(self.checks)} DANE handshakes failed"]
        for check in self.failures[:5]:
            until = f" until {check.held_until:.0f}" if check.held_until else ""
            lines.append(f"--- at {check.started:.1f}, cache held {sorted(check.tlsa)}{until}")
            lines.append(check.output[-1500:])
        return "\n".join(lines)


class DaneSampler(DaneChecks):
    """A thread running `dane_check` back to back until stopped."""

    def __init__(self, resolver: UnboundResolver, interval: float = 0.2) -> None:
        self.resolver = resolver
        self.interval = interval
        self.checks: list[DaneCheck] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with resolv_conf(self.resolver.address) as resolv:
            while not self._stop.is_set():
                self.checks.append(dane_check(self.resolver, resolv))
                self._stop.wait(self.interval)

    def __enter__(self) -> DaneSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for(self, condition: Any, what: str, timeout: float = 60) -> DaneCheck:
        """The first check (from now on) for which `condition(check)` holds."""
        start = len(self.checks)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for check in self.checks[start:]:
                if condition(check):
                    return check
            time.sleep(0.1)
        last = self.checks[-1].output if self.checks else "no check ran"
        raise AssertionError(f"no DANE check {what} within {timeout} s; last:\n{last}")


@contextlib.contextmanager
def address_lock() -> Iterator[None]:
    """Hold 127.53.10.1:53 and 127.53.10.2:25 for this process (other test runs wait)."""
    path = Path(tempfile.gettempdir()) / "danesync-127.53.10.lock"
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_dane_tools() -> None:
    require_root()
    for program in (UNBOUND, "unbound-checkconf", POSTTLS_FINGER, "unshare", "postfix"):
        require_program(program)


def unbound_fixture(name: str = "unbound", scope: Any = "function") -> Any:
    """A pytest fixture: `UnboundResolver` in front of the fixture ``bind``."""

    @pytest.fixture(name=name, scope=scope)
    def _fixture(bind: BindServer) -> Iterator[UnboundResolver]:
        require_dane_tools()
        with UnboundResolver(bind) as resolver:
            yield resolver

    return _fixture

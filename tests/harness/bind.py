"""A real BIND primary on loopback, for integration tests.

`BindServer` starts ``named -g`` on 127.0.0.1 and a free port (TCP and UDP),
all its files in a temporary directory. It serves one zone (``example.test``
by default) with SOA, NS ``ns1`` (A 127.0.0.1), MX ``mx`` and a second host
``mx2``, TTL 2. Two TSIG keys are made with ``tsig-keygen -a hmac-sha256``
and written mode 0600:

- `key_path` (``danesync``): what the code under test uses; the
  update-policy grants it TLSA at `grant_names` only;
- `admin_key_path` (``admin``): the harness's own key for changes "by hand"
  (`add_record`, `delete_record`, `nsupdate`), granted everything in the zone.

Changes by hand go through ``nsupdate`` and checks through ``dig``, never
through danesync's code. `stop()` and `start()` again keep the port and the
zone (with its journal), for "server down mid-rollover" tests. named is killed
at teardown even when the test fails, and dies with the test process.

Use in a test module::

    bind = bind_fixture()                  # module-scoped fixture named "bind"
    two = bind_fixture("bind_b")           # a second, independent server

    def test_x(bind: BindServer) -> None:
        bind.add_record("_25._tcp.mx.example.test.", "TLSA", "3 1 1 " + "ab" * 32)
        assert bind.dig_tlsa("_25._tcp.mx.example.test.") == {"3 1 1 " + "ab" * 32}
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import require_program

NAMED = "/usr/sbin/named"
TSIG_KEYGEN = "/usr/sbin/tsig-keygen"
HOST = "127.0.0.1"
START_TIMEOUT = 15.0

_LIVE: set[BindServer] = set()


@functools.cache
def _named_version() -> tuple[int, int]:
    """(major, minor) of ``named -v``: "BIND 9.18.49-1~deb12u3-Debian ..." -> (9, 18)."""
    words = subprocess.run([NAMED, "-v"], capture_output=True, text=True, check=True).stdout
    major, minor = words.split()[1].split(".")[:2]
    return int(major), int(minor)


def _lock_file_line(directory: Path) -> str:
    """A private lock file, so several named run side by side (9.18 locks
    /run/named/named.lock by default); BIND 9.20 has no lock file and
    rejects the option."""
    if _named_version() >= (9, 20):
        return ""
    return f'\tlock-file "{directory}/named.lock";\n'


def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


atexit.register(_kill_leftovers)


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGKILL named if the test process dies,
    # even by SIGKILL, so no named outlives a crashed test run.
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (racy, like any such probe)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for TCP and UDP on 127.0.0.1")


def normalize_tlsa(text: str) -> str:
    """``2 1 1 ABCD EF`` (dig splits long hex) -> ``2 1 1 abcdef``."""
    usage, selector, matching_type, *data = text.split()
    return f"{usage} {selector} {matching_type} {''.join(data).lower()}"


class BindServer:
    """A private named serving one zone; a context manager.

    Knot and PowerDNS (tests/harness/knot.py, pdns.py) subclass it: they
    replace the set-up and the spawn, and share the rest (nsupdate, dig,
    stop/start).
    """

    kind = "bind"
    # Log lines that say another process took the port between probe and bind.
    port_taken_markers: tuple[str, ...] = ("address in use",)
    programs: tuple[str, ...] = (NAMED, TSIG_KEYGEN, "named-checkconf", "nsupdate", "dig")

    def __init__(
        self,
        zone: str = "example.test",
        *,
        key_name: str = "danesync",
        grant_names: Sequence[str] | None = None,
        records: Sequence[str] = (),
        ttl: int = 2,
        dnssec: bool = False,
        mx_address: str = HOST,
        mx_ttl: int | None = None,
    ) -> None:
        self.zone = zone.rstrip(".").lower()
        self.key_name = key_name
        self.admin_key_name = "admin"
        self.grant_names = tuple(
            grant_names
            if grant_names is not None
            else (f"_25._tcp.mx.{self.zone}.", f"_25._tcp.mx2.{self.zone}.")
        )
        self.records = tuple(records)
        self.ttl = ttl
        # dnssec: the zone is signed with `dnssec-policy` (updates are signed as
        # they arrive); `trust_anchor()` gives its DNSKEY for a validating cache.
        self.dnssec = dnssec
        self.mx_address = mx_address  # where mx/mx2 point (a DANE client connects there)
        # The MX and its addresses with a TTL of their own, as on real hosts (long):
        # BIND adds the MX host's TLSA RRset to the additional section of an MX
        # answer, so a cache refetching a short-lived MX also refreshes its TLSA.
        self.mx_ttl = mx_ttl
        self.host = HOST
        self.port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- life cycle ------------------------------------------------------

    def __enter__(self) -> BindServer:
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
    def address(self) -> str:
        """``127.0.0.1:PORT``, as danesync's config writes a server."""
        return f"{self.host}:{self.port}"

    @property
    def key_path(self) -> Path:
        return self._dir / "danesync.key"

    @property
    def admin_key_path(self) -> Path:
        return self._dir / "admin.key"

    @property
    def log_path(self) -> Path:
        return self._dir / "named.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("BindServer was never started")
        return self.directory

    def start(self) -> None:
        """Start named; the first call sets everything up, later ones restart."""
        if self.running:
            return
        if self.directory is None:
            self._set_up()
            # Another test may grab the port between probe and bind: retry.
            for attempt in range(3):
                try:
                    self._spawn()
                    return
                except _PortTaken:
                    if attempt == 2:
                        raise
                    self.port = free_port()
                    self._write_config()
        else:
            self._spawn()

    def stop(self) -> None:
        """Stop named (SIGTERM, then SIGKILL); the zone and port are kept."""
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

    @contextlib.contextmanager
    def stopped(self) -> Iterator[BindServer]:
        """Stopped inside the block, running again after it, whatever happens."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def close(self) -> None:
        """Stop named and remove its directory."""
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_text(self) -> str:
        """What named wrote so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    # -- set-up ----------------------------------------------------------

    def _set_up(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"danesync-{self.kind}-"))
        self.directory.chmod(0o755)
        self.port = free_port()
        self._make_keys()
        (self._dir / f"{self.zone}.zone").write_text(self._zone_text())
        self._write_config()

    def _make_keys(self) -> None:
        """Both keys as BIND key files (what danesync reads), mode 0600."""
        for name, path in (
            (self.key_name, self.key_path),
            (self.admin_key_name, self.admin_key_path),
        ):
            text = subprocess.run(
                [TSIG_KEYGEN, "-a", "hmac-sha256", name],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            # Create 0600 before writing: the secret is never world-readable.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(text)

    def secret_of(self, path: Path) -> str:
        """The base64 secret in one of the harness's BIND key files."""
        match = re.search(r'secret "([^"]+)"', path.read_text())
        if match is None:
            raise RuntimeError(f"no secret in {path}")
        return match.group(1)

    def _zone_text(self) -> str:
        lines = [
            f"$ORIGIN {self.zone}.",
            f"$TTL {self.ttl}",
            f"@ IN SOA ns1 hostmaster 1 60 60 3600 {self.ttl}",
            "@ IN NS ns1",
            f"@ {self.mx_ttl or ''} IN MX 10 mx",
            f"ns1 IN A {HOST}",
            f"mx {self.mx_ttl or ''} IN A {self.mx_address}",
            f"mx2 {self.mx_ttl or ''} IN A {self.mx_address}",
            *self.records,
        ]
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        d = self._dir
        grants = "".join(
            f"\t\tgrant {self.key_name} name {name.rstrip('.')}. TLSA;\n"
            for name in self.grant_names
        )
        config = f"""\
options {{
\tdirectory "{d}";
\tpid-file "{d}/named.pid";
{_lock_file_line(d)}
\tsession-keyfile "{d}/session.key";
\tmanaged-keys-directory "{d}";
\tdump-file "{d}/named_dump.db";
\tstatistics-file "{d}/named.stats";
\tmemstatistics-file "{d}/named.memstats";
\tlisten-on port {self.port} {{ {HOST}; }};
\tlisten-on-v6 {{ none; }};
\tautomatic-interface-scan no;
\trecursion no;
\tnotify no;
\tdnssec-validation no;
\tallow-transfer {{ none; }};
}};
controls {{ }};
include "{self.key_path}";
include "{self.admin_key_path}";
zone "{self.zone}" {{
\ttype primary;
\tfile "{self.zone}.zone";
\tupdate-policy {{
{grants}\t\tgrant {self.admin_key_name} zonesub ANY;
\t}};
}};
"""
        if self.dnssec:
            config = config.replace(
                f'\tfile "{self.zone}.zone";\n', f'\tfile "{self.zone}.zone";\n{_DNSSEC_ZONE}', 1
            )
            config = _DNSSEC_POLICY.format(ttl=self.ttl) + config
        (d / "named.conf").write_text(config)

    def _check_config(self) -> None:
        config = self._dir / "named.conf"
        checked = subprocess.run(
            ["named-checkconf", str(config)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise RuntimeError(f"named-checkconf {config}: {checked.stdout}{checked.stderr}")

    def _command(self) -> list[str]:
        # -g: foreground, log to stderr; -4: loopback IPv4 only; -n: few threads.
        return [NAMED, "-g", "-4", "-n", "2", "-c", str(self._dir / "named.conf")]

    def _spawn(self) -> None:
        self._check_config()
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only prctl, before exec
        )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        query = dns.message.make_query(f"{self.zone}.", "SOA")
        query.flags &= ~dns.flags.RD
        deadline = time.monotonic() + START_TIMEOUT
        ready = {"udp": False, "tcp": False}
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log_text()[-3000:]}")
            log_text = self.log_text()
            if any(marker in log_text for marker in self.port_taken_markers):
                raise _PortTaken(self.port)
            for transport, send in (("udp", dns.query.udp), ("tcp", dns.query.tcp)):
                if ready[transport]:
                    continue
                with contextlib.suppress(dns.exception.DNSException, OSError):
                    response = send(query, self.host, timeout=0.2, port=self.port)
                    ready[transport] = response.rcode() == dns.rcode.NOERROR and bool(
                        response.flags & dns.flags.AA
                    )
            if all(ready.values()) and (not self.dnssec or self._signed()):
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.kind} on {self.address} not ready after {START_TIMEOUT} s:\n"
            + self.log_text()[-3000:]
        )

    # -- changes by hand and checks -------------------------------------

    def nsupdate(self, commands: str, key_path: Path | None = None) -> str:
        """Run nsupdate with the admin key (or `key_path`); raises on failure."""
        script = f"server {self.host} {self.port}\nzone {self.zone}.\n{commands.strip()}\nsend\n"
        result = subprocess.run(
            ["nsupdate", "-v", "-t", "5", "-k", str(key_path or self.admin_key_path)],
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"nsupdate failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def add_record(self, name: str, rrtype: str, rdata: str, ttl: int | None = None) -> None:
        """Add one record by hand (beside any others of the RRset)."""
        self.nsupdate(f"update add {_absolute(name)} {ttl or self.ttl} IN {rrtype} {rdata}")

    def delete_record(self, name: str, rrtype: str, rdata: str | None = None) -> None:
        """Delete one record by hand, or the whole RRset when `rdata` is None."""
        self.nsupdate(f"update delete {_absolute(name)} IN {rrtype} {rdata or ''}".rstrip())

    def dig(self, name: str, rrtype: str = "TLSA", *options: str) -> str:
        """``dig @server -p port +norecurse NAME TYPE OPTIONS``, its stdout."""
        result = subprocess.run(
            [
                "dig",
                f"@{self.host}",
                "-p",
                str(self.port),
                "+norecurse",
                "+time=2",
                "+tries=1",
                *options,
                _absolute(name),
                rrtype,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"dig failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result.stdout

    def dig_tlsa(self, name: str, *options: str) -> set[str]:
        """The TLSA RRset at `name` as dig sees it: ``{"2 1 1 <hex>", ...}``."""
        output = self.dig(name, "TLSA", "+short", *options)
        return {normalize_tlsa(line) for line in output.splitlines() if line.strip()}

    # -- DNSSEC (dnssec=True) ---------------------------------------------

    def _signed(self) -> bool:
        """The zone is served signed: SOA with an RRSIG, and a DNSKEY."""
        try:
            soa = self.dig(self.zone, "SOA", "+dnssec")
        except RuntimeError:
            return False
        return "RRSIG" in soa and bool(self.trust_anchor(quiet=True))

    def trust_anchor(self, quiet: bool = False) -> str:
        """The zone's DNSKEY RRset in zone-file syntax, for Unbound's trust-anchor-file."""
        try:
            output = self.dig(self.zone, "DNSKEY", "+noall", "+answer", "+nosplit")
        except RuntimeError:
            if quiet:
                return ""
            raise
        lines = [line for line in output.splitlines() if "\tDNSKEY\t" in line or " DNSKEY " in line]
        if not lines and not quiet:
            raise RuntimeError(f"{self.zone} has no DNSKEY:\n{output}")
        return "\n".join(lines) + ("\n" if lines else "")


# A policy for tests: one CSK, short TTLs, no key rollovers during a test.
# max-zone-ttl leaves room for records published by hand with a long TTL.
_DNSSEC_POLICY = """\
dnssec-policy "danesync-test" {{
\tkeys {{ csk key-directory lifetime unlimited algorithm ecdsap256sha256; }};
\tdnskey-ttl {ttl};
\tmax-zone-ttl 600;
\tzone-propagation-delay 0;
\tpublish-safety 0;
\tretire-safety 0;
\tsignatures-refresh 5d;
\tsignatures-validity 14d;
\tsignatures-validity-dnskey 14d;
}};
"""
_DNSSEC_ZONE = '\tdnssec-policy "danesync-test";\n\tkey-directory ".";\n'


class _PortTaken(RuntimeError):
    pass


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def bind_fixture(
    name: str = "bind", scope: Any = "module", **options: Any
) -> Callable[..., Iterator[BindServer]]:
    """A pytest fixture giving a running `BindServer(**options)`.

    Assign it in a test module: ``bind = bind_fixture()``.
    """

    return server_fixture(BindServer, name, scope, **options)


def server_fixture(
    kind: type[BindServer], name: str, scope: Any = "module", **options: Any
) -> Callable[..., Iterator[BindServer]]:
    """A pytest fixture giving a running `kind(**options)` (BIND, Knot, PowerDNS)."""

    @pytest.fixture(name=name, scope=scope)
    def _fixture() -> Iterator[BindServer]:
        for program in kind.programs:
            require_program(program)
        with kind(**options) as server:
            yield server

    return _fixture

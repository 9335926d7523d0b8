"""Pebble, the ACME test CA, and a real certbot pointed at it, all on loopback.

`PebbleCA` runs ``/usr/bin/pebble`` on 127.0.0.1 and free ports (ACME,
management, and the http-01 port it would validate on), with a TLS
certificate for its listener made here (`ca_bundle`, given to certbot as
``REQUESTS_CA_BUNDLE``). Challenges are always valid and never slept on.
Pebble keeps everything in memory: every start makes a new root and
intermediate, so `restart()` followed by a renewal is a real DANE-TA
rollover. The ports stay the same across restarts (certbot's renewal
configuration names the server URL).

`Certbot` runs ``certbot certonly --standalone`` and ``certbot renew
--force-renewal`` with its own config, work and logs directories, exactly as
on a mail host, and returns a `CertbotRun` with the timings. After a Pebble
restart the ACME account is gone; `Certbot` registers a new one and points
the renewal configurations at it before the next run.

Use in a test module::

    pebble = pebble_fixture()               # module-scoped fixture "pebble"

    def test_x(pebble: PebbleCA, tmp_path: Path) -> None:
        certbot = Certbot(tmp_path / "certbot", pebble)
        certbot.certonly("mx.example.test")
        certbot.renew()
        assert certbot.version("mx.example.test") == 2
"""

from __future__ import annotations

import atexit
import ctypes
import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import require_program

PEBBLE = "/usr/bin/pebble"
CERTBOT = "certbot"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
CERTBOT_TIMEOUT = 120.0

KeyType = Literal["rsa", "ecdsa"]

_RUNNING: set[PebbleCA] = set()


def _kill_leftovers() -> None:
    for ca in list(_RUNNING):
        ca.stop()


atexit.register(_kill_leftovers)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on loopback (free now; a race is still possible)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _write_listener_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for localhost/127.0.0.1 that it signs; for Pebble's listener."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "danesync test Pebble TLS CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / "tls-ca.pem"
    cert = directory / "tls-cert.pem"
    key_path = directory / "tls-key.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return bundle, cert, key_path


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


class PebbleCA:
    """A running Pebble; a context manager. See the module docstring."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, self._tls_cert, self._tls_key = _write_listener_tls(self.workdir / "tls")
        self.listen_port = 0
        self.management_port = 0
        self.http_port = 0
        self.tls_port = 0
        self.generation = 0
        self.log_path = self.workdir / "pebble.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{HOST}:{self.listen_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{HOST}:{self.management_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for an ACME client: trusts the listener, bypasses any proxy."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["REQUESTS_CA_BUNDLE"] = str(self.ca_bundle)
        env["NO_PROXY"] = f"{HOST},localhost"
        return env

    def _write_config(self) -> Path:
        config = self.workdir / "pebble-config.json"
        config.write_text(
            "{\n"
            '  "pebble": {\n'
            f'    "listenAddress": "{HOST}:{self.listen_port}",\n'
            f'    "managementListenAddress": "{HOST}:{self.management_port}",\n'
            f'    "certificate": "{self._tls_cert}",\n'
            f'    "privateKey": "{self._tls_key}",\n'
            f'    "httpPort": {self.http_port},\n'
            f'    "tlsPort": {self.tls_port},\n'
            '    "ocspResponderURL": "",\n'
            '    "externalAccountBindingRequired": false\n'
            "  }\n"
            "}\n"
        )
        return config

    def start(self) -> None:
        """Start Pebble; on the first start pick the ports, later keep them."""
        if self._process is not None:
            raise RuntimeError("Pebble already running")
        first = self.listen_port == 0
        for _attempt in range(3 if first else 1):
            if first:
                ports = free_ports(4)
                self.listen_port, self.management_port, self.http_port, self.tls_port = ports
            if self._launch():
                return
        raise RuntimeError(f"Pebble did not start; its log:\n{self._log_tail()}")

    def _launch(self) -> bool:
        config = self._write_config()
        env = dict(os.environ)
        env.update(
            PEBBLE_VA_ALWAYS_VALID="1",
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT="0",
            # A renewal reuses the valid authorization: no challenge, a second faster.
            PEBBLE_AUTHZREUSE="100",
        )
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [PEBBLE, "-config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,  # only prctl, before exec
            )
        self._process = process
        _RUNNING.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                _RUNNING.discard(self)
                return False
            if _port_open(self.listen_port) and _port_open(self.management_port):
                self.generation += 1
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Pebble did not listen within {START_TIMEOUT}s:\n{self._log_tail()}")

    def stop(self) -> None:
        process = self._process
        self._process = None
        _RUNNING.discard(self)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """A new Pebble on the same ports: new root, new intermediate, no accounts."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _get(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        with opener.open(f"{self.management_url}{path}", timeout=10) as response:
            data: bytes = response.read()
            return data

    def root_pem(self) -> bytes:
        """The root certificate of this generation (Pebble's management interface)."""
        return self._get("/roots/0")

    def intermediate_pem(self) -> bytes:
        """The intermediate that signs this generation's certificates."""
        return self._get("/intermediates/0")

    def __enter__(self) -> PebbleCA:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class CertbotRun:
    """One certbot invocation: what ran, what it said, and when (monotonic clock)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    started: float
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CertbotError(AssertionError):
    """certbot failed; the message carries its output and log tail."""


class Certbot:
    """certbot with its own directories, against `pebble`."""

    def __init__(self, base: Path, pebble: PebbleCA, program: str = CERTBOT) -> None:
        self.base = Path(base)
        self.pebble = pebble
        self.program = program
        self.config_dir = self.base / "config"
        self.work_dir = self.base / "work"
        self.logs_dir = self.base / "logs"
        for directory in (self.config_dir, self.work_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._account_generation = 0
        self.runs: list[CertbotRun] = []

    @property
    def live_dir(self) -> Path:
        return self.config_dir / "live"

    def live(self, name: str) -> Path:
        return self.live_dir / name

    def _common(self) -> list[str]:
        return [
            "--config-dir",
            str(self.config_dir),
            "--work-dir",
            str(self.work_dir),
            "--logs-dir",
            str(self.logs_dir),
            "--non-interactive",
        ]

    def run(self, *args: str, check: bool = True) -> CertbotRun:
        """certbot `args` with this instance's directories; raises `CertbotError` if `check`."""
        argv = (self.program, *args, *self._common())
        started = time.monotonic()
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.pebble.env,
            timeout=CERTBOT_TIMEOUT,
            check=False,
        )
        run = CertbotRun(
            argv=argv,
            returncode=completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
            started=started,
            finished=time.monotonic(),
        )
        self.runs.append(run)
        if check and not run.ok:
            raise CertbotError(
                f"{' '.join(argv)} exited {run.returncode}\n{run.stderr}\n"
                f"--- certbot log ---\n{self._log_tail()}\n"
                f"--- pebble log ---\n{self.pebble._log_tail(10)}"
            )
        return run

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.logs_dir / "letsencrypt.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _account_dir(self) -> Path:
        server = self.pebble.directory_url.split("://", 1)[1]
        return self.config_dir / "accounts" / server

    def _ensure_account(self) -> None:
        """An account this Pebble knows, used by every renewal configuration."""
        if self._account_generation == self.pebble.generation:
            return
        shutil.rmtree(self._account_dir(), ignore_errors=True)
        self.run(
            "register",
            "--server",
            self.pebble.directory_url,
            "--register-unsafely-without-email",
            "--agree-tos",
        )
        (account_id,) = [p.name for p in self._account_dir().iterdir()]
        renewal = self.config_dir / "renewal"
        for conf in renewal.glob("*.conf") if renewal.is_dir() else ():
            text = conf.read_text()
            conf.write_text(re.sub(r"(?m)^account = .*$", f"account = {account_id}", text))
        self._account_generation = self.pebble.generation

    def _challenge_args(self) -> list[str]:
        return [
            "--standalone",
            "--preferred-challenges",
            "http-01",
            "--http-01-address",
            HOST,
            "--http-01-port",
            str(free_ports(1)[0]),
        ]

    def certonly(
        self,
        *domains: str,
        cert_name: str | None = None,
        key_type: KeyType | None = None,
        extra: Sequence[str] = (),
    ) -> CertbotRun:
        """Issue a certificate for `domains` (lineage `cert_name`, default the first domain)."""
        if not domains:
            raise ValueError("certonly needs at least one domain")
        self._ensure_account()
        args = ["certonly", "--server", self.pebble.directory_url, *self._challenge_args()]
        for domain in domains:
            args += ["-d", domain]
        if cert_name is not None:
            args += ["--cert-name", cert_name]
        if key_type == "rsa":
            args += ["--key-type", "rsa", "--rsa-key-size", "2048"]
        elif key_type == "ecdsa":
            args += ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"]
        return self.run(*args, *extra)

    def renew(
        self, cert_name: str | None = None, force: bool = True, extra: Sequence[str] = ()
    ) -> CertbotRun:
        """``certbot renew`` (every lineage, or `cert_name`), by default ``--force-renewal``."""
        self._ensure_account()
        args = ["renew", "--no-random-sleep-on-renew", *self._challenge_args()]
        if force:
            args.append("--force-renewal")
        if cert_name is not None:
            args += ["--cert-name", cert_name]
        return self.run(*args, *extra)

    def version(self, name: str) -> int:
        """The archive version live/<name>/cert.pem points at."""
        target = os.readlink(self.live(name) / "cert.pem")
        match = re.fullmatch(r"cert(\d+)\.pem", os.path.basename(target))
        if match is None:
            raise AssertionError(f"unexpected link target {target}")
        return int(match.group(1))

    def lineage_updated_at(self, name: str) -> float:
        """Wall-clock time (``time.time()``) of certbot's last link change in live/<name>."""
        return self.live(name).lstat().st_mtime

    def read(self, name: str, kind: str = "fullchain") -> bytes:
        return (self.live(name) / f"{kind}.pem").read_bytes()


def pebble_fixture(
    name: str = "pebble", scope: Any = "module"
) -> Callable[..., Iterator[PebbleCA]]:
    """A pytest fixture giving a running `PebbleCA`; assign it: ``pebble = pebble_fixture()``."""

    @pytest.fixture(name=name, scope=scope)
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleCA]:
        require_program(PEBBLE)
        with PebbleCA(tmp_path_factory.mktemp("pebble")) as ca:
            yield ca

    return _fixture

"""`danesync run`, the daemon, end to end against a real Postfix.

Renewals come from a real certbot and a real Pebble, or from the harness's
replay of certbot's exact link sequence. What Postfix serves is sampled with
a STARTTLS client of the test's own (and checked with `openssl s_client`);
what danesync tells systemd is read from a notify socket bound here. DNS is
off: these tests are about the loop, not the rollover (test_rollover.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.tlsa import spki_sha256
from tests.conftest import require_program
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.danesync import json_events, run_danesync, start_danesync, write_config
from tests.harness.lineage import make_lineage, renew, update_links, write_version
from tests.harness.pebble import CERTBOT, Certbot, PebbleCA, pebble_fixture
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
pebble = pebble_fixture()

MX = "mx.example.test"
SETTLE = 0.1
COOL_DOWN = 2.5  # Postfix commands sleep while main.cf is younger than about 2 s
CRASH_POINTS = ("before-files", "after-file", "after-postconf", "after-reload")

Event = dict[str, Any]


# --- what Postfix serves, what the chain file holds ---------------------------------


def served_leaf(port: int, timeout: float = 3) -> bytes | None:
    """The leaf (DER) Postfix gives a STARTTLS client now; None if there is none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the exact leaf is compared instead
    try:
        with smtplib.SMTP(
            "127.0.0.1", port, local_hostname="test.invalid", timeout=timeout
        ) as smtp:
            smtp.starttls(context=context)
            assert isinstance(smtp.sock, ssl.SSLSocket)
            return smtp.sock.getpeercert(binary_form=True)
    except (OSError, smtplib.SMTPException):
        return None


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def fingerprint(leaf_der: bytes) -> str:
    return hashlib.sha256(leaf_der).hexdigest()


def serial(leaf: Leaf) -> str:
    """As danesync logs it: hex, like `openssl x509 -serial`."""
    text = f"{leaf.cert.serial_number:X}"
    return text if len(text) % 2 == 0 else "0" + text


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\s*", re.DOTALL)


def read_chain_file(path: Path) -> bytes | str | None:
    """The leaf (DER) of a deployed chain file; None if absent; a str saying what is wrong.

    A good file is a private key, then the leaf that key belongs to, then
    the intermediates, as Postfix wants it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    blocks = [(m.group(1).decode(), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    labels = [label for label, _ in blocks]
    if len(labels) < 2 or not labels[0].endswith("PRIVATE KEY") or labels[1] != "CERTIFICATE":
        return f"blocks {labels}"
    try:
        key = serialization.load_pem_private_key(blocks[0][1], password=None)
        leaf = x509.load_pem_x509_certificate(blocks[1][1])
    except ValueError as error:
        return f"unparsable: {error}"
    public = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*public) != leaf.public_key().public_bytes(*public):
        return "the key does not match the leaf"
    return der(leaf)


@dataclass(frozen=True)
class Sample:
    started: float  # time.time() before the handshake
    finished: float
    served: bytes | None
    chain_file: bytes | str | None


class Sampler:
    """A thread that keeps looking at what is served and at the chain file."""

    def __init__(self, port: int, chain_file: Path, interval: float = 0.01) -> None:
        self.port = port
        self.chain_file = chain_file
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.time()
            served = served_leaf(self.port)
            chain_file = read_chain_file(self.chain_file)
            self.samples.append(Sample(started, time.time(), served, chain_file))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def first_served(self, leaf: bytes) -> Sample | None:
        return next((s for s in self.samples if s.served == leaf), None)

    def wait_served(self, leaf: bytes, timeout: float = 20) -> Sample:
        """The first sample that got `leaf`, once there is one."""
        end = time.monotonic() + timeout
        while (first := self.first_served(leaf)) is None:
            if time.monotonic() > end:
                raise AssertionError(f"{len(self.samples)} samples, none served the new leaf")
            time.sleep(0.02)
        return first


# --- the daemon and its config ------------------------------------------------------


class Host:
    """A certbot config dir, a danesync config, deploy and state dirs for one test."""

    def __init__(
        self,
        root: Path,
        postfix: PostfixInstance,
        letsencrypt: Path | None = None,
        settle: float = SETTLE,
        reconcile_interval: int = 3600,
    ) -> None:
        self.root = root
        self.postfix = postfix
        self.letsencrypt = letsencrypt or root / "letsencrypt"
        self.deploy_dir = root / "deploy"
        self.state_dir = root / "state"
        self.config = root / "danesync.toml"
        self.daemon = {"settle": settle, "reconcile_interval": reconcile_interval}

    def write_config(self, certificates: list[Mapping[str, Any]], extra: str = "") -> Path:
        write_config(
            self.config,
            {
                "certbot": {"config_dir": self.letsencrypt},
                "postfix": {
                    "config_dir": self.postfix.config_dir,
                    "deploy_dir": self.deploy_dir,
                    "probe": f"127.0.0.1:{self.postfix.port}",
                },
                "dns": {"mode": "off"},
                "state": {"dir": self.state_dir},
                "daemon": self.daemon,
            },
            certificates,
        )
        if extra:
            with self.config.open("a") as config:
                config.write(extra)
        return self.config

    def chain_file(self, lineage: str = MX) -> Path:
        return self.deploy_dir / f"{lineage}.pem"

    def state(self) -> dict[str, Any]:
        """state.json, with the lineages of every shard under "lineages"."""
        state: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        state["lineages"] = {
            name: entry
            for path in (self.state_dir / "lineages").glob("[0-9][0-9][0-9].json")
            for name, entry in json.loads(path.read_text()).items()
        }
        return state

    def sync(self, env: dict[str, str] | None = None) -> list[Event]:
        result = run_danesync("sync", "-c", str(self.config), env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            result.stdout + result.stderr
        )
        return json_events(result.stdout)

    def start(self, env: dict[str, str] | None = None, name: str = "daemon") -> Daemon:
        return Daemon(self.config, self.root / f"{name}.log", env)


class Daemon:
    """`danesync run --log-format json` in the background; its events from its log."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None) -> None:
        self.log = log
        self.process = start_danesync(
            "run", "-c", str(config), "--log-format", "json", env=env, log=log
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str | None = None) -> list[Event]:
        events = json_events(self.text())
        return [e for e in events if name is None or e.get("event") == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 30) -> Event:
        """The `count`-th `name` event, once it is logged."""
        self.wait_until(lambda: len(self.events(name)) >= count, f"{count} x {name}", timeout)
        return self.events(name)[count - 1]

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"danesync exited {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {timeout}s:\n{self.tail()}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15, send: bool = True) -> int:
        """SIGTERM (unless the test sent it already) and the exit status."""
        if send and self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"danesync ignored SIGTERM:\n{self.tail()}") from None

    def tail(self, characters: int = 6000) -> str:
        return self.text()[-characters:]

    def assert_no_errors(self) -> None:
        errors = [e for e in self.events() if e.get("level") in ("error", "critical")]
        assert not errors, errors
        assert "Traceback" not in self.text(), self.tail()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running at the end is killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def wait_cool(postfix: PostfixInstance) -> None:
    """Sleep until main.cf is old enough that `postfix reload` does not wait for it."""
    age = time.time() - (postfix.config_dir / "main.cf").stat().st_mtime
    if age < COOL_DOWN:
        time.sleep(COOL_DOWN - age)


def wait_served(postfix: PostfixInstance, leaf: bytes, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while served_leaf(postfix.port) != leaf:
        if time.monotonic() > end:
            raise AssertionError(
                f"Postfix does not serve the expected leaf:\n{postfix.maillog[-2000:]}"
            )
        time.sleep(0.02)


def openssl_served(postfix: PostfixInstance, *options: str) -> bytes:
    return der(postfix.served_certificate(*options))


# --- systemd's side of Type=notify --------------------------------------------------


class NotifySocket:
    """An abstract AF_UNIX datagram socket, as systemd binds for a Type=notify unit."""

    def __init__(self) -> None:
        self.name = f"@danesync-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(b"\0" + self.name[1:].encode())
        self.messages: list[tuple[float, dict[str, str]]] = []

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.name}

    def receive(self, timeout: float) -> None:
        """Add what arrives within `timeout` seconds to `messages`."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, after: int = 0, timeout: float = 30) -> int:
        """Index of the first message from `after` on that has `key`."""
        end = time.monotonic() + timeout
        while True:
            for index in range(after, len(self.messages)):
                if key in self.messages[index][1]:
                    return index
            if time.monotonic() > end:
                raise AssertionError(f"no {key} within {timeout}s: {self.messages}")
            self.receive(0.05)

    def indexes(self, key: str) -> list[int]:
        return [i for i, (_, fields) in enumerate(self.messages) if key in fields]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


# --- the tests ----------------------------------------------------------------------


@pytest.fixture
def certbot(pebble: PebbleCA, tmp_path: Path) -> Certbot:
    require_program(CERTBOT)
    return Certbot(tmp_path / "certbot", pebble)


def live_leaf(certbot: Certbot, name: str = MX) -> bytes:
    return der(x509.load_pem_x509_certificate(certbot.read(name, "cert")))


def live_issuer(certbot: Certbot, name: str = MX) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certbot.read(name, "chain"))


class TestEndToEnd:
    """certbot against Pebble renews; the daemon gets the new leaf served."""

    @pytest.mark.slow
    def test_renewals_and_a_new_intermediate_are_served(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        pebble: PebbleCA,
        certbot: Certbot,
        daemons: list[Daemon],
    ) -> None:
        certbot.certonly(MX, key_type="ecdsa")
        host = Host(tmp_path, postfix, letsencrypt=certbot.config_dir, settle=0.25)
        host.write_config([{"lineage": MX}])
        daemon = host.start()
        daemons.append(daemon)
        daemon.wait_for("daemon.ready")
        daemon.wait_for("chain.deployed")
        assert openssl_served(postfix) == live_leaf(certbot)
        first_issuer = live_issuer(certbot)

        for round_ in ("renewal", "new intermediate"):
            if round_ == "new intermediate":
                pebble.restart()
            wait_cool(postfix)  # measure danesync, not Postfix's cool-down after our postconf
            deployed = len(daemon.events("chain.deployed"))
            with Sampler(postfix.port, host.chain_file(), interval=0.01) as sampler:
                certbot.renew(MX)
                new_leaf = live_leaf(certbot)
                daemon.wait_for("chain.deployed", deployed + 1)
                first = sampler.wait_served(new_leaf)
            updated = certbot.lineage_updated_at(MX)
            before = [s for s in sampler.samples if s.finished < first.started]
            latency = first.finished - updated
            print(
                f"{round_}: certbot's last link change to the new leaf served:"
                f" {latency * 1000:.0f} ms (at least {(first.started - updated) * 1000:.0f} ms;"
                f" {len(sampler.samples)} samples, the last before"
                f" {(first.started - before[-1].finished) * 1000 if before else 0:.0f} ms earlier)"
            )
            # Speed is measured by bench/ (median 0.3 s); here only that the
            # watcher, not the hourly reconcile, brought it in.
            assert latency < 30, latency
            # Never a moment without a good chain.
            assert all(s.served is not None for s in sampler.samples)
            assert all(isinstance(s.chain_file, bytes) for s in sampler.samples)
            assert openssl_served(postfix) == new_leaf

        new_issuer = live_issuer(certbot)
        assert spki_sha256(new_issuer) != spki_sha256(first_issuer)
        assert new_issuer == x509.load_pem_x509_certificate(pebble.intermediate_pem())
        ok, output = postfix.dane_verify(MX, f"2 1 1 {spki_sha256(new_issuer)}")
        assert ok, output
        ok, output = postfix.dane_verify(MX, f"2 1 1 {spki_sha256(first_issuer)}")
        assert not ok, "the old intermediate's record must not match the new chain"
        assert daemon.stop() == 0
        daemon.assert_no_errors()


class TestHalfUpdatedLineage:
    """certbot's link sequence replayed slowly: nothing moves until it is complete."""

    def test_no_deploy_until_the_lineage_is_consistent(
        self, tmp_path: Path, postfix: PostfixInstance, daemons: list[Daemon]
    ) -> None:
        ca = Hierarchy(f"Slow {uuid.uuid4().hex[:8]}")
        old, new = ca.issue([MX]), ca.issue([MX])
        host = Host(tmp_path, postfix)
        host.write_config([{"lineage": MX}])
        make_lineage(host.letsencrypt, MX, old)
        daemon = host.start()
        daemons.append(daemon)
        daemon.wait_for("chain.deployed")
        old_leaf, new_leaf = der(old.cert), der(new.cert)
        wait_served(postfix, old_leaf)

        steps: list[tuple[float, str]] = []
        with Sampler(postfix.port, host.chain_file(), interval=0.02) as sampler:
            write_version(host.letsencrypt, MX, new, 2)
            update_links(
                host.letsencrypt,
                MX,
                2,
                delay=0.3,
                between=lambda step: steps.append((time.time(), step)),
            )
            complete = steps[-1][0]
            daemon.wait_for("chain.deployed", 2)
            sampler.wait_served(new_leaf)
        assert steps[-1][1] == "remove previous_fullchain.pem"

        # The daemon did look while the lineage was half-updated, and held off.
        waited = [
            e for e in daemon.events("lineage.changed") if "previous_" in str(e.get("reason"))
        ]
        assert waited, daemon.tail()
        for sample in sampler.samples:
            assert sample.served in (old_leaf, new_leaf), sample
            assert sample.chain_file in (old_leaf, new_leaf), sample
            if sample.finished < complete:
                assert sample.served == old_leaf, (sample, steps)
                assert sample.chain_file == old_leaf, (sample, steps)
        assert sum(s.finished < complete for s in sampler.samples) > 20
        assert daemon.stop() == 0
        daemon.assert_no_errors()


class TestNotify:
    """What systemd hears on its notify socket."""

    def test_ready_status_watchdog_reloading_stopping(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        notify_socket: NotifySocket,
        daemons: list[Daemon],
    ) -> None:
        ca = Hierarchy(f"Notify {uuid.uuid4().hex[:8]}")
        host = Host(tmp_path, postfix)
        host.write_config([{"lineage": MX}])
        make_lineage(host.letsencrypt, MX, ca.issue([MX]))
        daemon = host.start(env={**notify_socket.env, "WATCHDOG_USEC": "1000000"})
        daemons.append(daemon)

        ready = notify_socket.wait_for("READY")
        assert notify_socket.messages[ready][1]["STATUS"] == "1/1 deployed"
        assert daemon.events("chain.deployed")  # READY=1 comes after the first pass

        # WATCHDOG=1 every half of WATCHDOG_USEC.
        index = ready
        for _ in range(4):
            index = notify_socket.wait_for("WATCHDOG", index + 1, timeout=3)
        pings = [notify_socket.messages[i][0] for i in notify_socket.indexes("WATCHDOG")]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.3 < gap < 0.9 for gap in gaps[-3:]), gaps

        daemon.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING", ready + 1)
        assert notify_socket.messages[reloading][1]["RELOADING"] == "1"
        assert notify_socket.messages[reloading][1]["MONOTONIC_USEC"].isdigit()
        again = notify_socket.wait_for("READY", reloading + 1)
        assert notify_socket.messages[again][1]["READY"] == "1"
        daemon.wait_for("config.reloaded")

        daemon.signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING", again + 1)
        assert notify_socket.messages[stopping][1]["STOPPING"] == "1"
        assert daemon.stop(send=False) == 0
        notify_socket.receive(0.1)
        assert "daemon.stopping" in [e["event"] for e in daemon.events()]
        statuses = [m["STATUS"] for _, m in notify_socket.messages[ready:] if "STATUS" in m]
        assert statuses and all(s == "1/1 deployed" for s in statuses), statuses
        # Before READY=1 only the first pass's progress (TestLongFirstPass).
        before = [m["STATUS"] for _, m in notify_socket.messages[:ready] if "STATUS" in m]
        assert all(s.startswith("first pass: ") for s in before[:-1]), before
        daemon.assert_no_errors()

    def test_watchdog_of_another_process_is_not_pinged(
        self, tmp_path: Path, postfix: PostfixInstance, notify_socket: NotifySocket
    ) -> None:
        host = Host(tmp_path, postfix)
        host.write_config([])
        env = {**notify_socket.env, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
        daemon = host.start(env=env)
        try:
            notify_socket.wait_for("READY")
            notify_socket.receive(0.5)
        finally:
            assert daemon.stop() == 0
        notify_socket.receive(0.1)
        assert not notify_socket.indexes("WATCHDOG"), notify_socket.messages
        assert notify_socket.indexes("STOPPING")


class TestLongFirstPass:
    """At 10,000 lineages the first pass takes minutes (docs/benchmarks.md), and
    READY=1 comes after it: systemd would kill the start at TimeoutStartSec (90 s)
    and a pass at WatchdogSec. The pass keeps systemd informed while it runs."""

    LINEAGES = 60  # enough for a first pass of many progress reports

    def test_watchdog_pings_and_start_extensions_during_the_first_pass(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        notify_socket: NotifySocket,
        daemons: list[Daemon],
    ) -> None:
        ca = Hierarchy(f"Long {uuid.uuid4().hex[:8]}")
        names = [MX, *(f"mx{i}.example.test" for i in range(self.LINEAGES - 1))]
        host = Host(tmp_path, postfix)
        host.write_config([{"lineage": MX}, *({"lineage": n, "sni": True} for n in names[1:])])
        for name in names:
            make_lineage(host.letsencrypt, name, ca.issue([name]))
        # WatchdogSec=1s: a ping every 0.5 s at most.
        daemon = host.start(env={**notify_socket.env, "WATCHDOG_USEC": "1000000"})
        daemons.append(daemon)
        ready = notify_socket.wait_for("READY", timeout=120)
        assert notify_socket.messages[ready][1]["STATUS"] == f"{len(names)}/{len(names)} deployed"

        during = notify_socket.messages[:ready]
        pings = [at for at, fields in during if fields.get("WATCHDOG") == "1"]
        extensions = [f for _, f in during if "EXTEND_TIMEOUT_USEC" in f]
        progress = [f["STATUS"] for f in extensions]
        took = notify_socket.messages[ready][0] - notify_socket.messages[0][0]
        print(
            f"first pass over {len(names)} lineages: {took:.1f} s to READY, {len(pings)} pings,"
            f" gaps {[round(b - a, 2) for a, b in itertools.pairwise(pings)]}; {progress}"
        )
        # The watchdog is pinged from inside the pass, not only between passes.
        assert pings, during
        # A start that makes progress is never timed out: each report extends it
        # by at least a minute (and at least WatchdogSec).
        assert extensions, during
        assert all(int(f["EXTEND_TIMEOUT_USEC"]) >= 60_000_000 for f in extensions)
        # ... and says how far it is, through the pass's phases in order.
        assert progress[0] == f"first pass: reading lineages 1/{len(names)}", progress
        assert all(re.fullmatch(r"first pass: [A-Za-z ]+ \d+/\d+", s) for s in progress)
        phases = [s.split(": ")[1].rsplit(" ", 1)[0] for s in progress]
        order = ["reading lineages", "writing chain files", "confirming with the probe"]
        seen = [p for p in dict.fromkeys(phases) if p in order]
        assert seen == sorted(seen, key=order.index), phases
        # After READY=1 the start is over: no more extensions.
        assert daemon.stop() == 0
        notify_socket.receive(0.1)
        after = notify_socket.messages[ready + 1 :]
        assert not [f for _, f in after if "EXTEND_TIMEOUT_USEC" in f], after
        daemon.assert_no_errors()

    def test_a_stop_while_the_first_pass_reads_ends_it_at_once(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        notify_socket: NotifySocket,
        daemons: list[Daemon],
    ) -> None:
        """`systemctl stop` during a pass that reads for minutes: no wait for TimeoutStopSec."""
        ca = Hierarchy(f"Stop {uuid.uuid4().hex[:8]}")
        names = [f"mx{i}.example.test" for i in range(600)]  # reading takes seconds
        host = Host(tmp_path, postfix)
        host.write_config([{"lineage": MX}, *({"lineage": n, "sni": True} for n in names)])
        for name in [MX, *names]:
            make_lineage(host.letsencrypt, name, ca.issue([name]))
        daemon = host.start(env=notify_socket.env)
        daemons.append(daemon)
        reading = notify_socket.wait_for("STATUS", timeout=60)
        assert notify_socket.messages[reading][1]["STATUS"].startswith(
            "first pass: reading lineages "
        ), notify_socket.messages
        daemon.signal(signal.SIGTERM)
        assert daemon.stop(send=False) == 0
        notify_socket.receive(0.1)
        assert notify_socket.indexes("STOPPING"), notify_socket.messages
        assert not notify_socket.indexes("READY"), notify_socket.messages
        # Ended while it read: nothing deployed, nothing half done.
        assert not daemon.events("chain.deployed")
        assert not host.deploy_dir.exists() or not list(host.deploy_dir.glob("*.pem"))
        assert [e["event"] for e in daemon.events()][-1] == "daemon.stopping"
        daemon.assert_no_errors()


class TestNothingConfigured:
    """A fresh install: no certificate yet, certbot has not even run."""

    def test_starts_ready_and_stops(
        self, tmp_path: Path, postfix: PostfixInstance, notify_socket: NotifySocket
    ) -> None:
        host = Host(tmp_path, postfix)
        host.write_config([])
        assert not host.letsencrypt.exists()
        daemon = host.start(env=notify_socket.env)
        try:
            ready = notify_socket.wait_for("READY")
            assert notify_socket.messages[ready][1]["STATUS"] == "0/0 deployed"
            daemon.wait_for("daemon.ready")
        finally:
            assert daemon.stop() == 0
        notify_socket.receive(0.1)
        assert notify_socket.indexes("STOPPING")
        started = daemon.events("daemon.started")
        assert any("no [[certificate]] is configured" in str(e.get("reason")) for e in started)
        assert [e["event"] for e in daemon.events()][-1] == "daemon.stopping"
        assert not host.deploy_dir.exists()
        daemon.assert_no_errors()


class TestSignals:
    """SIGHUP re-reads the config file; SIGUSR1 asks for a full pass."""

    def test_invalid_config_is_refused_and_a_valid_one_is_taken(
        self, tmp_path: Path, postfix: PostfixInstance, daemons: list[Daemon]
    ) -> None:
        ca = Hierarchy(f"Hup {uuid.uuid4().hex[:8]}")
        host = Host(tmp_path, postfix)
        ec_lineage, rsa_lineage = f"{MX}-ecdsa", f"{MX}-rsa"
        ec_certificate = {"lineage": ec_lineage, "hostnames": [MX]}
        host.write_config([ec_certificate])
        first = ca.issue([MX])
        make_lineage(host.letsencrypt, ec_lineage, first)
        daemon = host.start()
        daemons.append(daemon)
        daemon.wait_for("chain.deployed")

        # A broken file: refused, and the old configuration keeps working.
        host.write_config([ec_certificate], extra="[postfx]\nreload = true\n")
        daemon.signal(signal.SIGHUP)
        invalid = daemon.wait_for("config.invalid")
        assert "postfx" in str(invalid["reason"]), invalid
        assert not daemon.events("config.reloaded")
        second = ca.issue([MX])
        renew(host.letsencrypt, ec_lineage, second)
        daemon.wait_for("chain.deployed", 2)
        wait_served(postfix, der(second.cert))

        # A good file with one more certificate: taken, and the new lineage deployed.
        rsa_leaf = ca.issue([MX], key_kind="rsa")
        make_lineage(host.letsencrypt, rsa_lineage, rsa_leaf)
        host.write_config([ec_certificate, {"lineage": rsa_lineage, "hostnames": [MX]}])
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_for("config.reloaded")
        assert reloaded["certificates"] == 2
        deployed = daemon.wait_for("chain.deployed", 3)
        assert deployed["lineage"] == rsa_lineage
        tls12 = ("-tls1_2", "-cipher")
        assert openssl_served(postfix, *tls12, "ECDHE-RSA-AES128-GCM-SHA256") == der(rsa_leaf.cert)
        assert openssl_served(postfix, *tls12, "ECDHE-ECDSA-AES128-GCM-SHA256") == der(second.cert)

        # certbot's config_dir moves: the watcher follows it.
        host.letsencrypt = tmp_path / "letsencrypt-moved"
        make_lineage(host.letsencrypt, ec_lineage, second)
        make_lineage(host.letsencrypt, rsa_lineage, rsa_leaf)
        host.write_config([ec_certificate, {"lineage": rsa_lineage, "hostnames": [MX]}])
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config.reloaded", 2)
        third = ca.issue([MX])
        renew(host.letsencrypt, ec_lineage, third)
        deployed = daemon.wait_for("chain.deployed", 4)
        assert deployed["lineage"] == ec_lineage and deployed["serial"] == serial(third)
        assert openssl_served(postfix, *tls12, "ECDHE-ECDSA-AES128-GCM-SHA256") == der(third.cert)
        assert daemon.stop() == 0
        errors = [e for e in daemon.events() if e.get("level") == "error"]
        assert [e["event"] for e in errors] == ["config.invalid"], errors

    def test_usr1_runs_a_full_pass(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        notify_socket: NotifySocket,
        daemons: list[Daemon],
    ) -> None:
        """Changes the watcher cannot see (archive rewritten in place, a deleted chain file)."""
        ca = Hierarchy(f"Usr1 {uuid.uuid4().hex[:8]}")
        old, new = ca.issue([MX]), ca.issue([MX])
        host = Host(tmp_path, postfix, reconcile_interval=3600)
        host.write_config([{"lineage": MX}])
        make_lineage(host.letsencrypt, MX, old)
        daemon = host.start(env=notify_socket.env)
        daemons.append(daemon)
        mark = notify_socket.wait_for("READY")  # the first pass is over
        assert len(daemon.events("chain.deployed")) == 1

        def full_pass() -> None:
            """SIGUSR1, and wait for the STATUS= every pass ends with; none may run before."""
            nonlocal mark
            notify_socket.receive(0.01)
            assert notify_socket.indexes("STATUS")[-1] <= mark, notify_socket.messages
            daemon.signal(signal.SIGUSR1)
            mark = notify_socket.wait_for("STATUS", mark + 1, timeout=10)

        write_version(host.letsencrypt, MX, new, 1)  # in place: live/ does not change
        time.sleep(1.0)  # ten settle periods: the watcher saw nothing
        assert served_leaf(postfix.port) == der(old.cert)
        full_pass()
        assert len(daemon.events("chain.deployed")) == 2
        assert openssl_served(postfix) == der(new.cert)

        # The chain file deleted by hand: the next smtpd Postfix starts would fail
        # every handshake. deploy_dir is not watched; a full pass writes it again.
        host.chain_file().unlink()
        time.sleep(0.5)
        assert not host.chain_file().exists()
        full_pass()
        (damaged,) = daemon.events("chain.damaged")
        assert damaged["lineage"] == MX and damaged["serial"] == serial(new), damaged
        assert len(daemon.events("chain.deployed")) == 3
        assert read_chain_file(host.chain_file()) == der(new.cert)
        assert host.chain_file().stat().st_mode & 0o777 == 0o600
        assert openssl_served(postfix) == der(new.cert)

        full_pass()  # an intact file is left alone
        assert len(daemon.events("chain.deployed")) == 3
        assert daemon.stop() == 0
        errors = [e for e in daemon.events() if e.get("level") in ("error", "critical")]
        assert not errors, errors


class TestCrashes:
    """SIGKILL at each step of a deploy; a restart finishes the job."""

    @pytest.mark.parametrize("crash_at", CRASH_POINTS)
    def test_kill_at_each_step(
        self, crash_at: str, tmp_path: Path, postfix: PostfixInstance, daemons: list[Daemon]
    ) -> None:
        ca = Hierarchy(f"Crash {crash_at} {uuid.uuid4().hex[:8]}")
        old, new = ca.issue([MX]), ca.issue([MX])
        old_leaf, new_leaf = der(old.cert), der(new.cert)
        host = Host(tmp_path, postfix)
        host.write_config([{"lineage": MX}])
        make_lineage(host.letsencrypt, MX, old)
        host.sync()
        wait_served(postfix, old_leaf)

        with Sampler(postfix.port, host.chain_file(), interval=0.02) as sampler:
            crashing = host.start(env={"DANESYNC_CRASH_AT": crash_at}, name="crashing")
            daemons.append(crashing)
            crashing.wait_for("daemon.ready")
            renew(host.letsencrypt, MX, new)
            assert crashing.process.wait(30) == -signal.SIGKILL, crashing.tail()
            assert not crashing.events("chain.deployed")
            state = host.state()
            assert state["reload_pending"] is True
            assert state["lineages"][MX]["deployed"]["fingerprint"] == fingerprint(old_leaf)
            on_disk = read_chain_file(host.chain_file())
            assert on_disk == (old_leaf if crash_at == "before-files" else new_leaf)

            restarted = host.start(name="restarted")
            daemons.append(restarted)
            restarted.wait_for("daemon.ready")
            sampler.wait_served(new_leaf)
            state = host.state()
            assert state["reload_pending"] is False
            assert state["lineages"][MX]["deployed"]["fingerprint"] == fingerprint(new_leaf)
            assert restarted.stop() == 0
        restarted.assert_no_errors()
        # The journal names what the restart finished: the new chain, once.
        (deployed,) = restarted.events("chain.deployed")
        assert deployed["lineage"] == MX and deployed["serial"] == serial(new), deployed
        if crash_at != "before-files":  # the file was in place: the restart only finished
            assert "interrupted by a restart" in str(deployed["reason"]), deployed
            assert [e["lineage"] for e in restarted.events("probe.ok")] == [MX]
        assert openssl_served(postfix) == new_leaf
        ok, output = postfix.dane_verify(MX, f"2 1 1 {spki_sha256(ca.intermediate)}")
        assert ok, output
        assert sampler.samples
        for sample in sampler.samples:
            assert sample.served in (old_leaf, new_leaf), sample
            assert sample.chain_file in (old_leaf, new_leaf), sample

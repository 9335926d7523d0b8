"""Issue 10, findings 5, 6 and 10: which records are needed, whose they are, when to deploy.

A real BIND and a real Postfix; danesync only through its config file, its
commands and its JSON log events. What is published is read with `dig`, what
is served with `openssl s_client`.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from danesync.tlsa import spki_sha256
from tests.harness.bind import BindServer, bind_fixture, free_port
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.invariant_host import MX, NAME, Host, names
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

postfix = postfix_fixture()
bind = bind_fixture(scope="function")

COOL_DOWN = 2.2
EXPIRES_IN = 345  # seconds the deployed chain of finding 10 has left
RSA_LINEAGE = "mx-rsa.example.test"


def hierarchy(label: str, key_kind: str = "ec256") -> Hierarchy:
    return Hierarchy(f"{label} {uuid.uuid4().hex[:8]}", key_kind=key_kind)  # type: ignore[arg-type]


def ta(h: Hierarchy) -> str:
    return f"2 1 1 {spki_sha256(h.intermediate)}"


def served_serial(postfix: PostfixInstance, *options: str) -> int | None:
    try:
        return postfix.served_certificate(*options).serial_number
    except AssertionError:
        return None


@pytest.fixture
def clean_postfix(postfix: PostfixInstance) -> PostfixInstance:
    # The module's Postfix may name an earlier test's chain file: start clean.
    postfix.postconf("-X", "smtpd_tls_chain_files", "tls_server_sni_maps")
    time.sleep(COOL_DOWN)
    postfix.reload()
    return postfix


# --- finding 6: a record is danesync's only if its own update added it ------------------


class UpdateRace:
    """A DNS proxy in front of BIND (UDP and TCP) that, when danesync's UPDATE
    adding `record` arrives, first lets "the operator" add the same record by
    hand: the record is then the operator's, whatever danesync's update says."""

    def __init__(self, bind: BindServer) -> None:
        self.bind = bind
        self.port = free_port()
        self.armed: str | None = None
        self.fired = threading.Event()
        race = self

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while True:
                    header = _read_exactly(self.request, 2)
                    if header is None:
                        return
                    wire = _read_exactly(self.request, struct.unpack("!H", header)[0])
                    if wire is None:
                        return
                    race.before_forward(wire)
                    self.request.sendall(_tcp_exchange(race.bind, header + wire))

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                wire, sock = self.request
                race.before_forward(wire)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
                    upstream.settimeout(5)
                    upstream.sendto(wire, (race.bind.host, race.bind.port))
                    sock.sendto(upstream.recv(65535), self.client_address)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Tcp)
        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), Udp)
        for server in (self.tcp, self.udp):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def before_forward(self, wire: bytes) -> None:
        opcode = (wire[2] >> 3) & 0xF
        record = self.armed
        if opcode != 5 or record is None:  # 5: UPDATE
            return
        if bytes.fromhex(record.split()[3]) not in wire:
            return
        self.armed = None
        self.bind.add_record(NAME, "TLSA", record)  # by hand, just before danesync's update
        self.fired.set()

    def close(self) -> None:
        for server in (self.tcp, self.udp):
            server.shutdown()
            server.server_close()


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _tcp_exchange(bind: BindServer, message: bytes) -> bytes:
    with socket.create_connection((bind.host, bind.port), timeout=5) as upstream:
        upstream.sendall(message)
        header = _read_exactly(upstream, 2)
        assert header is not None
        body = _read_exactly(upstream, struct.unpack("!H", header)[0])
        assert body is not None
        return header + body


@pytest.fixture
def race(bind: BindServer) -> Iterator[UpdateRace]:
    proxy = UpdateRace(bind)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_record_the_operator_added_meanwhile_is_never_removed(
    tmp_path: Path, clean_postfix: PostfixInstance, bind: BindServer, race: UpdateRace
) -> None:
    first, second, third = hierarchy("First"), hierarchy("Second"), hierarchy("Third")
    host = Host(tmp_path, clean_postfix, bind, ttl=2, rollover_wait=2)
    host.dns["server"] = race.address  # updates (and primary reads) through the proxy
    host.dns["verify_servers"] = [bind.address]
    host.write()
    make_lineage(host.letsencrypt, MX, first.issue([MX]))
    host.sync_until("chain.deployed")
    assert bind.dig_tlsa(NAME) == {ta(first)}

    # The operator adds the second chain's record while danesync's update is on its way.
    race.armed = ta(second)
    renew(host.letsencrypt, MX, second.issue([MX]))
    host.sync_until("chain.deployed")
    assert race.fired.is_set(), "danesync never sent the update the race was set for"
    host.sync()
    assert bind.dig_tlsa(NAME) == {ta(second)}

    renew(host.letsencrypt, MX, third.issue([MX]))
    host.sync_until("chain.deployed")
    for _ in range(2):
        _code, _events, stderr = host.sync()
        assert "Traceback" not in stderr, stderr
    assert ta(second) in bind.dig_tlsa(NAME), "the operator's record was removed"
    assert ta(third) in bind.dig_tlsa(NAME)


# --- finding 5: one definition of "needed" for watcher and full passes -------------------


def test_records_do_not_flip_between_watcher_and_full_passes(
    tmp_path: Path, clean_postfix: PostfixInstance, bind: BindServer
) -> None:
    """An ECDSA and an RSA lineage share `_25._tcp.mx`. After `usages` of the
    RSA one gains `3 1 1` (SIGHUP), the full pass publishes its 3 1 1 record;
    watcher passes for the ECDSA lineage must not retire it again."""
    ec, rsa = hierarchy("Ec"), hierarchy("Rsa", "rsa")
    host = Host(tmp_path, clean_postfix, bind, ttl=2, rollover_wait=2, reconcile_interval=5)
    certificates = [
        {"lineage": MX, "hostnames": [MX]},
        {"lineage": RSA_LINEAGE, "hostnames": [MX], "tlsa": [NAME]},
    ]
    host.write(certificates)
    rsa_leaf = rsa.issue([MX], key_kind="rsa")
    make_lineage(host.letsencrypt, MX, ec.issue([MX]))
    make_lineage(host.letsencrypt, RSA_LINEAGE, rsa_leaf)
    daemon = host.start()
    try:
        daemon.wait_until(
            lambda: len(daemon.events("chain.deployed")) >= 2, "both chains deployed", 60
        )
        ee = f"3 1 1 {spki_sha256(rsa_leaf.cert)}"
        certificates[1]["usages"] = ["2 1 1", "3 1 1"]
        host.write(certificates)
        daemon.process.send_signal(signal.SIGHUP)
        end = time.monotonic() + 30
        while ee not in bind.dig_tlsa(NAME):
            assert time.monotonic() < end, daemon.text()[-4000:]
            time.sleep(0.2)

        samples: list[set[str]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(bind.dig_tlsa(NAME))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            deployed = len(daemon.events("chain.deployed"))
            for round_ in range(2):  # watcher passes: ECDSA renewals from the same CA
                renew(host.letsencrypt, MX, ec.issue([MX]))
                daemon.wait_for("chain.deployed", deployed + round_ + 1)
                time.sleep(6)  # a full pass (reconcile_interval 5) in between
        finally:
            stop.set()
            sampler.join()
        gone = [s for s in samples if ee not in s]
        assert not gone, f"{len(gone)} of {len(samples)} samples without {ee}: {gone[:3]}"
        assert "tlsa.retired" not in names([e for e in daemon.events() if ee in str(e.get("tlsa"))])
    finally:
        host.close()


# --- finding 10: an expiring deployed chain is replaced at the last safe moment ------------


def test_expiring_chain_is_replaced_at_the_last_safe_moment(
    tmp_path: Path, clean_postfix: PostfixInstance, bind: BindServer
) -> None:
    """The deployed chain expires in a few minutes; the new one would be safe
    only after `rollover_wait` = 900 s. Deploying at once breaks DANE for caches
    holding the old RRset for no reason: deploy just before the old one expires.
    (EXPIRES_IN leaves room for a safety margin of up to 5 minutes before
    notAfter, and still about 35 s in which the old chain must keep serving.)"""
    old, new = hierarchy("Expiring"), hierarchy("Renewed")
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=EXPIRES_IN)
    short: Leaf = old.issue([MX], not_before=now - dt.timedelta(hours=1), not_after=expires)
    host = Host(tmp_path, clean_postfix, bind, ttl=2, rollover_wait=2)
    make_lineage(host.letsencrypt, MX, short)
    host.sync_until("chain.deployed")
    assert served_serial(clean_postfix) == short.cert.serial_number

    host.dns["rollover_wait"] = 900
    host.write()
    renewed = new.issue([MX])
    renew(host.letsencrypt, MX, renewed)
    samples: list[tuple[float, int | None]] = []
    daemon = host.start()
    try:
        daemon.wait_for("tlsa.published")
        published = time.time()
        end = expires.timestamp() + 30
        while time.time() < end:
            serial = served_serial(clean_postfix)
            samples.append((time.time(), serial))
            if serial == renewed.cert.serial_number:
                break
            time.sleep(0.5)
    finally:
        host.close()
    switched = next((t for t, s in samples if s == renewed.cert.serial_number), None)
    assert switched is not None, daemon.text()[-4000:]
    # Before the old chain expired, and not at once: the old one was still
    # served well after the new record was published.
    assert switched < expires.timestamp(), (switched, expires)
    assert any(s == short.cert.serial_number and t > published + 20 for t, s in samples), (
        f"replaced {switched - published:.0f} s after publishing, "
        f"{expires.timestamp() - switched:.0f} s before the old chain expired"
    )
    forced = daemon.events("rollover.forced")
    assert forced, names(daemon.events())

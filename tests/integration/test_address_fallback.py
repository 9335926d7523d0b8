"""A server given by host name is reached at any of its addresses.

Debian's default /etc/hosts maps ``localhost`` to ::1 as well as 127.0.0.1,
and the resolver returns ::1 first: a DNS server or Postfix listening on
127.0.0.1 only must still be reached when it is configured as ``localhost``.
The name's resolution is injected (``dual.test`` resolves to ::1, where
nothing listens on the port, then 127.0.0.1); the servers are real: BIND,
Postfix, and the system resolver of a private mount namespace whose
/etc/hosts is Debian's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from danesync.actions import probe
from danesync.actions.dns import (
    RetryPolicy,
    Server,
    find_verify_servers,
    query_tlsa,
    send_tlsa_update,
)
from danesync.errors import DnsUpdateError
from danesync.tlsa import TlsaRecord
from danesync.tsigkey import TsigKey, read_tsig_key
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = pytest.mark.integration

ZONE = "example.test"
MX = "_25._tcp.mx.example.test."
DUAL = "dual.test"  # resolves to ::1 first, then 127.0.0.1

bind = bind_fixture()
postfix = postfix_fixture()
_real_getaddrinfo = socket.getaddrinfo


def _fake_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """The resolver's answer for DUAL as Debian's /etc/hosts gives it for
    localhost (::1 first); every other name as the system has it."""
    if host != DUAL:
        return _real_getaddrinfo(host, port, *args, **kwargs)
    infos: list[Any] = []
    for address in ("::1", "127.0.0.1"):
        if ":" in address:
            infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
        else:
            infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
    return infos


@pytest.fixture
def dual_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo)


@pytest.fixture
def key(bind: BindServer) -> TsigKey:
    return read_tsig_key(bind.key_path)


@pytest.fixture
def clean(bind: BindServer) -> Iterator[None]:
    bind.nsupdate(f"update delete {MX} TLSA")
    yield


def record(seed: str) -> TlsaRecord:
    return TlsaRecord(MX, 3, 1, 1, hashlib.sha256(seed.encode()).hexdigest())


@pytest.mark.usefixtures("clean", "dual_resolution")
class TestDnsServerByName:
    """Queries and updates reach BIND (127.0.0.1 only) under a name whose
    first address (::1) has nothing listening."""

    def test_the_first_address_is_the_dead_one(self, bind: BindServer) -> None:
        # The premise: a client that takes the first address only asks ::1.
        first = socket.getaddrinfo(DUAL, bind.port, proto=socket.IPPROTO_TCP)[0]
        assert first[4][0] == "::1"

    def test_query(self, bind: BindServer) -> None:
        bind.add_record(MX, "TLSA", record("query").rdata)
        assert query_tlsa(Server(DUAL, bind.port), MX, timeout=1) == {record("query")}

    def test_update(self, bind: BindServer, key: TsigKey) -> None:
        new = record("update")
        result = send_tlsa_update(
            Server(DUAL, bind.port),
            ZONE,
            key,
            add=[new],
            delete=[],
            ttl=60,
            timeout=1,
            retry=RetryPolicy(attempts=1),
        )
        assert result.added == {new}
        assert result.retries == 0
        assert bind.dig_tlsa(MX) == {new.rdata}

    def test_verify_servers_of_a_primary_given_by_name(self, bind: BindServer) -> None:
        primary = Server(DUAL, bind.port)
        assert find_verify_servers(ZONE, primary, timeout=1)[0] == primary

    def test_no_address_answers(self, key: TsigKey) -> None:
        with pytest.raises(DnsUpdateError) as failure:
            send_tlsa_update(
                Server(DUAL, 9),  # discard: nothing listens on either address
                ZONE,
                key,
                add=[record("dead")],
                delete=[],
                ttl=60,
                timeout=1,
                retry=RetryPolicy(attempts=1),
            )
        assert failure.value.rcode == "UNREACHABLE"
        assert "::1: connection refused" in str(failure.value)
        assert "127.0.0.1: connection refused" in str(failure.value)

    def test_update_applied_at_a_silent_address_is_ours(
        self, bind: BindServer, key: TsigKey
    ) -> None:
        # ::1 (same port) relays the update to BIND and drops the answer: the
        # record is added there; 127.0.0.1 then refuses the resend (its
        # prerequisite "no TLSA yet" fails). The re-read shows the record,
        # and it is danesync's: its own update added it.
        new = record("silent")
        with _AnswerDropper(bind):
            result = send_tlsa_update(
                Server(DUAL, bind.port),
                ZONE,
                key,
                add=[new],
                delete=[],
                ttl=60,
                timeout=2,
                retry=RetryPolicy(attempts=1),
            )
        assert result.added == {new}
        assert result.conflicts == 1
        assert bind.dig_tlsa(MX) == {new.rdata}


class _AnswerDropper:
    """On [::1]:<BIND's port>: relays DNS-over-TCP to BIND, but closes the
    connection without passing on the answer to an UPDATE."""

    def __init__(self, target: BindServer) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("::1", target.port))
        self.listener.listen(4)
        self.listener.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(5)
            with client, socket.create_connection((self.target.host, self.target.port)) as up:
                request = _read_framed(client)
                up.sendall(request)
                answer = _read_framed(up)
                if (request[4] >> 3) & 0xF != 5:  # opcode, after the length: not UPDATE
                    client.sendall(answer)


def _read_framed(connection: socket.socket) -> bytes:
    """One DNS-over-TCP message, with its two-byte length prefix."""
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@pytest.fixture(scope="module")
def served_leaf(postfix: PostfixInstance) -> bytes:
    """A chain deployed in the private Postfix (127.0.0.1 only); its leaf, DER."""
    hierarchy = Hierarchy("address fallback")
    now = dt.datetime.now(dt.UTC)
    leaf = hierarchy.issue(
        ["mx.example.test"],
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=30),
    )
    chain = postfix.config_dir / "chain.pem"
    chain.write_bytes(leaf.key_pem + leaf.fullchain_pem)
    chain.chmod(0o600)
    postfix.postconf("-e", f"smtpd_tls_chain_files = {chain}")
    postfix.reload()
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    assert probe.wait_for_leaf(postfix.host, postfix.port, der)
    return der


@pytest.mark.usefixtures("dual_resolution")
class TestProbeByName:
    """The STARTTLS probe reaches Postfix (127.0.0.1 only) under a name whose
    first address (::1) refuses the connection."""

    def test_probe(self, postfix: PostfixInstance, served_leaf: bytes) -> None:
        assert probe.probe_starttls(DUAL, postfix.port, timeout=2) == served_leaf

    def test_no_address_answers(self) -> None:
        with pytest.raises(probe.ProbeError, match="cannot connect"):
            probe.probe_starttls(DUAL, 9, timeout=2)


@pytest.mark.root
class TestDebianHostsFile:
    """The real resolver with Debian's /etc/hosts (bind-mounted over this
    machine's in a private mount namespace): ``localhost`` is ::1 first."""

    def test_localhost_reaches_bind_and_postfix(
        self, bind: BindServer, postfix: PostfixInstance, served_leaf: bytes, tmp_path: Path
    ) -> None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare(1) to mount a private /etc/hosts")
        hosts = tmp_path / "hosts"
        hosts.write_text("::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\tlocalhost\n")
        bind.nsupdate(f"update delete {MX} TLSA\nupdate add {MX} 60 TLSA {record('hosts').rdata}")
        script = textwrap.dedent(
            f"""
            import socket
            from danesync.actions import probe
            from danesync.actions.dns import Server, query_tlsa
            first = socket.getaddrinfo("localhost", 53, proto=socket.IPPROTO_TCP)[0][4][0]
            assert first == "::1", first
            records = query_tlsa(Server("localhost", {bind.port}), "{MX}", timeout=1)
            print(sorted(r.rdata for r in records))
            print(probe.probe_starttls("localhost", {postfix.port}, timeout=2).hex())
            """
        )
        mount = f'mount --bind {hosts} /etc/hosts && exec {sys.executable} -c "$0"'
        completed = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert completed.returncode == 0, completed.stderr
        lines = completed.stdout.splitlines()
        assert lines == [repr([record("hosts").rdata]), served_leaf.hex()]

"""`danesync check` asks DNS (issue 13, findings 1 and 7), on BIND, Knot DNS
and PowerDNS alike, through the command line in each library lane.

A TSIG key file that is missing, loose (0644) or holds a wrong secret, a
dns.zone that is a name inside the server's zone, a name outside the update
policy, a verify server that is not authoritative: `check` exits 1 and names
the reason. Nothing in DNS changes while it asks.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from danesync.tlsa import spki_sha256
from tests.harness.bind import BindServer, bind_fixture, free_port
from tests.harness.certs import Hierarchy
from tests.harness.danesync import run_danesync, write_config
from tests.harness.dnsservers import dns_server_fixture
from tests.harness.lineage import make_lineage

pytestmark = pytest.mark.integration

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}."
OTHER = "_25._tcp.other.example.test."

dns_server = dns_server_fixture()
bind = bind_fixture()


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy(f"Check {uuid.uuid4().hex[:8]}")


@pytest.fixture
def clean(dns_server: BindServer) -> None:
    dns_server.nsupdate(f"update delete {NAME} TLSA\nupdate delete {OTHER} TLSA")


@pytest.fixture
def clean_bind(bind: BindServer) -> None:
    bind.nsupdate(f"update delete {NAME} TLSA\nupdate delete {OTHER} TLSA")


def check(
    tmp_path: Path,
    dns_server: BindServer,
    hierarchy: Hierarchy,
    *,
    key_file: Path | None = None,
    zone: str = "example.test",
    tlsa: str = NAME,
    mode: str = "rfc2136",
    verify_servers: list[str] | None = None,
    resolver: str = "off",
) -> tuple[int, list[str]]:
    letsencrypt = tmp_path / "letsencrypt"
    if not (letsencrypt / "live" / MX).exists():
        make_lineage(letsencrypt, MX, hierarchy.issue([MX]))
    dns: dict[str, Any] = {"mode": mode, "server": dns_server.address, "zone": zone, "ttl": 60}
    if mode == "rfc2136":
        dns["tsig_key_file"] = key_file or dns_server.key_path
    if verify_servers is not None:
        dns["verify_servers"] = verify_servers
    config = write_config(
        tmp_path / "danesync.toml",
        {
            "certbot": {"config_dir": letsencrypt},
            "postfix": {"config_dir": tmp_path},
            "dns": dns,
            "state": {"dir": tmp_path / "state"},
            "monitor": {"resolver": resolver},
        },
        [{"lineage": MX, "tlsa": [tlsa]}],
    )
    result = run_danesync("check", "-c", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("dns: ")]
    return result.returncode, lines


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("dns: error: ")]


@pytest.mark.usefixtures("clean")
class TestCheckAsksDns:
    def test_all_good(self, tmp_path: Path, dns_server: BindServer, hierarchy: Hierarchy) -> None:
        before = dns_server.dig("example.test", "SOA", "+short")
        code, lines = check(tmp_path, dns_server, hierarchy)
        assert code == 0, lines
        text = "\n".join(lines)
        assert 'serves zone example.test. (TSIG key "danesync" verified)' in text
        assert f"verify server {dns_server.address} answers authoritatively" in text
        if dns_server.kind == "pdns":
            assert "cannot be tested without a change (PowerDNS checks prerequisites" in text
        else:
            assert f'allows TSIG key "danesync" to change {NAME} TLSA' in text
        assert f"{NAME} carries 0 TLSA record(s)" in text
        assert (
            "dns: unknown: DNSSEC validation of example.test.: unknown (no resolver configured)"
            in text
        )
        # Nothing changed: no record, same SOA serial.
        assert dns_server.dig_tlsa(NAME) == set()
        assert dns_server.dig("example.test", "SOA", "+short") == before

    def test_wrong_secret(
        self, tmp_path: Path, dns_server: BindServer, hierarchy: Hierarchy
    ) -> None:
        bad = tmp_path / "bad.key"
        text = dns_server.key_path.read_text()
        bad.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "QUFB" * 11 + '"', text))
        bad.chmod(0o600)
        code, lines = check(tmp_path, dns_server, hierarchy, key_file=bad)
        assert code == 1
        (error,) = errors(lines)
        assert 'TSIG key "danesync"' in error
        assert "secret" in error, error
        assert "QUFB" not in "\n".join(lines)

    def test_zone_inside_the_servers_zone(
        self, tmp_path: Path, dns_server: BindServer, hierarchy: Hierarchy
    ) -> None:
        code, lines = check(tmp_path, dns_server, hierarchy, zone=MX)
        assert code == 1
        assert errors(lines) == [
            f"dns: error: dns.zone {MX}. is not a zone on {dns_server.address}: it lies inside "
            "zone example.test.; set dns.zone to the zone that holds the TLSA names "
            '(dns.zone = "example.test")'
        ]

    def test_name_outside_the_update_policy(
        self, tmp_path: Path, dns_server: BindServer, hierarchy: Hierarchy
    ) -> None:
        code, lines = check(tmp_path, dns_server, hierarchy, tlsa=OTHER)
        if dns_server.kind == "pdns":
            # Not provable without a change on PowerDNS; check says so.
            assert code == 0, lines
            assert any("cannot be tested without a change" in line for line in lines)
        else:
            assert code == 1
            (error,) = errors(lines)
            assert f'refuses TSIG key "danesync" to change {OTHER} TLSA' in error
        assert dns_server.dig_tlsa(OTHER) == set()

    def test_verify_server_that_does_not_answer(
        self, tmp_path: Path, dns_server: BindServer, hierarchy: Hierarchy
    ) -> None:
        dead = f"127.0.0.1:{free_port()}"
        code, lines = check(
            tmp_path, dns_server, hierarchy, verify_servers=[dns_server.address, dead]
        )
        assert code == 1
        (error,) = errors(lines)
        assert error.startswith(f"dns: error: verify server {dead} did not answer")

    def test_unsigned_zone_and_records_that_break_dane(
        self, tmp_path: Path, dns_server: BindServer, hierarchy: Hierarchy
    ) -> None:
        leaf_cert = "3 0 1 " + "cd" * 32
        dns_server.add_record(NAME, "TLSA", leaf_cert)
        for n in range(12):
            dns_server.add_record(NAME, "TLSA", f"2 1 1 {n:02x}" + "ee" * 31)
        dns_server.add_record(NAME, "TLSA", f"2 1 1 {spki_sha256(hierarchy.intermediate)}")
        code, lines = check(tmp_path, dns_server, hierarchy)
        text = "\n".join(lines)
        assert code == 0, lines  # warnings only
        assert f"dns: warning: {NAME} carries 14 TLSA records: Microsoft's senders" in text
        assert f"dns: warning: {NAME} TLSA 3 0 1 cdcdcd" in text
        assert "pins the whole leaf certificate" in text
        assert f"dns: warning: {NAME} TLSA comes without RRSIG from {dns_server.address}" in text
        assert f"dns: warning: {MX}. A comes without RRSIG" in text


@pytest.mark.usefixtures("clean_bind")
class TestCheckOnOneServer:
    """What does not depend on the server's software: BIND only, to keep CI short."""

    def test_missing_key_file(self, tmp_path: Path, bind: BindServer, hierarchy: Hierarchy) -> None:
        missing = tmp_path / "nothere.key"
        code, lines = check(tmp_path, bind, hierarchy, key_file=missing)
        assert code == 1
        assert errors(lines) == [
            f"dns: error: TSIG key file {missing}: no such file (make one with tsig-keygen)"
        ]

    def test_loose_key_file(self, tmp_path: Path, bind: BindServer, hierarchy: Hierarchy) -> None:
        loose = tmp_path / "loose.key"
        loose.write_text(bind.key_path.read_text())
        loose.chmod(0o644)
        code, lines = check(tmp_path, bind, hierarchy, key_file=loose)
        assert code == 1
        (error,) = errors(lines)
        assert str(loose) in error and "mode 0644" in error

    def test_check_mode_asks_without_a_key(
        self, tmp_path: Path, bind: BindServer, hierarchy: Hierarchy
    ) -> None:
        code, lines = check(tmp_path, bind, hierarchy, mode="check")
        assert code == 0, lines
        assert any("serves zone example.test. (unsigned)" in line for line in lines)

    def test_resolver_without_ad_bit(
        self, tmp_path: Path, bind: BindServer, hierarchy: Hierarchy
    ) -> None:
        # The authoritative server itself answers without AD: not validated.
        code, lines = check(tmp_path, bind, hierarchy, resolver=bind.address)
        assert code == 0
        assert (
            f"dns: warning: example.test. does not validate through resolver "
            f"{bind.address} (no AD bit)"
        ) in "\n".join(lines)

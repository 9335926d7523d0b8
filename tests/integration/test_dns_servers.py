"""danesync's DNS actions against BIND, Knot DNS and PowerDNS alike.

The three servers answer the same fault differently (a bad key: BADSIG from
BIND and Knot, an unsigned REFUSED from PowerDNS; a policy refusal: REFUSED
from BIND, NOTAUTH + BADKEY from Knot, NOERROR-and-nothing-changed from
PowerDNS's Lua policy). danesync must name the real cause, with the same
words on PyPI's dnspython and Debian's 2.3: these tests run in both lanes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from danesync.actions.dns import Server, query_soa, query_tlsa, send_tlsa_update
from danesync.errors import DnsUpdateError
from danesync.tlsa import TlsaRecord
from danesync.tsigkey import TsigKey, read_tsig_key
from tests.harness.bind import BindServer
from tests.harness.dnsservers import dns_server_fixture
from tests.harness.knot import KnotServer
from tests.harness.pdns import PdnsServer

pytestmark = pytest.mark.integration

ZONE = "example.test"
MX = "_25._tcp.mx.example.test."
OTHER = "_25._tcp.other.example.test."

dns_server = dns_server_fixture()


def record(name: str, seed: int | str) -> TlsaRecord:
    return TlsaRecord(name, 3, 1, 1, hashlib.sha256(str(seed).encode()).hexdigest())


def server(s: BindServer) -> Server:
    return Server(s.host, s.port)


@pytest.fixture
def clean(dns_server: BindServer) -> Iterator[None]:
    dns_server.start()
    dns_server.nsupdate(f"update delete {MX} TLSA\nupdate delete {OTHER} TLSA")
    yield


@pytest.fixture
def key(dns_server: BindServer) -> TsigKey:
    return read_tsig_key(dns_server.key_path)


@pytest.mark.usefixtures("clean")
class TestUpdatesEverywhere:
    def test_add_then_delete_keeps_a_hand_made_record(
        self, dns_server: BindServer, key: TsigKey
    ) -> None:
        by_hand = record(MX, "by hand")
        dns_server.add_record(MX, "TLSA", by_hand.rdata)
        ours = record(MX, 1)
        result = send_tlsa_update(server(dns_server), ZONE, key, [ours], [], 60)
        assert result.added == {ours}
        assert dns_server.dig_tlsa(MX) == {by_hand.rdata, ours.rdata}
        assert query_tlsa(server(dns_server), MX) == {by_hand, ours}
        send_tlsa_update(server(dns_server), ZONE, key, [], [ours], 60)
        assert dns_server.dig_tlsa(MX) == {by_hand.rdata}

    def test_stale_prerequisite_is_a_conflict_then_retried(
        self, dns_server: BindServer, key: TsigKey
    ) -> None:
        dns_server.add_record(MX, "TLSA", record(MX, "by hand").rdata)
        result = send_tlsa_update(
            server(dns_server), ZONE, key, [record(MX, 1)], [], 60, expected={}
        )
        assert result.conflicts == 1 and result.added == {record(MX, 1)}
        assert dns_server.dig_tlsa(MX) == {record(MX, "by hand").rdata, record(MX, 1).rdata}


@pytest.mark.usefixtures("clean")
class TestFaultsNameTheRealCause:
    def test_wrong_secret(self, dns_server: BindServer, key: TsigKey) -> None:
        wrong = TsigKey(key.name, key.algorithm, os.urandom(32))
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(dns_server), ZONE, wrong, [record(MX, 1)], [], 60)
        assert info.value.rcode == "BADSIG", info.value
        assert "secret" in info.value.detail and '"danesync"' in info.value.detail
        if dns_server.kind == "pdns":
            assert "without a TSIG signature" in info.value.detail
        else:
            assert "could not verify the signature (bad signature)" in info.value.detail
        assert dns_server.dig_tlsa(MX) == set()

    def test_unknown_key(self, dns_server: BindServer, key: TsigKey) -> None:
        stranger = TsigKey("stranger", key.algorithm, key.secret)
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(dns_server), ZONE, stranger, [record(MX, 1)], [], 60)
        unsigned = dns_server.kind == "pdns" or (  # they answer it without a signature
            isinstance(dns_server, KnotServer) and dns_server.version >= (3, 4)
        )
        if unsigned:  # so it cannot be told from a wrong secret: the message says both
            assert info.value.rcode == "BADSIG"
            assert 'did not accept TSIG key "stranger"' in info.value.detail
            assert "secret, name or algorithm" in info.value.detail
        else:
            assert info.value.rcode == "BADKEY"
            assert 'does not know TSIG key "stranger"' in info.value.detail

    def test_name_outside_the_update_policy(self, dns_server: BindServer, key: TsigKey) -> None:
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(dns_server), ZONE, key, [record(OTHER, 1)], [], 60)
        assert info.value.rcode == "REFUSED", info.value
        assert f"{OTHER} TLSA" in info.value.detail
        assert 'TSIG key "danesync"' in info.value.detail
        assert "does not know" not in info.value.detail  # Knot's BADKEY is no key problem
        assert dns_server.dig_tlsa(OTHER) == set()

    @pytest.mark.parametrize("zone", ["other.test", "mx.example.test"])
    def test_zone_the_server_does_not_serve(
        self, dns_server: BindServer, key: TsigKey, zone: str
    ) -> None:
        name = f"_25._tcp.mx.{zone}." if zone == "other.test" else MX
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(dns_server), zone, key, [record(name, 1)], [], 60, expected={})
        assert info.value.rcode == "NOTAUTH", info.value
        assert f"is not authoritative for zone {zone}" in info.value.detail
        assert dns_server.dig_tlsa(MX) == set()


class TestSoa:
    def test_signed_soa_proves_the_key(self, dns_server: BindServer, key: TsigKey) -> None:
        answer = query_soa(server(dns_server), ZONE, key)
        assert (answer.rcode, answer.authoritative, answer.has_soa, answer.signed) == (
            "NOERROR",
            True,
            True,
            True,
        )

    def test_wrong_secret_is_not_signed(self, dns_server: BindServer, key: TsigKey) -> None:
        wrong = TsigKey(key.name, key.algorithm, os.urandom(32))
        answer = query_soa(server(dns_server), ZONE, wrong)
        assert not answer.signed
        assert answer.rcode in {"BADSIG", "REFUSED", "NOTAUTH"}, answer

    def test_a_name_inside_the_zone_is_no_zone(self, dns_server: BindServer, key: TsigKey) -> None:
        answer = query_soa(server(dns_server), "mx.example.test", key)
        assert answer.rcode == "NOERROR" and not answer.has_soa
        assert answer.enclosing == "example.test."


@pytest.mark.usefixtures("clean")
class TestKeyFilesOfEachServer:
    """A key file as the server's own tool prints it works with that server."""

    def test_native_key_file(self, dns_server: BindServer, tmp_path: Path) -> None:
        secret = dns_server.secret_of(dns_server.key_path)
        if isinstance(dns_server, PdnsServer):
            listed = dns_server.pdnsutil("list-tsig-keys")
            text = "".join(line + "\n" for line in listed.splitlines() if "danesync" in line)
        elif dns_server.kind == "knot":
            text = (
                f"# hmac-sha256:danesync:{secret}\nkey:\n  - id: danesync\n"
                f"    algorithm: hmac-sha256\n    secret: {secret}\n"
            )
        else:
            text = dns_server.key_path.read_text()
        native = tmp_path / "native.key"
        native.write_text(text)
        native.chmod(0o600)
        key = read_tsig_key(native)
        result = send_tlsa_update(server(dns_server), ZONE, key, [record(MX, "native")], [], 60)
        assert result.added == {record(MX, "native")}
        assert query_soa(server(dns_server), ZONE, key).signed

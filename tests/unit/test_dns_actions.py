"""The pure parts of danesync.actions.dns: Server, Visibility, the update message."""

from __future__ import annotations

import hashlib

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import pytest

from danesync.actions.dns import RetryPolicy, Server, Visibility, build_tlsa_update
from danesync.tlsa import TlsaRecord
from danesync.tsigkey import TsigKey

MX = "_25._tcp.mx.example.test."
MX2 = "_25._tcp.mx2.example.test."


def record(name: str, seed: int, usage: int = 3) -> TlsaRecord:
    return TlsaRecord(name, usage, 1, 1, hashlib.sha256(str(seed).encode()).hexdigest())


class TestServer:
    """Server.parse takes what the config file holds."""

    @pytest.mark.parametrize(
        ("text", "server"),
        [
            ("192.0.2.53", Server("192.0.2.53", 53)),
            ("192.0.2.53:5353", Server("192.0.2.53", 5353)),
            ("ns1.example.com", Server("ns1.example.com", 53)),
            ("ns1.example.com:1053", Server("ns1.example.com", 1053)),
            ("[2001:db8::1]:53", Server("2001:db8::1", 53)),
            ("[2001:db8::1]", Server("2001:db8::1", 53)),
            ("2001:db8::1", Server("2001:db8::1", 53)),
            (" 127.0.0.1:1 ", Server("127.0.0.1", 1)),
        ],
    )
    def test_parse(self, text: str, server: Server) -> None:
        assert Server.parse(text) == server

    def test_default_port(self) -> None:
        assert Server.parse("192.0.2.1", default_port=5353) == Server("192.0.2.1", 5353)

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("", "no host"),
            (":53", "no host"),
            ("[2001:db8::1", "without ']'"),
            ("[2001:db8::1]53", "expected ':port'"),
            ("host:0", "port must be"),
            ("host:65536", "port must be"),
            ("host:x", "port must be"),
            ("host:", "port must be"),
        ],
    )
    def test_parse_refuses(self, text: str, reason: str) -> None:
        with pytest.raises(ValueError, match=reason):
            Server.parse(text)

    @pytest.mark.parametrize("text", ["192.0.2.1:53", "[2001:db8::1]:5353", "ns.example:53"])
    def test_str_round_trips(self, text: str) -> None:
        assert str(Server.parse(text)) == text


class TestVisibility:
    """A record is visible only when every server returned it."""

    a, b = Server("192.0.2.1"), Server("192.0.2.2")

    def test_visible_when_every_server_returns_it(self) -> None:
        one, two = record(MX, 1), record(MX, 2)
        view = Visibility(
            (self.a, self.b),
            frozenset({MX}),
            {MX: {self.a: frozenset({one, two}), self.b: frozenset({one})}},
        )
        assert view.visible_everywhere(one)
        assert not view.visible_everywhere(two)
        assert view.missing_from(two) == (self.b,)
        assert view.visible_records() == {one}
        assert view.visible_records("_25._tcp.MX.example.test") == {one}
        assert view.on_server(self.a, MX) == {one, two}
        assert view.complete

    def test_a_server_that_failed_sees_nothing(self) -> None:
        one = record(MX, 1)
        view = Visibility(
            (self.a, self.b),
            frozenset({MX}),
            {MX: {self.a: frozenset({one})}},
            {MX: {self.b: "no answer within 3 s"}},
        )
        assert not view.visible_everywhere(one)
        assert view.missing_from(one) == (self.b,)
        assert not view.complete
        assert view.problems() == (f"192.0.2.2:53: {MX}: no answer within 3 s",)

    def test_no_servers_means_nothing_is_visible(self) -> None:
        view = Visibility((), frozenset({MX}), {MX: {}})
        assert not view.visible_everywhere(record(MX, 1))
        assert view.visible_records() == frozenset()

    def test_names_are_kept_apart(self) -> None:
        at_mx = record(MX, 1)
        same_data_at_mx2 = TlsaRecord(MX2, 3, 1, 1, at_mx.data)
        view = Visibility((self.a,), frozenset({MX, MX2}), {MX: {self.a: frozenset({at_mx})}})
        assert view.visible_everywhere(at_mx)
        assert not view.visible_everywhere(same_data_at_mx2)


def _sections(message: dns.update.UpdateMessage) -> tuple[list[str], list[str]]:
    wire = message.to_wire()
    parsed = dns.message.from_wire(wire)
    assert isinstance(parsed, dns.update.UpdateMessage)

    def lines(rrsets: list[dns.rrset.RRset]) -> list[str]:
        out: list[str] = []
        for rrset in rrsets:
            out.extend(line for line in rrset.to_text().splitlines())
        return sorted(out)

    return lines(parsed.prerequisite), lines(parsed.update)


class TestBuildTlsaUpdate:
    """The update message adds and deletes single records behind prerequisites."""

    def test_add_to_empty_rrset_requires_it_absent(self) -> None:
        new = record(MX, 1)
        prerequisites, updates = _sections(
            build_tlsa_update("example.test", {}, [new], [], 300, None)
        )
        assert prerequisites == [f"{MX} NONE TLSA"]
        assert updates == [f"{MX} 300 IN TLSA {new.rdata}"]

    def test_add_beside_existing_requires_exact_rrset(self) -> None:
        old, theirs, new = record(MX, 1), record(MX, 2, usage=2), record(MX, 3)
        current = {MX: frozenset({old, theirs})}
        prerequisites, updates = _sections(
            build_tlsa_update("example.test.", current, [new], [old], 60, None)
        )
        assert prerequisites == sorted(
            [f"{MX} 0 IN TLSA {old.rdata}", f"{MX} 0 IN TLSA {theirs.rdata}"]
        )
        # Deletion of one record is class NONE; no "delete RRset" (class ANY) ever.
        assert updates == sorted([f"{MX} 0 NONE TLSA {old.rdata}", f"{MX} 60 IN TLSA {new.rdata}"])

    def test_only_names_that_change_get_prerequisites(self) -> None:
        at_mx2 = record(MX2, 1)
        current = {MX: frozenset({record(MX, 9)}), MX2: frozenset()}
        prerequisites, _ = _sections(
            build_tlsa_update("example.test", current, [at_mx2], [], 1, None)
        )
        assert prerequisites == [f"{MX2} NONE TLSA"]

    def test_signed_with_the_key(self) -> None:
        key = TsigKey("danesync", "hmac-sha384", b"k" * 48)
        message = build_tlsa_update("example.test", {}, [record(MX, 1)], [], 60, key)
        keyring = {key.to_dnspython().name: key.to_dnspython()}
        parsed = dns.message.from_wire(message.to_wire(), keyring=keyring)
        assert parsed.had_tsig
        assert parsed.keyalgorithm == dns.tsig.HMAC_SHA384


class TestRetryPolicy:
    """Backoff doubles and is capped."""

    def test_delays(self) -> None:
        policy = RetryPolicy(first_delay=0.5, factor=2.0, max_delay=3.0)
        assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]

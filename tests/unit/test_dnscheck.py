"""The pure judges behind `danesync check`'s DNS lines (issue 13, findings 1, 7)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from danesync.actions.dns import Server, SoaAnswer
from danesync.certbot import read_chain
from danesync.chain import Chain
from danesync.config import CertificateConfig
from danesync.dnsjudge import build_root_index, judge_tlsa_rrset
from danesync.serverjudge import (
    judge_policy,
    judge_primary_soa,
    judge_signed,
    judge_validation,
    judge_verify_server,
)
from danesync.tlsa import TlsaRecord, spki_sha256
from danesync.tsigkey import TsigKey
from tests.harness.certs import Hierarchy
from tests.harness.lineage import make_lineage

S = Server("127.0.0.1", 5353)
KEY = TsigKey("danesync", "hmac-sha256", b"x" * 32)
ZONE = "example.test"
NAME = "_25._tcp.mx.example.test."


def soa(rcode: str = "NOERROR", aa: bool = True, has: bool = True, signed: bool = True,
        enclosing: str | None = None) -> SoaAnswer:  # fmt: skip
    return SoaAnswer(S, "example.test.", rcode, aa, has, signed, enclosing)


class TestPrimarySoa:
    def test_good(self) -> None:
        (finding,) = judge_primary_soa(ZONE, soa(), KEY)
        assert finding.level == "ok" and 'TSIG key "danesync" verified' in finding.text

    @pytest.mark.parametrize(
        ("answer", "words"),
        [
            (soa("BADSIG", False, False, False), "secret or algorithm"),
            (soa("BADKEY", False, False, False), "does not know this key"),
            (soa("BADTIME", False, False, False), "clocks"),
            (soa("REFUSED", False, False, False), "answered REFUSED without a TSIG signature"),
            (soa("NOERROR", True, True, False), "its answer is not signed"),
            (soa("REFUSED", False, False, True), "is not authoritative for zone example.test."),
        ],
    )
    def test_errors(self, answer: SoaAnswer, words: str) -> None:
        (finding,) = judge_primary_soa(ZONE, answer, KEY)
        assert finding.level == "error" and words in finding.text, finding

    def test_a_name_inside_the_zone(self) -> None:
        answer = soa(has=False, enclosing="example.test.")
        (finding,) = judge_primary_soa("mx.example.test", answer, KEY)
        assert finding.level == "error"
        assert "it lies inside zone example.test." in finding.text
        assert 'dns.zone = "example.test"' in finding.text


class TestVerifyServer:
    def test_levels(self) -> None:
        assert judge_verify_server(ZONE, S, soa(signed=False)).level == "ok"
        assert judge_verify_server(ZONE, S, soa(aa=False)).level == "error"
        assert judge_verify_server(ZONE, S, "no answer within 3 s").level == "error"


class TestPolicy:
    def test_allowed_on_bind_and_knot(self) -> None:
        finding = judge_policy(S, KEY, NAME, "NXDOMAIN", True, "9.18.28-1~deb12u2-Debian")
        assert finding.level == "ok" and f'allows TSIG key "danesync" to change {NAME}' in (
            finding.text
        )

    def test_powerdns_says_what_is_not_proven(self) -> None:
        finding = judge_policy(S, KEY, NAME, "NXDOMAIN", True, "PowerDNS Authoritative 4.7.3")
        assert finding.level == "ok" and "cannot be tested without a change" in finding.text

    @pytest.mark.parametrize("answer", ["REFUSED", "BADKEY", "NOTAUTH", "UNSIGNED-REFUSED"])
    def test_denied(self, answer: str) -> None:
        assert judge_policy(S, KEY, NAME, answer, True, None).level == "error"

    @pytest.mark.parametrize(
        ("answer", "how"),
        [
            ("BADKEY", "NOTAUTH with TSIG error BADKEY"),  # Knot 3.2
            ("UNSIGNED-NOTAUTH", "NOTAUTH without a TSIG signature"),  # Knot 3.4
        ],
    )
    def test_knot_acl_denial_is_named(self, answer: str, how: str) -> None:
        finding = judge_policy(S, KEY, NAME, answer, True, "Knot DNS")
        assert finding.level == "error"
        assert how in finding.text and "Knot answers an ACL denial" in finding.text


class TestDnssec:
    def test_signed(self) -> None:
        assert judge_signed("x TLSA", [], 2).level == "ok"
        assert judge_signed("x TLSA", [S], 2).level == "warning"
        assert judge_signed("x TLSA", [], 0).level == "unknown"

    def test_validation(self) -> None:
        assert judge_validation(ZONE, None, None, "").level == "unknown"
        assert judge_validation(ZONE, S, None, "timeout").level == "unknown"
        assert judge_validation(ZONE, S, True, "").level == "ok"
        assert judge_validation(ZONE, S, False, "").level == "warning"


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy("Judge")


@pytest.fixture(scope="module")
def chain(hierarchy: Hierarchy, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    root: Path = tmp_path_factory.mktemp("le")
    make_lineage(root, "mx.example.test", hierarchy.issue(["mx.example.test"]))
    certificate = CertificateConfig("mx.example.test", ("mx.example.test",), (NAME,))
    return read_chain(root, certificate, dt.datetime.now(dt.UTC))


class TestTlsaRrset:
    def test_count_above_twelve(self, chain: Chain) -> None:
        records = frozenset(TlsaRecord(NAME, 2, 1, 1, f"{n:02x}" * 32) for n in range(13))
        (first, *_) = judge_tlsa_rrset(NAME, records, [chain], {})
        assert first.level == "warning" and "13 TLSA records" in first.text
        (first, *_) = judge_tlsa_rrset(NAME, frozenset(list(records)[:12]), [chain], {})
        assert first.level == "ok"

    def test_selector_zero(self, chain: Chain) -> None:
        records = frozenset(
            {TlsaRecord(NAME, 3, 0, 1, "ab" * 32), TlsaRecord(NAME, 2, 0, 1, "cd" * 32)}
        )
        texts = [
            f.text for f in judge_tlsa_rrset(NAME, records, [chain], {}) if f.level == "warning"
        ]
        assert any("pins the whole leaf certificate" in t for t in texts)
        assert any("pins the whole CA certificate" in t for t in texts)

    def test_root_pinned_record_the_chain_does_not_send(
        self, chain: Chain, hierarchy: Hierarchy
    ) -> None:
        roots = build_root_index([hierarchy.root])
        pinned = TlsaRecord(NAME, 2, 1, 1, spki_sha256(hierarchy.root))
        findings = judge_tlsa_rrset(NAME, frozenset({pinned}), [chain], roots)
        assert any(f.level == "warning" and "pins the root" in f.text for f in findings)
        intermediate = TlsaRecord(NAME, 2, 1, 1, spki_sha256(hierarchy.intermediate))
        findings = judge_tlsa_rrset(NAME, frozenset({intermediate}), [chain], roots)
        assert [f.level for f in findings] == ["ok"]

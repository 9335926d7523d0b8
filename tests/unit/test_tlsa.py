"""TLSA records (danesync.tlsa), cross-checked against openssl and hash-slinger."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from danesync.tlsa import TlsaRecord, Usage, absolute_name, build_tlsa_records, spki_sha256
from tests.conftest import require_program
from tests.harness.certs import Hierarchy, cert_pem, make_key

HIERARCHY = Hierarchy("Tlsa")
LEAVES = {
    kind: HIERARCHY.issue(key=make_key(kind, slot=1)).cert  # type: ignore[arg-type]
    for kind in ("ec256", "ec384", "rsa", "ed25519")
}


def openssl_spki_sha256(cert: x509.Certificate) -> str:
    """`openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`."""
    public = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"],
        input=cert_pem(cert),
        capture_output=True,
        check=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"],
        input=public,
        capture_output=True,
        check=True,
    ).stdout
    return hashlib.sha256(der).hexdigest()


class TestRecord:
    """A record's text forms."""

    RECORD = TlsaRecord("_25._tcp.mx.example.com.", 2, 1, 1, "ab" * 32)

    def test_zone_line(self) -> None:
        assert self.RECORD.rdata == f"2 1 1 {'ab' * 32}"
        assert (
            self.RECORD.zone_line(3600)
            == f"_25._tcp.mx.example.com. 3600 IN TLSA 2 1 1 {'ab' * 32}"
        )
        assert self.RECORD.zone_line(60).split()[1] == "60"

    def test_key_round_trip(self) -> None:
        assert self.RECORD.key == f"_25._tcp.mx.example.com. 2 1 1 {'ab' * 32}"
        assert TlsaRecord.from_key(self.RECORD.key) == self.RECORD
        assert TlsaRecord.from_key(f"_25._TCP.MX.example.com 2 1 1 {'AB' * 32}") == self.RECORD

    @given(
        name=st.from_regex(r"_[0-9]{1,5}\._tcp\.([a-z0-9-]{1,10}\.){1,3}", fullmatch=True),
        usage=st.sampled_from([2, 3]),
        data=st.binary(min_size=32, max_size=32).map(bytes.hex),
    )
    def test_any_key_round_trips(self, name: str, usage: int, data: str) -> None:
        record = TlsaRecord(name, usage, 1, 1, data)
        assert TlsaRecord.from_key(record.key) == record

    @pytest.mark.parametrize(
        ("name", "absolute"),
        [
            ("_25._tcp.mx.example.com", "_25._tcp.mx.example.com."),
            ("_25._tcp.mx.example.com.", "_25._tcp.mx.example.com."),
            (" _25._TCP.MX.Example.Com ", "_25._tcp.mx.example.com."),
        ],
    )
    def test_absolute_name(self, name: str, absolute: str) -> None:
        assert absolute_name(name) == absolute

    def test_usage_values_are_the_config_spelling(self) -> None:
        assert [u.value for u in Usage] == ["2 1 1", "3 1 1"]


class TestBuild:
    """Which records a chain needs."""

    def test_names_times_usages_sorted_and_unique(self) -> None:
        leaf = LEAVES["ec256"]
        names = (
            "_25._tcp.mx2.example.test",
            "_25._tcp.mx.example.test.",
            "_25._tcp.MX.example.test",
        )
        records = build_tlsa_records(
            names, (Usage.DANE_EE, Usage.DANE_TA), leaf, HIERARCHY.intermediate
        )
        ta, ee = spki_sha256(HIERARCHY.intermediate), spki_sha256(leaf)
        assert records == (
            TlsaRecord("_25._tcp.mx.example.test.", 2, 1, 1, ta),
            TlsaRecord("_25._tcp.mx.example.test.", 3, 1, 1, ee),
            TlsaRecord("_25._tcp.mx2.example.test.", 2, 1, 1, ta),
            TlsaRecord("_25._tcp.mx2.example.test.", 3, 1, 1, ee),
        )

    def test_dane_ta_needs_the_issuer(self) -> None:
        with pytest.raises(ValueError, match="2 1 1 needs the issuing certificate"):
            build_tlsa_records(("_25._tcp.x.",), (Usage.DANE_TA,), LEAVES["ec256"], None)
        (record,) = build_tlsa_records(("_25._tcp.x.",), (Usage.DANE_EE,), LEAVES["ec256"], None)
        assert record.usage == 3

    def test_same_key_same_record(self) -> None:
        """A renewal that keeps the key keeps the 3 1 1 record: it hashes the key, not the cert."""
        again = HIERARCHY.issue(key=make_key("ec256", slot=1)).cert
        assert again != LEAVES["ec256"]
        assert spki_sha256(again) == spki_sha256(LEAVES["ec256"])


class TestAgainstOpenssl:
    """spki_sha256 is what the openssl command line computes."""

    @pytest.mark.parametrize("kind", sorted(LEAVES))
    def test_leaf(self, kind: str) -> None:
        require_program("openssl")
        assert spki_sha256(LEAVES[kind]) == openssl_spki_sha256(LEAVES[kind])

    def test_intermediate_and_root(self) -> None:
        require_program("openssl")
        for cert in (HIERARCHY.intermediate, HIERARCHY.root):
            assert spki_sha256(cert) == openssl_spki_sha256(cert)


class TestAgainstHashSlinger:
    """hash-slinger's `tlsa --create` (offline, from a certificate file) agrees."""

    @pytest.mark.parametrize(("usage", "kind"), [(3, "ec256"), (3, "rsa"), (2, "ec384")])
    def test_create(self, tmp_path: Path, usage: int, kind: str) -> None:
        require_program("tlsa")
        cert = LEAVES[kind] if usage == 3 else HIERARCHY.intermediate
        path = tmp_path / "cert.pem"
        path.write_bytes(cert_pem(cert))
        result = subprocess.run(
            [
                "tlsa", "--create", "--certificate", str(path), "--port", "25",
                "--usage", str(usage), "--selector", "1", "--mtype", "1",
                "--output", "rfc", "mx.example.test",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )  # fmt: skip
        match = re.search(r"^(\S+) IN TLSA (\d) 1 1 ([0-9a-f]{64})$", result.stdout, re.MULTILINE)
        assert match, result.stdout
        (ours,) = build_tlsa_records(
            ("_25._tcp.mx.example.test",),
            (Usage.DANE_TA if usage == 2 else Usage.DANE_EE,),
            LEAVES[kind],
            HIERARCHY.intermediate,
        )
        assert (match.group(1), int(match.group(2)), match.group(3)) == (
            ours.name,
            ours.usage,
            ours.data,
        )

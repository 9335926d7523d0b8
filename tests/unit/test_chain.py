"""Chain and key validation (danesync.chain) on real certificates."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danesync.chain import LineageFiles, name_matches, validate_chain, verify_signature
from danesync.errors import ChainError
from danesync.pem import parse_certificates, parse_private_key
from danesync.tlsa import TlsaRecord, Usage, spki_sha256
from tests.conftest import require_program
from tests.harness.certs import NOW, Hierarchy, KeyKind, Leaf, cert_pem, key_pem, make_key
from tests.harness.corpus import HOST, BadCase, build_corpus, files_of, make_certificate

TLSA_NAME = "_25._tcp.mx.example.test."
DAY = dt.timedelta(days=1)
CORPUS = build_corpus(NOW)


def lineage_files(files: dict[str, bytes], lineage: str = "mx.example.test") -> LineageFiles:
    return LineageFiles(
        lineage=lineage,
        version=1,
        privkey=files["privkey"],
        cert=files["cert"],
        chain=files["chain"],
        fullchain=files["fullchain"],
    )


def validate(
    files: dict[str, bytes],
    hostnames: tuple[str, ...] = (HOST,),
    usages: tuple[Usage, ...] = (Usage.DANE_TA,),
    now: dt.datetime = NOW,
    lineage: str = "mx.example.test",
):  # type: ignore[no-untyped-def]
    return validate_chain(lineage_files(files, lineage), hostnames, (TLSA_NAME,), usages, now)


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy("Test")


class TestCorpus:
    """Every bad input is refused with its exact reason, naming the lineage."""

    def test_corpus_is_large_and_names_are_unique(self) -> None:
        assert len(CORPUS) >= 25
        assert len({case.name for case in CORPUS}) == len(CORPUS)

    @pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
    def test_reason(self, case: BadCase) -> None:
        with pytest.raises(ChainError) as caught:
            validate(
                case.files,
                hostnames=case.hostnames,
                usages=tuple(Usage(u) for u in case.usages),
                lineage=case.name,
            )
        assert caught.value.reason == case.reason
        assert caught.value.lineage == case.name
        assert str(caught.value) == f"{case.name}: {case.reason}"

    @pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
    def test_reason_never_shows_the_key(self, case: BadCase) -> None:
        with pytest.raises(ChainError) as caught:
            validate(case.files, case.hostnames, lineage=case.name)
        message = str(caught.value)
        for line in case.files["privkey"].splitlines()[1:-1]:
            if len(line) > 20 and b":" not in line:  # base64 of the key, not a header
                assert line.decode("ascii", "replace") not in message


class TestHappyPaths:
    """Chains as real CAs issue them validate, for every supported key type."""

    @pytest.mark.parametrize(
        ("key_kind", "algorithm"),
        [("ec256", "ecdsa"), ("ec384", "ecdsa"), ("rsa", "rsa"), ("ed25519", "ed25519")],
    )
    def test_leaf_key_kinds(self, hierarchy: Hierarchy, key_kind: str, algorithm: str) -> None:
        leaf = hierarchy.issue(key=make_key(key_kind, slot=1))  # type: ignore[arg-type]
        chain = validate(files_of(leaf), usages=(Usage.DANE_TA, Usage.DANE_EE))
        assert chain.key_algorithm == algorithm
        assert chain.leaf == leaf.cert
        assert chain.intermediates == (hierarchy.intermediate,)

    def test_rsa_hierarchy(self) -> None:
        """RSA root and intermediate: PKCS#1 v1.5 signatures are verified."""
        root_key, inter_key, leaf_key = (make_key("rsa", slot=n) for n in (10, 11, 12))
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RSA Root")])
        root = make_certificate(
            "RSA Root", root_key, root_name, root_key, NOW - 900 * DAY, NOW + 900 * DAY, True
        )
        inter = make_certificate(
            "RSA Intermediate",
            inter_key,
            root.subject,
            root_key,
            NOW - 90 * DAY,
            NOW + 900 * DAY,
            True,
        )
        leaf = make_certificate(
            HOST, leaf_key, inter.subject, inter_key, NOW - DAY, NOW + 89 * DAY, False, san=[HOST]
        )
        files = {
            "cert": cert_pem(leaf),
            "privkey": key_pem(leaf_key),
            "chain": cert_pem(inter) + cert_pem(root),
            "fullchain": cert_pem(leaf) + cert_pem(inter) + cert_pem(root),
        }
        chain = validate(files)
        assert chain.key_algorithm == "rsa"
        assert chain.intermediates == (inter, root)
        assert chain.issuer_spki == spki_sha256(inter)

    def test_ed25519_intermediate(self, hierarchy: Hierarchy) -> None:
        """An Ed25519 CA signs an ECDSA leaf: Ed25519 signatures are verified."""
        inter_key = make_key("ed25519")
        inter = make_certificate(
            "Ed Intermediate",
            inter_key,
            hierarchy.root.subject,
            hierarchy.root_key,
            NOW - 90 * DAY,
            NOW + 900 * DAY,
            True,
        )
        leaf_key = make_key("ec256")
        leaf = make_certificate(
            HOST, leaf_key, inter.subject, inter_key, NOW - DAY, NOW + 89 * DAY, False, san=[HOST]
        )
        files = {
            "cert": cert_pem(leaf),
            "privkey": key_pem(leaf_key),
            "chain": cert_pem(inter),
            "fullchain": cert_pem(leaf) + cert_pem(inter),
        }
        assert validate(files).issuer_spki == spki_sha256(inter)
        impostor = make_certificate(
            "Ed Intermediate",
            make_key("ed25519"),
            hierarchy.root.subject,
            hierarchy.root_key,
            NOW - 90 * DAY,
            NOW + 900 * DAY,
            True,
        )
        assert not verify_signature(leaf, impostor)

    def test_two_intermediates_and_the_root(self, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue()
        chain_pem = leaf.chain_pem + cert_pem(hierarchy.root)
        files = {**files_of(leaf), "chain": chain_pem, "fullchain": leaf.cert_pem + chain_pem}
        chain = validate(files)
        assert chain.intermediates == (hierarchy.intermediate, hierarchy.root)
        # DANE-TA names the leaf's issuer, not the top of the chain.
        assert chain.issuer_spki == spki_sha256(hierarchy.intermediate)

    def test_dane_ee_only_needs_no_issuer(self, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue()
        files = {**files_of(leaf), "chain": b"", "fullchain": leaf.cert_pem}
        chain = validate(files, usages=(Usage.DANE_EE,))
        assert chain.intermediates == ()
        assert chain.issuer_spki is None
        assert chain.tlsa == (TlsaRecord(TLSA_NAME, 3, 1, 1, spki_sha256(leaf.cert)),)

    def test_traditional_unencrypted_keys(self, hierarchy: Hierarchy) -> None:
        """certbot wrote `RSA PRIVATE KEY`/`EC PRIVATE KEY` files before 2.0."""
        for kind in ("rsa", "ec256"):
            leaf = hierarchy.issue(key=make_key(kind, slot=1))  # type: ignore[arg-type]
            files = {**files_of(leaf), "privkey": key_pem(leaf.key, traditional=True)}
            assert files["privkey"].startswith(b"-----BEGIN " + kind[:2].upper().encode())
            assert validate(files).leaf == leaf.cert

    def test_crlf_and_surrounding_text(self, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue()
        files = {
            kind: b"Bag Attributes\r\n" + data.replace(b"\n", b"\r\n") + b"\r\n"
            for kind, data in files_of(leaf).items()
        }
        assert validate(files).leaf == leaf.cert

    def test_leaf_without_basic_constraints(self, hierarchy: Hierarchy) -> None:
        key = make_key("ec256")
        leaf = make_certificate(
            HOST,
            key,
            hierarchy.intermediate.subject,
            hierarchy.intermediate_key,
            NOW - DAY,
            NOW + DAY,
            ca=None,
            san=[HOST],
        )
        files = {
            "cert": cert_pem(leaf),
            "privkey": key_pem(key),
            "chain": cert_pem(hierarchy.intermediate),
            "fullchain": cert_pem(leaf) + cert_pem(hierarchy.intermediate),
        }
        assert validate(files).leaf == leaf

    def test_no_eku_and_any_eku_are_accepted(self, hierarchy: Hierarchy) -> None:
        for eku in (
            [],
            [x509.ObjectIdentifier("2.5.29.37.0")],
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        ):
            assert validate(files_of(hierarchy.issue(eku=eku))).leaf is not None


class TestSignatures:
    """verify_signature: which issuer key signed a certificate."""

    def test_mismatched_algorithms_do_not_verify(self, hierarchy: Hierarchy) -> None:
        ed_key = make_key("ed25519")
        ed_ca = make_certificate(
            "Ed CA", ed_key, hierarchy.root.subject, hierarchy.root_key, NOW - DAY, NOW + DAY, True
        )
        by_ed = make_certificate(
            HOST, make_key("ec256"), ed_ca.subject, ed_key, NOW - DAY, NOW + DAY, False, san=[HOST]
        )
        rsa_key = make_key("rsa", slot=1)
        rsa_ca = make_certificate(
            "RSA CA",
            rsa_key,
            hierarchy.root.subject,
            hierarchy.root_key,
            NOW - DAY,
            NOW + DAY,
            True,
        )
        by_rsa = make_certificate(
            HOST,
            make_key("ec256"),
            rsa_ca.subject,
            rsa_key,
            NOW - DAY,
            NOW + DAY,
            False,
            san=[HOST],
        )
        assert verify_signature(by_ed, ed_ca)
        assert verify_signature(by_rsa, rsa_ca)
        assert verify_signature(hierarchy.intermediate, hierarchy.root)
        # every issuer key type against a signature of another type
        assert not verify_signature(by_ed, hierarchy.intermediate)  # EC key, Ed25519 signature
        assert not verify_signature(by_ed, rsa_ca)  # RSA key, Ed25519 signature
        assert not verify_signature(by_rsa, ed_ca)  # Ed25519 key, RSA signature
        assert not verify_signature(by_rsa, hierarchy.intermediate)  # EC key, RSA signature

    def test_dsa_issuer_is_not_supported(self, hierarchy: Hierarchy) -> None:
        dsa_key = dsa.generate_private_key(key_size=1024)
        dsa_ca = make_certificate(
            "DSA CA",
            dsa_key,
            hierarchy.root.subject,
            hierarchy.root_key,
            NOW - DAY,
            NOW + DAY,
            True,  # type: ignore[arg-type]
        )
        leaf = make_certificate(
            HOST,
            make_key("ec256"),
            dsa_ca.subject,
            dsa_key,
            NOW - DAY,
            NOW + DAY,
            False,
            san=[HOST],  # type: ignore[arg-type]
        )
        assert not verify_signature(leaf, dsa_ca)
        files = {
            "cert": cert_pem(leaf),
            "privkey": key_pem(make_key("ec256")),
            "chain": cert_pem(dsa_ca),
            "fullchain": cert_pem(leaf) + cert_pem(dsa_ca),
        }
        with pytest.raises(ChainError, match="does not match"):
            validate(files)

    def test_rsa_pss_is_refused_not_crashed(self, tmp_path: Path) -> None:
        """RSA-PSS chains are not verified (no public CA issues them): a clear refusal."""
        require_program("openssl")

        def openssl(command: str) -> None:
            subprocess.run(
                ["openssl", *command.split()], cwd=tmp_path, check=True, capture_output=True
            )

        pss = "-sha256 -sigopt rsa_padding_mode:pss"
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -subj /CN=PSS_CA "
            f"-days 3650 -addext basicConstraints=critical,CA:TRUE {pss}"
        )
        openssl(f"req -new -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN={HOST}")
        (tmp_path / "ext").write_text(f"subjectAltName=DNS:{HOST}\n")
        openssl(
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem "
            f"-days 30 -extfile ext {pss}"
        )
        leaf_pem, ca_pem = (tmp_path / "leaf.pem").read_bytes(), (tmp_path / "ca.pem").read_bytes()
        files = {
            "cert": leaf_pem,
            "privkey": (tmp_path / "leaf.key").read_bytes(),
            "chain": ca_pem,
            "fullchain": leaf_pem + ca_pem,
        }
        now = dt.datetime.now(dt.UTC)
        with pytest.raises(ChainError) as caught:
            validate(files, now=now)
        assert caught.value.reason == (
            f"the signature on certificate 1 (CN={HOST}) does not verify with the key of "
            "certificate 2 of fullchain.pem (CN=PSS_CA)"
        )


class TestChainValues:
    """The validated Chain carries what later steps and the logs need."""

    def test_fields(self, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue(serial=0x0ABC, not_after=NOW + 30 * DAY)
        chain = validate(files_of(leaf), usages=(Usage.DANE_TA, Usage.DANE_EE))
        assert chain.lineage == "mx.example.test"
        assert chain.version == 1
        assert chain.serial == "0ABC"  # as `openssl x509 -serial` prints it
        assert chain.not_after == (NOW + 30 * DAY).replace(microsecond=0)
        assert chain.not_after.tzinfo is not None
        assert chain.subject == "CN=mx.example.test"
        assert chain.issuer == "CN=Test Intermediate"
        der = leaf.cert.public_bytes(serialization.Encoding.DER)
        assert chain.fingerprint == hashlib.sha256(der).hexdigest()
        assert chain.tlsa == (
            TlsaRecord(TLSA_NAME, 2, 1, 1, spki_sha256(hierarchy.intermediate)),
            TlsaRecord(TLSA_NAME, 3, 1, 1, spki_sha256(leaf.cert)),
        )

    def test_serial_is_even_length_upper_hex(self, hierarchy: Hierarchy) -> None:
        for serial, text in [(1, "01"), (0xFF, "FF"), (0x100, "0100"), (0xDEADBEEF, "DEADBEEF")]:
            assert validate(files_of(hierarchy.issue(serial=serial))).serial == text

    @pytest.mark.parametrize(
        ("kind", "label"),
        [("rsa", b"RSA PRIVATE KEY"), ("ec256", b"EC PRIVATE KEY"), ("ec384", b"EC PRIVATE KEY")],
    )
    def test_deploy_pem_is_key_then_chain(
        self, hierarchy: Hierarchy, kind: KeyKind, label: bytes
    ) -> None:
        """Postfix's smtpd_tls_chain_files wants the key, the leaf, the intermediates;
        the key in its own format, which OpenSSL 3.0 decodes without its generic
        decoders at every SNI handshake (chain.key_pem)."""
        leaf = hierarchy.issue(key=make_key(kind, slot=1), hostnames=[HOST, "smtp.example.test"])
        chain = validate(files_of(leaf))
        pem = chain.deploy_pem
        assert pem.startswith(b"-----BEGIN " + label + b"-----\n")
        key = parse_private_key(pem.split(b"-----BEGIN CERTIFICATE-----")[0], "deploy")
        assert key.private_numbers() == leaf.key.private_numbers()  # type: ignore[union-attr]
        assert parse_certificates(pem[pem.index(b"-----BEGIN CERTIFICATE") :], "deploy") == [
            leaf.cert,
            hierarchy.intermediate,
        ]
        assert "PRIVATE" not in repr(chain)

    def test_one_record_per_name_and_usage(self, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue(hostnames=[HOST, "mx2.example.test"])
        names = (
            "_25._tcp.mx.example.test",
            "_25._tcp.MX2.example.test.",
            "_25._tcp.mx.example.test.",
        )
        chain = validate_chain(
            lineage_files(files_of(leaf)), (HOST, "mx2.example.test"), names, (Usage.DANE_TA,), NOW
        )
        assert [r.name for r in chain.tlsa] == [
            "_25._tcp.mx.example.test.",
            "_25._tcp.mx2.example.test.",
        ]


class TestValidity:
    """The validity window is [notBefore, notAfter), for every certificate."""

    def test_boundaries(self, hierarchy: Hierarchy) -> None:
        start, end = NOW - DAY, NOW + DAY
        files = files_of(hierarchy.issue(not_before=start, not_after=end))
        assert validate(files, now=start).leaf is not None
        assert validate(files, now=end - dt.timedelta(seconds=1)).leaf is not None
        with pytest.raises(ChainError, match=r"^mx\.example\.test: the leaf expired at"):
            validate(files, now=end)
        with pytest.raises(ChainError, match=r"^mx\.example\.test: the leaf is not valid before"):
            validate(files, now=start - dt.timedelta(seconds=1))

    def test_intermediate_not_yet_valid(self, hierarchy: Hierarchy) -> None:
        files = files_of(hierarchy.issue(not_before=NOW - 400 * DAY))
        with pytest.raises(ChainError) as caught:
            validate(files, now=NOW - 366 * DAY)
        start = (NOW - 365 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert caught.value.reason == (
            f"certificate 2 of fullchain.pem (CN=Test Intermediate) is not valid before {start}"
        )

    def test_now_in_another_zone(self, hierarchy: Hierarchy) -> None:
        files = files_of(hierarchy.issue(not_after=NOW + dt.timedelta(hours=1)))
        plus_two = dt.timezone(dt.timedelta(hours=2))
        assert validate(files, now=NOW.astimezone(plus_two)).leaf is not None
        with pytest.raises(ChainError):
            validate(files, now=(NOW + dt.timedelta(hours=1)).astimezone(plus_two))


class TestWildcards:
    """Host name matching as RFC 6125 section 6.4.3 allows it."""

    @pytest.mark.parametrize(
        ("pattern", "hostname", "matches"),
        [
            ("mx.example.test", "mx.example.test", True),
            ("MX.Example.TEST.", "mx.example.test", True),
            ("mx.example.test", "mx.example.test.", True),
            ("mx.example.test", "mx2.example.test", False),
            ("*.example.test", "mx.example.test", True),
            ("*.example.test", "MX.EXAMPLE.TEST", True),
            ("*.example.test", "xn--bcher-kva.example.test", True),
            # one label only, never the parent, never across dots
            ("*.example.test", "a.mx.example.test", False),
            ("*.example.test", "example.test", False),
            ("*.example.test", ".example.test", False),
            # the wildcard must be the whole left-most label
            ("m*.example.test", "mx.example.test", False),
            ("*x.example.test", "mx.example.test", False),
            ("mx.*.test", "mx.example.test", False),
            ("*.*.test", "mx.example.test", False),
            # not directly under a top-level domain
            ("*.test", "example.test", False),
            # a configured wildcard needs a wildcard certificate
            ("*.example.test", "*.example.test", True),
            ("mx.example.test", "*.example.test", False),
            ("*.mx.example.test", "*.example.test", False),
        ],
    )
    def test_name_matches(self, pattern: str, hostname: str, matches: bool) -> None:
        assert name_matches(pattern, hostname) is matches

    def test_wildcard_leaf_covers_several_hosts(self, hierarchy: Hierarchy) -> None:
        files = files_of(hierarchy.issue(hostnames=["*.example.test", "example.test"]))
        hosts = ("mx.example.test", "smtp.example.test", "example.test")
        assert validate(files, hostnames=hosts).leaf is not None

    def test_every_uncovered_name_is_listed(self, hierarchy: Hierarchy) -> None:
        files = files_of(hierarchy.issue(hostnames=["*.example.test"]))
        with pytest.raises(ChainError) as caught:
            validate(files, hostnames=("mx.example.test", "a.b.example.test", "example.org"))
        assert caught.value.reason == (
            "the leaf does not cover a.b.example.test, example.org (it names *.example.test)"
        )


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
class TestProperties:
    """Whatever the bytes, validation answers with a Chain or a ChainError."""

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def test_corrupted_certificates(self, data: st.DataObject) -> None:
        leaf: Leaf = HIERARCHY_LEAF
        leaf_only = data.draw(st.booleans(), label="leaf only (3 1 1)")
        certificates = (leaf.cert,) if leaf_only else (leaf.cert, *leaf.chain)
        ders = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
        which = data.draw(st.integers(0, len(ders) - 1), label="certificate")
        der = bytearray(ders[which])
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            position = data.draw(st.integers(0, len(der) - 1), label="position")
            der[position] = data.draw(st.integers(0, 255), label="byte")
        ders[which] = bytes(der)
        pems = [_der_to_pem(d) for d in ders]
        files = {
            "cert": pems[0],
            "privkey": leaf.key_pem,
            "chain": b"".join(pems[1:]),
            "fullchain": b"".join(pems),
        }
        usages = (Usage.DANE_EE,) if leaf_only else (Usage.DANE_TA, Usage.DANE_EE)
        try:
            chain = validate(files, usages=usages)
        except ChainError as error:
            assert error.reason
        else:
            assert chain.leaf.public_bytes(serialization.Encoding.DER) == ders[0]
            # everything `check` prints can be computed
            assert all([chain.subject, chain.issuer, chain.serial, chain.not_after, chain.tlsa])

    @settings(max_examples=150, deadline=None)
    @given(
        kind=st.sampled_from(["cert", "privkey", "chain", "fullchain"]),
        garbage=st.binary(max_size=400),
        keep=st.integers(0, 3000),
    )
    def test_arbitrary_file_contents(self, kind: str, garbage: bytes, keep: int) -> None:
        files = files_of(HIERARCHY_LEAF)
        files[kind] = files[kind][:keep] + garbage
        try:
            validate(files)
        except ChainError as error:
            assert error.lineage == "mx.example.test"


HIERARCHY_LEAF = Hierarchy("Prop").issue(not_before=NOW - DAY, not_after=NOW + 89 * DAY)


def _der_to_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"

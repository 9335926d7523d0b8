"""The Pebble + certbot harness: real issuance, renewal and a CA rollover, on loopback."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from danesync.watcher import LineageWatcher
from tests.conftest import require_program
from tests.harness.pebble import CERTBOT, Certbot, CertbotError, PebbleCA, pebble_fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "mx.example.test"
KINDS = ("cert", "chain", "fullchain", "privkey")

pebble = pebble_fixture()


@pytest.fixture
def certbot(pebble: PebbleCA, tmp_path: Path) -> Certbot:
    require_program(CERTBOT)
    return Certbot(tmp_path / "certbot", pebble)


def certificates(pem: bytes) -> list[x509.Certificate]:
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def spki_sha256(cert: x509.Certificate) -> str:
    """The data of a DANE `2 1 1` / `3 1 1` record for `cert`."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def assert_complete_lineage(certbot: Certbot, name: str, version: int) -> x509.Certificate:
    """All four links point at `version`, no previous_* link, and the files agree."""
    live = certbot.live(name)
    entries = sorted(e for e in os.listdir(live) if e != "README")
    assert entries == [f"{kind}.pem" for kind in KINDS]
    for kind in KINDS:
        assert os.readlink(live / f"{kind}.pem") == f"../../archive/{name}/{kind}{version}.pem"
    leaf, *chain = certificates(certbot.read(name, "fullchain"))
    assert certificates(certbot.read(name, "cert")) == [leaf]
    assert certificates(certbot.read(name, "chain")) == chain
    key = serialization.load_pem_private_key(certbot.read(name, "privkey"), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, public) == (
        leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    )
    return leaf


class TestPebble:
    """The CA itself."""

    def test_serves_acme_directory_over_trusted_tls(self, pebble: PebbleCA) -> None:
        assert pebble.running
        assert pebble.directory_url.startswith("https://127.0.0.1:")
        root = x509.load_pem_x509_certificate(pebble.root_pem())
        intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
        assert intermediate.issuer == root.subject


class TestIssueAndRenew:
    """certonly, then renew --force-renewal: live/ moves to version 2, as on a mail host."""

    def test_issue_then_renew(self, certbot: Certbot, pebble: PebbleCA) -> None:
        issued = certbot.certonly(NAME)
        first = assert_complete_lineage(certbot, NAME, 1)
        intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
        assert first.issuer == intermediate.subject
        san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [NAME]
        assert isinstance(first.public_key(), ec.EllipticCurvePublicKey)

        # Watch the real renewal the way danesync does.
        seen: list[list[str]] = []
        reported = threading.Event()
        live = certbot.live(NAME)

        def on_change(name: str) -> None:
            assert name == NAME
            seen.append(sorted(os.listdir(live)))
            reported.set()

        before = time.time()
        with LineageWatcher(certbot.live_dir, on_change):
            renewed = certbot.renew()
            assert reported.wait(2)
            time.sleep(0.2)  # the last events of the update
        after = time.time()

        second = assert_complete_lineage(certbot, NAME, 2)
        assert certbot.version(NAME) == 2
        assert second.serial_number != first.serial_number
        assert spki_sha256(second) != spki_sha256(first)  # certbot makes a new key
        assert second.issuer == first.issuer  # same CA: a DANE-EE change, not DANE-TA
        # Reported once per link step (the listing may or may not catch the
        # short-lived previous_* links: timing), and the last report sees none.
        assert len(seen) >= 4
        assert not any(e.startswith("previous_") for e in seen[-1])
        assert before <= certbot.lineage_updated_at(NAME) <= after
        print(f"certonly {issued.seconds:.2f}s, renew {renewed.seconds:.2f}s")

    def test_failure_raises_with_the_log(self, certbot: Certbot) -> None:
        with pytest.raises(CertbotError, match="renew"):
            certbot.renew(cert_name="never-issued.example.test")


class TestCaRollover:
    """A Pebble restart is a new root and intermediate: the next renewal changes the issuer."""

    def test_restart_then_renew(self, certbot: Certbot, pebble: PebbleCA) -> None:
        certbot.certonly(NAME, cert_name="rsa-lineage", key_type="rsa")
        first = assert_complete_lineage(certbot, "rsa-lineage", 1)
        public_key = first.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == 2048
        old_intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
        old_root = pebble.root_pem()
        (old_chain,) = certificates(certbot.read("rsa-lineage", "chain"))
        assert old_chain == old_intermediate

        generation = pebble.generation
        pebble.restart()
        assert pebble.generation == generation + 1
        assert pebble.root_pem() != old_root
        new_intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
        assert spki_sha256(new_intermediate) != spki_sha256(old_intermediate)

        renewed = certbot.renew(cert_name="rsa-lineage")
        second = assert_complete_lineage(certbot, "rsa-lineage", 2)
        assert isinstance(second.public_key(), rsa.RSAPublicKey)
        (new_chain,) = certificates(certbot.read("rsa-lineage", "chain"))
        assert new_chain == new_intermediate
        assert second.issuer == new_intermediate.subject
        # The DANE-TA `2 1 1` data changes: exactly the rollover danesync must stage.
        assert spki_sha256(new_chain) != spki_sha256(old_chain)
        print(f"renew after CA restart {renewed.seconds:.2f}s")

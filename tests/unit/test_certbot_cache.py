"""read_chain returns a chain validated before only while nothing it came from changed."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from danesync import certbot
from danesync.certbot import read_chain
from danesync.config import CertificateConfig
from danesync.errors import ChainError, LineagePending
from tests.harness.certs import NOW, Hierarchy, Leaf
from tests.harness.lineage import make_lineage, renew, write_version

NAME = "mx.example.test"
CERT = CertificateConfig(NAME, (NAME,), (f"_25._tcp.{NAME}.",))


@pytest.fixture(scope="module")
def leaves() -> list[Leaf]:
    ca = Hierarchy("Cache")
    return [ca.issue([NAME]) for _ in range(3)]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "letsencrypt"


def test_unchanged_lineage_is_not_read_again(
    config_dir: Path, leaves: list[Leaf], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    first = read_chain(config_dir, CERT, NOW)
    reads: list[str] = []
    original = certbot.read_lineage

    def counting(config_dir: Path, lineage: str) -> certbot.LineageFiles:
        reads.append(lineage)
        return original(config_dir, lineage)

    monkeypatch.setattr(certbot, "read_lineage", counting)
    assert read_chain(config_dir, CERT, NOW + dt.timedelta(hours=1)) is first
    assert reads == []


def test_renewal_is_read(config_dir: Path, leaves: list[Leaf]) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    first = read_chain(config_dir, CERT, NOW)
    renew(config_dir, NAME, leaves[1])
    second = read_chain(config_dir, CERT, NOW)
    assert second.version == 2
    assert second.fingerprint != first.fingerprint


def test_archive_file_rewritten_in_place_is_read(config_dir: Path, leaves: list[Leaf]) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    read_chain(config_dir, CERT, NOW)
    # Same names, other contents (size may even stay the same): the ctime changes.
    write_version(config_dir, NAME, leaves[2], 1)
    assert read_chain(config_dir, CERT, NOW).fingerprint != ""
    assert read_chain(config_dir, CERT, NOW).leaf == leaves[2].cert


def test_broken_after_caching_is_refused(config_dir: Path, leaves: list[Leaf]) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    read_chain(config_dir, CERT, NOW)
    key = config_dir / "archive" / NAME / "privkey1.pem"
    key.write_bytes(leaves[1].key_pem)  # a key that does not match the leaf
    with pytest.raises(ChainError):
        read_chain(config_dir, CERT, NOW)


def test_time_is_checked_on_every_read(config_dir: Path, leaves: list[Leaf]) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    chain = read_chain(config_dir, CERT, NOW)
    with pytest.raises(ChainError, match="expired"):
        read_chain(config_dir, CERT, chain.not_after + dt.timedelta(seconds=1))
    with pytest.raises(ChainError, match="not valid before"):
        read_chain(config_dir, CERT, NOW - dt.timedelta(days=30))


def test_other_configuration_is_validated_again(config_dir: Path, leaves: list[Leaf]) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    read_chain(config_dir, CERT, NOW)
    other = CertificateConfig(NAME, ("other.example.test",), CERT.tlsa)
    with pytest.raises(ChainError, match=r"other\.example\.test"):
        read_chain(config_dir, other, NOW)


def test_certbot_at_work_is_pending(config_dir: Path, leaves: list[Leaf]) -> None:
    live = make_lineage(config_dir, NAME, leaves[0])
    read_chain(config_dir, CERT, NOW)
    os.symlink(os.readlink(live / "cert.pem"), live / "previous_cert.pem")
    with pytest.raises(LineagePending):
        read_chain(config_dir, CERT, NOW)

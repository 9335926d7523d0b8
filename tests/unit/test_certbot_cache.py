"""read_validated returns a lineage validated before only while nothing it came from changed."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from danesync import certbot
from danesync.certbot import read_validated
from danesync.config import CertificateConfig
from danesync.errors import ChainError, LineagePending
from danesync.readcache import ReadCache, Validated
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


CACHE = ReadCache(None)


def read_chain(config_dir: Path, certificate: CertificateConfig, now: dt.datetime) -> Validated:
    return read_validated(config_dir, certificate, now, CACHE)[0]


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    CACHE.__init__(None)  # type: ignore[misc]


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
    assert second.info.version == 2
    assert second.info.fingerprint != first.info.fingerprint


def test_archive_file_rewritten_in_place_is_read(config_dir: Path, leaves: list[Leaf]) -> None:
    make_lineage(config_dir, NAME, leaves[0])
    read_chain(config_dir, CERT, NOW)
    # Same names, other contents (size may even stay the same): the ctime changes.
    write_version(config_dir, NAME, leaves[2], 1)
    der = leaves[2].cert.public_bytes(serialization.Encoding.DER)
    assert read_chain(config_dir, CERT, NOW).info.fingerprint == hashlib.sha256(der).hexdigest()


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
        read_chain(config_dir, CERT, chain.info.not_after + dt.timedelta(seconds=1))
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


def test_a_file_changed_right_after_it_was_read_is_read_again(
    config_dir: Path, leaves: list[Leaf], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold read takes each file's stat from its descriptor before its bytes
    (issue 15, coldread): a change just after the read never leaves an entry
    whose stats describe bytes other than the ones validated."""
    make_lineage(config_dir, NAME, leaves[0])
    cert = config_dir / "archive" / NAME / "cert1.pem"
    real_read = os.read
    changed: list[int] = []

    def read_then_change(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        if not changed and os.readlink(f"/proc/self/fd/{fd}") == str(cert):
            # certbot's archive rewritten in place (another size, so the stat
            # differs whatever the time stamps' granularity), once.
            with cert.open("r+b") as file:
                file.write(leaves[2].cert_pem + b"\n")
            changed.append(fd)
        return data

    monkeypatch.setattr(os, "read", read_then_change)
    first = read_chain(config_dir, CERT, NOW)  # validated from the bytes before the change
    monkeypatch.setattr(os, "read", real_read)
    assert (
        changed
        and first.info.fingerprint
        == hashlib.sha256(leaves[0].cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    # The entry's stats are those from before the change: it is not used again.
    with pytest.raises(ChainError, match=r"cert\.pem is not the first certificate"):
        read_chain(config_dir, CERT, NOW)


def test_a_cold_read_and_a_warm_look_take_the_same_key(
    config_dir: Path, leaves: list[Leaf], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key taken from a read's own stats is the one `_cache_key` computes
    for the same unchanged files, so the next pass reads nothing."""
    make_lineage(config_dir, NAME, leaves[0])
    entry, pem = read_validated(config_dir, CERT, NOW, CACHE)
    assert pem is not None
    assert entry.key == certbot._cache_key(config_dir, CERT)
    again, pem = read_validated(config_dir, CERT, NOW, CACHE)
    assert again is entry and pem is None

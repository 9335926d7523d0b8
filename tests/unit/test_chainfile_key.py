"""A deployed chain file found intact is not read back, even after a restart,
while its stat is unchanged; any change to it is seen (issue 15, mem)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from danesync import readcache
from danesync.adapters import RealPostfix
from danesync.chain import LineageFiles, rewrite_earlier_chain_file, validate_chain
from danesync.config import Config, build_config
from danesync.readcache import ReadCache
from danesync.tlsa import Usage
from tests.harness.certs import NOW, Hierarchy, KeyKind, make_key
from tests.harness.certs import key_pem as harness_key_pem
from tests.harness.corpus import files_of

LINEAGE = "mx.example.test"
PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" * 3


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return build_config(
        {
            "dns": {"mode": "off"},
            "certbot": {"config_dir": str(tmp_path / "letsencrypt")},
            "postfix": {"config_dir": str(tmp_path / "etc"), "deploy_dir": str(tmp_path / "d")},
            "state": {"dir": str(tmp_path / "state")},
            "certificate": [{"lineage": LINEAGE, "hostnames": [LINEAGE]}],
        },
        tmp_path / "danesync.toml",
    )


class Counting(RealPostfix):
    """RealPostfix that counts the chain files it reads back."""

    reads = 0

    def read_chain_file(self, lineage: str) -> bytes | None:
        Counting.reads += 1
        return super().read_chain_file(lineage)


def restart(config: Config) -> Counting:
    """A new process: a new read cache loaded from the state directory."""
    Counting.reads = 0
    return Counting(config, ReadCache(config.state.dir / readcache.DIRECTORY))


def deployed(config: Config, data: bytes = PEM) -> bytes:
    """The chain file written, checked once and the cache flushed; its digest."""
    postfix = restart(config)
    path = Path(postfix.chain_path(LINEAGE))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    digest = hashlib.sha256(data).digest()
    assert postfix.chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 1
    postfix._files.flush()
    return digest


def test_restart_with_the_file_unchanged_reads_nothing(config: Config) -> None:
    digest = deployed(config)
    postfix = restart(config)
    assert postfix.chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 0


def test_file_changed_by_hand_while_down_is_seen(config: Config) -> None:
    digest = deployed(config)
    path = Path(restart(config).chain_path(LINEAGE))
    before = path.stat()
    # The same size, and the mtime put back: only the ctime tells.
    path.write_bytes(PEM.replace(b"AAAA", b"BBBB"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    postfix = restart(config)
    assert not postfix.chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 1
    # Not trusted either after the next restart.
    postfix._files.flush()
    assert not restart(config).chain_file_holds(LINEAGE, digest)


def test_file_replaced_by_hand_with_the_same_bytes_is_read_once(config: Config) -> None:
    digest = deployed(config)
    path = Path(restart(config).chain_path(LINEAGE))
    path.unlink()
    path.write_bytes(PEM)
    postfix = restart(config)
    assert postfix.chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 1
    postfix._files.flush()
    assert restart(config).chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 0


def test_another_digest_is_never_taken_for_the_file(config: Config) -> None:
    deployed(config)
    other = hashlib.sha256(b"another chain").digest()
    postfix = restart(config)
    assert not postfix.chain_file_holds(LINEAGE, other)
    assert Counting.reads == 1


def test_removed_file_is_seen(config: Config) -> None:
    digest = deployed(config)
    Path(restart(config).chain_path(LINEAGE)).unlink()
    assert not restart(config).chain_file_holds(LINEAGE, digest)


def test_cache_without_file_keys_reads_each_file_once(config: Config) -> None:
    # A shard written before the keys were kept (or one dropped as damaged).
    digest = deployed(config)
    for shard in (config.state.dir / readcache.DIRECTORY).glob("*.json"):
        shard.write_bytes(readcache.build_shard_document({}))
    postfix = restart(config)
    assert postfix.chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 1


def test_damaged_shard_is_not_trusted(config: Config) -> None:
    digest = deployed(config)
    for shard in (config.state.dir / readcache.DIRECTORY).glob("*.json"):
        data = shard.read_bytes()
        shard.write_bytes(data[:-20] + b"0" * 20)
    postfix = restart(config)
    assert postfix.chain_file_holds(LINEAGE, digest)
    assert Counting.reads == 1


class TestWrittenByAnEarlierVersion:
    """danesync wrote keys in PKCS#8 until chain.key_pem: such a file, with the
    same key and certificates, holds today's chain (no repair, no reload), and
    is read back once, not at every pass."""

    @staticmethod
    def files(kind: KeyKind) -> tuple[bytes, bytes]:
        """Today's bytes for a chain, and the same chain as an earlier version wrote it."""
        hierarchy = Hierarchy()
        leaf = hierarchy.issue(key=make_key(kind), hostnames=[LINEAGE])
        files = LineageFiles(LINEAGE, 1, **files_of(leaf))
        chain = validate_chain(files, (LINEAGE,), (LINEAGE,), (Usage.DANE_TA,), NOW)
        _, _, rest = chain.deploy_pem.partition(b"-----BEGIN CERTIFICATE-----")
        return chain.deploy_pem, harness_key_pem(leaf.key) + b"-----BEGIN CERTIFICATE-----" + rest

    @pytest.mark.parametrize("kind", ["ec256", "ec384", "rsa"])
    def test_held_and_read_back_once(self, config: Config, kind: KeyKind) -> None:
        today, earlier = self.files(kind)
        assert earlier.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        assert today != earlier
        postfix = restart(config)
        path = Path(postfix.chain_path(LINEAGE))
        path.parent.mkdir(parents=True)
        path.write_bytes(earlier)
        digest = hashlib.sha256(today).digest()
        assert postfix.chain_file_holds(LINEAGE, digest)
        assert Counting.reads == 1
        postfix._files.flush()
        assert restart(config).chain_file_holds(LINEAGE, digest)
        assert Counting.reads == 0
        assert path.read_bytes() == earlier  # left as it was

    @pytest.mark.parametrize(
        "edit",
        ["another key", "another certificate", "a byte after the key", "certificates only"],
    )
    def test_anything_else_is_not_held(self, config: Config, edit: str) -> None:
        today, earlier = self.files("ec256")
        if edit == "another key":
            key_end = earlier.index(b"-----BEGIN CERTIFICATE-----")
            earlier = harness_key_pem(make_key("ec256")) + earlier[key_end:]
        elif edit == "another certificate":
            other, _ = self.files("ec256")
            certificates = other.index(b"-----BEGIN CERTIFICATE-----")
            earlier = (
                earlier[: earlier.index(b"-----BEGIN CERTIFICATE-----")] + other[certificates:]
            )
        elif edit == "a byte after the key":
            key_end = earlier.index(b"-----BEGIN CERTIFICATE-----")
            earlier = earlier[:key_end] + b"\n" + earlier[key_end:]
        else:
            earlier = earlier[earlier.index(b"-----BEGIN CERTIFICATE-----") :]
        postfix = restart(config)
        path = Path(postfix.chain_path(LINEAGE))
        path.parent.mkdir(parents=True)
        path.write_bytes(earlier)
        assert not postfix.chain_file_holds(LINEAGE, hashlib.sha256(today).digest())
        assert rewrite_earlier_chain_file(earlier, LINEAGE) != today

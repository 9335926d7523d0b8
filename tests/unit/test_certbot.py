"""Reading certbot lineages (danesync.certbot) from real directory trees."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from danesync.certbot import (
    MAX_FILE_SIZE,
    list_lineages,
    read_acme_server,
    read_chain,
    read_lineage,
)
from danesync.chain import LineageFiles
from danesync.config import CertificateConfig
from danesync.errors import ChainError, LineagePending
from tests.harness.certs import NOW, Hierarchy, Leaf
from tests.harness.lineage import KINDS, make_lineage, renew, update_links, write_version

NAME = "mx.example.test"


@pytest.fixture(scope="module")
def leaves() -> list[Leaf]:
    """Three generations: v1, v2 (renewal) and v3 (new intermediate)."""
    first = Hierarchy("First")
    second = Hierarchy("Second")
    return [first.issue(), first.issue(), second.issue()]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "letsencrypt"


@pytest.fixture
def lineage(config_dir: Path, leaves: list[Leaf]) -> Path:
    """A complete lineage at version 1; returns live/<NAME>."""
    return make_lineage(config_dir, NAME, leaves[0])


def assert_is_version(files: LineageFiles, leaf: Leaf, version: int) -> None:
    assert files.version == version
    assert (files.cert, files.privkey, files.chain, files.fullchain) == (
        leaf.cert_pem,
        leaf.key_pem,
        leaf.chain_pem,
        leaf.fullchain_pem,
    )


def refused(config_dir: Path) -> str:
    with pytest.raises(ChainError) as caught:
        read_lineage(config_dir, NAME)
    assert caught.value.lineage == NAME
    return caught.value.reason


class TestComplete:
    """A lineage whose four links agree is read, bytes and version."""

    def test_first_version(self, config_dir: Path, lineage: Path, leaves: list[Leaf]) -> None:
        assert_is_version(read_lineage(config_dir, NAME), leaves[0], 1)

    def test_after_renewals(self, config_dir: Path, lineage: Path, leaves: list[Leaf]) -> None:
        assert renew(config_dir, NAME, leaves[1]) == 2
        assert_is_version(read_lineage(config_dir, NAME), leaves[1], 2)
        assert renew(config_dir, NAME, leaves[2]) == 3
        assert_is_version(read_lineage(config_dir, NAME), leaves[2], 3)

    def test_live_pointed_back_at_an_older_version(
        self, config_dir: Path, lineage: Path, leaves: list[Leaf]
    ) -> None:
        """certbot can point live/ back at an older generation; that is consistent too."""
        renew(config_dir, NAME, leaves[1])
        update_links(config_dir, NAME, 1)
        assert_is_version(read_lineage(config_dir, NAME), leaves[0], 1)

    def test_absolute_links_inside_the_archive(
        self, config_dir: Path, lineage: Path, leaves: list[Leaf]
    ) -> None:
        for kind in KINDS:
            link = lineage / f"{kind}.pem"
            link.unlink()
            link.symlink_to(config_dir / "archive" / NAME / f"{kind}1.pem")
        assert_is_version(read_lineage(config_dir, NAME), leaves[0], 1)

    def test_read_chain_validates(
        self, config_dir: Path, lineage: Path, leaves: list[Leaf]
    ) -> None:
        chain = read_chain(config_dir, CertificateConfig.default_for(NAME), NOW)
        assert chain.leaf == leaves[0].cert
        assert chain.version == 1
        other = CertificateConfig(NAME, ("other.example.test",), ("_25._tcp.other.example.test.",))
        with pytest.raises(ChainError, match=r"does not cover other\.example\.test"):
            read_chain(config_dir, other, NOW)


class TestPending:
    """While certbot is at work the lineage is pending, never invalid."""

    def test_previous_links(self, config_dir: Path, lineage: Path) -> None:
        (lineage / "previous_cert.pem").symlink_to(os.readlink(lineage / "cert.pem"))
        (lineage / "previous_chain.pem").symlink_to(os.readlink(lineage / "chain.pem"))
        with pytest.raises(LineagePending) as caught:
            read_lineage(config_dir, NAME)
        assert caught.value.reason == (
            "certbot is updating it (previous_cert.pem, previous_chain.pem present)"
        )

    def test_previous_links_beat_disagreeing_links(
        self, config_dir: Path, lineage: Path, leaves: list[Leaf]
    ) -> None:
        write_version(config_dir, NAME, leaves[1], 2)
        (lineage / "previous_cert.pem").symlink_to(os.readlink(lineage / "cert.pem"))
        (lineage / "cert.pem").unlink()
        (lineage / "cert.pem").symlink_to(f"../../archive/{NAME}/cert2.pem")
        with pytest.raises(LineagePending):
            read_lineage(config_dir, NAME)

    @pytest.mark.parametrize("kind", KINDS)
    def test_missing_link(self, config_dir: Path, lineage: Path, kind: str) -> None:
        (lineage / f"{kind}.pem").unlink()
        with pytest.raises(LineagePending) as caught:
            read_lineage(config_dir, NAME)
        assert caught.value.reason == f"{lineage}/{kind}.pem does not exist yet"


class TestRefused:
    """Anything certbot would not have made is refused, never followed."""

    def test_no_such_lineage(self, config_dir: Path, lineage: Path) -> None:
        with pytest.raises(ChainError) as caught:
            read_lineage(config_dir, "nothere.example.test")
        assert caught.value.reason == f"{config_dir}/live/nothere.example.test does not exist"

    def test_links_disagree(self, config_dir: Path, lineage: Path, leaves: list[Leaf]) -> None:
        write_version(config_dir, NAME, leaves[1], 2)
        (lineage / "privkey.pem").unlink()
        (lineage / "privkey.pem").symlink_to(f"../../archive/{NAME}/privkey2.pem")
        assert refused(config_dir) == (
            "the links point at different archive versions "
            "(cert.pem -> 1, privkey.pem -> 2, chain.pem -> 1, fullchain.pem -> 1)"
        )

    @pytest.mark.parametrize(
        "target",
        [
            "/etc/passwd",
            "/tmp/cert1.pem",
            "../../archive/other.example.test/cert1.pem",
            f"../../archive/{NAME}/../other.example.test/cert1.pem",
            f"../../archive/{NAME}/../../../../../etc/ssl/certs/cert1.pem",
            f"../../archive/{NAME}2/cert1.pem",  # a sibling whose name starts the same
            f"../../archive/{NAME}/sub/cert1.pem",
            f"../../../letsencrypt2/archive/{NAME}/cert1.pem",
            "cert1.pem",
        ],
    )
    def test_link_outside_the_archive(self, config_dir: Path, lineage: Path, target: str) -> None:
        link = lineage / "cert.pem"
        link.unlink()
        link.symlink_to(target)
        archive = config_dir / "archive" / NAME
        assert refused(config_dir) == f"{link} points outside {archive}: {target}"

    def test_other_lineage_archive_with_real_files(
        self, config_dir: Path, lineage: Path, leaves: list[Leaf]
    ) -> None:
        """Another lineage's archive is real and valid, and still not this lineage's."""
        make_lineage(config_dir, "other.example.test", leaves[1])
        link = lineage / "fullchain.pem"
        link.unlink()
        link.symlink_to("../../archive/other.example.test/fullchain1.pem")
        assert "points outside" in refused(config_dir)

    def test_link_to_the_wrong_kind(self, config_dir: Path, lineage: Path) -> None:
        link = lineage / "cert.pem"
        link.unlink()
        link.symlink_to(f"../../archive/{NAME}/privkey1.pem")
        assert refused(config_dir) == (
            f"{link} points at ../../archive/{NAME}/privkey1.pem, not certN.pem"
        )

    def test_plain_file_instead_of_a_link(
        self, config_dir: Path, lineage: Path, leaves: list[Leaf]
    ) -> None:
        link = lineage / "privkey.pem"
        link.unlink()
        link.write_bytes(leaves[0].key_pem)
        archive = config_dir / "archive" / NAME
        assert refused(config_dir) == f"{link} is not a symlink into {archive}"

    def test_archive_file_is_a_symlink(self, config_dir: Path, lineage: Path) -> None:
        archived = config_dir / "archive" / NAME / "chain1.pem"
        elsewhere = config_dir / "elsewhere.pem"
        archived.rename(elsewhere)
        archived.symlink_to(elsewhere)
        assert refused(config_dir) == (
            f"{archived} is a symlink; certbot's archive holds regular files"
        )

    def test_archive_file_is_a_symlink_within_the_archive(
        self, config_dir: Path, lineage: Path
    ) -> None:
        archived = config_dir / "archive" / NAME / "chain1.pem"
        archived.unlink()
        archived.symlink_to("fullchain1.pem")
        assert "is a symlink" in refused(config_dir)

    def test_dangling_link(self, config_dir: Path, lineage: Path) -> None:
        archived = config_dir / "archive" / NAME / "fullchain1.pem"
        archived.unlink()
        assert refused(config_dir) == f"{archived} does not exist"

    def test_directory_in_the_archive(self, config_dir: Path, lineage: Path) -> None:
        archived = config_dir / "archive" / NAME / "cert1.pem"
        archived.unlink()
        archived.mkdir()
        assert refused(config_dir) == f"{archived} is not a regular file"

    def test_fifo_in_the_archive_does_not_hang(self, config_dir: Path, lineage: Path) -> None:
        archived = config_dir / "archive" / NAME / "cert1.pem"
        archived.unlink()
        os.mkfifo(archived)
        started = time.monotonic()
        assert refused(config_dir) == f"{archived} is not a regular file"
        assert time.monotonic() - started < 5

    def test_file_over_one_mebibyte(self, config_dir: Path, lineage: Path) -> None:
        archived = config_dir / "archive" / NAME / "fullchain1.pem"
        with archived.open("r+b") as file:
            file.truncate(MAX_FILE_SIZE + 1)
        assert refused(config_dir) == (
            f"{archived} is {MAX_FILE_SIZE + 1} bytes; the limit is 1 MiB"
        )

    def test_huge_file_is_not_read(self, config_dir: Path, lineage: Path) -> None:
        """A 64 GiB sparse file is refused at once: its size is looked at, not its content."""
        archived = config_dir / "archive" / NAME / "cert1.pem"
        with archived.open("r+b") as file:
            file.truncate(64 * 1024**3)
        started = time.monotonic()
        assert "the limit is 1 MiB" in refused(config_dir)
        assert time.monotonic() - started < 2

    def test_exactly_one_mebibyte_is_read(self, config_dir: Path, lineage: Path) -> None:
        archived = config_dir / "archive" / NAME / "chain1.pem"
        data = archived.read_bytes()
        archived.write_bytes(data + b"\n" * (MAX_FILE_SIZE - len(data)))
        assert len(read_lineage(config_dir, NAME).chain) == MAX_FILE_SIZE


class TestUpdateSequence:
    """Replaying certbot's link sequence step by step never yields a mixed version."""

    def read_at_every_step(self, config_dir: Path, update: object) -> list[str]:
        outcomes: list[str] = []

        def look(step: str) -> None:
            try:
                files = read_lineage(config_dir, NAME)
            except LineagePending:
                outcomes.append(f"{step}: pending")
                return
            # Every file must come from the one version the lineage claims.
            archive = config_dir / "archive" / NAME
            for kind in KINDS:
                expected = (archive / f"{kind}{files.version}.pem").read_bytes()
                assert getattr(files, kind) == expected, (step, kind)
            outcomes.append(f"{step}: v{files.version}")

        update(look)  # type: ignore[operator]
        return outcomes

    def test_renewal(self, config_dir: Path, lineage: Path, leaves: list[Leaf]) -> None:
        write_version(config_dir, NAME, leaves[1], 2)
        outcomes = self.read_at_every_step(
            config_dir, lambda look: update_links(config_dir, NAME, 2, between=look)
        )
        assert outcomes == [
            "previous_cert: pending",
            "previous_privkey: pending",
            "previous_chain: pending",
            "previous_fullchain: pending",
            "unlink cert: pending",
            "link cert: pending",
            "unlink privkey: pending",
            "link privkey: pending",
            "unlink chain: pending",
            "link chain: pending",
            "unlink fullchain: pending",
            "link fullchain: pending",
            "remove previous_cert.pem: pending",
            "remove previous_privkey.pem: pending",
            "remove previous_chain.pem: pending",
            "remove previous_fullchain.pem: v2",
        ]

    def test_creation(self, config_dir: Path, leaves: list[Leaf]) -> None:
        write_version(config_dir, NAME, leaves[0], 1)
        outcomes = self.read_at_every_step(
            config_dir, lambda look: update_links(config_dir, NAME, 1, between=look)
        )
        assert outcomes == [
            "link cert: pending",
            "link privkey: pending",
            "link chain: pending",
            "link fullchain: v1",
        ]

    def test_concurrent_renewals(self, config_dir: Path, lineage: Path, leaves: list[Leaf]) -> None:
        """certbot renewing in another thread: every read is pending or one whole version."""
        write_version(config_dir, NAME, leaves[1], 2)
        stop = threading.Event()

        def certbot() -> None:
            version = 1
            while not stop.is_set():
                version = 3 - version
                update_links(config_dir, NAME, version)

        thread = threading.Thread(target=certbot)
        thread.start()
        counts = {"pending": 0, "read": 0}
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    files = read_lineage(config_dir, NAME)
                except LineagePending:
                    counts["pending"] += 1
                    continue
                counts["read"] += 1
                assert_is_version(files, leaves[files.version - 1], files.version)
        finally:
            stop.set()
            thread.join()
        assert counts["pending"] > 0


class TestListAndServer:
    """Which lineages exist, and which ACME server each renews with."""

    def test_list_lineages(self, config_dir: Path, leaves: list[Leaf]) -> None:
        assert list_lineages(config_dir) == []
        make_lineage(config_dir, "b.example.test", leaves[0])
        make_lineage(config_dir, "a.example.test", leaves[1])
        (config_dir / "live" / "README").write_text("certbot's README\n")
        (config_dir / "live" / "linked").symlink_to(config_dir / "live" / "a.example.test")
        assert list_lineages(config_dir) == ["a.example.test", "b.example.test"]

    def test_read_acme_server(self, config_dir: Path, leaves: list[Leaf]) -> None:
        make_lineage(config_dir, NAME, leaves[0], server="https://127.0.0.1:14000/dir")
        assert read_acme_server(config_dir, NAME) == "https://127.0.0.1:14000/dir"
        assert read_acme_server(config_dir, "missing.example.test") is None

    @pytest.mark.parametrize(
        ("text", "server"),
        [
            ("[renewalparams]\nserver=https://acme.example/dir\n", "https://acme.example/dir"),
            ("[renewalparams]\n  server   =   https://a.example/d  \n", "https://a.example/d"),
            ("[renewalparams]\nserver =\n", None),
            ("[renewalparams]\nauthenticator = standalone\n", None),
            ("# server = https://commented.example/\n", None),
            ("\xff\xfe garbage\n", None),
        ],
    )
    def test_renewal_conf_forms(self, config_dir: Path, text: str, server: str | None) -> None:
        (config_dir / "renewal").mkdir(parents=True)
        (config_dir / "renewal" / f"{NAME}.conf").write_bytes(text.encode("latin-1"))
        assert read_acme_server(config_dir, NAME) == server

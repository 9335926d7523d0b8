"""Atomic writes and chain-file installation, on the real file system."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from danesync.actions import files
from danesync.actions.files import (
    chain_file_path,
    install_chain_file,
    restore_chain_file,
    write_atomic,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run with a permissive umask, so modes come from the code, not the umask."""
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


class TestWriteAtomic:
    """write_atomic replaces a file in one step, with its final mode from creation."""

    def test_writes_data_with_mode(self, tmp_path: Path, umask: None) -> None:
        target = tmp_path / "f.pem"
        write_atomic(target, b"secret")
        assert target.read_bytes() == b"secret"
        assert _mode(target) == 0o600
        write_atomic(tmp_path / "g", b"x", mode=0o644)
        assert _mode(tmp_path / "g") == 0o644

    def test_restrictive_umask_does_not_narrow_the_mode(self, tmp_path: Path) -> None:
        old = os.umask(0o077)
        try:
            write_atomic(tmp_path / "table", b"x", mode=0o640)
        finally:
            os.umask(old)
        assert _mode(tmp_path / "table") == 0o640

    def test_file_has_final_mode_before_any_byte_is_written(
        self, tmp_path: Path, umask: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[int] = []
        real_write = os.write

        def spy(fd: int, data: bytes | memoryview) -> int:
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return real_write(fd, data)

        monkeypatch.setattr(files.os, "write", spy)
        write_atomic(tmp_path / "key.pem", b"private key")
        assert seen and all(mode == 0o600 for mode in seen)

    def test_replaces_with_a_new_inode_and_leaves_no_temporary(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        target.write_bytes(b"old")
        before = target.stat().st_ino
        write_atomic(target, b"new")
        assert target.read_bytes() == b"new"
        assert target.stat().st_ino != before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]

    def test_replaces_a_symlink_without_writing_through_it(self, tmp_path: Path) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_bytes(b"untouched")
        link = tmp_path / "link"
        link.symlink_to(elsewhere)
        write_atomic(link, b"new")
        assert not link.is_symlink()
        assert link.read_bytes() == b"new"
        assert elsewhere.read_bytes() == b"untouched"

    def test_failure_keeps_old_file_and_removes_temporary(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        target = tmp_path / "f"
        target.write_bytes(b"old")

        def disk_full(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(files.os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            write_atomic(target, b"new")
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]

    def test_missing_directory_raises(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            write_atomic(tmp_path / "no" / "f", b"x")

    def test_reader_never_sees_a_missing_or_partial_file(self, tmp_path: Path) -> None:
        target = tmp_path / "chain.pem"
        versions = [bytes([65 + i]) * 200_000 for i in range(4)]
        write_atomic(target, versions[0])
        problems: list[str] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                try:
                    data = target.read_bytes()
                except FileNotFoundError:
                    problems.append("missing")
                    continue
                if data not in versions:
                    problems.append(f"partial: {len(data)} bytes")

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for round_ in range(60):
                write_atomic(target, versions[round_ % len(versions)])
        finally:
            done.set()
            reader.join()
        assert problems == []


class TestInstallChainFile:
    """install_chain_file keeps the previous file for rollback; restore puts it back."""

    def test_first_install_creates_private_deploy_dir_and_file(
        self, tmp_path: Path, umask: None
    ) -> None:
        deploy = tmp_path / "etc" / "danesync"
        path = install_chain_file(deploy, "mx.example.test", b"key+chain 1")
        assert path == deploy / "mx.example.test.pem"
        assert path.read_bytes() == b"key+chain 1"
        assert _mode(deploy) == 0o700
        assert _mode(path) == 0o600
        assert sorted(p.name for p in deploy.iterdir()) == ["mx.example.test.pem"]

    def test_existing_deploy_dir_keeps_its_mode(self, tmp_path: Path) -> None:
        deploy = tmp_path / "deploy"
        deploy.mkdir(mode=0o750)
        os.chmod(deploy, 0o750)
        install_chain_file(deploy, "mx", b"1")
        assert _mode(deploy) == 0o750

    def test_second_install_keeps_previous_as_prev(self, tmp_path: Path) -> None:
        install_chain_file(tmp_path, "mx", b"generation 1")
        path = install_chain_file(tmp_path, "mx", b"generation 2")
        assert path.read_bytes() == b"generation 2"
        previous = tmp_path / "mx.pem.prev"
        assert previous.read_bytes() == b"generation 1"
        assert _mode(previous) == 0o600

    def test_prev_is_private_even_if_the_old_file_was_not(self, tmp_path: Path) -> None:
        old = tmp_path / "mx.pem"
        old.write_bytes(b"adopted")
        os.chmod(old, 0o644)
        install_chain_file(tmp_path, "mx", b"new")
        assert _mode(tmp_path / "mx.pem.prev") == 0o600
        assert _mode(old) == 0o600

    def test_identical_content_changes_nothing(self, tmp_path: Path) -> None:
        install_chain_file(tmp_path, "mx", b"generation 1")
        path = install_chain_file(tmp_path, "mx", b"generation 2")
        inode = path.stat().st_ino
        install_chain_file(tmp_path, "mx", b"generation 2")
        assert path.stat().st_ino == inode
        assert (tmp_path / "mx.pem.prev").read_bytes() == b"generation 1"

    def test_restore_puts_previous_back(self, tmp_path: Path) -> None:
        install_chain_file(tmp_path, "mx", b"good")
        install_chain_file(tmp_path, "mx", b"bad")
        assert restore_chain_file(tmp_path, "mx") is True
        assert (tmp_path / "mx.pem").read_bytes() == b"good"
        assert not (tmp_path / "mx.pem.prev").exists()
        # Nothing left to restore: the file stays as it is.
        assert restore_chain_file(tmp_path, "mx") is False
        assert (tmp_path / "mx.pem").read_bytes() == b"good"

    def test_restore_without_previous_is_false(self, tmp_path: Path) -> None:
        install_chain_file(tmp_path, "mx", b"first")
        assert restore_chain_file(tmp_path, "mx") is False
        assert (tmp_path / "mx.pem").read_bytes() == b"first"
        assert restore_chain_file(tmp_path / "missing", "mx") is False

    @pytest.mark.parametrize("lineage", ["", ".hidden", "../etc", "a/b", "x\0y"])
    def test_rejects_names_that_are_not_plain_file_names(
        self, tmp_path: Path, lineage: str
    ) -> None:
        with pytest.raises(ValueError, match="file name"):
            install_chain_file(tmp_path, lineage, b"x")
        with pytest.raises(ValueError, match="file name"):
            chain_file_path(tmp_path, lineage)


class TestWriteAtomicMany:
    """Many files in one batch: each replaced whole, with its mode, nothing left over."""

    def test_writes_and_replaces(self, tmp_path: Path) -> None:
        from danesync.actions.files import write_atomic_many

        (tmp_path / "sub").mkdir()
        old = tmp_path / "a.json"
        old.write_bytes(b"old")
        batch = {old: b"new a", tmp_path / "sub" / "b.json": b"b", tmp_path / "c.json": b""}
        write_atomic_many(batch, mode=0o600)
        for path, data in batch.items():
            assert path.read_bytes() == data
            assert path.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.json", "sub"]
        write_atomic_many({})
        many = {tmp_path / f"{i}.json": str(i).encode() for i in range(files.SYNCFS_BATCH + 1)}
        write_atomic_many(many)  # one syncfs for the batch
        assert all(path.read_bytes() == data for path, data in many.items())

    def test_failure_leaves_no_temporary_and_the_old_file(self, tmp_path: Path) -> None:
        from danesync.actions.files import write_atomic_many

        old = tmp_path / "a.json"
        old.write_bytes(b"old")
        with pytest.raises(OSError):
            write_atomic_many({old: b"new", tmp_path / "missing" / "b.json": b"b"})
        assert old.read_bytes() == b"old"
        assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


class TestInstallChainFiles:
    """A deploy of many lineages writes its chain files in one batch (one flush),
    with the same result as `install_chain_file` for each (docs/benchmarks.md:
    two fsyncs a file were 3.7 s of a 1,000-lineage cold start)."""

    def test_same_files_as_one_at_a_time(self, tmp_path: Path, umask: None) -> None:
        one, many = tmp_path / "one" / "deploy", tmp_path / "many" / "deploy"
        names = [f"mx{i}.example.test" for i in range(files.SYNCFS_BATCH + 4)]
        for deploy in (one, many):
            install_chain_file(deploy, names[0], b"generation 1")
            install_chain_file(deploy, names[1], b"same")
        wanted = {name: f"new {name}".encode() for name in names} | {names[1]: b"same"}
        for name, pem in wanted.items():
            install_chain_file(one, name, pem)
        unchanged = (many / f"{names[1]}.pem").stat().st_ino
        paths = files.install_chain_files(many, wanted)
        assert paths == {name: many / f"{name}.pem" for name in names}
        assert _mode(many) == 0o700
        for deploy in (one, many):
            assert (deploy / f"{names[0]}.pem.prev").read_bytes() == b"generation 1"
        assert (many / f"{names[1]}.pem").stat().st_ino == unchanged  # identical: untouched
        tree = {p.name: (p.read_bytes(), _mode(p)) for p in one.iterdir()}
        assert {p.name: (p.read_bytes(), _mode(p)) for p in many.iterdir()} == tree

    def test_one_flush_for_the_batch(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        if not files._syncfs_available():
            pytest.skip("no syncfs(2) in this libc")
        synced: list[int] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        files.install_chain_files(tmp_path, {f"mx{i}": b"chain" for i in range(100)})
        assert len(synced) <= 2, synced  # the directory, not two per file
        files.install_chain_files(tmp_path, {f"mx{i}": b"renewed" for i in range(100)})
        assert len(synced) <= 4, synced
        assert (tmp_path / "mx7.pem.prev").read_bytes() == b"chain"

    def test_a_bad_name_writes_nothing(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="file name"):
            files.install_chain_files(tmp_path, {"good": b"x", "../etc": b"y"})
        assert not list(tmp_path.iterdir())

    def test_every_prev_is_in_place_before_any_chain_file_is_replaced(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A deploy's rollback restores `.prev`: it must be the file that was replaced."""
        names = [f"mx{i}" for i in range(files.SYNCFS_BATCH + 4)]
        files.install_chain_files(tmp_path, dict.fromkeys(names, b"old"))
        real_replace = os.replace

        def replace(source: Path, target: Path) -> None:
            if str(target).endswith(".pem"):
                raise OSError(28, "No space left on device", str(target))
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError):
            files.install_chain_files(tmp_path, dict.fromkeys(names, b"new"))
        for name in names:
            assert (tmp_path / f"{name}.pem").read_bytes() == b"old"
            assert (tmp_path / f"{name}.pem.prev").read_bytes() == b"old"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

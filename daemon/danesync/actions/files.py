"""Atomic file writes: chain files, the SNI table source, the state file.

A reader (Postfix, a restarted danesync) sees either the whole old file or
the whole new one, never a partial file and never no file: the data goes to
a temporary file in the same directory, created with its final mode, is
fsynced, renamed over the target, and the directory is fsynced so the rename
survives a crash. Failures raise `OSError`.
"""

from __future__ import annotations

import ctypes
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREVIOUS_SUFFIX = ".prev"
SYNCFS_BATCH = 16  # files in a batch above which one syncfs replaces their fsyncs


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically; the file has `mode` from its creation."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write through a file or link someone else put there.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            # The umask may have taken bits away; it can never have added any.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_atomic_many(files: Mapping[Path, bytes], mode: int = 0o600) -> None:
    """`write_atomic` for many files at once, with one flush instead of two per file.

    Every temporary file is written, then the file system is flushed once
    (syncfs; an fsync per file for small batches or where there is no
    syncfs), then each is renamed
    over its target and each directory is fsynced. The same guarantee as
    `write_atomic` for each file; at 10,000 files the per-file fsyncs were
    most of a cold start.
    """
    written: list[tuple[Path, Path]] = []
    # syncfs flushes everything dirty on the file system, other programs' writes
    # included: worth it for a batch, not for the one or two files of a renewal.
    flush_once = len(files) > SYNCFS_BATCH and _syncfs_available()
    try:
        for target, data in files.items():
            path = Path(target)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            written.append((temporary, path))
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if not flush_once:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if written and flush_once:
            _syncfs(written[0][0].parent)
        while written:
            temporary, path = written[0]
            os.replace(temporary, path)
            written.pop(0)
    except BaseException:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)
        raise
    for directory in sorted({Path(path).parent for path in files}):
        sync_directory(directory)


_libc: list[Any] = []


def _syncfs_available() -> bool:
    if not _libc:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _libc.append(libc.syncfs if hasattr(libc, "syncfs") else None)
        except OSError:
            _libc.append(None)
    return _libc[0] is not None


def _syncfs(directory: Path) -> None:
    """Flush the file system holding `directory` (Linux syncfs(2))."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc[0](fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(fd)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so renames and creations in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chain_file_path(deploy_dir: Path, lineage: str) -> Path:
    """`<deploy_dir>/<lineage>.pem`; the lineage must be a plain file name."""
    return Path(build_chain_file_name(deploy_dir, lineage))


def build_chain_file_name(deploy_dir: Path | str, lineage: str) -> str:
    """`chain_file_path` as a str (`deploy_dir` a Path or the str of one): no pathlib parse (and no
    interned parts) for each of 10,000 lineages the daemon keeps a path of."""
    if not lineage or lineage.startswith(".") or "/" in lineage or "\0" in lineage:
        raise ValueError(f"lineage name {lineage!r} cannot be a file name")
    directory = deploy_dir if isinstance(deploy_dir, str) else os.fspath(deploy_dir)
    return os.path.join(directory, f"{lineage}.pem")


def previous_chain_file_path(deploy_dir: Path, lineage: str) -> Path:
    path = chain_file_path(deploy_dir, lineage)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def ensure_deploy_dir(deploy_dir: Path) -> None:
    """Create `deploy_dir` (mode 0700) if it is missing; an existing one is left as is."""
    deploy_dir = Path(deploy_dir)
    if deploy_dir.is_dir():
        return
    deploy_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        deploy_dir.mkdir(mode=0o700)
    except FileExistsError:
        if not deploy_dir.is_dir():
            raise
        return
    os.chmod(deploy_dir, 0o700)  # mkdir's mode passes through the umask
    sync_directory(deploy_dir.parent)


def install_chain_file(deploy_dir: Path, lineage: str, pem: bytes) -> Path:
    """Write `<deploy_dir>/<lineage>.pem` (mode 0600), keeping the old one as `.prev`.

    Identical content changes nothing (and keeps the `.prev` of the deploy
    that wrote it). The `.pem` path exists at every moment once it existed.
    """
    ensure_deploy_dir(deploy_dir)
    path = chain_file_path(deploy_dir, lineage)
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current == pem:
        return path
    if current is not None:
        # A copy, not a hard link: the .prev gets mode 0600 whatever the old file had.
        write_atomic(previous_chain_file_path(deploy_dir, lineage), current, 0o600)
    write_atomic(path, pem, 0o600)
    return path


def install_chain_files(deploy_dir: Path, pems: Mapping[str, bytes]) -> dict[str, Path]:
    """`install_chain_file` for many lineages, with one flush for all (`write_atomic_many`).

    Every `.prev` is renamed into place before any `.pem` is replaced (the
    batch renames in order), and each `.pem` is replaced whole: a crash in
    the middle leaves each lineage with its old file or its new one, as
    `install_chain_file` does. On an error some files may already be
    replaced; installing them again one at a time changes nothing for those.
    """
    ensure_deploy_dir(deploy_dir)
    paths = {lineage: chain_file_path(deploy_dir, lineage) for lineage in pems}
    previous: dict[Path, bytes] = {}
    new: dict[Path, bytes] = {}
    for lineage, pem in pems.items():
        path = paths[lineage]
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = None
        if current == pem:
            continue
        if current is not None:
            previous[previous_chain_file_path(deploy_dir, lineage)] = current
        new[path] = pem
    write_atomic_many(previous | new, 0o600)
    return paths


def restore_chain_file(deploy_dir: Path, lineage: str) -> bool:
    """Put `<lineage>.pem.prev` back in place of `<lineage>.pem` in one rename.

    Returns False (and changes nothing) when there is no previous file.
    """
    path = chain_file_path(deploy_dir, lineage)
    previous = previous_chain_file_path(deploy_dir, lineage)
    try:
        os.replace(previous, path)
    except FileNotFoundError:
        return False
    sync_directory(path.parent)
    return True

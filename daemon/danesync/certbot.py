"""Reading certbot's `live/` and `archive/` without trusting them.

certbot keeps every version under `archive/<lineage>/` and points four
symlinks in `live/<lineage>/` at one of them. While it renews, it creates
`previous_*.pem` links, then unlinks and re-links the four one by one, then
removes the `previous_*` links. `read_lineage` returns the bytes only when the
lineage is complete and consistent; it never follows a link that leaves the
lineage's archive directory and never takes certbot's lock.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import re
import stat
from pathlib import Path

from danesync.chain import Chain, LineageFiles, _not_after, _not_before, validate_chain
from danesync.config import CertificateConfig
from danesync.errors import AriError, ChainError, LineagePending
from danesync.readcache import Key, ReadCache, Validated
from danesync.state import ChainInfo

KINDS = ("cert", "privkey", "chain", "fullchain")
Stat = tuple[int, int, int, int, int]  # dev, inode, size, mtime_ns, ctime_ns
MAX_FILE_SIZE = 1024 * 1024


def list_lineages(config_dir: Path) -> list[str]:
    """Lineage directories under live/ (certbot's README file is not one)."""
    try:
        entries = sorted(os.scandir(config_dir / "live"), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [e.name for e in entries if e.is_dir(follow_symlinks=False)]


def read_lineage(config_dir: Path, lineage: str) -> LineageFiles:
    """The four files of the version live/<lineage> points at (`_read_lineage`)."""
    return _read_lineage(config_dir, lineage)[0]


def _read_lineage(
    config_dir: Path, lineage: str
) -> tuple[LineageFiles, tuple[str, ...], tuple[Stat, ...]]:
    """The four files of the version live/<lineage> points at, with where
    they are and their stats (taken before the bytes were read).

    Raises LineagePending while certbot is mid-update (or creating the
    lineage), ChainError when the lineage is complete but unacceptable.
    Strings and os.path, not Path: a cold start reads every lineage (at
    1,000 pathlib was a quarter of the reading).
    """
    live = os.path.join(config_dir, "live", lineage)
    if not os.path.isdir(live):
        raise ChainError(lineage, f"{live} does not exist")
    _check_not_updating(live, lineage)
    targets, versions = _read_links(config_dir, lineage)
    if len(set(versions.values())) != 1:
        # certbot may have started and finished an update between two of our
        # readlink calls: only links that stay put are a real disagreement.
        _check_not_updating(live, lineage)
        if _read_links(config_dir, lineage) != (targets, versions):
            raise LineagePending(lineage, "certbot changed the links while they were read")
        found = ", ".join(f"{kind}.pem -> {number}" for kind, number in versions.items())
        raise ChainError(lineage, f"the links point at different archive versions ({found})")

    contents = {kind: _read_regular_file(lineage, targets[kind]) for kind in KINDS}
    files = LineageFiles(
        lineage=lineage,
        version=versions["cert"],
        privkey=contents["privkey"][0],
        cert=contents["cert"][0],
        chain=contents["chain"][0],
        fullchain=contents["fullchain"][0],
    )
    # Each file's stat as fstat gave it before its bytes were read (see read_validated).
    return files, tuple(targets[k] for k in KINDS), tuple(contents[k][1] for k in KINDS)


def _check_not_updating(live: str, lineage: str) -> None:
    # listdir, not Path.glob: glob compiled a pattern per call, a third of a
    # full pass at 10,000 lineages.
    try:
        names = os.listdir(live)
    except OSError:
        names = []
    previous = sorted(n for n in names if n.startswith("previous_") and n.endswith(".pem"))
    if previous:
        raise LineagePending(lineage, f"certbot is updating it ({', '.join(previous)} present)")


_TARGET_NAMES = {kind: re.compile(rf"{kind}(\d+)\.pem") for kind in KINDS}


def _read_links(config_dir: Path, lineage: str) -> tuple[dict[str, str], dict[str, int]]:
    """Where each of the four links points (inside the archive) and its version."""
    live = os.path.join(config_dir, "live", lineage)
    archive = os.path.normpath(os.path.join(config_dir, "archive", lineage))
    versions: dict[str, int] = {}
    targets: dict[str, str] = {}
    for kind in KINDS:
        link = f"{live}/{kind}.pem"
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            raise LineagePending(lineage, f"{link} does not exist yet") from None
        except OSError as error:
            if error.errno == errno.EINVAL:
                raise ChainError(lineage, f"{link} is not a symlink into {archive}") from None
            raise ChainError(lineage, f"{link} cannot be read: {error.strerror}") from None
        resolved = os.path.normpath(os.path.join(live, target))
        directory, base = os.path.split(resolved)
        if directory != archive:
            raise ChainError(lineage, f"{link} points outside {archive}: {target}")
        match = _TARGET_NAMES[kind].fullmatch(base)
        if match is None:
            raise ChainError(lineage, f"{link} points at {target}, not {kind}N.pem")
        versions[kind] = int(match.group(1))
        targets[kind] = resolved
    return targets, versions


def _read_regular_file(lineage: str, path: str) -> tuple[bytes, Stat]:
    """The file's bytes, and its (dev, inode, size, mtime_ns, ctime_ns) from before the read."""
    try:
        # O_NONBLOCK: a FIFO planted in the archive must not hang the daemon.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ChainError(lineage, f"{path} does not exist") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ChainError(
                lineage, f"{path} is a symlink; certbot's archive holds regular files"
            ) from None
        raise ChainError(lineage, f"{path} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ChainError(lineage, f"{path} is not a regular file")
        if info.st_size > MAX_FILE_SIZE:
            raise ChainError(lineage, f"{path} is {info.st_size} bytes; the limit is 1 MiB")
        # os.read of what fstat says, until the end: a buffered read(1 MiB + 1)
        # allocated a megabyte for every 2 kB file. A file that grows while it
        # is read is still cut at the limit.
        parts: list[bytes] = []
        total = 0
        while True:
            part = os.read(fd, info.st_size + 1 if not parts else 65536)
            if not part:
                break
            parts.append(part)
            total += len(part)
            if total > MAX_FILE_SIZE:
                break
        data = b"".join(parts)
    except OSError as error:
        raise ChainError(lineage, f"{path} cannot be read: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        raise ChainError(lineage, f"{path} is over the 1 MiB limit")
    return data, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def read_acme_server(config_dir: Path, lineage: str) -> str | None:
    """The `server` of renewal/<lineage>.conf: the ACME directory for ARI."""
    # os.path, not Path: asked for every lineage, and pathlib interns each part.
    try:
        conf = os.path.join(config_dir, "renewal", f"{lineage}.conf")
        with open(conf, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "server":
            return value.strip() or None
    return None


def read_chain(config_dir: Path, certificate: CertificateConfig, now: dt.datetime) -> Chain:
    """Read and validate a lineage: the candidate chain for `certificate` (no cache)."""
    files = read_lineage(config_dir, certificate.lineage)
    return validate_chain(files, certificate.hostnames, certificate.tlsa, certificate.usages, now)


def read_validated(
    config_dir: Path, certificate: CertificateConfig, now: dt.datetime, cache: ReadCache
) -> tuple[Validated, bytes | None]:
    """The lineage's validated facts, and the bytes to deploy when just validated.

    An entry of `cache` is used without reading or parsing anything while
    nothing it came from has changed: the same configuration, the same four
    link targets, the same archive files (device, inode, size, mtime and
    ctime: any write changes the ctime), and `now` still inside every
    certificate's validity. Then the bytes are None: `read_deploy_pem` reads
    them when a deploy needs them. At 10,000 lineages a warm start otherwise
    spent most of its time validating chains certbot had not touched.
    """
    cached = cache.get(certificate.lineage)
    if cached is not None:
        key = _cache_key(config_dir, certificate)
        if key is not None and cached.usable(key, now):
            return cached, None
    # No usable entry (always so at a cold start): the key comes from the read
    # itself, each file's fstat taken on the descriptor its bytes came from,
    # before they were read. A change after the fstat makes the key stale, so
    # the next pass reads again; it never pairs new stats with old bytes. (A
    # stat of every file by path first was half the reading of a cold start.)
    files, targets, stats = _read_lineage(config_dir, certificate.lineage)
    chain = validate_chain(files, certificate.hostnames, certificate.tlsa, certificate.usages, now)
    key = _build_cache_key(config_dir, certificate, targets, stats)
    entry = build_validated(key, chain)
    if key is None:
        cache.drop(certificate.lineage)
    else:
        entry = cache.put(certificate.lineage, entry)
    return entry, chain.deploy_pem


def read_deploy_pem(
    config_dir: Path, certificate: CertificateConfig, entry: Validated, now: dt.datetime
) -> bytes:
    """The bytes to deploy for `entry`, validated again from the disk.

    Raises ValueError when the lineage no longer holds exactly what `entry`
    was validated from (the next pass reads it again), so a file changed
    after the read is never deployed unvalidated or under another name.
    """
    try:
        chain = read_chain(config_dir, certificate, now)
    except (ChainError, LineagePending) as error:
        raise ValueError(
            f"{certificate.lineage}: changed since it was validated: {error.reason}"
        ) from None
    if hashlib.sha256(chain.deploy_pem).digest() != entry.pem_sha256:
        raise ValueError(f"{certificate.lineage}: changed since it was validated")
    return chain.deploy_pem


def build_validated(key: Key | None, chain: Chain) -> Validated:
    """The facts kept of `chain`: no certificate object, no key material."""
    from danesync import ari

    everything = (chain.leaf, *chain.intermediates)
    ari_id = ari_problem = None
    if chain.intermediates:
        try:
            ari_id = ari.build_ari_identifier(chain.leaf, chain.intermediates[0])
        except AriError as error:
            ari_problem = error.reason
    return Validated(
        key=key or b"",
        info=ChainInfo.from_chain(chain),
        pem_sha256=hashlib.sha256(chain.deploy_pem).digest(),
        valid_from=max(_not_before(c) for c in everything),
        valid_until=min(_not_after(c) for c in everything),
        ari_id=ari_id,
        ari_problem=ari_problem,
    )


def _cache_key(config_dir: Path, certificate: CertificateConfig) -> Key | None:
    """What a validated chain depends on; None while certbot is at work or on any doubt.

    Strings and os.path, not Path: asked for every lineage on every full pass
    (pathlib was half of it). Anything unusual is None: `read_chain` then
    says precisely what is wrong.
    """
    root = str(config_dir)
    live = os.path.join(root, "live", certificate.lineage)
    archive = os.path.normpath(os.path.join(root, "archive", certificate.lineage))
    targets = []
    stats = []
    versions = set()
    try:
        names = os.listdir(live)
        if any(n.startswith("previous_") and n.endswith(".pem") for n in names):
            return None
        for kind in KINDS:
            resolved = os.path.normpath(os.path.join(live, os.readlink(f"{live}/{kind}.pem")))
            directory, base = os.path.split(resolved)
            number = base[len(kind) : -len(".pem")]
            if (
                directory != archive
                or not base.startswith(kind)
                or not base.endswith(".pem")
                or not number.isdigit()
                or not number.isascii()
            ):
                return None
            versions.add(int(number))
            st = os.lstat(resolved)
            if not stat.S_ISREG(st.st_mode):
                return None
            targets.append(resolved)
            stats.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except (OSError, ValueError):
        return None
    if len(versions) != 1:
        return None
    return _build_cache_key(config_dir, certificate, tuple(targets), tuple(stats))


def _build_cache_key(
    config_dir: Path,
    certificate: CertificateConfig,
    targets: tuple[str, ...],
    stats: tuple[Stat, ...],
) -> Key | None:
    """The key of the files at `targets` with `stats` (the four kinds, in KINDS order)."""
    for kind, target in zip(KINDS, targets, strict=True):
        number = os.path.basename(target)[len(kind) : -len(".pem")]
        if not (number.isdigit() and number.isascii()):
            return None  # as _cache_key: never equal to a key it takes
    # With what validate_chain is given besides the files.
    settings = (
        str(config_dir),
        certificate.lineage,
        certificate.hostnames,
        certificate.tlsa,
        tuple(usage.value for usage in certificate.usages),
    )
    described = repr((settings, targets, stats))
    return hashlib.sha256(described.encode()).digest()

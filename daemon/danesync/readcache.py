"""What danesync keeps of a validated lineage, between passes and across restarts.

Per lineage only what decides "unchanged" (the configuration that validation
depends on, the four link targets, each archive file's device, inode, size,
mtime and ctime, the validity window) and the small facts later code needs
(`ChainInfo`, the digest of the bytes to deploy, the ARI identifier). Never
a parsed certificate, never key material: at 10,000 lineages the parsed
chains were most of the daemon's memory.

The same shards keep, per lineage, a 16-byte key of its deployed chain file
as last found intact (`build_file_key`: its stat and the digest of what it
held), so that a restart with unchanged chain files reads none back.

The entries live in `<state dir>/readcache/NNN.json`, shards by a hash of the
lineage name so that one renewal rewrites one small file. A shard is trusted
only whole: a missing, torn, edited (its checksum) or older-schema file is
dropped, which costs one validation of its lineages, never a crash. An entry
is only ever used while the files on disk still have exactly its stats; a
stale entry matches nothing. No fsync: any file a crash leaves is either
whole (old or new, each entry checked against the disk as above) or dropped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from danesync.state import ChainInfo
from danesync.statefiles import SHARDS, build_shard

SCHEMA = 2  # 2: the bytes to deploy hold RSA and EC keys in their own format
DIRECTORY = "readcache"

# SHA-256 over the certbot directory, the configuration validation depends on,
# the four link targets and each file's (dev, inode, size, mtime_ns, ctime_ns):
# one small value per lineage instead of some thirty objects.
Key = bytes


@dataclass(frozen=True, slots=True)
class Validated:
    """A lineage validated once, as long as `key` still describes its files."""

    key: Key
    info: ChainInfo  # the state's equal ChainInfo when it has one (ReadCache's `known`)
    pem_sha256: bytes  # the bytes to deploy (key, leaf, intermediates), by digest only
    valid_from: dt.datetime  # the latest not_before of the chain
    valid_until: dt.datetime  # the earliest not_after of the chain
    ari_id: str | None  # RFC 9773 certificate identifier, if the leaf has one
    ari_problem: str | None  # why ARI cannot ask about this leaf (no intermediate: None, None)

    def usable(self, key: Key, now: dt.datetime) -> bool:
        return self.key == key and self.valid_from <= now < self.valid_until

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key.hex(),
            "info": self.info.to_json(),
            "pem_sha256": self.pem_sha256.hex(),
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat(),
            "ari_id": self.ari_id,
            "ari_problem": self.ari_problem,
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], share: Callable[[ChainInfo], ChainInfo] = lambda i: i
    ) -> Validated:
        def optional(name: str) -> str | None:
            value = data.get(name)
            return None if value is None else str(value)

        info = share(ChainInfo.from_json(data["info"]))
        problem = optional("ari_problem")
        return cls(
            key=bytes.fromhex(data["key"]),
            info=info,
            pem_sha256=bytes.fromhex(data["pem_sha256"]),
            valid_from=_share(_aware(data["valid_from"]), info.not_before),
            valid_until=_share(_aware(data["valid_until"]), info.not_after),
            ari_id=optional("ari_id"),
            # A few distinct reasons, each in thousands of entries: one string each.
            ari_problem=None if problem is None else sys.intern(problem),
        )


def _share(moment: dt.datetime, equal: dt.datetime) -> dt.datetime:
    """`equal` itself when it is the same moment (the leaf's usually bounds the chain)."""
    return equal if moment == equal and moment.tzinfo == equal.tzinfo else moment


def _aware(text: Any) -> dt.datetime:
    moment = dt.datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError(f"{text}: no time zone")
    return moment


def build_file_key(stat: tuple[int, ...], digest: bytes) -> bytes:
    """A deployed chain file that held the bytes of `digest` (SHA-256) when it had
    `stat` (dev, inode, size, mtime_ns, ctime_ns): 16 bytes per lineage. Any
    write changes the ctime (a rename the inode), so an equal key means the file
    still holds those bytes; a restart need not read it back."""
    return hashlib.blake2b(repr((tuple(stat), digest)).encode(), digest_size=16).digest()


def build_shard_document(
    entries: dict[str, Validated], files: dict[str, bytes] | None = None
) -> bytes:
    """Checksum line, then the body: a torn or edited file fails the checksum."""
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "entries": {n: e.to_json() for n, e in sorted(entries.items())},
    }
    if files:  # absent in a shard written before (then every file is read back once)
        document["files"] = {n: key.hex() for n, key in sorted(files.items())}
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body + b"\n"


def parse_shard_document(data: bytes) -> dict[str, Validated]:
    """Every entry of a shard file; {} for anything not whole and current."""
    return parse_shard(data)[0]


def parse_shard(
    data: bytes, known: Known | None = None
) -> tuple[dict[str, Validated], dict[str, bytes]]:
    """Every entry and chain file key of a shard file; nothing unless whole and current.
    An entry's ChainInfo is an equal one of `known` (the state's) when there is one."""
    checksum, _, body = data.partition(b"\n")
    body = body.removesuffix(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != checksum:
        return {}, {}
    try:
        document = json.loads(body)
        if document.get("schema") != SCHEMA:
            return {}, {}
        # Names interned: the configuration's strings, not two more copies per lineage.
        entries = {}
        for n, e in document["entries"].items():
            name = sys.intern(str(n))
            entries[name] = Validated.from_json(e, partial(share_known, known, name))
        files = {sys.intern(str(n)): bytes.fromhex(k) for n, k in document.get("files", {}).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}, {}
    return entries, {n: k for n, k in files.items() if len(k) == 16}


# The state's chains of a lineage (deployed, pending, in flight): an entry's
# ChainInfo is the state's object when equal, not a copy of some twenty objects
# (10,000 lineages: memory). Asked, not kept: the state may be replaced.
Known = Callable[[str], Iterable[ChainInfo]]


def share_known(known: Known | None, lineage: str, info: ChainInfo) -> ChainInfo:
    """The equal ChainInfo `known` has for `lineage`, else `info`."""
    for chain in known(lineage) if known is not None else ():
        if chain == info:
            return chain
    return info


class ReadCache:
    """The entries of one state directory; loaded at the first look, written by `flush`.

    Kept by shard, as written: a flush after one renewal builds its one shard
    from that shard's ~40 names, not by hashing all 10,000 (issue 15).
    """

    def __init__(self, directory: Path | None, known: Known | None = None) -> None:
        self.directory = directory  # None: in memory only
        self.known = known
        self._shards: list[_Shard] | None = None
        self._dirty: set[int] = set()

    def get(self, lineage: str) -> Validated | None:
        return self._shard(lineage).entries.get(lineage)

    def put(self, lineage: str, entry: Validated) -> Validated:
        """Keep `entry`; returns it as kept (its ChainInfo the state's when equal)."""
        info = share_known(self.known, lineage, entry.info)
        if info is not entry.info:
            entry = replace(entry, info=info)
        shard = self._shard(lineage)
        if shard.entries.get(lineage) != entry:
            shard.entries[lineage] = entry
            self._dirty.add(build_shard(lineage))
        return entry

    def drop(self, lineage: str) -> None:
        if self._shard(lineage).entries.pop(lineage, None) is not None:
            self._dirty.add(build_shard(lineage))

    def file_key(self, lineage: str) -> bytes | None:
        """The key of `lineage`'s deployed chain file when last found intact."""
        return self._shard(lineage).files.get(lineage)

    def put_file_key(self, lineage: str, key: bytes | None) -> None:
        files = self._shard(lineage).files
        if files.get(lineage) != key:
            if key is None:
                del files[lineage]
            else:
                files[lineage] = key
            self._dirty.add(build_shard(lineage))

    def flush(self) -> None:
        """Write the shards that changed. A failure only costs validations after a restart."""
        if self.directory is None or not self._dirty or self._shards is None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for number in sorted(self._dirty):
                shard = self._shards[number]
                _write_replacing(
                    self.directory / f"{number:03d}.json",
                    build_shard_document(shard.entries, shard.files),
                )
                self._dirty.discard(number)
        except OSError:
            pass  # the state save of the same pass says what is wrong with the directory

    def _shard(self, lineage: str) -> _Shard:
        if self._shards is None:
            self._shards = [_Shard({}, {}) for _ in range(SHARDS)]
            if self.directory is not None:
                for number, shard in enumerate(self._shards):
                    try:
                        data = (self.directory / f"{number:03d}.json").read_bytes()
                    except OSError:
                        continue
                    entries, files = parse_shard(data, self.known)
                    # A name found in another shard's file is not trusted there.
                    shard.entries.update(
                        (n, e) for n, e in entries.items() if build_shard(n) == number
                    )
                    shard.files.update((n, k) for n, k in files.items() if build_shard(n) == number)
        return self._shards[build_shard(lineage)]


@dataclass(slots=True)
class _Shard:
    entries: dict[str, Validated]
    files: dict[str, bytes]  # build_file_key of each deployed chain file


def _write_replacing(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as file:
            file.write(data)
    finally:
        os.close(fd)
    os.replace(temporary, path)

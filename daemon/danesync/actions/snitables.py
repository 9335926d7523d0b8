"""The SNI table split in shards, so that one renewal rebuilds one small table.

`postmap -F` stores the contents of every chain file a table names, so a
single table for 10,000 domains is 40 MB that must be rebuilt, reading all
10,000 files, whenever any one of them changes. Postfix searches the tables
of `tls_server_sni_maps` in order until one has the name; a name is in
exactly one shard (chosen by a hash of its lookup key), so the order does
not matter. Up to `SHARD_SIZE` names there is one table, named as before
(`sni`); above, 2, 4, 8 ... tables `sni-000`, `sni-001`, ... The count
depends only on how many SNI names are configured, so a renewal never
changes `main.cf`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from danesync.actions import postfix
from danesync.actions.postfix import ChainFiles
from danesync.sni import build_sni_key

SHARD_SIZE = 256  # names a table holds at most before the tables double


def plan_sni_shard_count(names: int) -> int:
    """How many tables for `names` configured SNI names (a power of two)."""
    count = 1
    while count * SHARD_SIZE < names:
        count *= 2
    return count


def build_sni_table_names(count: int) -> list[str]:
    if count == 1:
        return [postfix.SNI_TABLE_NAME]
    return [f"{postfix.SNI_TABLE_NAME}-{index:03d}" for index in range(count)]


@functools.lru_cache(maxsize=1 << 16)
def build_sni_shard(hostname: str, count: int) -> int:
    """The shard of `hostname`: by its lookup key, so duplicates meet in one table."""
    key = build_sni_key(hostname).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % count


def build_sni_shards(entries: Mapping[str, ChainFiles], count: int) -> list[dict[str, ChainFiles]]:
    shards: list[dict[str, ChainFiles]] = [{} for _ in range(count)]
    for hostname, value in entries.items():
        shards[build_sni_shard(hostname, count)][hostname] = value
    return shards


@dataclass(frozen=True)
class ShardSplit:
    """The entries split in `count` tables, and which chain files each table names."""

    entries: Mapping[str, ChainFiles]  # what was split (read-only)
    shards: tuple[dict[str, ChainFiles], ...]
    paths: tuple[frozenset[str], ...]  # per table: os.fspath of every chain file it names

    def holding(self, path: str | Path) -> list[int]:
        """The tables that name the chain file `path`."""
        name = os.fspath(path)
        return [index for index, paths in enumerate(self.paths) if name in paths]


def build_shard_split(entries: Mapping[str, ChainFiles], count: int) -> ShardSplit:
    """`build_sni_shards` with the files of each table, updated from the last
    split for the keys whose entry changed (at 10,000 lineages, splitting all
    entries again was most of a renewal's table work)."""
    # A read-only view is taken as it is; anything else is copied, so that what
    # is kept cannot change under it.
    frozen = entries if isinstance(entries, MappingProxyType) else MappingProxyType(dict(entries))
    last = _SPLITS.get(count)
    if last is not None and (last.entries is frozen or last.entries == frozen):
        return last
    split = _split(frozen, count) if last is None else _update(last, frozen, count)
    _SPLITS[count] = split
    return split


def _split(entries: Mapping[str, ChainFiles], count: int) -> ShardSplit:
    shards = build_sni_shards(entries, count)
    return ShardSplit(entries, tuple(shards), tuple(_files_of(shard) for shard in shards))


def _update(last: ShardSplit, entries: Mapping[str, ChainFiles], count: int) -> ShardSplit:
    old = last.entries
    changed = [key for key, value in entries.items() if old.get(key) is not value]
    changed += old.keys() - entries.keys()
    if len(changed) > len(entries) // 4:  # much changed: as cheap to split it all
        return _split(entries, count)
    shards = list(last.shards)
    paths = list(last.paths)
    copied: set[int] = set()
    for key in changed:
        index = build_sni_shard(key, count)
        if index not in copied:  # the last split's tables stay as they were
            shards[index] = dict(shards[index])
            copied.add(index)
        if key in entries:
            shards[index][key] = entries[key]
        else:
            del shards[index][key]
    for index in copied:
        paths[index] = _files_of(shards[index])
    return ShardSplit(entries, tuple(shards), tuple(paths))


def _files_of(shard: Mapping[str, ChainFiles]) -> frozenset[str]:
    return frozenset(os.fspath(path) for value in shard.values() for path in _paths_of(value))


def _paths_of(value: ChainFiles) -> list[str | Path]:
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


_SPLITS: dict[int, ShardSplit] = {}  # table count -> the last split
_WRITTEN: dict[tuple[Path, int], ShardSplit] = {}  # the split last written to each place


def build_sni_maps_values(deploy_dir: Path, count: int) -> str:
    """The `tls_server_sni_maps` value naming every table."""
    return ", ".join(
        postfix.build_sni_maps_value(Path(deploy_dir) / name)
        for name in build_sni_table_names(count)
    )


def sni_tables_exist(deploy_dir: Path, count: int) -> bool:
    return all(
        (Path(deploy_dir) / name).exists() and _compiled(Path(deploy_dir), name).exists()
        for name in build_sni_table_names(count)
    )


def _compiled(deploy_dir: Path, name: str) -> Path:
    return deploy_dir / f"{name}{postfix._SNI_TABLE_SUFFIX}"


def write_sni_tables(
    deploy_dir: Path,
    entries: Mapping[str, ChainFiles],
    count: int,
    changed: Set[str | Path] | None = None,
    *,
    config_dir: Path | None = None,
) -> list[Path]:
    """Write the tables whose chain files are in `changed` (None: all) or that are missing.

    Returns the tables written. A table with no entries is still written:
    `main.cf` names every table, and a name must never point at nothing.
    """
    deploy_dir = Path(deploy_dir)
    split = build_shard_split(entries, count)
    names = build_sni_table_names(count)
    if changed is None:
        wanted = set(range(count))
    else:  # the tables naming a changed file, by lookup (not a scan of 10,000 entries)
        wanted = {i for path in changed for i in split.holding(path)}
        wanted |= {i for i, name in enumerate(names) if not _compiled(deploy_dir, name).exists()}
        # An entry that left a table (a renewal with other names) changes it too.
        previous = _WRITTEN.get((deploy_dir, count))
        if previous is not None and previous is not split:
            wanted |= {i for i in range(count) if previous.shards[i] != split.shards[i]}
    written = [
        postfix.write_sni_table(deploy_dir, split.shards[i], config_dir=config_dir, name=names[i])
        for i in sorted(wanted)
    ]
    _WRITTEN[(deploy_dir, count)] = split  # only once all are written: a failure retries them
    return written

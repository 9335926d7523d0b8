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
from collections.abc import Mapping, Sequence, Set
from pathlib import Path

from danesync.actions import postfix
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


def build_sni_shards(
    entries: Mapping[str, Path | Sequence[Path]], count: int
) -> list[dict[str, Path | Sequence[Path]]]:
    shards: list[dict[str, Path | Sequence[Path]]] = [{} for _ in range(count)]
    for hostname, value in entries.items():
        shards[build_sni_shard(hostname, count)][hostname] = value
    return shards


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
    entries: Mapping[str, Path | Sequence[Path]],
    count: int,
    changed: Set[Path] | None = None,
    *,
    config_dir: Path | None = None,
) -> list[Path]:
    """Write the tables whose chain files are in `changed` (None: all) or that are missing.

    Returns the tables written. A table with no entries is still written:
    `main.cf` names every table, and a name must never point at nothing.
    """
    deploy_dir = Path(deploy_dir)
    touched = None if changed is None else {os.fspath(path) for path in changed}
    written = []
    for name, shard in zip(
        build_sni_table_names(count), build_sni_shards(entries, count), strict=True
    ):
        if touched is not None and _compiled(deploy_dir, name).exists():
            paths = (
                [value] if isinstance(value, (str, os.PathLike)) else list(value)
                for value in shard.values()
            )
            if not any(os.fspath(path) in touched for group in paths for path in group):
                continue
        written.append(postfix.write_sni_table(deploy_dir, shard, config_dir=config_dir, name=name))
    return written

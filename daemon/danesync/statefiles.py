"""Where the state's entries live on disk: shards, and the per-name files before them.

Schema 3 keeps the lineages and the owner names in `lineages/NNN.json` and
`tlsa/NNN.json`: 256 shards each by a hash of the name, each a JSON object
name -> that entry's document, one entry a line. At 10,000 lineages that is
~512 files to read at a start instead of 10,000+, and a renewal rewrites one
~40-entry file. Schema 2 had one file per name (`lineages/<lineage>.json`,
`tlsa/<owner>json`); it is read, and replaced by the first save.

This module only names and lists files and (de)serialises shard documents;
state.py decides what is authoritative and in which order files are written.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LINEAGES = "lineages"
NAMES = "tlsa"
KINDS = (LINEAGES, NAMES)
SHARDS = 256  # about 40 entries a shard at 10,000 lineages: a renewal rewrites one small file
# Schema 2's files deleted by one save: they are never read once state.json says
# 3, and an unlink costs ~2.4 ms on this VM's ext4 (discard): 10,000 at once
# were 24 s of a 10,000-lineage migration.
LEFTOVERS_PER_SAVE = 64

_SHARD_FILE = re.compile(r"([0-9]{3})\.json")


def build_shard(name: str) -> int:
    """The shard of a name: the read cache's and the state's (crc32, stable across runs)."""
    return zlib.crc32(name.encode()) % SHARDS


def v2_file_name(kind: str, name: str) -> str:
    # An owner name ends with "." (absolute): tlsa/_25._tcp.mx.example.test.json
    return f"{name}.json" if kind == LINEAGES else f"{name}json"


def build_state_shard(kind: str, name: str) -> str:
    """The shard file of an entry, relative to the state directory.

    A lineage named like a shard ("005", valid for certbot and danesync) had
    the schema 2 file `lineages/005.json`, which the migration replaces with
    shard 005: that shard is where the lineage goes, so the file holds its
    entry at every moment, before and after (`read_v2_files`)."""
    stem = v2_file_name(kind, name)[: -len(".json")]
    if len(stem) == 3 and stem.isascii() and stem.isdigit() and int(stem) < SHARDS:
        return f"{kind}/{stem}.json"
    return f"{kind}/{build_shard(name):03d}.json"


def is_shard_file(filename: str) -> bool:
    match = _SHARD_FILE.fullmatch(filename)
    return match is not None and int(match.group(1)) < SHARDS


def list_state_files(directory: Path) -> tuple[frozenset[str], frozenset[str]]:
    """The shard files and the other `.json` files (schema 2's) under the
    state directory, relative to it. Temporary files (dot names) are neither."""
    shards: set[str] = set()
    others: set[str] = set()
    for kind in KINDS:
        try:
            filenames = os.listdir(directory / kind)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for filename in filenames:
            if is_shard_file(filename):
                shards.add(f"{kind}/{filename}")
            elif filename.endswith(".json") and not filename.startswith("."):
                others.add(f"{kind}/{filename}")
    return frozenset(shards), frozenset(others)


def build_shard_document(entries: dict[str, Any]) -> bytes:
    """One entry a line (sorted): greppable, and the C encoder (indent= is pure Python)."""
    lines = (
        f"{json.dumps(name)}: {json.dumps(value, sort_keys=True)}"
        for name, value in sorted(entries.items())
    )
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def parse_shard_document(raw: bytes) -> dict[str, Any]:
    """A shard's entries; ValueError for anything but a JSON object of objects."""
    document = json.loads(raw)
    if not is_shard_document(document):
        raise ValueError("not a JSON object of entries")
    return document  # type: ignore[no-any-return]


def is_shard_document(value: Any) -> bool:
    # A schema 2 document is never one: a lineage's has "failed_reason" (null or
    # a string), an owner name's "seen" (a list).
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


def read_v2_files(directory: Path, kind: str) -> Iterator[tuple[str, Any]]:
    """Each schema 2 entry of `kind`: (name, parsed document), by file name.

    A shard file among them was written by a migration that a crash
    interrupted before `state.json` said 3: not schema 2's, except the entry
    of the name whose schema 2 file it replaced (`build_state_shard`)."""
    try:
        filenames = sorted(n for n in os.listdir(directory / kind) if n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return
    for filename in filenames:
        if filename.startswith("."):
            continue
        name = filename.removesuffix(".json") if kind == LINEAGES else filename[: -len("json")]
        value = json.loads((directory / kind / filename).read_bytes())
        if is_shard_file(filename) and is_shard_document(value):
            if name not in value:
                continue
            value = value[name]
        yield name, value


def write_state_files(
    directory: Path,
    shards: dict[str, bytes],
    deleted: list[str],
    global_document: bytes | None,
    leftovers: list[str],
) -> None:
    """Write a save, in the order that keeps every moment readable: the shards
    (one batch: one flush for all), the deleted shards, `state.json` (the
    schema version: from here on the shards are authoritative), then
    `leftovers` (schema 2's per-name files) deleted. Raises OSError."""
    from danesync.actions.files import sync_directory, write_atomic, write_atomic_many

    for kind in KINDS:
        (directory / kind).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic_many({directory / r: data for r, data in shards.items()}, mode=0o600)
    for relative in deleted:
        (directory / relative).unlink(missing_ok=True)
    # A deleted shard must stay deleted once state.json says 3.
    for parent in sorted({(directory / r).parent for r in deleted}):
        sync_directory(parent)
    if global_document is not None:
        write_atomic(directory / "state.json", global_document, mode=0o600)
    for relative in leftovers:
        (directory / relative).unlink(missing_ok=True)

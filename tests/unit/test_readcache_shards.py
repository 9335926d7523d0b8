"""The read cache kept by shard: one renewal's flush touches one shard's names.

At 10,000 lineages a flush that hashed every name to find the dirty shard's
entries cost 26 ms a renewal (issue 15: the cost of one renewal independent of
the total). Counted here, not timed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from danesync import readcache
from danesync.readcache import ReadCache
from danesync.statefiles import build_shard

NAMES = [f"mx{i}.example.test" for i in range(2000)]


def _key(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_a_flush_after_one_change_hashes_only_that_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ReadCache(tmp_path)
    for i, name in enumerate(NAMES):
        cache.put_file_key(name, _key(i))
    cache.flush()

    again = ReadCache(tmp_path)
    assert again.file_key(NAMES[0]) == _key(0)  # loads every shard
    calls: list[str] = []

    def counting(name: str) -> int:
        calls.append(name)
        return build_shard(name)

    monkeypatch.setattr(readcache, "build_shard", counting)
    again.put_file_key(NAMES[7], _key(99999))
    again.flush()
    assert len(calls) < 10, f"{len(calls)} names hashed for one change"


def test_every_entry_survives_a_flush_and_a_reload(tmp_path: Path) -> None:
    cache = ReadCache(tmp_path)
    for i, name in enumerate(NAMES):
        cache.put_file_key(name, _key(i))
    cache.flush()
    cache.put_file_key(NAMES[3], None)
    cache.put_file_key(NAMES[4], _key(4444))
    cache.flush()

    again = ReadCache(tmp_path)
    assert again.file_key(NAMES[3]) is None
    assert again.file_key(NAMES[4]) == _key(4444)
    for i, name in enumerate(NAMES[5:], start=5):
        assert again.file_key(name) == _key(i)


def test_a_name_in_the_wrong_shard_file_is_not_trusted(tmp_path: Path) -> None:
    cache = ReadCache(tmp_path)
    cache.put_file_key(NAMES[0], _key(0))
    cache.flush()
    home = build_shard(NAMES[0])
    other = next(n for n in range(256) if n != home)
    (tmp_path / f"{home:03d}.json").rename(tmp_path / f"{other:03d}.json")
    assert ReadCache(tmp_path).file_key(NAMES[0]) is None

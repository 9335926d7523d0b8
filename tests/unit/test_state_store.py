"""StateStore keeps a digest per file, not the file: never a stale skip (issue 15, mem)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from danesync.state import State, StateStore, load_state
from danesync.statefiles import build_state_shard
from tests.harness.chaininfos import chain_info

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


info = chain_info


def inodes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_ino for p in directory.rglob("*.json")}


def shard(lineage: str) -> str:
    return build_state_shard("lineages", lineage)


def saved(directory: Path, count: int = 20) -> State:
    state = State()
    for n in range(count):
        state.lineage(f"l{n}").deployed = info(n)
    StateStore(directory).save(state)
    return state


def test_a_restart_with_nothing_changed_writes_nothing(tmp_path: Path) -> None:
    saved(tmp_path)
    before = inodes(tmp_path)
    store = StateStore(tmp_path)
    state = store.load().state
    store.save(state)
    assert inodes(tmp_path) == before


def test_every_change_after_a_restart_is_written(tmp_path: Path) -> None:
    saved(tmp_path)
    before = inodes(tmp_path)
    store = StateStore(tmp_path)
    state = store.load().state
    state.lineages["l3"].failed_reason = "the probe did not see it"
    state.lineages["l4"].deployed = info(99)
    store.save(state)
    after = inodes(tmp_path)
    rewritten = {name for name in after if after[name] != before.get(name)}
    assert rewritten == {shard("l3"), shard("l4")}
    loaded = load_state(tmp_path)
    assert loaded.lineages["l3"].failed_reason == "the probe did not see it"
    assert loaded.lineages["l4"].deployed == info(99)
    # The same values again: the file on disk already holds them.
    state.lineages["l3"].failed_reason = "the probe did not see it"[:]
    store.save(state)
    assert inodes(tmp_path)[shard("l3")] == after[shard("l3")]


def test_a_change_back_and_forth_is_written_each_time(tmp_path: Path) -> None:
    # Equal objects must not pass for the same file: a value changed and changed
    # back between two saves is saved both times.
    store = StateStore(tmp_path)
    state = State()
    state.lineage("a").deployed = info(1)
    store.save(state)
    for n in (2, 1, 2):
        state.lineages["a"].deployed = info(n)
        store.save(state)
        assert load_state(tmp_path).lineages["a"].deployed == info(n)


def test_equal_new_objects_are_not_rewritten(tmp_path: Path) -> None:
    state = saved(tmp_path)
    store = StateStore(tmp_path)
    store.load()
    before = inodes(tmp_path)
    for lineage in state.lineages.values():
        assert lineage.deployed is not None
        lineage.deployed = dataclasses.replace(lineage.deployed)  # equal, not the same
    store.save(state)
    assert inodes(tmp_path) == before


def test_removed_lineage_file_is_deleted_after_a_restart(tmp_path: Path) -> None:
    saved(tmp_path)
    store = StateStore(tmp_path)
    state = store.load().state
    del state.lineages["l5"]
    store.save(state)
    path = tmp_path / shard("l5")  # its shard rewritten without it, or deleted when empty
    assert not path.exists() or '"l5"' not in path.read_text()
    assert "l5" not in load_state(tmp_path).lineages


def test_the_store_keeps_digests_not_documents(tmp_path: Path) -> None:
    state = saved(tmp_path, 50)
    loaded = StateStore(tmp_path)
    loaded.load()
    for store in (StateStore(tmp_path), loaded):
        store.save(state)
        kept = store._digests  # what stays in memory between passes, per file
        assert len(kept) == len({shard(f"l{n}") for n in range(50)}) + 1
        assert all(len(digest) == 16 for digest in kept.values())
        assert not [v for v in vars(store).values() if isinstance(v, bytes)]

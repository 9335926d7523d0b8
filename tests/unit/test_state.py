"""The state directory: shards, only the changed ones rewritten, schema 3."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from danesync.history import NameHistory, RRset, record_served
from danesync.state import ChainInfo, State, StateStore, load_state, read_state
from danesync.statefiles import build_state_shard
from danesync.tlsa import TlsaRecord
from tests.harness.chaininfos import chain_info

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
NAME = "_25._tcp.mx.example.test."


def info(n: int) -> ChainInfo:
    return chain_info(n, ("2 1 1",))


class TestStateStore:
    """One lineage's change rewrites one file (issue 15: 10,000 lineages)."""

    def test_round_trip(self, tmp_path: Path) -> None:
        state = State()
        state.lineage("a").deployed = info(1)
        state.lineage("b").inflight = info(2)
        record = TlsaRecord(NAME, 2, 1, 1, "ab" * 32)
        history = record_served(NameHistory(NAME), "192.0.2.1:53", RRset.of({record}, 300), NOW)
        state.names[NAME] = NameHistory(NAME, history.seen, history.servers, frozenset({record}))
        StateStore(tmp_path).save(state)
        loaded = load_state(tmp_path)
        assert loaded.lineages["a"].deployed == info(1)
        assert loaded.reload_pending
        assert loaded.names[NAME] == state.names[NAME]
        assert read_state(tmp_path).note is None
        assert json.loads((tmp_path / "state.json").read_text())["reload_pending"] is True

    def test_only_changed_files_are_rewritten(self, tmp_path: Path) -> None:
        state = State()
        for n in range(5):
            state.lineage(f"l{n}").deployed = info(n)
        store = StateStore(tmp_path)
        store.save(state)
        inodes = {p.name: p.stat().st_ino for p in (tmp_path / "lineages").iterdir()}
        state.lineage("l3").deployed = info(9)
        store.save(state)
        changed = {
            p.name for p in (tmp_path / "lineages").iterdir() if p.stat().st_ino != inodes[p.name]
        }
        assert {f"lineages/{name}" for name in changed} == {build_state_shard("lineages", "l3")}
        assert load_state(tmp_path).lineages["l3"].deployed == info(9)

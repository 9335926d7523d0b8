"""State.documents() reuses a lineage's document only while the lineage is unchanged."""

from __future__ import annotations

import dataclasses
import datetime as dt

from danesync.state import LineageState, State
from danesync.statefiles import build_state_shard

MX7 = build_state_shard("lineages", "mx7.example.test")


def test_key_covers_every_field() -> None:
    # A field left out of key() would be saved stale: the cache would not see it change.
    fields = [f.name for f in dataclasses.fields(LineageState)]
    for field in fields:
        one = LineageState(**{field: "set"})  # type: ignore[arg-type]  # any non-None value
        assert "set" in one.key(), field
        assert one.key() != LineageState().key(), field
    assert len(LineageState(failed_reason="x").key()) == len(fields)


def test_key_of_a_deployed_lineage_alone_is_short() -> None:
    # Between renewals (every lineage but a few): one value kept per lineage, not seven.
    assert LineageState().key() == (None,)
    assert LineageState(failed_reason="x").key() != (None,)


def test_documents_follow_every_change() -> None:
    state = State()
    for i in range(50):
        state.lineage(f"mx{i}.example.test")
    first = state.documents()
    assert state.documents() == first
    lineage = state.lineage("mx7.example.test")
    lineage.failed_fingerprint = "ab" * 32
    lineage.failed_reason = "the probe did not see it"
    second = state.documents()
    changed = [path for path in first if first[path] != second[path]]
    assert changed == [MX7]
    assert b"the probe did not see it" in second[MX7]
    lineage.proceed_at = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    assert b"2026-11-28" in state.documents()[MX7]
    lineage.failed_reason = None
    assert b"did not see" not in state.documents()[MX7]
    del state.lineages["mx7.example.test"]
    assert b"mx7.example.test" not in state.documents().get(MX7, b"")


def test_equal_states_compare_equal_whatever_was_cached() -> None:
    a, b = State(), State()
    a.lineage("x.example.test")
    b.lineage("x.example.test")
    a.documents()
    assert a == b

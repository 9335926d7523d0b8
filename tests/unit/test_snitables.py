"""How SNI names are spread over tables (pure parts of danesync.actions.snitables)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from danesync.actions.snitables import (
    SHARD_SIZE,
    build_sni_maps_values,
    build_sni_shard,
    build_sni_shards,
    build_sni_table_names,
    plan_sni_shard_count,
)


def test_one_table_named_as_before_up_to_the_shard_size() -> None:
    assert plan_sni_shard_count(0) == 1
    assert plan_sni_shard_count(SHARD_SIZE) == 1
    assert build_sni_table_names(1) == ["sni"]
    assert build_sni_maps_values(Path("/d"), 1) == "hash:/d/sni"


def test_doubling() -> None:
    assert plan_sni_shard_count(SHARD_SIZE + 1) == 2
    assert plan_sni_shard_count(10_000) == 64
    assert SHARD_SIZE >= 10_000 / 64
    assert build_sni_table_names(4) == ["sni-000", "sni-001", "sni-002", "sni-003"]
    assert build_sni_maps_values(Path("/d"), 2) == "hash:/d/sni-000, hash:/d/sni-001"


def test_same_key_same_shard() -> None:
    # A wildcard and Postfix's parent-domain key, and case: one table key, one shard.
    for count in (2, 64):
        assert build_sni_shard("*.Example.net", count) == build_sni_shard(".example.net", count)
        assert build_sni_shard("MX.example.net.", count) == build_sni_shard("mx.example.net", count)


@given(st.sets(st.integers(min_value=0, max_value=10**6), max_size=300), st.sampled_from([1, 2, 8]))
def test_every_name_in_exactly_one_shard(numbers: set[int], count: int) -> None:
    entries = {f"mx{n}.example.test": Path(f"/d/mx{n}.pem") for n in numbers}
    shards = build_sni_shards(entries, count)
    assert len(shards) == count
    merged: dict[str, object] = {}
    for shard in shards:
        assert not merged.keys() & shard.keys()
        merged.update(shard)
    assert merged == entries


def test_spread_is_even_enough() -> None:
    entries = {f"mx{n}.example.test": Path(f"/d/{n}") for n in range(10_000)}
    sizes = [len(shard) for shard in build_sni_shards(entries, 64)]
    assert max(sizes) < 2 * SHARD_SIZE

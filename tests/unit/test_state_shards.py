"""The state in shards (issue 15, shard): a start reads ~512 files, not one per lineage;
a save rewrites the shards that changed; schema 2 is read and migrated, crash-safe."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import danesync.state
from danesync.history import NameHistory, RRset, record_served
from danesync.state import (
    SCHEMA_VERSION,
    LineageState,
    State,
    StateStore,
    load_state,
    read_state,
)
from danesync.statefiles import SHARDS, build_state_shard
from danesync.tlsa import TlsaRecord
from tests.harness.chaininfos import chain_info

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


info = chain_info


def owner(n: int) -> str:
    return f"_25._tcp.mx{n}.example.test."


def history(n: int) -> NameHistory:
    record = TlsaRecord(owner(n), 3, 1, 1, f"{n:064x}")
    seen = record_served(NameHistory(owner(n)), "192.0.2.1:53", RRset.of({record}, 300), NOW)
    return NameHistory(owner(n), seen.seen, seen.servers, frozenset({record}))


# Lineages named like a shard file ("005", "017") had schema 2 files of the same name.
NAMED_LIKE_SHARDS = ("005", "017", "255", "256")


def a_state(count: int, names: int = 3) -> State:
    state = State(last_wall=NOW)
    for n in range(count):
        state.lineage(f"mx{n}.example.test").deployed = info(n)
    for n, lineage in enumerate(NAMED_LIKE_SHARDS):
        state.lineage(lineage).pending = info(1000 + n)
    for n in range(names):
        state.names[owner(n)] = history(n)
    return state


def write_v2(directory: Path, state: State) -> None:
    """A schema 2 directory, as main's danesync wrote it: one file per lineage and name."""

    def dump(value: object) -> str:
        return json.dumps(value, indent=1, sort_keys=True) + "\n"

    for sub in ("lineages", "tlsa"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    document = state.global_json() | {"version": 2}
    (directory / "state.json").write_text(dump(document))
    for name, lineage in state.lineages.items():
        (directory / "lineages" / f"{name}.json").write_text(dump(lineage.to_json()))
    for name, named in state.names.items():
        (directory / "tlsa" / f"{name}json").write_text(dump(named.to_json()))


def full_disk(*_: object) -> None:
    raise OSError(28, "No space left on device")


def files(directory: Path, sub: str) -> set[str]:
    return {p.name for p in (directory / sub).iterdir() if not p.name.startswith(".")}


def entries(state: State) -> tuple[dict[str, object], dict[str, object]]:
    return (
        {n: s.to_json() for n, s in state.lineages.items()},
        {n: h.to_json() for n, h in state.names.items()},
    )


class TestShards:
    def test_a_thousand_lineages_are_at_most_256_files_and_one_change_rewrites_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        state = a_state(1000)
        StateStore(tmp_path).save(state)
        assert len(files(tmp_path, "lineages")) <= SHARDS
        assert all(len(name) == len("000.json") for name in files(tmp_path, "lineages"))
        store = StateStore(tmp_path)  # a restart: nothing rewritten, one change one file
        state = store.load().state
        replaced: list[str] = []
        real_replace = os.replace

        def replace(source: str | Path, target: str | Path) -> None:
            replaced.append(str(Path(target).relative_to(tmp_path)))
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
        store.save(state)
        assert replaced == []
        state.lineages["mx7.example.test"].failed_reason = "the probe did not see it"
        store.save(state)
        assert replaced == [build_state_shard("lineages", "mx7.example.test")]
        assert load_state(tmp_path).lineages["mx7.example.test"].failed_reason

    def test_a_removed_entry_leaves_its_shard_and_an_empty_shard_is_deleted(
        self, tmp_path: Path
    ) -> None:
        store = StateStore(tmp_path)
        state = a_state(40)
        store.save(state)
        shard = build_state_shard("lineages", "mx3.example.test")
        together = [n for n in state.lineages if build_state_shard("lineages", n) == shard]
        del state.lineages["mx3.example.test"]
        del state.names[owner(1)]
        store.save(state)
        assert "mx3.example.test" not in load_state(tmp_path).lineages
        assert owner(1) not in load_state(tmp_path).names
        assert not (tmp_path / build_state_shard("tlsa", owner(1))).exists() or any(
            build_state_shard("tlsa", o) == build_state_shard("tlsa", owner(1)) for o in state.names
        )
        for name in together:
            state.lineages.pop(name, None)
        StateStore(tmp_path).load()  # a restart between, too
        store = StateStore(tmp_path)
        store.load()
        store.save(state)
        assert not (tmp_path / shard).exists()
        assert entries(load_state(tmp_path)) == entries(state)

    def test_an_entry_moved_to_another_shard_by_hand_is_read_and_put_back(
        self, tmp_path: Path
    ) -> None:
        state = a_state(40)
        StateStore(tmp_path).save(state)
        home = tmp_path / build_state_shard("lineages", "mx3.example.test")
        other = next(
            p for p in (tmp_path / "lineages").iterdir() if p != home and p.suffix == ".json"
        )
        moved = json.loads(home.read_text())
        entry = moved.pop("mx3.example.test")
        home.write_text(json.dumps(moved))
        other.write_text(json.dumps(json.loads(other.read_text()) | {"mx3.example.test": entry}))
        store = StateStore(tmp_path)
        loaded = store.load()
        assert loaded.note is None
        assert entries(loaded.state) == entries(state)
        store.save(loaded.state)
        assert "mx3.example.test" in json.loads(home.read_text())
        assert "mx3.example.test" not in json.loads(other.read_text())

    def test_load_state_reads_both_schemas(self, tmp_path: Path) -> None:
        state = a_state(30)
        write_v2(tmp_path / "v2", state)
        StateStore(tmp_path / "v3").save(state)
        assert entries(load_state(tmp_path / "v2")) == entries(state)
        assert entries(load_state(tmp_path / "v3")) == entries(state)
        assert json.loads((tmp_path / "v3" / "state.json").read_text())["version"] == 3


class TestBadFiles:
    def test_a_shard_that_is_not_json_rebuilds_once_not_at_every_start(
        self, tmp_path: Path
    ) -> None:
        state = a_state(40)
        StateStore(tmp_path).save(state)
        bad = tmp_path / build_state_shard("lineages", "mx3.example.test")
        bad.write_bytes(b'{"mx3.example.test": {"depl')
        store = StateStore(tmp_path)
        loaded = store.load()
        assert "rebuilding" in (loaded.note or "") and bad.name in (loaded.note or "")
        assert loaded.state.lineages == {}
        assert bad.with_name(bad.name + ".bad").exists()  # kept for the operator
        assert (tmp_path / "state.json.bad").exists()
        rebuilt = State(last_wall=NOW)
        rebuilt.lineage("mx1.example.test").deployed = info(1)
        store.save(rebuilt)
        # Nothing of the old state comes back at the next start.
        again = StateStore(tmp_path).load()
        assert again.note is None
        assert entries(again.state) == entries(rebuilt)

    def test_a_shard_of_another_shape_is_not_understood(self, tmp_path: Path) -> None:
        StateStore(tmp_path).save(a_state(10))
        shard = tmp_path / build_state_shard("lineages", "mx3.example.test")
        shard.write_text(json.dumps([1, 2]))
        assert "rebuilding" in (read_state(tmp_path).note or "")

    def test_an_unknown_version_is_rebuilt_and_its_files_removed(self, tmp_path: Path) -> None:
        StateStore(tmp_path).save(a_state(10))
        document = json.loads((tmp_path / "state.json").read_text())
        (tmp_path / "state.json").write_text(json.dumps(document | {"version": 99}))
        store = StateStore(tmp_path)
        assert "rebuilding" in (store.load().note or "")
        store.save(State())
        assert files(tmp_path, "lineages") == files(tmp_path, "tlsa") == set()
        assert StateStore(tmp_path).load().note is None


class Crash(BaseException):
    """The process dies here: nothing after it runs (BaseException: not an OSError)."""


def crash_points(
    monkeypatch: pytest.MonkeyPatch, at: int | None, seen: list[str]
) -> Iterator[None]:
    """Every rename (os.replace) and unlink of the state's files is a point; the
    process "dies" at the `at`-th (None: counts them in `seen`)."""
    real_replace, real_unlink = os.replace, Path.unlink

    def step(path: str | Path) -> None:
        seen.append(str(path))
        if len(seen) == at:
            raise Crash(at)

    def replace(source: str | Path, target: str | Path) -> None:
        step(target)
        real_replace(source, target)

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if not path.name.endswith(".tmp"):  # a temporary file left over changes nothing
            step(path)
        real_unlink(path, missing_ok=missing_ok)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        patch.setattr(Path, "unlink", unlink)
        yield


@pytest.fixture
def no_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash tests are about the order of renames and unlinks, not durability:
    no fsync or syncfs (hundreds of saves)."""
    from danesync.actions import files

    monkeypatch.setattr(files.os, "fsync", lambda fd: None)
    monkeypatch.setattr(files, "_syncfs_available", lambda: False)


@pytest.mark.usefixtures("no_flush")
class TestMigration:
    """Schema 2 -> 3: the shards, then state.json saying 3, then the per-name files
    deleted. Whatever a crash leaves, the next start reads the whole state."""

    @staticmethod
    def changed(old: State) -> State:
        """What the first save writes: one lineage changed, one removed, one name removed."""
        new = State(lineages=dict(old.lineages), names=dict(old.names), last_wall=old.last_wall)
        new.lineages["mx2.example.test"] = LineageState(deployed=info(77))
        del new.lineages["mx4.example.test"]
        del new.names[owner(0)]
        return new

    def test_a_v2_directory_is_migrated_at_the_start(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(danesync.state, "LEFTOVERS_PER_SAVE", 5)
        old = a_state(20)
        write_v2(tmp_path, old)
        store = StateStore(tmp_path)
        loaded = store.load()
        assert loaded.note is None
        assert entries(loaded.state) == entries(old)
        assert json.loads((tmp_path / "state.json").read_text())["version"] == SCHEMA_VERSION
        assert entries(load_state(tmp_path)) == entries(old)
        assert StateStore(tmp_path).load().digests  # read as schema 3 from now on
        # Schema 2's files go a few at a time (an unlink is slow on some disks),
        # never read meanwhile.
        v2_files = {n for n in files(tmp_path, "lineages") if len(n) != len("000.json")}
        assert 0 < len(v2_files) < len(old.lineages)
        for lineage in old.lineages.values():
            lineage.failed_reason = "changed"
            store.save(old)
        assert entries(StateStore(tmp_path).load().state) == entries(old)
        for sub in ("lineages", "tlsa"):
            assert all(len(name) == len("000.json") for name in files(tmp_path, sub)), sub

    @staticmethod
    def v2_directory(directory: Path, old: State, interrupted: bool) -> None:
        """`old` in schema 2; `interrupted`: with the shards of an earlier migration
        that a crash stopped before state.json said 3, holding lineages since gone."""
        if interrupted:
            StateStore(directory).save(a_state(24, names=6))
            (directory / "state.json").unlink()
        write_v2(directory, old)

    @staticmethod
    def migration(
        directory: Path, monkeypatch: pytest.MonkeyPatch, new: State | None
    ) -> Callable[[], object]:
        """What migrates: the start (None), or, when that failed (a full disk),
        the first save, of `new`."""
        if new is None:
            return lambda: StateStore(directory).load()
        store = StateStore(directory)
        with monkeypatch.context() as patch:
            patch.setattr(danesync.state, "write_state_files", full_disk)
            store.load()
        return lambda: store.save(new)

    @pytest.mark.parametrize("interrupted", [False, True])
    @pytest.mark.parametrize("at_start", [True, False])
    def test_a_crash_at_every_step_of_the_migration_leaves_a_whole_state(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: bool, at_start: bool
    ) -> None:
        old = a_state(12)
        new = old if at_start else self.changed(old)
        self.v2_directory(tmp_path / "count", old, interrupted)
        migrate = self.migration(tmp_path / "count", monkeypatch, None if at_start else new)
        points: list[str] = []
        for _ in crash_points(monkeypatch, None, points):
            migrate()
        assert len(points) > 10
        for at in range(1, len(points) + 1):
            directory = tmp_path / f"crash{at}"
            self.v2_directory(directory, old, interrupted)
            migrate = self.migration(directory, monkeypatch, None if at_start else new)
            for _ in crash_points(monkeypatch, at, []):
                with pytest.raises(Crash):
                    migrate()
            self.assert_whole(directory, old, new, at)
            # The next start finishes the migration.
            store = StateStore(directory)
            loaded = store.load()
            assert loaded.note is None, at
            store.save(new)
            version = json.loads((directory / "state.json").read_text())["version"]
            assert version == SCHEMA_VERSION, at
            assert entries(load_state(directory)) == entries(new), at
            for sub in ("lineages", "tlsa"):
                assert all(len(name) == len("000.json") for name in files(directory, sub)), at

    @staticmethod
    def assert_whole(directory: Path, old: State, new: State, at: int) -> None:
        """Each entry read is the old or the new one; every entry of both is there,
        but for those the save removed; nothing else is read."""
        for state in (read_state(directory).state, load_state(directory)):
            lineages, names = entries(state)
            old_lineages, old_names = entries(old)
            new_lineages, new_names = entries(new)
            for got, before, after in (
                (lineages, old_lineages, new_lineages),
                (names, old_names, new_names),
            ):
                assert set(after) <= set(got) <= set(before) | set(after), at
                for name, value in got.items():
                    assert value in (before.get(name), after.get(name)), (at, name)
        assert read_state(directory).note is None, at

    def test_a_crash_after_state_json_leaves_no_stray_v2_file_read(self, tmp_path: Path) -> None:
        old = a_state(20)
        write_v2(tmp_path, old)
        stray = json.loads((tmp_path / "lineages" / "mx3.example.test.json").read_text())
        StateStore(tmp_path).save(old)
        # A schema 2 file left behind (its unlink lost), holding another value.
        stray["failed_reason"] = "stale"
        (tmp_path / "lineages" / "mx3.example.test.json").write_text(json.dumps(stray))
        store = StateStore(tmp_path)
        assert entries(store.load().state) == entries(old)
        store.save(old)
        assert not (tmp_path / "lineages" / "mx3.example.test.json").exists()

    def test_stray_shards_in_a_v2_directory_are_not_read(self, tmp_path: Path) -> None:
        # Shards of an interrupted migration hold lineages the schema 2 state does
        # not have (mx20-29): they must not be read, nor survive the next migration.
        old = a_state(20)
        StateStore(tmp_path).save(a_state(30))
        (tmp_path / "state.json").unlink()
        write_v2(tmp_path, old)
        assert entries(load_state(tmp_path)) == entries(old)
        store = StateStore(tmp_path)
        store.load()
        store.save(old)
        assert entries(load_state(tmp_path)) == entries(old)
